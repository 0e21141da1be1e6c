/**
 * 4-bit weights (dtype q4, docs/FORMAT.md §7.2): the kernels (assembly/q4.ts)
 * against a TypeScript reference written from the byte layout (a group of 32
 * values in 16 bytes, byte j: value j in the low nibble, value j+16 in the high
 * one, 4-bit two's complement; one f16 scale per group), odd shapes, d > 32768,
 * 1 vs 2 threads byte for byte, the writer/reader round trip, the fixtures end
 * to end, and the refusal of a dtype a reader does not know.
 *
 * Tolerances as test/kernels.test.ts: dequantization bit-exact; dots within
 * F32_REL of sum|terms| plus the exact bound of the int16 activation
 * quantization (per 128-column block: |x - x^| <= max|x| / 65534).
 */

import test, { type ExecutionContext } from 'ava';
import { createArena, loadKernels, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL } from '../src/kernels/load.js';
import { createPool, poolBytes, type KernelPool } from '../src/kernels/pool.js';
import { mirror, sameOnPools } from './helpers/mirror.js';
import type { Kernels } from '../src/kernels/types.js';
import { encodeQ4Row, f16BitsToF32, f32ToF16Bits, q4Groups, q4RowBytes } from '../src/kernels/quant.js';
import { partGeometry, type FlmHeader } from '../src/format/layout.js';
import { openFlm } from '../src/format/reader.js';
import { writeFlm } from '../src/format/writer.js';
import type { DType } from '../src/format/types.js';
import { readFfnPart } from '../src/calibrate/weights.js';
import { openCheckpoint } from '../src/convert/index.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { openModel } from '../src/model.js';
import { FormatError } from '../src/errors.js';
import { Arena, rng, uniform, normalish, firstMismatch, firstBitMismatch, quantErrBound, dot64, downRef, F32_REL, silu64, deqMatvecRef } from './helpers/kernel-reference.js';
import { STORIES_BIN, STORIES_TOK, OPT_DIR } from './helpers/models.js';
import { withHeader } from './helpers/header.js';

let k: Kernels;
let A: Arena;

test.before(async () => {
  k = await loadKernels(createArena(160 << 20));
  A = new Arena(k);
});

// ---------------------------------------------------------------- reference (from the spec, not from quant.ts's decoder)

/** Value c of a q4 row: nibble (c mod 32 < 16: low, else high) of byte 16*floor(c/32) + c mod 16, sign-extended, times the group's f16 scale. */
function refValue(bytes: Uint8Array, scales: Uint16Array, c: number): number {
  const g = Math.floor(c / 32), j = c % 32;
  const byte = bytes[16 * g + (j % 16)]!;
  const nib = j < 16 ? byte & 15 : byte >> 4;
  return Math.fround((nib >= 8 ? nib - 16 : nib) * f16BitsToF32(scales[g]!));
}

interface Q4Matrix { rows: number; cols: number; bytes: Uint8Array; scales: Uint16Array; deq: Float32Array }

function quantizeQ4(w: Float32Array, rows: number, cols: number): Q4Matrix {
  const rb = q4RowBytes(cols), G = q4Groups(cols);
  const bytes = new Uint8Array(rows * rb), scales = new Uint16Array(rows * G), deq = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const b = bytes.subarray(r * rb, (r + 1) * rb), s = scales.subarray(r * G, (r + 1) * G);
    encodeQ4Row(w.subarray(r * cols, (r + 1) * cols), b, s);
    for (let c = 0; c < cols; c++) deq[r * cols + c] = refValue(b, s, c);
  }
  return { rows, cols, bytes, scales, deq };
}

/** W x + bias in float64 with per-row tolerances (f32 rounding + x quantization, unless xExact). */
const matvecRef = (m: Q4Matrix, x: Float32Array, bias: Float32Array | null, xExact = false) => deqMatvecRef(m, x, bias, !xExact);

// ---------------------------------------------------------------- encoding and dequantization

test('encodeQ4Row: f16 scale = max|x| / 7 per group of 32, |q| <= 7, error <= scale / 2, padding nibbles 0', (t) => {
  const r = rng(1);
  for (const n of [1, 5, 16, 17, 31, 32, 33, 64, 100, 269]) {
    const x = normalish(r, n, 0.7);
    if (n > 40) x.fill(0, 32, 64); // an all-zero group: scale 0, values 0
    const m = quantizeQ4(x, 1, n);
    t.is(m.bytes.length, 16 * Math.ceil(n / 32));
    for (let g = 0; g < q4Groups(n); g++) {
      let max = 0;
      for (let c = 32 * g; c < Math.min(n, 32 * g + 32); c++) max = Math.max(max, Math.abs(x[c]!));
      t.is(m.scales[g], f32ToF16Bits(Math.fround(max / 7)), `n=${n} group ${g} scale`);
      const s = f16BitsToF32(m.scales[g]!);
      for (let c = 32 * g; c < Math.min(n, 32 * g + 32); c++) {
        t.true(Math.abs(m.deq[c]!) <= 7 * s, 'within 7 scales');
        t.true(Math.abs(m.deq[c]! - x[c]!) <= s / 2 + Math.abs(max / 7 - s) * 7 + 1e-7, `n=${n} c=${c}: ${m.deq[c]} vs ${x[c]}`);
      }
    }
    // values past n in the last group are zero nibbles
    for (let c = n; c < 32 * q4Groups(n); c++) {
      const byte = m.bytes[16 * Math.floor(c / 32) + (c % 16)]!;
      t.is((c % 32 < 16 ? byte & 15 : byte >> 4), 0, `padding nibble ${c}`);
    }
  }
  // overflow: scales clamp to the largest finite half, values clamp to +-7
  const big = quantizeQ4(new Float32Array([1e6, -3e5, 1]), 1, 3);
  t.is(f16BitsToF32(big.scales[0]!), 65504);
  t.is(big.deq[0], 7 * 65504);
});

test('dequant_q4 is bit-exact: q * f16 scale, partial last group, unaligned pointers', (t) => {
  const r = rng(2);
  for (const [n, mis] of [[1, 0], [15, 1], [31, 2], [32, 3], [33, 1], [100, 0], [256 + 13, 2], [4096, 1]] as const) {
    A.reset();
    const m = quantizeQ4(normalish(r, n, 2), 1, n);
    const dst = A.out(n, mis);
    k.dequant_q4(dst, A.putBytes(m.bytes, mis), A.putBytes(m.scales, 3 - mis), n);
    t.is(firstBitMismatch(A.f32(dst, n), m.deq), null, `n=${n}`);
  }
});

// ---------------------------------------------------------------- matvec

test('matvec_q4 against the reference: odd rows and cols (partial groups, 1-3 leftover groups), bias, unaligned', (t) => {
  const r = rng(3);
  for (const rows of [1, 3, 8, 13, 37]) {
    for (const cols of [1, 7, 31, 32, 33, 64, 96, 100, 128, 129, 300, 1000]) {
      A.reset();
      const m = quantizeQ4(normalish(r, rows * cols, 0.5), rows, cols);
      const x = normalish(r, cols);
      const bias = rows % 2 ? uniform(r, rows) : null;
      const O = A.out(rows, 1);
      const scratch = A.alloc(k.matvec_i8_scratch_bytes(cols));
      k.matvec_q4(O, A.putBytes(m.bytes, 2), A.putBytes(m.scales, 1), A.putF32(x, 3), bias ? A.putF32(bias) : 0, rows, cols, scratch);
      const ref = matvecRef(m, x, bias);
      t.is(firstMismatch(A.f32(O, rows), ref.want, ref.tol), null, `rows=${rows} cols=${cols}`);
    }
  }
});

// ---------------------------------------------------------------- FFN records

interface Records { bytes: Uint8Array; partOff: number[]; stride: number; partBytes: number; deq: Float32Array[]; bias: Float32Array | null }

/** q4 part records by the file's geometry (partGeometry); garbage in the alignment gaps and non-up bias slots. */
function buildQ4Records(parts: Float32Array[], bias: Float32Array | null, d: number, n: number, bundled: boolean, upPart: number, r: () => number): Records {
  const geo = partGeometry(d, 'q4', bias !== null);
  const P = parts.length, pb = geo.partBytes, stride = bundled ? P * pb : pb;
  const bytes = new Uint8Array(P * n * pb);
  const dv = new DataView(bytes.buffer);
  const partOff = parts.map((_, p) => (bundled ? p * pb : p * n * pb));
  const deq = parts.map(() => new Float32Array(n * d));
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < n; i++) {
      const at = partOff[p]! + i * stride;
      for (let j = at; j < at + pb; j++) bytes[j] = (r() * 256) | 0; // gaps: garbage the kernels must not read
      const m = quantizeQ4(parts[p]!.subarray(i * d, (i + 1) * d), 1, d);
      bytes.set(m.bytes, at);
      for (let g = 0; g < m.scales.length; g++) dv.setUint16(at + geo.scaleAt + 2 * g, m.scales[g]!, true);
      deq[p]!.set(m.deq, i * d);
      if (bias) dv.setFloat32(at + geo.biasAt, p === upPart ? bias[i]! : (r() - 0.5) * 1e3, true);
    }
  }
  return { bytes, partOff, stride, partBytes: pb, deq, bias };
}

const ACT = ['silu', 'relu', 'fatrelu', 'drelu'] as const;

/** FFN in float64 on the dequantized records, relu (ungated) or gated with activation code afn; tolerances propagated as kernel-reference's ffnRef. */
function ffnRefQ4(gated: boolean, afn: number, athr: number, R: Records, x: Float32Array, d: number, n: number, xExact: boolean) {
  const qe = xExact ? null : quantErrBound(x);
  const dotErr = (part: Float32Array, i: number, abs: number): number => {
    let e = F32_REL * abs + 1e-30;
    if (qe) for (let j = 0; j < d; j++) e += Math.abs(part[i * d + j]!) * qe[j]!;
    return e;
  };
  const gateHalf = (g: number) => (afn === 0 ? silu64(g) : afn === 2 ? (g > athr ? g : 0) : Math.max(g, 0));
  const h = new Float64Array(n), hTol = new Float64Array(n);
  const down = R.deq[R.deq.length - 1]!;
  for (let i = 0; i < n; i++) {
    if (!gated) {
      const { v, abs } = dot64(R.deq[0]!, i * d, x, d);
      const b = R.bias ? R.bias[i]! : 0;
      h[i] = Math.max(0, v + b);
      hTol[i] = dotErr(R.deq[0]!, i, abs) + F32_REL * Math.abs(b);
    } else {
      const g = dot64(R.deq[0]!, i * d, x, d), u = dot64(R.deq[1]!, i * d, x, d);
      const eg = dotErr(R.deq[0]!, i, g.abs), eu = dotErr(R.deq[1]!, i, u.abs);
      const uv = afn === 3 ? Math.max(u.v, 0) : u.v;
      h[i] = gateHalf(g.v) * uv;
      hTol[i] = 1.1 * eg * (Math.abs(uv) + eu) + Math.abs(gateHalf(g.v)) * eu + F32_REL * Math.abs(h[i]!);
      // FATReLU jumps at the threshold: a gate within its error of it may land on either side
      if (afn === 2 && Math.abs(g.v - athr) <= eg) hTol[i] += (Math.abs(g.v) + eg) * (Math.abs(uv) + eu);
    }
  }
  return { h, hTol, ...downRef(h, hTol, down, n, d) };
}

/** u32 pointer table [n][P] of the records' parts (absolute arena addresses). */
function ptrTable(R: Records, base: number, n: number, P: number, order?: number[]): Uint32Array {
  const ids = order ?? Array.from({ length: n }, (_, i) => i);
  const t = new Uint32Array(ids.length * P);
  ids.forEach((i, row) => { for (let p = 0; p < P; p++) t[row * P + p] = base + R.partOff[p]! + i * R.stride; });
  return t;
}

test('ffn_relu_q4 / ffn_swiglu_q4 (every activation) against the reference; the _ptrs forms are bit-identical', (t) => {
  const r = rng(4);
  const shapes: [number, number][] = [[16, 5], [44, 70], [100, 130], [257, 64], [512, 200]];
  for (const [d, n] of shapes) {
    for (const bundled of [true, false]) {
      for (const gated of [false, true]) {
        for (const afn of gated ? [0, 1, 2, 3] : [0]) {
          A.reset();
          const P = gated ? 3 : 2;
          const parts = Array.from({ length: P }, () => normalish(r, n * d, 0.2));
          const bias = gated ? null : uniform(r, n, -0.3, 0.3);
          const R = buildQ4Records(parts, bias, d, n, bundled, gated ? 1 : 0, r);
          const base = A.putBytes(R.bytes);
          const p = R.partOff.map((o) => base + o);
          const x = normalish(r, d);
          const X = A.putF32(x, 1), O = A.out(d), H = A.out(n);
          const athr = 0.05;
          if (gated) k.ffn_swiglu_q4(O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, afn, athr);
          else k.ffn_relu_q4(O, X, d, n, p[0]!, p[1]!, R.stride, 1, H);
          const ref = ffnRefQ4(gated, afn, athr, R, x, d, n, false);
          const what = `d=${d} n=${n} ${bundled ? 'bundled' : 'split'} ${gated ? ACT[afn] : 'relu'}`;
          t.is(firstMismatch(A.f32(H, n), ref.h, ref.hTol), null, `${what} h`);
          t.is(firstMismatch(A.f32(O, d), ref.out, ref.outTol), null, `${what} out`);
          // pointer tables over the same records: the same bits
          const T = A.putBytes(ptrTable(R, base, n, P));
          const O2 = A.out(d), H2 = A.out(n);
          if (gated) k.ffn_swiglu_q4_ptrs(O2, X, d, T, n, H2, afn, athr);
          else k.ffn_relu_q4_ptrs(O2, X, d, T, n, 1, H2);
          t.is(firstBitMismatch(A.f32(O2, d), A.f32(O, d)), null, `${what} ptrs out`);
          t.is(firstBitMismatch(A.f32(H2, n), A.f32(H, n)), null, `${what} ptrs h`);
        }
      }
    }
  }
});

test('q4 FFNs with d > 32768 (no room to quantize x) use exact f32 products', (t) => {
  for (const gated of [false, true]) {
    A.reset();
    const r = rng(gated ? 5 : 6);
    const d = 33001, n = 9, P = gated ? 3 : 2;
    const R = buildQ4Records(Array.from({ length: P }, () => normalish(r, n * d, 0.05)), gated ? null : uniform(r, n, -0.1, 0.1), d, n, false, gated ? 1 : 0, r);
    const base = A.putBytes(R.bytes);
    const p = R.partOff.map((o) => base + o);
    const x = normalish(r, d);
    const X = A.putF32(x), O = A.out(d), H = A.out(n);
    if (gated) k.ffn_swiglu_q4(O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, 0, 0);
    else k.ffn_relu_q4(O, X, d, n, p[0]!, p[1]!, R.stride, 1, H);
    const ref = ffnRefQ4(gated, 0, 0, R, x, d, n, true);
    t.is(firstMismatch(A.f32(H, n), ref.h, ref.hTol), null, `${gated ? 'gated' : 'relu'} h`);
    t.is(firstMismatch(A.f32(O, d), ref.out, ref.outTol), null, `${gated ? 'gated' : 'relu'} out`);
  }
});

test('gate_act_q4 and ffn_gated_q4_ptrs (gate mode) against the reference and the fused kernel', (t) => {
  const r = rng(7);
  for (const [d, n] of [[44, 70], [300, 150]] as const) {
    for (const afn of [0, 1, 2, 3]) {
      A.reset();
      const R = buildQ4Records([normalish(r, n * d, 0.2), normalish(r, n * d, 0.2), normalish(r, n * d, 0.2)], null, d, n, true, 1, r);
      const base = A.putBytes(R.bytes);
      const x = normalish(r, d);
      const X = A.putF32(x);
      const act = A.out(n);
      k.gate_act_q4(act, X, d, n, base + R.partOff[0]!, R.stride, afn, 0.05);
      const gates = A.f32(act, n);
      for (let i = 0; i < n; i++) {
        const g = dot64(R.deq[0]!, i * d, x, d);
        const want = afn === 0 ? silu64(g.v) : afn === 2 ? (g.v > 0.05 ? g.v : 0) : Math.max(g.v, 0);
        let tol = 1.1 * (F32_REL * g.abs + R.deq[0]!.subarray(i * d, (i + 1) * d).reduce((s, w, j) => s + Math.abs(w) * quantErrBound(x)[j]!, 0)) + 1e-30;
        if (afn === 2 && Math.abs(g.v - 0.05) <= tol) tol += Math.abs(g.v) + tol;
        t.true(Math.abs(gates[i]! - want) <= tol, `d=${d} ${ACT[afn]} gate ${i}: ${gates[i]} vs ${want}`);
      }
      // every neuron listed: (up, down) pairs; equals the fused FFN's h and out within rounding
      const pairs = new Uint32Array(n * 2);
      for (let i = 0; i < n; i++) { pairs[2 * i] = base + R.partOff[1]! + i * R.stride; pairs[2 * i + 1] = base + R.partOff[2]! + i * R.stride; }
      const O = A.out(d), H = A.out(n);
      k.ffn_gated_q4_ptrs(O, X, d, A.putBytes(pairs), n, act, H, afn, 0.05);
      const ref = ffnRefQ4(true, afn, 0.05, R, x, d, n, false);
      t.is(firstMismatch(A.f32(H, n), ref.h, ref.hTol), null, `d=${d} ${ACT[afn]} gated h`);
      t.is(firstMismatch(A.f32(O, d), ref.out, ref.outTol), null, `d=${d} ${ACT[afn]} gated out`);
    }
  }
});

// ---------------------------------------------------------------- batched (prompt) kernels: bit for bit the one-token ones

/** T token rows of `cols` f32 at ldx = (cols + pad) * 4 bytes. */
function tokenRows(r: () => number, T: number, cols: number, pad: number): { ptr: number; ld: number } {
  const all = new Float32Array(T * (cols + pad));
  for (let tk = 0; tk < T; tk++) all.set(normalish(r, cols), tk * (cols + pad));
  return { ptr: A.putF32(all, 4), ld: (cols + pad) * 4 };
}

test('matmul_q4 equals matvec_q4 per token, bit for bit (partial groups, 1-3 leftover groups, odd T, bias)', (t) => {
  const r = rng(21);
  for (const [rows, cols] of [[1, 1], [3, 31], [9, 33], [13, 129], [17, 300], [37, 260], [64, 768], [20, 2049]] as const) {
    for (const T of [1, 2, 5, 8]) {
      A.reset();
      const m = quantizeQ4(normalish(r, rows * cols, 0.3), rows, cols);
      const W = A.putBytes(m.bytes, 2), S = A.putBytes(m.scales, 1);
      const bias = T % 2 ? A.putF32(uniform(r, rows)) : 0;
      const X = tokenRows(r, T, cols, T % 3);
      const ldo = (rows + 3) * 4, out = A.out(T * (rows + 3));
      k.matmul_q4(out, ldo, W, S, X.ptr, X.ld, bias, T, rows, cols, A.alloc(k.batch_scratch_bytes(T, cols)));
      const one = A.out(rows), i8s = A.alloc(k.matvec_i8_scratch_bytes(cols));
      for (let tk = 0; tk < T; tk++) {
        k.matvec_q4(one, W, S, X.ptr + tk * X.ld, bias, rows, cols, i8s);
        t.is(firstBitMismatch(A.f32(out + tk * ldo, rows), A.f32(one, rows)), null, `${rows}x${cols} T=${T} token ${tk}`);
      }
    }
  }
});

test('ffn_relu_q4_batch / ffn_swiglu_q4_batch equal the one-token q4 FFNs per token, bit for bit (sparse relu, every gated activation)', (t) => {
  const r = rng(22);
  let zeros = 0;
  for (const [d, n] of [[16, 5], [44, 70], [100, 130], [257, 64], [300, 200]] as const) {
    for (const gated of [false, true]) {
      for (const afn of gated ? [0, 1, 2, 3] : [0]) {
        for (const T of [1, 3, 6]) {
          A.reset();
          const P = gated ? 3 : 2;
          const bias = gated ? null : uniform(r, n, -0.3, 0.1);
          const R = buildQ4Records(Array.from({ length: P }, () => normalish(r, n * d, 0.2)), bias, d, n, (d + n) % 2 === 0, gated ? 1 : 0, r);
          const base = A.putBytes(R.bytes);
          const p = R.partOff.map((o) => base + o);
          const X = tokenRows(r, T, d, 1);
          const ldo = (d + 2) * 4, out = A.out(T * (d + 2));
          const scratch = A.alloc(k.batch_scratch_bytes(T, d)), Hb = A.alloc(T * n * 4);
          const athr = 0.05;
          if (gated) k.ffn_swiglu_q4_batch(out, ldo, X.ptr, X.ld, T, d, n, p[0]!, p[1]!, p[2]!, R.stride, Hb, scratch, afn, athr);
          else k.ffn_relu_q4_batch(out, ldo, X.ptr, X.ld, T, d, n, p[0]!, p[1]!, R.stride, 1, Hb, scratch);
          const one = A.out(d), H = A.out(n);
          for (let tk = 0; tk < T; tk++) {
            const x = X.ptr + tk * X.ld;
            if (gated) k.ffn_swiglu_q4(one, x, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, afn, athr);
            else k.ffn_relu_q4(one, x, d, n, p[0]!, p[1]!, R.stride, 1, H);
            zeros += A.f32(H, n).filter((v) => v === 0).length;
            const what = `d=${d} n=${n} ${gated ? ACT[afn] : 'relu'} T=${T} token ${tk}`;
            t.is(firstBitMismatch(A.f32(Hb + tk * n * 4, n), A.f32(H, n)), null, `${what} h`);
            t.is(firstBitMismatch(A.f32(out + tk * ldo, d), A.f32(one, d)), null, `${what} out`);
          }
        }
      }
    }
  }
  t.true(zeros > 0, 'some activations are 0 (skipped down rows, irregular queues)');
});

/** What a two-module test gets: `put` copies bytes into both arenas (after `reset`), `out` reserves an output, `same` runs a call on one thread and on the pool of 2 and compares outputs byte for byte. */
interface TwoModules {
  reset(): void;
  put(src: ArrayBufferView, misalign?: number): number;
  out(n: number): number;
  same(what: string, outputs: [number, number][], call: (kk: Kernels) => void): void;
  st: Kernels;
}

/** The single-threaded module and the threaded one on a pool of 2, with the same data in both arenas. */
async function twoModules(t: ExecutionContext, batch: { T: number; cols: number } | undefined, body: (m: TwoModules) => void): Promise<void> {
  const ARENA = 64 << 20, DATA = 16 << 20;
  const st = await loadKernels(createArena(ARENA), DEFAULT_WASM_URL);
  const mt = await loadKernels(createArena(ARENA, { shared: true }), DEFAULT_MT_WASM_URL);
  const limits = { maxPositions: 64, maxNeurons: 2048, maxDim: 1024, ...(batch ? { batchScratchBytes: mt.batch_scratch_bytes(batch.T, batch.cols) } : {}) };
  const region = Math.ceil(mt.heap_base() / 64) * 64;
  t.true(region + poolBytes(mt, 2, limits) < DATA);
  const pool: KernelPool = await createPool(mt, { threads: 2, region, ...limits, minWork: 0 });
  try {
    t.is(pool.threads, 2, pool.fallbackReason ?? '');
    const m = mirror(st, mt, DATA);
    const same = (what: string, outputs: [number, number][], call: (kk: Kernels) => void) => sameOnPools(t, m, st, new Map([[2, pool]]), what, outputs, call);
    body({ reset: m.reset, put: m.put, out: m.out, same, st });
  } finally {
    await pool.close();
  }
}

test.serial('batched q4 kernels: 2 threads byte-identical to the single-threaded module', (t) =>
  twoModules(t, { T: 7, cols: 1100 }, ({ reset, put, out, same, st }) => {
    const r = rng(23);
    for (const [rows, cols, T] of [[203, 77, 3], [64, 1100, 7]] as const) {
      reset();
      const m = quantizeQ4(normalish(r, rows * cols, 0.3), rows, cols);
      const W = put(m.bytes), S = put(m.scales), X = put(normalish(r, T * cols)), B = put(uniform(r, rows));
      const scratch = put(new Uint8Array(st.batch_scratch_bytes(T, cols)));
      const O = out(T * rows);
      same(`matmul_q4 ${rows}x${cols} T=${T}`, [[O, T * rows]], (kk) => kk.matmul_q4(O, rows * 4, W, S, X, cols * 4, B, T, rows, cols, scratch));
    }
    for (const [d, n, T] of [[100, 300, 5], [257, 200, 2]] as const) {
      for (const gated of [false, true]) {
        reset();
        const P = gated ? 3 : 2;
        const R = buildQ4Records(Array.from({ length: P }, () => normalish(r, n * d, 0.2)), gated ? null : uniform(r, n, -0.3, 0.1), d, n, true, gated ? 1 : 0, r);
        const base = put(R.bytes);
        const p = R.partOff.map((o) => base + o);
        const X = put(normalish(r, T * d)), O = out(T * d), H = out(T * n);
        const scratch = put(new Uint8Array(st.batch_scratch_bytes(T, d)));
        const what = `d=${d} n=${n} T=${T} ${gated ? 'gated' : 'relu'}`;
        if (gated) same(`ffn_swiglu_q4_batch ${what}`, [[O, T * d], [H, T * n]], (kk) => kk.ffn_swiglu_q4_batch(O, d * 4, X, d * 4, T, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, scratch, 0, 0));
        else same(`ffn_relu_q4_batch ${what}`, [[O, T * d], [H, T * n]], (kk) => kk.ffn_relu_q4_batch(O, d * 4, X, d * 4, T, d, n, p[0]!, p[1]!, R.stride, 1, H, scratch));
      }
    }
  }));

// ---------------------------------------------------------------- threads: byte-identical to one thread

test.serial('q4 kernels: 2 threads byte-identical to the single-threaded module', (t) =>
  twoModules(t, undefined, ({ reset, put, out, same, st }) => {
    const r = rng(8);
    for (const [rows, cols] of [[203, 77], [64, 129], [1000, 300], [24, 40000]] as const) {
      reset();
      const m = quantizeQ4(normalish(r, rows * cols, 0.3), rows, cols);
      const W = put(m.bytes), S = put(m.scales), X = put(normalish(r, cols)), B = put(uniform(r, rows));
      const scratch = put(new Uint8Array(st.matvec_i8_scratch_bytes(cols)));
      const O = out(rows);
      same(`matvec_q4 ${rows}x${cols}`, [[O, rows]], (kk) => kk.matvec_q4(O, W, S, X, B, rows, cols, scratch));
    }
    for (const [d, n] of [[100, 300], [257, 200]] as const) {
      for (const gated of [false, true]) {
        reset();
        const P = gated ? 3 : 2;
        const R = buildQ4Records(Array.from({ length: P }, () => normalish(r, n * d, 0.2)), gated ? null : uniform(r, n, -0.3, 0.3), d, n, true, gated ? 1 : 0, r);
        const base = put(R.bytes);
        const p = R.partOff.map((o) => base + o);
        const X = put(normalish(r, d)), O = out(d), H = out(n);
        const what = `d=${d} n=${n} ${gated ? 'gated' : 'relu'}`;
        if (gated) {
          for (const afn of [0, 3]) same(`ffn_swiglu_q4 ${what} afn ${afn}`, [[O, d], [H, n]], (kk) => kk.ffn_swiglu_q4(O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, afn, 0));
          const T = put(ptrTable(R, base, n, 3, Array.from({ length: n }, (_, i) => (i * 7) % n)));
          same(`ffn_swiglu_q4_ptrs ${what}`, [[O, d], [H, n]], (kk) => kk.ffn_swiglu_q4_ptrs(O, X, d, T, n, H, 1, 0));
          const act = out(n);
          same(`gate_act_q4 ${what}`, [[act, n]], (kk) => kk.gate_act_q4(act, X, d, n, p[0]!, R.stride, 0, 0));
          const pairs = new Uint32Array(n * 2);
          for (let i = 0; i < n; i++) { pairs[2 * i] = p[1]! + i * R.stride; pairs[2 * i + 1] = p[2]! + i * R.stride; }
          const PT = put(pairs);
          same(`ffn_gated_q4_ptrs ${what}`, [[O, d], [H, n]], (kk) => kk.ffn_gated_q4_ptrs(O, X, d, PT, n, act, H, 0, 0));
        } else {
          same(`ffn_relu_q4 ${what}`, [[O, d], [H, n]], (kk) => kk.ffn_relu_q4(O, X, d, n, p[0]!, p[1]!, R.stride, 1, H));
          same(`ffn_relu_q4 ${what} (no hOut)`, [[O, d]], (kk) => kk.ffn_relu_q4(O, X, d, n, p[0]!, p[1]!, R.stride, 1, 0));
          const T = put(ptrTable(R, base, n, 2));
          same(`ffn_relu_q4_ptrs ${what}`, [[O, d], [H, n]], (kk) => kk.ffn_relu_q4_ptrs(O, X, d, T, n, 1, H));
        }
      }
    }
  }));

// ---------------------------------------------------------------- format

async function convert(input: string, tokenizer: string | undefined, dtype: DType, residentDtype?: DType, layout: 'bundled' | 'split' = 'bundled'): Promise<Uint8Array> {
  const ckpt = await openCheckpoint(input, { tokenizer });
  try {
    const sink = new MemorySink();
    await writeFlm(ckpt, sink, { dtype, layout, ...(residentDtype ? { residentDtype } : {}) });
    return sink.bytes();
  } finally {
    await ckpt.close();
  }
}

test('record geometry: q4 FFN records are at most 0.3x f16 for real widths (d = 4096: 2304 vs 8192 bytes)', (t) => {
  t.deepEqual(partGeometry(4096, 'q4', false), { partBytes: 2304, scaleAt: 2048, biasAt: 2304 });
  t.deepEqual(partGeometry(44, 'q4', true), { partBytes: 48, scaleAt: 32, biasAt: 36 });
  for (const d of [2048, 4096, 5120, 8192]) {
    for (const bias of [false, true]) t.true(partGeometry(d, 'q4', bias).partBytes / partGeometry(d, 'f16', bias).partBytes <= 0.3, `d=${d}`);
  }
});

test('writer/reader round trip: q4 FFN records and q4 / q8 / f16 resident tensors decode to encodeQ4Row of the source', async (t) => {
  for (const resident of [undefined, 'q8', 'f16'] as const) {
    for (const layout of ['bundled', 'split'] as const) {
      const bytes = await convert(STORIES_BIN, STORIES_TOK, 'q4', resident, layout);
      const file = await openFlm(new MemorySource(bytes));
      const h = file.header;
      t.is(h.dtype, 'q4');
      for (const f of h.ffn) {
        t.is(f.dtype, 'q4');
        t.deepEqual({ partBytes: f.partBytes, scaleAt: f.scaleAt, biasAt: f.biasAt }, partGeometry(h.arch.dModel, 'q4', f.hasBias));
      }
      for (const e of h.tensors) t.is(e.dtype, e.shape.length === 2 ? resident ?? 'q4' : 'f32', e.name);
      // FFN up rows of layer 1, read back through the verified reader, equal the reference decoding of the source rows
      const ckpt = await openCheckpoint(STORIES_BIN, { tokenizer: STORIES_TOK });
      try {
        const { dModel: d, ffnDim: n } = h.arch;
        const src = await ckpt.readRows('layers.1.ffn_up', 0, n);
        const got = await readFfnPart(file, 1, 'up');
        t.is(firstBitMismatch(got, quantizeQ4(src, n, d).deq), null, `${resident ?? 'q4'} ${layout} up rows`);
        const downSrc = await ckpt.readColumns('layers.1.ffn_down', 0, n);
        t.is(firstBitMismatch(await readFfnPart(file, 1, 'down'), quantizeQ4(downSrc, n, d).deq), null, `${resident ?? 'q4'} ${layout} down columns`);
        if (!resident) {
          // a q4 resident tensor: values then its f16 scales, as the layout says
          const e = h.tensors.find((x) => x.name === 'layers.0.wq')!;
          const [rows, cols] = e.shape as [number, number];
          t.is(e.length, rows * q4RowBytes(cols));
          const sec = file.section('resident');
          const buf = new Uint8Array(sec.length);
          await file.readSection(sec, buf);
          const m = quantizeQ4(await ckpt.readRows('layers.0.wq', 0, rows), rows, cols);
          t.deepEqual(buf.subarray(e.offset - sec.offset, e.offset - sec.offset + e.length), m.bytes);
          t.deepEqual(new Uint16Array(buf.slice(e.scalesOffset! - sec.offset, e.scalesOffset! - sec.offset + rows * q4Groups(cols) * 2).buffer), m.scales);
        }
      } finally {
        await ckpt.close();
      }
    }
  }
});

test('a reader refuses a dtype it does not know, in the header or in a tensor (how pre-q4 readers refuse q4 files)', async (t) => {
  const bytes = await convert(OPT_DIR, undefined, 'q4', 'q8');
  const { header } = await openFlm(new MemorySource(bytes));
  // a pre-q4 reader's dtype list lacks q4 exactly as this one's lacks 'q3': the same check, one line
  const h1 = structuredClone(header) as FlmHeader & { dtype: string };
  h1.dtype = 'q3';
  await t.throwsAsync(openFlm(new MemorySource(await withHeader(bytes, h1))), { instanceOf: FormatError, message: /dtype: expected one of f32, f16, int8, q8, q4$/ });
  const h2 = structuredClone(header) as FlmHeader;
  const i = h2.tensors.findIndex((e) => e.shape.length === 2);
  (h2.tensors[i] as { dtype: string }).dtype = 'q3';
  await t.throwsAsync(openFlm(new MemorySource(await withHeader(bytes, h2))), { instanceOf: FormatError, message: new RegExp(`tensors\\[${i}\\]\\.dtype: expected one of`) });
});

// ---------------------------------------------------------------- fixtures end to end

/** Teacher-forced over f32's own greedy continuation: top-1 agreement and mean KL(f32 || other). */
async function closeness(ref: Uint8Array, other: Uint8Array, prompt: string, n: number) {
  const a = await openModel(new MemorySource(ref), { threads: 1 });
  const ids = a.tokenizer.encode(prompt);
  for await (const s of a.steps(prompt, { maxTokens: n })) if (s.token >= 0) ids.push(s.token);
  const refLogits: Float32Array[] = [];
  await a.forwardTokens(ids, (_, l) => refLogits.push(l.slice()));
  await a.close();
  const b = await openModel(new MemorySource(other), { threads: 1 });
  let agree = 0, kl = 0;
  const sm = (l: Float32Array) => { let m = -Infinity; for (const v of l) m = Math.max(m, v); const e = Float64Array.from(l, (v) => Math.exp(v - m)); const s = e.reduce((x, y) => x + y, 0); return e.map((v) => v / s); };
  const am = (l: Float32Array) => l.indexOf(Math.max(...l));
  await b.forwardTokens(ids, (pos, l) => {
    const p = sm(refLogits[pos]!), q = sm(l);
    if (am(refLogits[pos]!) === am(l)) agree++;
    for (let j = 0; j < p.length; j++) if (p[j]! > 0) kl += p[j]! * Math.log(p[j]! / Math.max(q[j]!, 1e-30));
  });
  await b.close();
  return { top1: agree / ids.length, kl: kl / ids.length };
}

test('fixtures end to end: q4 runs, is ordered q8 < q4 FFN + q8 resident < q4 in KL, and every path gives the same tokens', async (t) => {
  for (const [name, input, tok, prompt] of [['stories260K', STORIES_BIN, STORIES_TOK, 'Once upon a time'], ['opt-relu-6m', OPT_DIR, undefined, 'The history of the']] as const) {
    const f32 = await convert(input, tok, 'f32');
    const q8 = await convert(input, tok, 'q8');
    const q4 = await convert(input, tok, 'q4');
    const q4r = await convert(input, tok, 'q4', 'q8');
    const c8 = await closeness(f32, q8, prompt, 120), c4 = await closeness(f32, q4, prompt, 120), c4r = await closeness(f32, q4r, prompt, 120);
    t.log(`${name}: top-1 / mean KL vs f32 — q8 ${c8.top1.toFixed(3)} / ${c8.kl.toExponential(2)}, q4 FFN + q8 resident ${c4r.top1.toFixed(3)} / ${c4r.kl.toExponential(2)}, q4 ${c4.top1.toFixed(3)} / ${c4.kl.toExponential(2)}`);
    t.true(c8.kl < c4r.kl && c4r.kl < c4.kl, `${name} KL order`);
    t.true(c4r.top1 >= 0.6 && c4.top1 >= 0.5, `${name} q4 top-1 ${c4.top1}, with q8 resident ${c4r.top1}`);
    t.true(c4.kl < 1, `${name} q4 mean KL ${c4.kl}`);
    // one greedy continuation through every path: dense batched prompt and token by token, 2 threads, streaming strategies with the exact (oracle) set
    const gen = async (bytes: Uint8Array, opts: Parameters<typeof openModel>[1]) => {
      const m = await openModel(new MemorySource(bytes), opts);
      try {
        return await m.complete(prompt, { maxTokens: 40, temperature: 0 });
      } finally {
        await m.close();
      }
    };
    for (const bytes of [q4, q4r]) {
      const dense = await gen(bytes, { threads: 1, batchSize: 1 });
      t.true(dense.length > 10, `${name}: ${dense}`);
      t.is(await gen(bytes, { threads: 1, batchSize: 32 }), dense, `${name} batched prompt`);
      t.is(await gen(bytes, { threads: 2 }), dense, `${name} 2 threads`);
      for (const strategy of ['naive', 'window', 'hybrid'] as const) {
        t.is(await gen(bytes, { threads: 1, strategy, sparsity: 'oracle' }), dense, `${name} ${strategy}`);
      }
    }
  }
});

test('q4 batched prefill equals token-by-token: the same last-prompt logits bit for bit and greedy ids (both fixtures, q4 and q4 FFN + q8 resident, 1 and 2 threads)', async (t) => {
  const prose = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends and her big red ball.';
  for (const [name, input, tok] of [['stories260K', STORIES_BIN, STORIES_TOK], ['opt-relu-6m', OPT_DIR, undefined]] as const) {
    for (const resident of [undefined, 'q8'] as const) {
      const bytes = await convert(input, tok, 'q4', resident);
      const results: { ids: number[]; logits: Uint32Array; what: string }[] = [];
      for (const [batchSize, threads] of [[1, 1], [7, 1], [32, 1], [32, 2]] as const) {
        const model = await openModel(new MemorySource(bytes), { batchSize, threads, contextLength: 128 });
        try {
          t.is(model.plan.batch, batchSize);
          const ids: number[] = [];
          let logits: Uint32Array | undefined;
          for await (const s of model.steps(prose, { maxTokens: 8, temperature: 0 })) {
            // before the first token is fed back: the prompt's last logits
            logits ??= new Uint32Array((model as unknown as { transformer: { logitsView: Float32Array } }).transformer.logitsView.slice().buffer);
            if (s.token >= 0) ids.push(s.token);
          }
          t.true(model.timings!.promptTokens > 20, `${name}: a prompt longer than the blocks`);
          results.push({ ids, logits: logits!, what: `batch ${batchSize}, ${threads} thread(s)` });
        } finally {
          await model.close();
        }
      }
      for (const r of results.slice(1)) {
        t.deepEqual(r.ids, results[0]!.ids, `${name} ${resident ?? 'q4'} resident, ${r.what}: greedy ids`);
        t.deepEqual(r.logits, results[0]!.logits, `${name} ${resident ?? 'q4'} resident, ${r.what}: logits bits`);
      }
    }
  }
});

test('flashlm convert --dtype q4 --resident-dtype int8 writes q4 records beside q8 (int8) resident matrices', async (t) => {
  const { runConvert } = await import('../src/cli/convert.js');
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { FileSource } = await import('../src/source/file-node.js');
  const dir = await mkdtemp(join(tmpdir(), 'flashlm-q4-'));
  try {
    const out = join(dir, 'opt.q4.flm');
    await runConvert(OPT_DIR, { output: out, dtype: 'q4', residentDtype: 'int8', layout: 'bundled' });
    const file = await openFlm(await FileSource.open(out));
    t.is(file.header.dtype, 'q4');
    t.true(file.header.ffn.every((f) => f.dtype === 'q4'));
    t.deepEqual([...new Set(file.header.tensors.filter((e) => e.shape.length === 2).map((e) => e.dtype))], ['q8']);
    const f = file.header.ffn[0]!;
    const f16 = partGeometry(f.d, 'f16', f.hasBias).partBytes;
    t.log(`opt-relu-6m (d = ${f.d}, bias): q4 record ${f.partBytes} bytes vs f16 ${f16} (${(f.partBytes / f16).toFixed(3)}x)`);
    await file.source.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
