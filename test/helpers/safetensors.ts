/**
 * Test-only helpers: a tiny safetensors writer, reference dtype decoders written
 * independently of src/convert (formulas, not bit tricks), a whole-file reference
 * reader, and a seeded PRNG.
 */
import { readFileSync, writeFileSync } from 'node:fs';

export interface RawTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Serialize tensors (in the given order, packed) with a space-padded header, as the Python writer does. */
export function encodeSafetensors(tensors: RawTensor[], metadata: Record<string, string> | undefined = { format: 'pt' }): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header['__metadata__'] = metadata;
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  return encodeRaw(json, tensors.map((t) => t.data));
}

/** A file with an arbitrary header text (for corrupt-header tests). */
export function encodeRaw(headerText: string, data: Uint8Array[], headerLength?: number): Uint8Array {
  const head = new TextEncoder().encode(headerText);
  const total = 8 + head.length + data.reduce((a, d) => a + d.length, 0);
  const out = new Uint8Array(total);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength ?? head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const d of data) {
    out.set(d, at);
    at += d.length;
  }
  return out;
}

export function writeSafetensors(file: string, tensors: RawTensor[]): void {
  writeFileSync(file, encodeSafetensors(tensors));
}

export function bytesOf(a: Float32Array | Uint16Array | Float64Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

import { rng } from '../../src/util/random.js';

export { rng };

/** Random binary16 bit patterns, every class but inf/NaN (zeros, subnormals, normals, both signs). */
export function randomF16Bits(n: number, rand: () => number): Uint16Array {
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    let h: number;
    do h = Math.floor(rand() * 65536);
    while (((h >> 10) & 0x1f) === 0x1f);
    out[i] = h;
  }
  return out;
}

/** Random bfloat16 bit patterns, every class but inf/NaN. */
export function randomBf16Bits(n: number, rand: () => number): Uint16Array {
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    let h: number;
    do h = Math.floor(rand() * 65536);
    while (((h >> 7) & 0xff) === 0xff);
    out[i] = h;
  }
  return out;
}

export function randomF32(n: number, rand: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => (rand() - 0.5) * 4);
}

/** binary16 -> number by the IEEE formula. */
export function refF16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  return e === 0 ? s * 2 ** -14 * (m / 1024) : s * 2 ** (e - 15) * (1 + m / 1024);
}

/** bfloat16 -> number by the formula (8-bit exponent, 7-bit mantissa). */
export function refBf16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 7) & 0xff;
  const m = h & 0x7f;
  return e === 0 ? s * 2 ** -126 * (m / 128) : s * 2 ** (e - 127) * (1 + m / 128);
}

export function decodeRef(dtype: string, bytes: Uint8Array): Float32Array {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'F32') return Float32Array.from({ length: bytes.length / 4 }, (_, i) => v.getFloat32(i * 4, true));
  const f = dtype === 'F16' ? refF16 : dtype === 'BF16' ? refBf16 : undefined;
  if (!f) throw new Error(`decodeRef: ${dtype}`);
  return Float32Array.from({ length: bytes.length / 2 }, (_, i) => f(v.getUint16(i * 2, true)));
}

/** Whole-file safetensors read (tests only: fixtures are small). */
export function readSafetensorsWhole(file: string): Map<string, { shape: number[]; values: Float32Array }> {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const bytes = new Uint8Array(buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]));
    out.set(name, { shape: t.shape, values: decodeRef(t.dtype, bytes) });
  }
  return out;
}

/** Rows [start, start+count) of a row-major [rows, cols] array. */
export function refRows(values: Float32Array, cols: number, start: number, count: number): Float32Array {
  return values.slice(start * cols, (start + count) * cols);
}

/** Columns [start, start+count) of a row-major [rows, cols] array, transposed to [count][rows]. */
export function refColumns(values: Float32Array, rows: number, cols: number, start: number, count: number): Float32Array {
  const out = new Float32Array(count * rows);
  for (let j = 0; j < count; j++) for (let r = 0; r < rows; r++) out[j * rows + r] = values[r * cols + start + j]!;
  return out;
}

/** Bit patterns, so -0 vs 0 and every ulp count. */
export function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}
