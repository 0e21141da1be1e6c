/**
 * Streaming safetensors reader, plus the pieces every checkpoint adapter shares:
 * tensor regions read positionally (never a whole file in memory), a Checkpoint
 * built from canonical-name -> region bindings, and typed config.json access.
 *
 * safetensors layout: u64 LE header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {str: str}}`,
 * then the data area; offsets are relative to the data area.
 */
import { open, readdir, readFile, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import path from 'node:path';
import { ArgumentError, ConvertError } from '../errors.js';
import type { ArchConfig, TokenizerSpec } from '../format/types.js';
import type { Checkpoint } from './types.js';

/** Bytes per element of every dtype the safetensors spec names (needed to validate offsets). */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

/** The dtypes we convert to f32 on read. */
export type FloatDType = 'F32' | 'F16' | 'BF16';
const FLOAT_DTYPES: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16']);

/** Same cap as the reference Rust implementation: a larger header is corrupt or hostile. */
const MAX_HEADER_BYTES = 100_000_000;

/**
 * I/O tuning. `chunkBytes` bounds every scratch buffer; column reads merge adjacent
 * rows into one read when the skipped gap per row is at most max(slice, minMergeGap)
 * (at most 2x read amplification), else issue up to `maxParallelReads` slice reads at once.
 * Exported so tests can force each code path; results never depend on it.
 */
export const readTuning = { chunkBytes: 8 << 20, minMergeGap: 4096, maxParallelReads: 32 };

const LITTLE_ENDIAN = endianness() === 'LE';

/** A tensor's bytes in an open file. `shape` is what callers see. */
export interface TensorRegion {
  /** File path, for error messages. */
  readonly file: string;
  readonly fh: FileHandle;
  /** The tensor's name in its source file, for error messages. */
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Absolute byte offset of the first element (a JS number: files may exceed 4 GiB). */
  readonly offset: number;
  readonly byteLength: number;
}

export interface SafetensorsHeader {
  /** Tensors in header order. */
  readonly tensors: Map<string, { dtype: string; shape: number[]; offset: number; byteLength: number }>;
  readonly metadata: Record<string, string> | undefined;
  /** Absolute offset of the data area. */
  readonly dataStart: number;
}

// ---------------------------------------------------------------------------
// Header

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Read and strictly validate the header of an open safetensors file. */
export async function readSafetensorsHeader(fh: FileHandle, file: string): Promise<SafetensorsHeader> {
  const size = (await fh.stat()).size;
  if (size < 8) throw new ConvertError(file, undefined, `file is ${size} bytes: too small to be safetensors`);
  const lenBuf = new Uint8Array(8);
  await readExact(fh, file, undefined, lenBuf, 8, 0);
  const n64 = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (n64 < 2n || n64 > BigInt(MAX_HEADER_BYTES)) {
    throw new ConvertError(file, undefined, `safetensors header length ${n64} is not sane (file is ${size} bytes)`);
  }
  const n = Number(n64);
  if (8 + n > size) {
    throw new ConvertError(file, undefined, `safetensors header length ${n} runs past the end of the file (${size} bytes): truncated or not safetensors`);
  }
  const raw = new Uint8Array(n);
  await readExact(fh, file, undefined, raw, n, 8);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
  } catch (e) {
    throw new ConvertError(file, undefined, `safetensors header is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (!isObject(json)) throw new ConvertError(file, undefined, 'safetensors header is not a JSON object');

  const dataStart = 8 + n;
  const dataSize = size - dataStart;
  const tensors: SafetensorsHeader['tensors'] = new Map();
  let metadata: Record<string, string> | undefined;
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(v) || !Object.values(v).every((x) => typeof x === 'string')) {
        throw new ConvertError(file, undefined, '__metadata__ must map strings to strings');
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const bad = (msg: string): never => {
      throw new ConvertError(file, name, msg);
    };
    if (!isObject(v)) bad('header entry is not an object');
    const { dtype, shape, data_offsets: offs } = v as Record<string, unknown>;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) bad(`unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isCount)) bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isCount)) {
      bad(`data_offsets ${JSON.stringify(offs)} is not [begin, end]`);
    }
    const [begin, end] = offs as [number, number];
    if (begin > end || end > dataSize) {
      bad(`data_offsets [${begin}, ${end}] lie outside the data area (${dataSize} bytes): file truncated or header corrupt`);
    }
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const bytes = numel * DTYPE_BYTES[dtype as string]!;
    if (!Number.isSafeInteger(bytes) || bytes !== end - begin) {
      bad(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype}${JSON.stringify(shape)} needs ${bytes}`);
    }
    tensors.set(name, { dtype: dtype as string, shape: shape as number[], offset: dataStart + begin, byteLength: bytes });
    spans.push({ name, begin, end });
  }
  // No two tensors may share bytes (empty tensors occupy none).
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: (typeof spans)[number] | undefined;
  for (const s of spans) {
    if (s.begin === s.end) continue;
    if (prev && s.begin < prev.end) {
      throw new ConvertError(file, s.name, `data_offsets [${s.begin}, ${s.end}] overlap tensor ${prev.name} [${prev.begin}, ${prev.end}]`);
    }
    prev = s;
  }
  return { tensors, metadata, dataStart };
}

// ---------------------------------------------------------------------------
// Store: one file, or several shards listed by model.safetensors.index.json

/** The tensors of one safetensors checkpoint (single file or sharded), by source name. */
export class SafetensorsStore {
  private closed = false;
  private constructor(
    /** The file errors about missing tensors name: the .safetensors file or the index. */
    readonly path: string,
    private readonly handles: FileHandle[],
    readonly tensors: ReadonlyMap<string, TensorRegion>,
    readonly metadata: Record<string, string> | undefined,
  ) {}

  /** Open a single .safetensors file. */
  static async openFile(file: string): Promise<SafetensorsStore> {
    const { fh, header } = await openShard(file);
    const tensors = new Map<string, TensorRegion>();
    for (const [name, t] of header.tensors) tensors.set(name, { file, fh, name, ...t });
    return new SafetensorsStore(file, [fh], tensors, header.metadata);
  }

  /** Open the shards named by a `model.safetensors.index.json` (`weight_map`: tensor -> file). */
  static async openIndex(indexFile: string): Promise<SafetensorsStore> {
    const dir = path.dirname(indexFile);
    const index = await readJsonFile(indexFile);
    const map = index['weight_map'];
    if (!isObject(map) || !Object.values(map).every((f) => typeof f === 'string')) {
      throw new ConvertError(indexFile, undefined, 'weight_map must map tensor names to file names');
    }
    const weightMap = map as Record<string, string>;
    const handles: FileHandle[] = [];
    try {
      const tensors = new Map<string, TensorRegion>();
      let metadata: Record<string, string> | undefined;
      for (const shardName of [...new Set(Object.values(weightMap))].sort()) {
        const shard = path.resolve(dir, shardName);
        // Shard names are plain files beside the index: never let an index point elsewhere.
        if (path.dirname(shard) !== path.resolve(dir)) {
          throw new ConvertError(indexFile, undefined, `weight_map names ${JSON.stringify(shardName)}, which is not a file in ${dir}`);
        }
        const { fh, header } = await openShard(shard);
        handles.push(fh);
        metadata ??= header.metadata;
        for (const [name, t] of header.tensors) {
          const other = tensors.get(name);
          if (other) throw new ConvertError(shard, name, `tensor also stored in ${other.file}`);
          tensors.set(name, { file: shard, fh, name, ...t });
        }
      }
      for (const [name, shardName] of Object.entries(weightMap)) {
        const where = tensors.get(name);
        if (!where) throw new ConvertError(path.resolve(dir, shardName), name, `tensor listed in ${indexFile} is missing from the shard`);
        if (where.file !== path.resolve(dir, shardName)) {
          throw new ConvertError(where.file, name, `${indexFile} says this tensor is in ${shardName}`);
        }
      }
      return new SafetensorsStore(indexFile, handles, tensors, metadata);
    } catch (e) {
      await Promise.all(handles.map((h) => h.close().catch(() => {})));
      throw e;
    }
  }

  /**
   * Open a Hugging Face model folder: model.safetensors.index.json if present,
   * else model.safetensors, else the folder's only *.safetensors file.
   */
  static async openFolder(dir: string): Promise<SafetensorsStore> {
    const names = await readdir(dir);
    if (names.includes('model.safetensors.index.json')) return SafetensorsStore.openIndex(path.join(dir, 'model.safetensors.index.json'));
    if (names.includes('model.safetensors')) return SafetensorsStore.openFile(path.join(dir, 'model.safetensors'));
    const st = names.filter((f) => f.endsWith('.safetensors'));
    if (st.length === 1) return SafetensorsStore.openFile(path.join(dir, st[0]!));
    const torch = names.find((f) => /^pytorch_model.*\.bin$/.test(f));
    throw new ConvertError(
      dir,
      undefined,
      st.length > 1
        ? `${st.length} .safetensors files but no model.safetensors.index.json`
        : `no .safetensors weights${torch ? ` (found ${torch}: PyTorch pickles are not supported; save the model with safe_serialization=True)` : ''}`,
    );
  }

  get(name: string): TensorRegion | undefined {
    return this.tensors.get(name);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.handles.map((h) => h.close()));
  }
}

/** Opens a checkpoint file for reading; failure is a ConvertError naming it. */
export async function openInputFile(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'r');
  } catch (e) {
    throw new ConvertError(file, undefined, `cannot open: ${(e as Error).message}`, { cause: e });
  }
}

async function openShard(file: string): Promise<{ fh: FileHandle; header: SafetensorsHeader }> {
  const fh = await openInputFile(file);
  try {
    return { fh, header: await readSafetensorsHeader(fh, file) };
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}

// ---------------------------------------------------------------------------
// Reading regions

/** Fill buf[0, len) from the file at `position`, looping over short reads. */
async function readExact(fh: FileHandle, file: string, tensor: string | undefined, buf: Uint8Array, len: number, position: number): Promise<void> {
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(buf, done, len - done, position + done);
    if (bytesRead === 0) throw new ConvertError(file, tensor, `unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}

let f16Table: Float32Array | undefined;
/** All 65536 binary16 values as f32, built once (bit-exact, NaN payloads kept). */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  const bits = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = (sign ? -1 : 1) * mant * 2 ** -24; // zero / subnormal: exact in f32
    else if (exp === 0x1f) bits[h] = sign | 0x7f800000 | (mant << 13);
    else bits[h] = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return (f16Table = t);
}

/**
 * Decode n elements from raw[byteAt..] (little-endian `dtype`) into out[outAt + k*outStride].
 * `raw` must start at offset 0 of its ArrayBuffer and byteAt be element-aligned.
 */
function decodeInto(dtype: FloatDType, raw: Uint8Array, byteAt: number, n: number, out: Float32Array, outAt: number, outStride: number): void {
  if (!LITTLE_ENDIAN) {
    const b = Buffer.from(raw.buffer, raw.byteOffset + byteAt, n * (dtype === 'F32' ? 4 : 2));
    if (dtype === 'F32') b.swap32();
    else b.swap16();
  }
  if (dtype === 'F32') {
    const src = new Float32Array(raw.buffer, raw.byteOffset + byteAt, n);
    if (outStride === 1) out.set(src, outAt);
    else for (let k = 0, o = outAt; k < n; k++, o += outStride) out[o] = src[k]!;
    return;
  }
  const src = new Uint16Array(raw.buffer, raw.byteOffset + byteAt, n);
  if (dtype === 'BF16') {
    // bf16 is the top half of an f32: widen the bits through a u32 view of `out`.
    const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
    for (let k = 0, o = outAt; k < n; k++, o += outStride) bits[o] = src[k]! << 16;
  } else {
    const table = f16ToF32Table();
    for (let k = 0, o = outAt; k < n; k++, o += outStride) out[o] = table[src[k]!]!;
  }
}

/** [rows, cols] view of a tensor: the first dimension by the product of the rest. */
function dims(shape: readonly number[]): [number, number] {
  return [shape[0] ?? 1, shape.slice(1).reduce((a, b) => a * b, 1)];
}

function checkRange(r: TensorRegion, what: string, start: number, count: number, limit: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > limit) {
    throw new ArgumentError(`${r.file} [${r.name}]: ${what} [${start}, ${start}+${count}) out of range 0..${limit}`);
  }
}

function floatDType(r: TensorRegion): FloatDType {
  if (!FLOAT_DTYPES.has(r.dtype)) {
    throw new ConvertError(r.file, r.name, `dtype ${r.dtype} is not supported (F32, F16 and BF16 only)`);
  }
  return r.dtype as FloatDType;
}

/** Rows [start, start+count) (elements, for a vector) as row-major f32. */
export async function readRegionRows(r: TensorRegion, start: number, count: number): Promise<Float32Array> {
  const dtype = floatDType(r);
  const [rows, cols] = dims(r.shape);
  checkRange(r, 'rows', start, count, rows);
  const es = DTYPE_BYTES[dtype]!;
  const n = count * cols;
  const out = new Float32Array(n);
  const pos = r.offset + start * cols * es;
  // Elements per read: bounded scratch memory (f32 reads land in `out` directly).
  const step = Math.max(1, Math.floor(readTuning.chunkBytes / es));
  const scratch = dtype === 'F32' ? undefined : new Uint8Array(Math.min(n, step) * es);
  for (let i = 0; i < n; i += step) {
    const m = Math.min(step, n - i);
    if (scratch) {
      await readExact(r.fh, r.file, r.name, scratch, m * es, pos + i * es);
      decodeInto(dtype, scratch, 0, m, out, i, 1);
    } else {
      const dst = new Uint8Array(out.buffer, i * 4, m * 4);
      await readExact(r.fh, r.file, r.name, dst, m * 4, pos + i * 4);
      if (!LITTLE_ENDIAN) Buffer.from(dst.buffer, dst.byteOffset, dst.length).swap32();
    }
  }
  return out;
}

/**
 * Columns [start, start+count) of a [rows, cols] matrix, transposed: [count][rows] f32.
 * Each row contributes one slice; when the bytes skipped between slices are small
 * next to the slices, runs of rows are fetched in one read (bounded by chunkBytes),
 * otherwise the slices are read individually, many in flight at once.
 */
export async function readRegionColumns(r: TensorRegion, start: number, count: number): Promise<Float32Array> {
  const dtype = floatDType(r);
  if (r.shape.length !== 2) throw new ArgumentError(`${r.file} [${r.name}]: readColumns needs a matrix, shape is [${r.shape.join(', ')}]`);
  const [rows, cols] = dims(r.shape);
  checkRange(r, 'columns', start, count, cols);
  const out = new Float32Array(count * rows);
  if (count === 0 || rows === 0) return out;
  const es = DTYPE_BYTES[dtype]!;
  const stride = cols * es;
  const slice = count * es;
  const base = r.offset + start * es;
  const { chunkBytes, minMergeGap, maxParallelReads } = readTuning;

  if (stride - slice <= Math.max(slice, minMergeGap)) {
    const perRead = Math.max(1, Math.min(rows, Math.floor(chunkBytes / stride)));
    const buf = new Uint8Array((perRead - 1) * stride + slice);
    for (let r0 = 0; r0 < rows; r0 += perRead) {
      const m = Math.min(perRead, rows - r0);
      await readExact(r.fh, r.file, r.name, buf, (m - 1) * stride + slice, base + r0 * stride);
      for (let i = 0; i < m; i++) decodeInto(dtype, buf, i * stride, count, out, r0 + i, rows);
    }
  } else {
    const perWave = Math.max(1, Math.min(rows, maxParallelReads, Math.floor(chunkBytes / slice)));
    const buf = new Uint8Array(perWave * slice);
    for (let r0 = 0; r0 < rows; r0 += perWave) {
      const m = Math.min(perWave, rows - r0);
      const reads: Promise<void>[] = [];
      for (let i = 0; i < m; i++) {
        reads.push(readExact(r.fh, r.file, r.name, buf.subarray(i * slice, (i + 1) * slice), slice, base + (r0 + i) * stride));
      }
      await Promise.all(reads);
      for (let i = 0; i < m; i++) decodeInto(dtype, buf, i * slice, count, out, r0 + i, rows);
    }
  }
  return out;
}

/** True when two regions hold the same dtype, shape and bytes (compared chunk by chunk). */
export async function regionsEqual(a: TensorRegion, b: TensorRegion): Promise<boolean> {
  if (a.dtype !== b.dtype || a.byteLength !== b.byteLength || a.shape.join() !== b.shape.join()) return false;
  if (a.fh === b.fh && a.offset === b.offset) return true;
  const step = Math.min(a.byteLength, readTuning.chunkBytes);
  const bufA = Buffer.alloc(step);
  const bufB = Buffer.alloc(step);
  for (let at = 0; at < a.byteLength; at += step) {
    const m = Math.min(step, a.byteLength - at);
    await Promise.all([
      readExact(a.fh, a.file, a.name, bufA, m, a.offset + at),
      readExact(b.fh, b.file, b.name, bufB, m, b.offset + at),
    ]);
    if (!bufA.subarray(0, m).equals(bufB.subarray(0, m))) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Binding source tensors to canonical names

export interface TensorBinding {
  /** Canonical name (src/format/types.ts). */
  canonical: string;
  /** Name in the checkpoint. */
  source: string;
  /** Exact expected shape. */
  shape: readonly number[];
  /** Absent is fine (the canonical tensor is then simply not exposed). */
  optional?: boolean;
}

/**
 * Resolve bindings against a store: every required tensor must exist with exactly
 * the expected shape and a float dtype, or a ConvertError names the file and tensor.
 * Then every tensor of the store must be used (checkUnused): `alsoUsed` names
 * tensors an adapter reads itself (not through a binding).
 */
export function bindTensors(store: SafetensorsStore, bindings: readonly TensorBinding[], alsoUsed: Iterable<string> = []): Map<string, TensorRegion> {
  const notes = checkUnused(store, [...bindings.map((b) => b.source), ...alsoUsed]);
  const out = new Map<string, TensorRegion>();
  if (notes.length) bindingNotes.set(out, notes);
  for (const b of bindings) {
    const r = store.get(b.source);
    if (!r) {
      if (b.optional) continue;
      throw new ConvertError(store.path, b.source, `missing tensor (expected shape [${b.shape.join(', ')}])`);
    }
    if (r.shape.length !== b.shape.length || r.shape.some((d, i) => d !== b.shape[i])) {
      throw new ConvertError(r.file, b.source, `shape [${r.shape.join(', ')}] does not match the config: expected [${b.shape.join(', ')}]`);
    }
    floatDType(r);
    out.set(b.canonical, r);
  }
  return out;
}

/** Tensors no architecture rule reads but that are known to be harmless: why each is skipped. */
const HARMLESS: readonly [RegExp, string][] = [
  [/(^|\.)rotary_emb\.(inv_freq|cos_cached|sin_cached)$/, 'a rotary cache, recomputed from the config'],
  [/^lm_head\.weight$/, 'the head is tied to the embeddings (tie_word_embeddings), as Hugging Face loads it'],
];

/** Notes (skipped harmless tensors) of a bindTensors result, for MappedCheckpoint. */
const bindingNotes = new WeakMap<ReadonlyMap<string, TensorRegion>, string[]>();

/**
 * Every tensor of `store` must be one of `used`: tensors of layers beyond the
 * config's layer count (the highest layer index in `used`) or no rule reads are
 * a ConvertError naming them; known harmless extras (HARMLESS) come back as notes.
 */
export function checkUnused(store: SafetensorsStore, used: Iterable<string>): string[] {
  const usedSet = new Set(used);
  const layerOf = (name: string): number => {
    const m = /(?:^|\.)layers\.(\d+)\./.exec(name);
    return m ? Number(m[1]) : -1;
  };
  const nLayers = 1 + Math.max(-1, ...[...usedSet].map(layerOf));
  const extraLayers = new Set<number>();
  const unknown: string[] = [];
  const skipped = new Map<string, string[]>();
  for (const name of store.tensors.keys()) {
    if (usedSet.has(name)) continue;
    const harmless = HARMLESS.find(([re]) => re.test(name));
    if (layerOf(name) >= nLayers && nLayers > 0) extraLayers.add(layerOf(name));
    else if (harmless) skipped.set(harmless[1], [...(skipped.get(harmless[1]) ?? []), name]);
    else unknown.push(name);
  }
  const list = (names: string[]) => names.slice(0, 5).join(', ') + (names.length > 5 ? ` and ${names.length - 5} more` : '');
  if (extraLayers.size) {
    const ls = [...extraLayers].sort((a, b) => a - b);
    throw new ConvertError(store.path, undefined, `the checkpoint has tensors for layer${ls.length > 1 ? 's' : ''} ${ls.length > 1 ? `${ls[0]}..${ls[ls.length - 1]}` : ls[0]} but config.json says num_hidden_layers = ${nLayers}`);
  }
  if (unknown.length) throw new ConvertError(store.path, undefined, `${unknown.length} tensor${unknown.length > 1 ? 's' : ''} no rule of this architecture uses: ${list(unknown)}`);
  return [...skipped].map(([why, names]) => `skipped ${names.length} tensor${names.length > 1 ? 's' : ''} (${list(names)}): ${why}`);
}

/** A Checkpoint whose canonical tensors are regions of open files. */
export class MappedCheckpoint implements Checkpoint {
  readonly tensors: ReadonlyMap<string, readonly number[]>;
  /** Harmless checkpoint tensors that were skipped (bindTensors), one line each. */
  readonly notes: readonly string[];
  constructor(
    readonly path: string,
    readonly arch: ArchConfig,
    readonly tokenizer: TokenizerSpec,
    private readonly regions: ReadonlyMap<string, TensorRegion>,
    private readonly onClose: () => Promise<void>,
  ) {
    this.tensors = new Map([...regions].map(([k, r]) => [k, r.shape]));
    this.notes = bindingNotes.get(regions) ?? [];
  }

  private region(name: string): TensorRegion {
    const r = this.regions.get(name);
    if (!r) throw new ArgumentError(`${this.path}: no tensor ${JSON.stringify(name)} in this checkpoint`);
    return r;
  }

  async readRows(name: string, start: number, count: number): Promise<Float32Array> {
    return readRegionRows(this.region(name), start, count);
  }

  async readColumns(name: string, start: number, count: number): Promise<Float32Array> {
    return readRegionColumns(this.region(name), start, count);
  }

  close(): Promise<void> {
    return this.onClose();
  }
}

// ---------------------------------------------------------------------------
// JSON files (config.json, index.json)

/** Parse a JSON object file; any failure is a ConvertError naming it. */
export async function readJsonFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new ConvertError(file, undefined, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConvertError(file, undefined, `not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (!isObject(v)) throw new ConvertError(file, undefined, 'expected a JSON object');
  return v;
}

/** Typed access to a Hugging Face config.json; a bad value is a ConvertError naming file and key. */
export class JsonConfig {
  constructor(
    readonly file: string,
    readonly values: Record<string, unknown>,
  ) {}

  static async load(file: string): Promise<JsonConfig> {
    return new JsonConfig(file, await readJsonFile(file));
  }

  fail(key: string, message: string): never {
    throw new ConvertError(this.file, undefined, `"${key}" ${message}`);
  }

  /** Present and not null. */
  has(key: string): boolean {
    return this.values[key] !== undefined && this.values[key] !== null;
  }

  private get(key: string, dflt: unknown): unknown {
    if (this.has(key)) return this.values[key];
    if (dflt === undefined) this.fail(key, 'is missing');
    return dflt;
  }

  /** An integer >= min (default 1). */
  int(key: string, dflt?: number, min = 1): number {
    const v = this.get(key, dflt);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) this.fail(key, `must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A finite number > 0. */
  positive(key: string, dflt?: number): number {
    const v = this.get(key, dflt);
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.fail(key, `must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.get(key, dflt);
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string, dflt?: string): string {
    const v = this.get(key, dflt);
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A token id or a non-empty list of them (e.g. eos_token_id). */
  ids(key: string, dflt?: number): number[] {
    const v = this.get(key, dflt);
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0 || !list.every(isCount)) this.fail(key, `must be a token id or a list of them, got ${JSON.stringify(v)}`);
    return list as number[];
  }
}
