/**
 * docs/FORMAT.md against reality: files from the reference writer are parsed
 * using only the rules the document states (hand-decoded preamble, msgpack
 * header, the doc's placement, geometry, quantization and integrity formulas),
 * independently of src/format/reader.ts.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { unpack } from 'msgpackr';
import xxhash from 'xxhash-wasm';
import { partGeometry } from '../src/format/layout.js';
import { decodeHeader } from '../src/format/reader.js';
import { headerPackr, writeFlm } from '../src/format/writer.js';
import { MemorySink } from '../src/source/memory.js';
import { syntheticArch, syntheticCheckpoint } from './helpers/synthetic.js';

const DOC = readFileSync(new URL('../docs/FORMAT.md', import.meta.url), 'utf8');
const { h64Raw } = await xxhash();
const hex = (b: Uint8Array) => h64Raw(b).toString(16).padStart(16, '0');
const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const BYTES = { f32: 4, f16: 2, int8: 1, q8: 1 } as const;
/** §7.2 q8: scale groups of a row of n values. */
const groups = (n: number) => Math.ceil(n / 32);
type DType = keyof typeof BYTES | 'q4';
/** §2 rowBytes: q4 takes whole 16-byte groups. */
const rowBytes = (dtype: DType, n: number) => (dtype === 'q4' ? 16 * groups(n) : n * BYTES[dtype]);
type Layout = 'bundled' | 'split';

/** §8.1 and §8.3. */
function geometry(d: number, dtype: DType, hasBias: boolean, layout: Layout, P: number, N: number) {
  const values = rowBytes(dtype, d);
  const scaleAt = dtype === 'q8' ? alignUp(values, 4) : values;
  const biasAt = dtype === 'q4' ? alignUp(scaleAt + 2 * groups(d), 4) : scaleAt + (dtype === 'int8' ? 4 : dtype === 'q8' ? 4 * groups(d) : 0);
  const partBytes = alignUp(biasAt + (hasBias ? 4 : 0), 16);
  const bundled = layout === 'bundled';
  const stride = bundled ? P * partBytes : partBytes;
  const partOffsets = Array.from({ length: P }, (_, p) => (bundled ? p * partBytes : p * N * partBytes));
  return { values, scaleAt, biasAt, partBytes, stride, partOffsets, blockBytes: bundled ? stride : partBytes, blockCount: bundled ? N : P * N };
}

const f16ToF32 = (h: number) => {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
};

/** §7.2 int8, exactly as the document states it. */
function quantize(x: Float32Array): { q: Int8Array; scale: number } {
  let m = 0;
  for (const v of x) m = Math.max(m, Math.abs(v));
  const scale = Math.fround(m / 127);
  const q = new Int8Array(x.length);
  if (scale !== 0) x.forEach((xj, j) => (q[j] = Math.max(-127, Math.min(127, Math.sign(xj / scale) * Math.round(Math.abs(xj / scale))))));
  return { q, scale };
}

/** Checks one encoded row at `at` against its f32 source; returns an error or ''. */
function checkRow(dv: DataView, at: number, src: Float32Array, dtype: DType, scaleAt: number): string {
  if (dtype === 'q4') {
    // §7.2 q4: per group of 32, an f16 scale (the nearest half to min(f32(m / 7), 65504)) at scaleAt + 2g;
    // byte 16g + j = q[32g + j] (low nibble) | q[32g + 16 + j] << 4, 4-bit two's complement, nibbles past the row 0
    for (let g = 0; g * 32 < src.length; g++) {
      const grp = src.subarray(g * 32, (g + 1) * 32);
      let m = 0;
      for (const v of grp) m = Math.max(m, Math.abs(v));
      const want = Math.min(Math.fround(m / 7), 65504);
      const h = dv.getUint16(scaleAt + 2 * g, true), s = f16ToF32(h);
      for (const n of [h - 1, h + 1]) if (n >= 0 && (n & 0x7fff) < 0x7c00 && Math.abs(f16ToF32(n) - want) < Math.abs(s - want)) return `group ${g} scale not nearest`;
      for (let j = 0; j < 32; j++) {
        const byte = dv.getUint8(at + 16 * g + (j % 16));
        const nib = j < 16 ? byte & 15 : byte >> 4;
        const q = nib >= 8 ? nib - 16 : nib;
        const v = j < grp.length && s !== 0 ? grp[j]! / s : 0;
        const wantQ = j < grp.length ? Math.max(-7, Math.min(7, Math.sign(v) * Math.round(Math.abs(v)))) : 0;
        if (q !== wantQ) return `q[${g * 32 + j}] ${q} != ${wantQ}`;
      }
    }
    return '';
  }
  if (dtype === 'q8') {
    // §7.2 q8: each group of 32 (the last may be shorter) quantized as an int8 row, its scale at scaleAt + 4g
    for (let g = 0; g * 32 < src.length; g++) {
      const { q, scale } = quantize(src.subarray(g * 32, (g + 1) * 32));
      if (dv.getFloat32(scaleAt + 4 * g, true) !== scale) return `group ${g} scale ${dv.getFloat32(scaleAt + 4 * g, true)} != ${scale}`;
      for (let j = 0; j < q.length; j++) if (dv.getInt8(at + g * 32 + j) !== q[j]) return `q[${g * 32 + j}] ${dv.getInt8(at + g * 32 + j)} != ${q[j]}`;
    }
    return '';
  }
  if (dtype === 'int8') {
    const { q, scale } = quantize(src);
    if (dv.getFloat32(scaleAt, true) !== scale) return `scale ${dv.getFloat32(scaleAt, true)} != ${scale}`;
    for (let j = 0; j < src.length; j++) if (dv.getInt8(at + j) !== q[j]) return `q[${j}] ${dv.getInt8(at + j)} != ${q[j]}`;
    return '';
  }
  for (let j = 0; j < src.length; j++) {
    const x = src[j]!;
    if (dtype === 'f32') {
      if (dv.getFloat32(at + 4 * j, true) !== x) return `f32[${j}]`;
      continue;
    }
    const h = dv.getUint16(at + 2 * j, true);
    if ((h & 0x8000) !== (x < 0 ? 0x8000 : 0)) return `f16[${j}] sign`;
    const err = Math.abs(f16ToF32(h) - x);
    // Round to nearest: no neighbouring half of the same sign is closer.
    for (const n of [h - 1, h + 1]) if ((n & 0x8000) === (h & 0x8000) && (n & 0x7fff) < 0x7c00 && Math.abs(f16ToF32(n) - x) < err) return `f16[${j}] not nearest`;
  }
  return '';
}

const CASES: [string, 'opt' | 'llama', DType, Layout, Record<string, number>][] = [
  ['opt f16 bundled', 'opt', 'f16', 'bundled', {}],
  ['opt int8 split', 'opt', 'int8', 'split', {}],
  ['llama int8 bundled', 'llama', 'int8', 'bundled', {}],
  ['opt q8 bundled', 'opt', 'q8', 'bundled', {}],
  ['opt q8 split, d = 44 (a partial group)', 'opt', 'q8', 'split', { dModel: 44, embedDim: 44 }],
  ['llama q8 split, d = 44 (a partial group)', 'llama', 'q8', 'split', { dModel: 44, embedDim: 44 }],
  ['opt q4 bundled', 'opt', 'q4', 'bundled', {}],
  ['llama q4 split, d = 44 (a partial group)', 'llama', 'q4', 'split', { dModel: 44, embedDim: 44 }],
  // A vocabulary large enough for a multi-block resident section with a short last block.
  ['llama f32 split, 3 resident blocks', 'llama', 'f32', 'split', { vocabSize: 600 }],
];

for (const [title, type, dtype, layout, over] of CASES) {
  test(`doc rules read a ${title} file`, async (t) => {
    const ckpt = syntheticCheckpoint(syntheticArch(type, over), 3);
    const sink = new MemorySink();
    await writeFlm(ckpt, sink, { dtype, layout });
    const file = sink.bytes();
    const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
    const arch = ckpt.arch;

    // §4 preamble
    t.deepEqual([...file.subarray(0, 8)], [0x89, 0x46, 0x4c, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]);
    t.is(dv.getUint32(8, true), 1);
    const L = dv.getUint32(12, true);
    const headerBytes = file.subarray(32, 32 + L);
    t.is(h64Raw(headerBytes), dv.getBigUint64(16, true));
    t.deepEqual([...file.subarray(24, 32)], [0, 0, 0, 0, 0, 0, 0, 0]);
    // §5 header
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const h = unpack(headerBytes) as any;
    t.like(h, { format: 'flashlm', version: 1, dtype, layout, arch });

    // §6 placement: resident right after the header, then the FFN sections, then the table.
    t.deepEqual(h.sections.map((s: { name: string }) => s.name), ['resident', ...Array.from({ length: arch.nLayers }, (_, i) => `ffn.${i}`)]);
    let at = alignUp(32 + L, 4096);
    let blocks = 0;
    for (const s of h.sections) {
      t.like(s, { offset: at, firstBlock: blocks, blockCount: Math.ceil(s.length / s.blockBytes) });
      at = alignUp(s.offset + s.length, 4096);
      blocks += s.blockCount;
    }
    t.like(h.integrity, { algorithm: 'xxh64', offset: at, length: 8 * blocks });
    t.is(file.byteLength, at + 8 * blocks);

    // §7.1 resident placement and §7.2 values.
    const res = h.sections[0];
    const layers = Array.from({ length: arch.nLayers }, (_, i) =>
      ['attn_norm.weight', 'attn_norm.bias', 'wq', 'bq', 'wk', 'bk', 'wv', 'bv', 'wo', 'bo', 'ffn_norm.weight', 'ffn_norm.bias', 'ffn_down_bias'].map((n) => `layers.${i}.${n}`),
    ).flat();
    const order = ['tok_embeddings', 'pos_embeddings', 'project_in', 'project_out', ...layers, 'final_norm.weight', 'final_norm.bias', 'lm_head'].filter((n) => ckpt.tensors.has(n));
    let rel = 0;
    const expected = order.map((name) => {
      const shape = [...ckpt.tensors.get(name)!];
      const tdtype: DType = shape.length === 2 ? dtype : 'f32';
      rel = alignUp(rel, 64);
      const e: Record<string, unknown> = { name, dtype: tdtype, shape, offset: res.offset + rel, length: shape.length === 2 ? shape[0]! * rowBytes(tdtype, shape[1]!) : shape[0]! * 4 };
      rel += e.length as number;
      if (tdtype === 'int8' || tdtype === 'q8' || tdtype === 'q4') {
        rel = alignUp(rel, 64);
        e.scalesOffset = res.offset + rel;
        rel += shape[0]! * (tdtype === 'q4' ? 2 * groups(shape[1]!) : 4 * (tdtype === 'q8' ? groups(shape[1]!) : 1));
      }
      return e;
    });
    t.deepEqual(h.tensors, expected);
    t.like(res, { length: Math.max(rel, 1), blockBytes: 65536 });
    for (const te of h.tensors) {
      const src = ckpt.values.get(te.name)!;
      const [rows, cols] = te.shape.length === 2 ? te.shape : [1, te.shape[0]];
      for (let r = 0; r < rows; r++) {
        const scaleAt = (te.scalesOffset ?? 0) + (te.dtype === 'q4' ? 2 * r * groups(cols) : 4 * r * (te.dtype === 'q8' ? groups(cols) : 1));
        const err = checkRow(dv, te.offset + r * rowBytes(te.dtype, cols), src.subarray(r * cols, (r + 1) * cols), te.dtype, scaleAt);
        if (err) return t.fail(`${te.name} row ${r}: ${err}`);
      }
    }

    // §8: a neuron's parts at section.offset + partOffsets[p] + i * stride, from the doc's formulas.
    const parts = arch.activation === 'swiglu' ? ['gate', 'up', 'down'] : ['up', 'down'];
    const N = arch.ffnDim;
    const d = arch.dModel;
    const g = geometry(d, dtype, arch.ffnBias, layout, parts.length, N);
    for (let l = 0; l < arch.nLayers; l++) {
      const f = h.ffn[l];
      t.like(f, { layer: l, layout, dtype, neurons: N, d, parts, partBytes: g.partBytes, stride: g.stride, partOffsets: g.partOffsets, scaleAt: g.scaleAt, biasAt: g.biasAt, hasBias: arch.ffnBias });
      const s = h.sections.find((x: { name: string }) => x.name === f.section);
      t.like(s, { length: N * parts.length * g.partBytes, blockBytes: g.blockBytes, blockCount: g.blockCount });
      const bias = ckpt.values.get(`layers.${l}.ffn_up_bias`);
      for (let i = 0; i < N; i++) {
        for (const [p, part] of parts.entries()) {
          const rec = s.offset + g.partOffsets[p]! + i * g.stride;
          const m = ckpt.values.get(`layers.${l}.ffn_${part}`)!;
          const src = part === 'down' ? Float32Array.from({ length: d }, (_, r) => m[r * N + i]!) : m.subarray(i * d, (i + 1) * d);
          const err = checkRow(dv, rec, src, dtype, rec + g.scaleAt);
          if (err) return t.fail(`layer ${l} neuron ${i} ${part}: ${err}`);
          if (arch.ffnBias) t.is(dv.getFloat32(rec + g.biasAt, true), part === 'up' ? bias![i]! : 0);
          const used = arch.ffnBias ? g.biasAt + 4 : dtype === 'int8' || dtype === 'q8' ? g.biasAt : dtype === 'q4' ? g.scaleAt + 2 * groups(d) : g.values;
          if (file.subarray(rec + used, rec + g.partBytes).some((b) => b !== 0)) return t.fail(`layer ${l} neuron ${i} ${part}: padding not zero`);
          if (file.subarray(rec + g.values, rec + g.scaleAt).some((b) => b !== 0)) return t.fail(`layer ${l} neuron ${i} ${part}: alignment gap not zero`);
        }
      }
    }

    // §9 integrity: every block, every section hash, the table hash.
    const table = file.subarray(h.integrity.offset, h.integrity.offset + h.integrity.length);
    const tv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (const s of h.sections) {
      for (let b = 0; b < s.blockCount; b++) {
        const block = file.subarray(s.offset + b * s.blockBytes, s.offset + Math.min((b + 1) * s.blockBytes, s.length));
        if (h64Raw(block) !== tv.getBigUint64(8 * (s.firstBlock + b), true)) return t.fail(`${s.name} block ${b}`);
      }
      t.is(s.hash, hex(table.subarray(8 * s.firstBlock, 8 * (s.firstBlock + s.blockCount))));
    }
    t.is(h.integrity.hash, hex(table));
    if (over.vocabSize) t.true(res.blockCount >= 3 && res.length % 65536 !== 0, 'multi-block resident with a short tail');

    // §9.1: an arbitrary read (each resident tensor) expands to whole blocks that verify.
    for (const te of h.tensors) {
      const rel0 = te.offset - res.offset;
      const first = Math.floor(rel0 / 65536);
      const last = Math.floor((rel0 + te.length - 1) / 65536);
      const start = res.offset + first * 65536;
      const end = res.offset + Math.min((last + 1) * 65536, res.length);
      t.true(start <= te.offset && te.offset + te.length <= end);
      for (let b = first, p = start; b <= last; b++, p += 65536) {
        t.is(h64Raw(file.subarray(p, Math.min(p + 65536, end))), tv.getBigUint64(8 * (res.firstBlock + b), true));
      }
    }
  });
}

test('the worked examples, magic and xxh64 check values in the doc are right', (t) => {
  t.true(DOC.includes('`89 46 4C 4D 0D 0A 1A 0A`'));
  t.true(DOC.includes(`\`xxh64("") = ${hex(new Uint8Array(0))}\``));
  t.true(DOC.includes(`\`xxh64("abc") = ${hex(new TextEncoder().encode('abc'))}\``));
  const examples: [DType, boolean, string[], number][] = [
    ['f16', true, ['up', 'down'], 16384], // §8.4 OPT-6.7B-like
    ['int8', false, ['gate', 'up', 'down'], 11008], // §8.5 Llama-2-7B-like
  ];
  for (const [dtype, hasBias, parts, N] of examples) {
    const ref = partGeometry(4096, dtype, hasBias);
    for (const layout of ['bundled', 'split'] as const) {
      const g = geometry(4096, dtype, hasBias, layout, parts.length, N);
      t.like(g, ref);
      t.true(DOC.includes(`| ${layout} | ${g.stride} | ${g.partOffsets.join(', ')} | ${g.blockBytes} | ${g.blockCount} |`), `${dtype} ${layout} row`);
      const row = DOC.split('\n').find((line) => line.startsWith(`| ${layout} | ${g.stride} |`))!;
      parts.forEach((part, p) => {
        t.true(row.includes(`${part} at +${g.partOffsets[p]! + 1000 * g.stride}`), `${dtype} ${layout} neuron 1000 ${part}`);
        if (layout === 'split') t.true(row.includes(`(block ${p * N + 1000})`));
      });
    }
    t.true(DOC.includes(`| partBytes | alignUp(${ref.biasAt + (hasBias ? 4 : 0)}, 16) = ${ref.partBytes}`));
    t.true(DOC.includes(`= ${N * parts.length * ref.partBytes} |`));
  }
});

test('header integers: ≥ 2^32 is written as float64; uint64 and float64 are both read', async (t) => {
  t.is(headerPackr.pack(2 ** 32 - 1)[0], 0xce);
  t.is(headerPackr.pack(2 ** 32)[0], 0xcb);
  const sink = new MemorySink();
  await writeFlm(syntheticCheckpoint(syntheticArch('opt'), 1), sink, { dtype: 'f16', layout: 'bundled' });
  const file = sink.bytes();
  const header = file.subarray(32, 32 + new DataView(file.buffer, file.byteOffset).getUint32(12, true));
  // Re-encode every `offset` value as uint64 (0xcf) or float64 (0xcb), alternately.
  const key = [0xa6, ...new TextEncoder().encode('offset')];
  const out: number[] = [];
  let widened = 0;
  for (let i = 0; i < header.length; ) {
    if (key.every((b, k) => header[i + k] === b) && (header[i + 7] === 0xcd || header[i + 7] === 0xce)) {
      const n = header[i + 7] === 0xcd ? 2 : 4;
      const v = header.subarray(i + 8, i + 8 + n).reduce((a, b) => a * 256 + b, 0);
      const w = new DataView(new ArrayBuffer(9));
      if (widened++ % 2) (w.setUint8(0, 0xcb), w.setFloat64(1, v));
      else (w.setUint8(0, 0xcf), w.setBigUint64(1, BigInt(v)));
      out.push(...key, ...new Uint8Array(w.buffer));
      i += 8 + n;
    } else out.push(header[i++]!);
  }
  t.true(widened > 4);
  t.deepEqual(decodeHeader(Uint8Array.from(out), file.byteLength), decodeHeader(header, file.byteLength));
});
