/**
 * WebAssembly kernels against plain TypeScript references (test/helpers/kernel-reference.ts).
 *
 * Tolerances: dequantization and rope are bit-exact. Reductions (dots, norms,
 * softmax, attention, FFN) are compared with a float64 reference computed from
 * the same f32 inputs, within F32_REL = 1e-5 of the sum of |terms| (what f32
 * rounding can move), plus, for int8 weights, the exact bound of the kernels'
 * activation quantization (per 128-column block: |x - x^| <= max|x| / 65534).
 * Element-wise exp-based kernels: 2e-6 relative (exp4 is ~2 ulp).
 */

import test from 'ava';
import { createArena, loadKernels, compileKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import { encodeF16, f16BitsToF32, f32ToF16Bits } from '../src/kernels/quant.js';
import {
  Arena, rng, uniform, normalish, firstMismatch, firstBitMismatch, quantizeMatrix, matvecRef, F32_REL,
  softmax64, silu64, layernorm64, rmsnorm64, rope32, attention64, buildRecords, ffnRef,
  type Dtype, type FfnLayout,
  kernelSuffix,
} from './helpers/kernel-reference.js';

let k: Kernels;
let A: Arena;

test.before(async () => {
  k = await loadKernels(createArena(256 << 20));
  A = new Arena(k);
});

const fmt = (m: unknown) => JSON.stringify(m);

// ---------------------------------------------------------------- loader / module shape

test('module imports only env.memory and the arena helper sizes pages', async (t) => {
  const mod = await compileKernels();
  t.deepEqual(WebAssembly.Module.imports(mod), [{ module: 'env', name: 'memory', kind: 'memory' }]);
  t.is(await compileKernels(), mod, 'compiled module is cached per URL');
  const mem = createArena(3 * 65536 + 1);
  t.is(mem.buffer.byteLength, 4 * 65536);
  t.throws(() => createArena(2 ** 32 + 1), { instanceOf: RangeError });
  const base = k.heap_base();
  t.true(base > 0 && base % 16 === 0);
  t.is(k.matvec_i8_scratch_bytes(1) % 16, 0);
  t.true(k.matvec_i8_scratch_bytes(300) >= 3 * 128 * 2 + 3 * 4);
});

test('loadKernels over http(s) URLs (fetch + streaming compile, or bytes when the type is wrong)', async (t) => {
  const { createServer } = await import('node:http');
  const { readFile } = await import('node:fs/promises');
  const bytes = await readFile(new URL('../wasm/flashlm.wasm', import.meta.url));
  const server = createServer((req, res) => {
    res.writeHead(req.url === '/missing.wasm' ? 404 : 200, { 'content-type': req.url === '/plain.wasm' ? 'application/octet-stream' : 'application/wasm' });
    res.end(req.url === '/missing.wasm' ? '' : bytes);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  try {
    const { port } = server.address() as import('node:net').AddressInfo;
    for (const path of ['flashlm.wasm', 'plain.wasm']) {
      const k2 = await loadKernels(createArena(1 << 20), `http://127.0.0.1:${port}/${path}`);
      t.is(k2.heap_base(), k.heap_base(), path);
    }
    await t.throwsAsync(loadKernels(createArena(1 << 20), new URL(`http://127.0.0.1:${port}/missing.wasm`)));
  } finally {
    server.close();
  }
});

test('loadKernels accepts bytes and a compiled module', async (t) => {
  const mod = await compileKernels();
  const k2 = await loadKernels(createArena(1 << 20), mod);
  t.is(k2.heap_base(), k.heap_base());
  const { readFile } = await import('node:fs/promises');
  const k3 = await loadKernels(createArena(1 << 20), new Uint8Array(await readFile(new URL('../wasm/flashlm.wasm', import.meta.url))));
  t.is(k3.heap_base(), k.heap_base());
  await t.throwsAsync(loadKernels(createArena(65536), mod), { instanceOf: RangeError });
});

// ---------------------------------------------------------------- dequantization

test('dequant_f16 is bit-exact for all 65536 halves (subnormals, +-0, +-inf, NaN, max)', (t) => {
  A.reset();
  const all = new Uint16Array(65536).map((_, i) => i);
  const want = Float32Array.from(all, (h) => f16BitsToF32(h));
  for (const [off, n, mis] of [[0, 65536, 0], [1, 65535, 2], [3, 61, 6], [8, 7, 4]] as const) {
    const src = A.putBytes(all.subarray(off, off + n), mis);
    const dst = A.out(n, (mis * 3) % 4);
    k.dequant_f16(dst, src, n);
    const m = firstBitMismatch(A.f32(dst, n), want.subarray(off, off + n));
    t.is(m, null, `offset ${off} n ${n}: ${fmt(m)} (half 0x${m ? (off + m.i).toString(16) : ''})`);
  }
  // spot checks of the special values
  const special = new Uint16Array([0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x3c00]);
  const src = A.putBytes(special, 1);
  const dst = A.out(special.length);
  k.dequant_f16(dst, src, special.length);
  const got = A.f32(dst, special.length);
  t.true(Object.is(got[0], 0) && Object.is(got[1], -0));
  t.is(got[2], 2 ** -24);
  t.is(got[4], 65504);
  t.is(got[5], -65504);
  t.is(got[6], Infinity);
  t.is(got[7], -Infinity);
  t.true(Number.isNaN(got[8]!) && Number.isNaN(got[9]!));
  t.is(got[10], 1);
});

test('dequant_i8 is bit-exact: fround(q * scale) for all q and awkward scales', (t) => {
  A.reset();
  const q = new Int8Array(256 + 13).map((_, i) => ((i * 37) & 255) - 128);
  for (const scale of [1, 0.0123456789, 0, -3.5, 2 ** -140, 3.0e36, 1 / 127]) {
    const s = Math.fround(scale);
    for (const [n, mis] of [[q.length, 1], [7, 3], [16, 0]] as const) {
      const src = A.putBytes(q.subarray(0, n), mis);
      const dst = A.out(n, 2);
      k.dequant_i8(dst, src, n, s);
      const want = Float32Array.from(q.subarray(0, n), (v) => Math.fround(v * s));
      const m = firstBitMismatch(A.f32(dst, n), want);
      t.is(m, null, `scale ${s} n ${n}: ${fmt(m)}`);
    }
  }
});

// ---------------------------------------------------------------- matvec

const SIZES: [number, number][] = [[1, 1], [3, 7], [4, 8], [5, 9], [8, 16], [9, 17], [13, 129], [16, 256], [17, 300], [31, 515], [40, 1024], [67, 2049]];

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test(`matvec_${dtype} matches the reference (odd sizes, unaligned pointers, with/without bias)`, (t) => {
    const r = rng(1234 + dtype.length);
    for (const [rows, cols] of SIZES) {
      for (const withBias of [false, true]) {
        A.reset();
        const w = normalish(r, rows * cols, 0.5);
        const x = normalish(r, cols, 1);
        const bias = withBias ? uniform(r, rows) : undefined;
        const m = quantizeMatrix(w, rows, cols, dtype);
        const mis = (rows + cols) % 4; // 0..3 bytes off alignment
        const W = A.putBytes(m.bytes, dtype === 'f32' ? mis : mis + 1);
        const X = A.putF32(x, mis);
        const B = bias ? A.putF32(bias, 3 - mis) : 0;
        const O = A.out(rows, (mis + 1) % 4);
        if (dtype === 'f32') k.matvec_f32(O, W, X, B, rows, cols);
        else if (dtype === 'f16') k.matvec_f16(O, W, X, B, rows, cols);
        else {
          const S = A.putF32(m.scales!, 2);
          const scratch = A.alloc(k.matvec_i8_scratch_bytes(cols), 0);
          k[`matvec_${kernelSuffix(dtype) as 'i8' | 'q8'}`](O, W, S, X, B, rows, cols, scratch);
        }
        const ref = matvecRef(m, x, bias);
        const mm = firstMismatch(A.f32(O, rows), ref.want, ref.tol);
        t.is(mm, null, `${rows}x${cols} bias=${withBias}: ${fmt(mm)}`);
      }
    }
  });
}

test('matvec tolerance is tight enough to catch a single wrong weight', (t) => {
  // guards against a checker that passes anything: perturb one weight by 1e-3 of a row's scale
  A.reset();
  const r = rng(9);
  const rows = 16, cols = 300;
  const w = normalish(r, rows * cols, 0.5), x = normalish(r, cols);
  const m = quantizeMatrix(w, rows, cols, 'f32');
  const O = A.out(rows);
  k.matvec_f32(O, A.putBytes(m.bytes), A.putF32(x), 0, rows, cols);
  const got = A.f32(O, rows);
  const ref = matvecRef(m, x);
  t.is(firstMismatch(got, ref.want, ref.tol), null);
  m.deq[5 * cols + 123]! += 0.01 / Math.abs(x[123]!);
  t.not(firstMismatch(got, matvecRef(m, x).want, ref.tol), null);
});

test('matvec_f16: large |x| (adaptive x scaling), subnormal weights, inf/NaN weights', (t) => {
  A.reset();
  const r = rng(77);
  const rows = 21, cols = 137;
  const w = normalish(r, rows * cols, 0.5);
  for (let i = 0; i < 40; i++) w[(i * 71) % w.length] = (r() - 0.5) * 1e-6; // f16 subnormals
  const m = quantizeMatrix(w, rows, cols, 'f16');
  for (const big of [1, 3e4, 1e6, 3e37]) {
    const x = normalish(r, cols);
    x[5] = big;
    x[100] = -big / 3;
    const O = A.out(rows);
    k.matvec_f16(O, A.putBytes(m.bytes, 2), A.putF32(x, 1), 0, rows, cols);
    const ref = matvecRef(m, x);
    const mm = firstMismatch(A.f32(O, rows), ref.want, ref.tol);
    t.is(mm, null, `|x| up to ${big}: ${fmt(mm)}`);
  }
  // inf / NaN weights must give inf / NaN outputs exactly where the reference does
  const h = new Uint16Array(m.bytes.buffer.slice(0));
  h[3 * cols + 50] = 0x7c00; // +inf in row 3
  h[9 * cols + 136] = 0xfc00; // -inf in row 9 (scalar tail column)
  h[12 * cols + 7] = 0x7e00; // NaN in row 12
  const deq = Float32Array.from(h, (v) => f16BitsToF32(v));
  const x = uniform(r, cols, 0.5, 1); // positive: inf * x keeps the sign
  const O = A.out(rows);
  k.matvec_f16(O, A.putBytes(h, 1), A.putF32(x), 0, rows, cols);
  const got = A.f32(O, rows);
  const ref = matvecRef({ ...m, deq }, x);
  t.is(got[3], Infinity);
  t.is(got[9], -Infinity);
  t.true(Number.isNaN(got[12]!));
  t.is(firstMismatch(got, ref.want, ref.tol), null);
  // only those rows take the exact path: every other row has the bits of the same matrix without specials
  const O2 = A.out(rows);
  k.matvec_f16(O2, A.putBytes(m.bytes, 1), A.putF32(x), 0, rows, cols);
  const clean = A.f32(O2, rows);
  for (let i = 0; i < rows; i++) if (i !== 3 && i !== 9 && i !== 12) t.is(Object.is(got[i], clean[i]), true, `row ${i}: ${got[i]} vs ${clean[i]}`);
});

test('matvec_f16: cols beyond the scaled-x area (chunk-wise x scaling) and 4-row remainders', (t) => {
  A.reset();
  const r = rng(31);
  // 16640 = largest cols whose scaled x fits the module's x area; 13 rows = 8 + 4 + 1
  for (const [rows, cols] of [[13, 16640], [13, 16645], [6, 16700]] as const) {
    const w = normalish(r, rows * cols, 0.5);
    const m = quantizeMatrix(w, rows, cols, 'f16');
    for (const big of [1, 1e6]) {
      const x = normalish(r, cols);
      x[cols - 3] = big;
      const O = A.out(rows);
      k.matvec_f16(O, A.putBytes(m.bytes, 2), A.putF32(x, 1), 0, rows, cols);
      const ref = matvecRef(m, x);
      t.is(firstMismatch(A.f32(O, rows), ref.want, ref.tol), null, `${rows}x${cols} |x| up to ${big}`);
    }
    // an inf weight in the last chunk of row 9 (the 4-row group)
    const h = new Uint16Array(m.bytes.buffer.slice(0));
    if (rows > 9) {
      h[9 * cols + cols - 20] = 0x7c00;
      const x = uniform(r, cols, 0.5, 1);
      const O = A.out(rows);
      k.matvec_f16(O, A.putBytes(h, 1), A.putF32(x), 0, rows, cols);
      const deq = Float32Array.from(h, (v) => f16BitsToF32(v));
      const got = A.f32(O, rows);
      t.is(got[9], Infinity);
      t.is(firstMismatch(got, matvecRef({ ...m, deq }, x).want, matvecRef({ ...m, deq }, x).tol), null);
    }
    A.reset();
  }
});

test('matvec_i8: x with outliers and zero blocks stays within the quantization bound', (t) => {
  A.reset();
  const r = rng(5);
  const rows = 12, cols = 700;
  const m = quantizeMatrix(normalish(r, rows * cols), rows, cols, 'int8');
  const x = normalish(r, cols, 0.1);
  x[3] = 250; // outlier channel
  x[400] = -90;
  x.fill(0, 128, 256); // an all-zero block
  x[699] = 5e-3;
  const S = A.putF32(m.scales!), X = A.putF32(x, 3), W = A.putBytes(m.bytes, 1);
  const O = A.out(rows);
  k.matvec_i8(O, W, S, X, 0, rows, cols, A.alloc(k.matvec_i8_scratch_bytes(cols)));
  const ref = matvecRef(m, x);
  t.is(firstMismatch(A.f32(O, rows), ref.want, ref.tol), null);
  // x = 0 gives exactly the bias
  const b = uniform(r, rows);
  const O2 = A.out(rows);
  k.matvec_i8(O2, W, S, A.putF32(new Float32Array(cols)), A.putF32(b), rows, cols, A.alloc(k.matvec_i8_scratch_bytes(cols)));
  t.deepEqual(A.f32(O2, rows), b);
});

test('matvec_i8 and matvec_q8 quantize x as specified: q = roundTiesToEven(x * fround(32767 / m)) per 128 columns; a NaN or inf makes every output NaN', (t) => {
  // Identity rows (weight 1 at column j, row scale 1) output fround(q_j * fround(m / 32767)) exactly,
  // so every quantized value is seen: ties (x.5 at inv = 1), random blocks, a tiny block, a partial one.
  A.reset();
  const r = rng(9);
  const cols = 700, rows = cols; // 5 full blocks and a partial one (60 columns: the scalar tail too)
  const x = new Float32Array(cols);
  for (let j = 0; j < 128; j++) x[j] = (j % 2 ? -1 : 1) * (Math.floor(r() * 32766) + 0.5); // block 0: ties
  x[0] = 32767; // m = 32767: inv = 1, so x.5 sits exactly on a tie
  for (let j = 128; j < 256; j++) x[j] = (r() - 0.5) * 3;
  for (let j = 256; j < 384; j++) x[j] = (r() - 0.5) * 1e-31; // below 2^-100: the block quantizes to 0
  for (let j = 384; j < 512; j++) x[j] = r() - 0.5;
  for (let j = 512; j < cols; j++) x[j] = (r() - 0.5) * 1e6;
  const ref = new Float32Array(cols);
  for (let b = 0; b * 128 < cols; b++) {
    const blk = x.subarray(b * 128, Math.min(cols, b * 128 + 128));
    const m = blk.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    for (let j = 0; j < blk.length; j++) {
      if (m < 2 ** -100) continue; // 0
      const v = Math.fround(blk[j]! * Math.fround(32767 / m));
      const f = Math.floor(v), q = v - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(v);
      ref[b * 128 + j] = Math.fround(q * Math.fround(m / 32767)) + 0; // + 0: the kernel's zero is +0
    }
  }
  const X = A.putF32(x);
  const eye = new Int8Array(rows * cols);
  for (let j = 0; j < rows; j++) eye[j * cols + j] = 1;
  const W = A.putBytes(new Uint8Array(eye.buffer), 1);
  const O = A.out(rows);
  k.matvec_i8(O, W, A.putF32(new Float32Array(rows).fill(1)), X, 0, rows, cols, A.alloc(k.matvec_i8_scratch_bytes(cols)));
  t.is(firstBitMismatch(A.f32(O, rows), ref), null);
  const Oq = A.out(rows);
  const Sq = A.putF32(new Float32Array(rows * Math.ceil(cols / 32)).fill(1));
  k.matvec_q8(Oq, W, Sq, X, 0, rows, cols, A.alloc(k.matvec_i8_scratch_bytes(cols)));
  t.is(firstBitMismatch(A.f32(Oq, rows), ref), null);
  // a NaN or an inf anywhere: its block's scale is NaN, which every row's sum takes
  for (const bad of [NaN, -Infinity]) {
    const xb = x.slice();
    xb[400] = bad;
    k.matvec_q8(Oq, W, Sq, A.putF32(xb), 0, rows, cols, A.alloc(k.matvec_i8_scratch_bytes(cols)));
    t.true(A.f32(Oq, rows).every(Number.isNaN), String(bad));
  }
});
test('matvec_f32 propagates NaN and inf from x', (t) => {
  A.reset();
  const rows = 9, cols = 19;
  const w = uniform(rng(3), rows * cols, 0.1, 1);
  const x = uniform(rng(4), cols, 0.1, 1);
  x[17] = NaN;
  const O = A.out(rows);
  k.matvec_f32(O, A.putF32(w), A.putF32(x), 0, rows, cols);
  t.true(A.f32(O, rows).every(Number.isNaN));
});

// ---------------------------------------------------------------- norms

test('layernorm and rmsnorm match the reference, in place and out of place', (t) => {
  const r = rng(42);
  for (const [n, sd] of [[1, 3], [3, 3], [4, 3], [7, 3], [8, 3], [17, 3], [64, 3], [333, 3], [4096, 3], [65, 3e-3], [300, 1e-3]] as const) {
    A.reset();
    const x = normalish(r, n, sd); // sd 1e-3: var comparable to eps, so eps must be added right
    for (let i = 0; i < n; i++) x[i]! += sd / 2; // non-zero mean
    const w = uniform(r, n, 0.5, 1.5), b = uniform(r, n);
    const eps = 1e-5;
    const tolOf = (want: Float64Array) => Float64Array.from(want, (v) => 2e-5 * (Math.abs(v) + 1));
    for (const withBias of [false, true]) {
      const X = A.putF32(x, 1), W = A.putF32(w, 2), B = withBias ? A.putF32(b, 3) : 0, O = A.out(n);
      k.layernorm(O, X, W, B, n, eps);
      const want = layernorm64(x, w, withBias ? b : null, eps);
      t.is(firstMismatch(A.f32(O, n), want, tolOf(want)), null, `layernorm n=${n} bias=${withBias}`);
      k.layernorm(X, X, W, B, n, eps); // in place
      t.is(firstMismatch(A.f32(X, n), want, tolOf(want)), null, `layernorm in place n=${n}`);
    }
    const X = A.putF32(x, 3), W = A.putF32(w), O = A.out(n, 1);
    k.rmsnorm(O, X, W, n, eps);
    const want = rmsnorm64(x, w, eps);
    t.is(firstMismatch(A.f32(O, n), want, tolOf(want)), null, `rmsnorm n=${n}`);
    k.rmsnorm(X, X, W, n, eps);
    t.is(firstMismatch(A.f32(X, n), want, tolOf(want)), null, `rmsnorm in place n=${n}`);
  }
});

// ---------------------------------------------------------------- rope

test('rope_interleaved and rope_half are bit-exact with f32 arithmetic', (t) => {
  const r = rng(8);
  for (const [nHeads, headDim] of [[1, 2], [3, 6], [2, 8], [4, 14], [8, 64], [5, 128], [2, 18]] as const) {
    A.reset();
    const vec = normalish(r, nHeads * headDim, 2);
    const ang = Float64Array.from({ length: headDim / 2 }, () => r() * 100);
    const cos = Float32Array.from(ang, Math.cos), sin = Float32Array.from(ang, Math.sin);
    for (const half of [false, true]) {
      const V = A.putF32(vec, 1), C = A.putF32(cos, 2), S = A.putF32(sin, 3);
      if (half) k.rope_half(V, nHeads, headDim, C, S);
      else k.rope_interleaved(V, nHeads, headDim, C, S);
      const m = firstBitMismatch(A.f32(V, vec.length), rope32(vec, nHeads, headDim, cos, sin, half));
      t.is(m, null, `${half ? 'half' : 'interleaved'} ${nHeads}x${headDim}: ${fmt(m)}`);
    }
  }
});

// ---------------------------------------------------------------- attention

test('attention with GQA (8/2, 8/4) and MHA (8/8) matches the reference', (t) => {
  const r = rng(31);
  for (const nKvHeads of [2, 4, 8]) {
    for (const [headDim, nPos] of [[64, 1], [64, 37], [20, 5], [12, 130], [128, 9]] as const) {
      A.reset();
      const nHeads = 8;
      const kvDim = nKvHeads * headDim;
      const q = normalish(r, nHeads * headDim), kc = normalish(r, nPos * kvDim), vc = normalish(r, nPos * kvDim);
      const scale = 1 / Math.sqrt(headDim);
      const Q = A.putF32(q, 1), K = A.putF32(kc, 2), V = A.putF32(vc, 3), O = A.out(nHeads * headDim), S = A.alloc(nPos * 4, 1);
      k.attention(O, Q, K, V, nHeads, nKvHeads, headDim, nPos, Math.fround(scale), S, 0, 0);
      const ref = attention64(q, kc, vc, nHeads, nKvHeads, headDim, nPos, Math.fround(scale));
      const mm = firstMismatch(A.f32(O, nHeads * headDim), ref.want, ref.tol);
      t.is(mm, null, `kv=${nKvHeads} hd=${headDim} pos=${nPos}: ${fmt(mm)}`);
      // out == q (in place) gives the same result
      k.attention(Q, Q, K, V, nHeads, nKvHeads, headDim, nPos, Math.fround(scale), S, 0, 0);
      t.is(firstMismatch(A.f32(Q, nHeads * headDim), ref.want, ref.tol), null, 'in place');
    }
  }
});

test('attention over a head-major cache (headBytes) equals the position-major one bit for bit: f32 and f16 rows, GQA and MHA', (t) => {
  const r = rng(32);
  for (const kvF16 of [0, 1]) {
    for (const [nHeads, nKvHeads, headDim, nPos] of [[8, 2, 64, 37], [4, 4, 20, 130], [6, 3, 12, 1]] as const) {
      A.reset();
      const kvDim = nKvHeads * headDim, elt = kvF16 ? 2 : 4, cap = nPos + 5; // a head's block holds cap rows
      const q = normalish(r, nHeads * headDim), kc = normalish(r, nPos * kvDim), vc = normalish(r, nPos * kvDim);
      const enc = (x: Float32Array) => (kvF16 ? new Uint8Array(encodeF16(x).buffer) : new Uint8Array(x.buffer.slice(0)));
      // position-major rows, and the same values per head: head g's row p at g * cap * headDim + p * headDim
      const headMajor = (x: Float32Array) => {
        const h = new Float32Array(nKvHeads * cap * headDim).fill(NaN); // rows past nPos must not be read
        for (let p = 0; p < nPos; p++) for (let g = 0; g < nKvHeads; g++) h.set(x.subarray(p * kvDim + g * headDim, p * kvDim + (g + 1) * headDim), (g * cap + p) * headDim);
        return h;
      };
      const Q = A.putF32(q), S = A.alloc(nPos * 4);
      const K = A.putBytes(enc(kc)), V = A.putBytes(enc(vc));
      const KH = A.putBytes(enc(headMajor(kc))), VH = A.putBytes(enc(headMajor(vc)));
      const O = A.out(nHeads * headDim), OH = A.out(nHeads * headDim);
      const scale = Math.fround(1 / Math.sqrt(headDim));
      k.attention(O, Q, K, V, nHeads, nKvHeads, headDim, nPos, scale, S, kvF16, 0);
      k.attention(OH, Q, KH, VH, nHeads, nKvHeads, headDim, nPos, scale, S, kvF16, cap * headDim * elt);
      t.is(firstBitMismatch(A.f32(OH, nHeads * headDim), A.f32(O, nHeads * headDim)), null, `f16=${kvF16} ${nHeads}/${nKvHeads} hd=${headDim} pos=${nPos}`);
      t.false(A.f32(O, nHeads * headDim).some(Number.isNaN));
    }
  }
});

test('encode_f16 equals f32ToF16Bits: random values, subnormals, ties, overflow, +-0, +-inf, NaN', (t) => {
  const r = rng(5);
  const vals: number[] = [0, -0, Infinity, -Infinity, NaN, 65504, 65519.99, 65520, -65536, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -24 * 1.5];
  for (let i = 0; i < 4000; i++) vals.push((r() - 0.5) * 2 ** Math.floor(r() * 60 - 30));
  const x = new Float32Array(vals);
  A.reset();
  const X = A.putF32(x), D = A.alloc(x.length * 2);
  k.encode_f16(D, X, x.length);
  const got = new Uint16Array(A.u8.slice(D, D + x.length * 2).buffer);
  for (let i = 0; i < x.length; i++) {
    const want = f32ToF16Bits(x[i]!);
    if (got[i] !== want) return t.fail(`${x[i]}: got ${got[i]!.toString(16)}, want ${want.toString(16)}`);
  }
  t.pass();
});

test('attention over an f16 KV cache matches the reference on the f16 values (GQA, odd head dims, in place)', (t) => {
  const r = rng(37);
  for (const nKvHeads of [2, 8]) {
    for (const [headDim, nPos] of [[64, 1], [64, 37], [20, 5], [12, 130]] as const) {
      A.reset();
      const nHeads = 8;
      const kvDim = nKvHeads * headDim;
      const q = normalish(r, nHeads * headDim);
      // the cache holds halves: the reference sees exactly the values they decode to
      const kh = encodeF16(normalish(r, nPos * kvDim)), vh = encodeF16(normalish(r, nPos * kvDim));
      const kc = Float32Array.from(kh, f16BitsToF32), vc = Float32Array.from(vh, f16BitsToF32);
      const scale = Math.fround(1 / Math.sqrt(headDim));
      const Q = A.putF32(q, 1), K = A.putBytes(kh, 2), V = A.putBytes(vh, 3), O = A.out(nHeads * headDim), S = A.alloc(nPos * 4, 1);
      k.attention(O, Q, K, V, nHeads, nKvHeads, headDim, nPos, scale, S, 1, 0);
      const ref = attention64(q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale);
      t.is(firstMismatch(A.f32(O, nHeads * headDim), ref.want, ref.tol), null, `kv=${nKvHeads} hd=${headDim} pos=${nPos}`);
      k.attention(Q, Q, K, V, nHeads, nKvHeads, headDim, nPos, scale, S, 1, 0);
      t.is(firstMismatch(A.f32(Q, nHeads * headDim), ref.want, ref.tol), null, 'in place');
    }
  }
});

test('attention is stable with large scores', (t) => {
  A.reset();
  const r = rng(2);
  const q = normalish(r, 2 * 16, 30), kc = normalish(r, 11 * 16, 30), vc = normalish(r, 11 * 16);
  const O = A.out(32);
  k.attention(O, A.putF32(q), A.putF32(kc), A.putF32(vc), 2, 1, 16, 11, 1, A.alloc(44), 0, 0);
  const ref = attention64(q, kc, vc, 2, 1, 16, 11, 1);
  t.is(firstMismatch(A.f32(O, 32), ref.want, ref.tol), null);
});

// ---------------------------------------------------------------- elementwise

const EXP_REL = 2e-6;
const relTol = (want: ArrayLike<number>, rel: number, abs = 0) => Float64Array.from(want as ArrayLike<number>, (v) => rel * Math.abs(v) + abs);

test('softmax is stable and accurate; softmax_temp scales first', (t) => {
  const r = rng(10);
  for (const n of [1, 2, 5, 8, 33, 1000, 32003]) {
    for (const spread of [1, 30, 1000]) {
      A.reset();
      const x = normalish(r, n, spread);
      if (spread === 1000) x[n >> 1] = 1e30; // one dominant logit
      const X = A.putF32(x, n % 4);
      k.softmax(X, n);
      const want = softmax64(x);
      t.is(firstMismatch(A.f32(X, n), want, relTol(want, EXP_REL * 8, 1e-9)), null, `softmax n=${n} spread=${spread}`);
      const Y = A.putF32(x, 1);
      k.softmax_temp(Y, n, Math.fround(1 / 0.7));
      const want2 = softmax64(x, Math.fround(1 / 0.7));
      t.is(firstMismatch(A.f32(Y, n), want2, relTol(want2, EXP_REL * 8, 1e-9)), null, `softmax_temp n=${n}`);
    }
  }
});

test('relu, silu, swiglu, add, scale match elementwise references', (t) => {
  const r = rng(11);
  for (const n of [1, 3, 4, 9, 64, 1001]) {
    A.reset();
    const a = normalish(r, n, 4), b = normalish(r, n, 4);
    a[0] = -0; if (n > 2) { a[1] = 90; a[2] = -90; } // saturated sigmoid
    const P = A.putF32(a, 1);
    k.relu(P, n);
    t.is(firstBitMismatch(A.f32(P, n), Float32Array.from(a, (v) => (v > 0 ? v : 0))), null, `relu n=${n}`);
    const S = A.putF32(a, 2);
    k.silu(S, n);
    const ws = Float64Array.from(a, silu64);
    t.is(firstMismatch(A.f32(S, n), ws, relTol(ws, EXP_REL, 1e-35)), null, `silu n=${n}`);
    const G = A.putF32(a, 3), U = A.putF32(b), O = A.out(n, 1);
    k.swiglu(O, G, U, n);
    const wg = Float64Array.from(a, (v, i) => silu64(v) * b[i]!);
    t.is(firstMismatch(A.f32(O, n), wg, relTol(wg, EXP_REL, 1e-34)), null, `swiglu n=${n}`);
    const O2 = A.out(n, 2);
    k.add(O2, A.putF32(a, 1), A.putF32(b, 3), n);
    t.is(firstBitMismatch(A.f32(O2, n), Float32Array.from(a, (v, i) => v + b[i]!)), null, `add n=${n}`);
    const X = A.putF32(a, 1);
    k.scale(X, n, 0.37);
    t.is(firstBitMismatch(A.f32(X, n), Float32Array.from(a, (v) => v * Math.fround(0.37))), null, `scale n=${n}`);
  }
  // silu of NaN is NaN, of +inf is +inf, of -100 is (-)0 (true value -3.7e-42: below f32 normals)
  A.reset();
  const s = A.putF32(new Float32Array([NaN, -100, Infinity, 0]));
  k.silu(s, 4);
  const got = A.f32(s, 4);
  t.true(Number.isNaN(got[0]!));
  t.true(Math.abs(got[1]!) < 1e-40);
  t.is(got[2], Infinity);
});

test('argmax returns the first maximum, ignoring NaN', (t) => {
  const r = rng(12);
  for (const n of [1, 2, 3, 4, 5, 8, 9, 100, 50257]) {
    A.reset();
    const x = Float32Array.from({ length: n }, () => Math.floor(r() * 50)); // many ties
    let want = 0;
    for (let i = 1; i < n; i++) if (x[i]! > x[want]!) want = i;
    t.is(k.argmax(A.putF32(x, n % 4), n), want, `n=${n}`);
  }
  A.reset();
  t.is(k.argmax(A.putF32(new Float32Array([NaN, 1, 3, NaN, 3, 2])), 6), 2);
  t.is(k.argmax(A.putF32(new Float32Array([-Infinity, -Infinity, -Infinity, -Infinity, -Infinity])), 5), 0);
  t.is(k.argmax(A.putF32(new Float32Array([1, 2, 3, 4, 5, 6, 7, 9])), 8), 7);
});

// ---------------------------------------------------------------- FFN over neuron records

function runFfn(L: FfnLayout, seed: number, t: import('ava').ExecutionContext, opts: { dense?: boolean } = {}) {
  A.reset();
  const r = rng(seed);
  const nParts = L.kind === 'relu' ? 2 : 3;
  const parts = Array.from({ length: nParts }, () => normalish(r, L.n * L.d, 0.3));
  const bias = L.hasBias ? uniform(r, L.n, -0.5, 0.2) : null;
  const R = buildRecords(L, parts, bias, r);
  const x = normalish(r, L.d);
  const base = A.putBytes(R.bytes, 0);
  const X = A.putF32(x, 3), O = A.out(L.d, 1), H = A.out(L.n, 2);
  const p = R.partOff.map((o) => base + o);
  const hb = L.hasBias ? 1 : 0;
  const fn = `ffn_${L.kind}_${kernelSuffix(L.dtype)}` as const;
  if (L.kind === 'relu') (k[fn as 'ffn_relu_f32'])(O, X, L.d, L.n, p[0]!, p[1]!, R.stride, hb, H);
  else (k[fn as 'ffn_swiglu_f32'])(O, X, L.d, L.n, p[0]!, p[1]!, p[2]!, R.stride, H, 0, 0);
  const ref = ffnRef(L, R, x);
  const what = `${fn} d=${L.d} n=${L.n} bias=${L.hasBias} ${L.bundled ? 'bundled' : 'split'}`;
  const mh = firstMismatch(A.f32(H, L.n), ref.h, ref.hTol);
  t.is(mh, null, `${what} hOut: ${fmt(mh)}`);
  const mo = firstMismatch(A.f32(O, L.d), ref.out, ref.outTol);
  t.is(mo, null, `${what} out: ${fmt(mo)}`);
  if (L.kind === 'relu' && !opts.dense) {
    // hOut = 0 (none) gives the same out; output is overwritten, not accumulated
    const O2 = A.out(L.d);
    (k[fn as 'ffn_relu_f32'])(O2, X, L.d, L.n, p[0]!, p[1]!, R.stride, hb, 0);
    t.deepEqual(A.f32(O2, L.d), A.f32(O, L.d), `${what} without hOut`);
    const zeros = ref.h.filter((v) => v === 0).length;
    if (L.n >= 30) t.true(zeros > 0 && zeros < L.n, `${what}: relu test data should have some zero and some active neurons`);
  }
}

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test(`ffn_relu_${dtype}: bundled and split records, with and without bias`, (t) => {
    let seed = 100;
    for (const [d, n] of [[8, 4], [13, 7], [64, 70], [129, 33], [260, 131]] as const) {
      for (const bundled of [true, false]) {
        for (const hasBias of [false, true]) runFfn({ dtype, kind: 'relu', d, n, hasBias, bundled }, seed++, t);
      }
    }
  });
  test(`ffn_swiglu_${dtype}: bundled and split records`, (t) => {
    let seed = 200;
    for (const [d, n] of [[8, 4], [13, 7], [64, 70], [129, 33], [260, 131]] as const) {
      for (const bundled of [true, false]) runFfn({ dtype, kind: 'swiglu', d, n, hasBias: false, bundled }, seed++, t);
    }
  });
}

test('ffn_touch_set: touching the next records changes no output bit (strided and pointer-table FFNs, every dtype)', (t) => {
  t.is(k.ffn_touch(), 0, 'off by default');
  let seed = 700;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const kind of ['relu', 'swiglu'] as const) {
      A.reset();
      const r = rng(seed++);
      // 300 neurons: several batches (8 for f32, 64 for the others) in each of the 8 neuron ranges' worth
      const L: FfnLayout = { dtype, kind, d: 72, n: 300, hasBias: kind === 'relu', bundled: true };
      const nParts = kind === 'relu' ? 2 : 3;
      const R = buildRecords(L, Array.from({ length: nParts }, () => normalish(r, L.n * L.d, 0.3)), L.hasBias ? uniform(r, L.n, -0.5, 0.2) : null, r);
      const base = A.putBytes(R.bytes, 0);
      const p = R.partOff.map((o) => base + o);
      const table = new Uint32Array(L.n * nParts);
      for (let i = 0; i < L.n; i++) for (let q = 0; q < nParts; q++) table[i * nParts + q] = p[q]! + (L.n - 1 - i) * R.stride; // reversed order
      const P = A.putBytes(table, 0), X = A.putF32(normalish(r, L.d), 1);
      const sfx = kernelSuffix(dtype);
      const outs = [0, 1].map((on) => {
        k.ffn_touch_set(on);
        t.is(k.ffn_touch(), on);
        const O = A.out(L.d), Q = A.out(L.d), H = A.out(L.n);
        if (kind === 'relu') {
          k[`ffn_relu_${sfx}`](O, X, L.d, L.n, p[0]!, p[1]!, R.stride, 1, H);
          k[`ffn_relu_${sfx}_ptrs`](Q, X, L.d, P, L.n, 1, 0);
        } else {
          k[`ffn_swiglu_${sfx}`](O, X, L.d, L.n, p[0]!, p[1]!, p[2]!, R.stride, H, 0, 0);
          k[`ffn_swiglu_${sfx}_ptrs`](Q, X, L.d, P, L.n, 0, 0, 0);
        }
        return [A.f32(O, L.d).slice(), A.f32(Q, L.d).slice(), A.f32(H, L.n).slice()];
      });
      k.ffn_touch_set(0);
      t.deepEqual(outs[1], outs[0], `${kind} ${dtype}: touch on = touch off`);
      t.true(outs[0]![0]!.some((v) => v !== 0), `${kind} ${dtype}: a non-trivial output`);
    }
  }
});

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test(`ffn_*_${kernelSuffix(dtype)}_ptrs: gathered neurons in any order (pointer tables)`, (t) => {
    let seed = 300;
    for (const kind of ['relu', 'swiglu'] as const) {
      for (const [d, total, n] of [[8, 6, 5], [13, 20, 9], [129, 90, 41], [260, 40, 40]] as const) {
        for (const bundled of [true, false]) {
          A.reset();
          const r = rng(seed++);
          const hasBias = kind === 'relu' && bundled;
          const L: FfnLayout = { dtype, kind, d, n: total, hasBias, bundled };
          const nParts = kind === 'relu' ? 2 : 3;
          const parts = Array.from({ length: nParts }, () => normalish(r, total * d, 0.3));
          const bias = hasBias ? uniform(r, total, -0.5, 0.2) : null;
          const R = buildRecords(L, parts, bias, r);
          const base = A.putBytes(R.bytes, 0);
          // n distinct neurons in a shuffled order
          const order = Array.from({ length: total }, (_, i) => i);
          for (let i = total - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [order[i], order[j]] = [order[j]!, order[i]!]; }
          const sel = order.slice(0, n);
          const table = new Uint32Array(n * nParts);
          sel.forEach((nid, j) => { for (let p = 0; p < nParts; p++) table[j * nParts + p] = base + R.partOff[p]! + nid * R.stride; });
          const P = A.putBytes(table, 0);
          const x = normalish(r, d);
          const X = A.putF32(x, 1), O = A.out(d, 2), H = A.out(n, 3);
          const sfx = kernelSuffix(dtype);
          if (kind === 'relu') k[`ffn_relu_${sfx}_ptrs`](O, X, d, P, n, hasBias ? 1 : 0, H);
          else k[`ffn_swiglu_${sfx}_ptrs`](O, X, d, P, n, H, 0, 0);
          // reference on the gathered neurons
          const gather = (a: Float32Array) => { const g = new Float32Array(n * d); sel.forEach((nid, j) => g.set(a.subarray(nid * d, (nid + 1) * d), j * d)); return g; };
          const R2 = { ...R, deq: R.deq.map(gather), bias: bias ? Float32Array.from(sel, (nid) => bias[nid]!) : null };
          const ref = ffnRef({ ...L, n }, R2, x);
          const what = `${kind} ${dtype} d=${d} n=${n}/${total} ${bundled ? 'bundled' : 'split'}`;
          t.is(firstMismatch(A.f32(H, n), ref.h, ref.hTol), null, `${what} hOut`);
          t.is(firstMismatch(A.f32(O, d), ref.out, ref.outTol), null, `${what} out`);
        }
      }
    }
  });
}

test('ffn_*_ptrs over all neurons in order equals the strided kernels bit for bit', (t) => {
  let seed = 400;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const kind of ['relu', 'swiglu'] as const) {
      for (const [d, n] of [[13, 7], [64, 70], [260, 131]] as const) {
        A.reset();
        const r = rng(seed++);
        const L: FfnLayout = { dtype, kind, d, n, hasBias: kind === 'relu', bundled: seed % 2 === 0 };
        const nParts = kind === 'relu' ? 2 : 3;
        const R = buildRecords(L, Array.from({ length: nParts }, () => normalish(r, n * d, 0.3)), uniform(r, n, -0.5, 0.2), r);
        const base = A.putBytes(R.bytes);
        const parts = R.partOff.map((o) => base + o);
        const table = new Uint32Array(n * nParts);
        for (let i = 0; i < n; i++) for (let p = 0; p < nParts; p++) table[i * nParts + p] = parts[p]! + i * R.stride;
        const P = A.putBytes(table), X = A.putF32(normalish(r, d));
        const O1 = A.out(d), H1 = A.out(n), O2 = A.out(d), H2 = A.out(n);
        const sfx = kernelSuffix(dtype);
        if (kind === 'relu') {
          k[`ffn_relu_${sfx}`](O1, X, d, n, parts[0]!, parts[1]!, R.stride, 1, H1);
          k[`ffn_relu_${sfx}_ptrs`](O2, X, d, P, n, 1, H2);
        } else {
          k[`ffn_swiglu_${sfx}`](O1, X, d, n, parts[0]!, parts[1]!, parts[2]!, R.stride, H1, 0, 0);
          k[`ffn_swiglu_${sfx}_ptrs`](O2, X, d, P, n, H2, 0, 0);
        }
        t.is(firstBitMismatch(A.f32(O2, d), A.f32(O1, d)), null, `${kind} ${dtype} d=${d} n=${n} out`);
        t.is(firstBitMismatch(A.f32(H2, n), A.f32(H1, n)), null, `${kind} ${dtype} d=${d} n=${n} hOut`);
      }
    }
  }
});

test('ffn: n = 0 zeroes out; a larger dense layer (d=1024, n=700) for every dtype', (t) => {
  A.reset();
  const O = A.out(10);
  k.ffn_relu_f32(O, A.putF32(new Float32Array(10)), 10, 0, 0, 0, 48, 0, 0);
  t.deepEqual(A.f32(O, 10), new Float32Array(10));
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    runFfn({ dtype, kind: 'relu', d: 1024, n: 700, hasBias: true, bundled: true }, 7, t, { dense: true });
    runFfn({ dtype, kind: 'swiglu', d: 1024, n: 300, hasBias: false, bundled: false }, 8, t, { dense: true });
  }
});

for (const dtype of ['int8', 'q8'] as const) {
  test(`${dtype} FFNs with d > 32768 (no room to quantize x) use exact f32 products`, (t) => {
    for (const kind of ['relu', 'swiglu'] as const) {
      A.reset();
      const r = rng(kind.length + (dtype === 'q8' ? 3 : 0));
      const d = 33001, n = 9;
      const L: FfnLayout = { dtype, kind, d, n, hasBias: kind === 'relu', bundled: false };
      const nParts = kind === 'relu' ? 2 : 3;
      const R = buildRecords(L, Array.from({ length: nParts }, () => normalish(r, n * d, 0.05)), uniform(r, n, -0.1, 0.1), r);
      const base = A.putBytes(R.bytes);
      const p = R.partOff.map((o) => base + o);
      const x = normalish(r, d);
      const X = A.putF32(x), O = A.out(d), H = A.out(n);
      const s = dtype === 'int8' ? 'i8' : 'q8';
      if (kind === 'relu') k[`ffn_relu_${s}`](O, X, d, n, p[0]!, p[1]!, R.stride, 1, H);
      else k[`ffn_swiglu_${s}`](O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, 0, 0);
      const ref = ffnRef({ ...L, dtype: 'f32' }, R, x); // f32 tolerances: no activation quantization here
      t.is(firstMismatch(A.f32(H, n), ref.h, ref.hTol), null, `${kind} hOut`);
      t.is(firstMismatch(A.f32(O, d), ref.out, ref.outTol), null, `${kind} out`);
    }
  });
}

test('ffn_relu_f16 with an inf weight in a down row and large activations stays exact', (t) => {
  A.reset();
  const r = rng(55);
  const d = 24, n = 6;
  const L: FfnLayout = { dtype: 'f16', kind: 'relu', d, n, hasBias: true, bundled: true };
  const up = normalish(r, n * d, 0.3), down = normalish(r, n * d, 0.3);
  const bias = new Float32Array([5e4, 100, -1e9, 2, 0.5, 3]); // 5e4: coefficient beyond the 2^15 fast path
  const R = buildRecords(L, [up, down], bias, r);
  // neuron 1: +inf at down[1][5] -> out[5] = +inf (h_1 > 0)
  const dv = new DataView(R.bytes.buffer);
  dv.setUint16(R.partOff[1]! + 1 * R.stride + 5 * 2, f32ToF16Bits(Infinity), true);
  R.deq[1]![1 * d + 5] = Infinity;
  const x = normalish(r, d);
  const base = A.putBytes(R.bytes, 0);
  const O = A.out(d), H = A.out(n);
  k.ffn_relu_f16(O, A.putF32(x), d, n, base + R.partOff[0]!, base + R.partOff[1]!, R.stride, 1, H);
  const ref = ffnRef(L, R, x);
  const h = A.f32(H, n);
  t.true(h[1]! > 0, 'neuron 1 is active');
  t.is(firstMismatch(h, ref.h, ref.hTol), null);
  const out = A.f32(O, d);
  t.is(out[5], Infinity);
  const finite = Float64Array.from(ref.out, (v, j) => (j === 5 ? Infinity : v));
  t.is(firstMismatch(out, finite, ref.outTol), null);
});

test('encodeF16 round trip sanity for the test data path', (t) => {
  const v = new Float32Array([0.1, -2.5, 65504, 1e-7]);
  const back = Float32Array.from(encodeF16(v), (h) => f16BitsToF32(h));
  t.true(Math.abs(back[0]! - 0.1) < 1e-4 && back[1] === -2.5 && back[2] === 65504 && back[3]! > 0);
  t.true(F32_REL > 0);
});

test('dequant_q8 is bit-exact: fround(q * scales[i >> 5]), partial last group', (t) => {
  const r = rng(77);
  for (const [n, mis] of [[1, 0], [31, 1], [32, 2], [33, 3], [100, 1], [256 + 13, 0]] as const) {
    A.reset();
    const w = normalish(r, n, 0.7);
    const m = quantizeMatrix(w, 1, n, 'q8');
    t.is(m.scales!.length, Math.ceil(n / 32));
    const dst = A.out(n, 1);
    k.dequant_q8(dst, A.putBytes(m.bytes, mis), A.putF32(m.scales!, 3 - mis), n);
    t.is(firstBitMismatch(A.f32(dst, n), m.deq), null, `n ${n}`);
  }
});

test('q8 keeps each group of 32 on its own scale (an outlier does not flatten the row)', (t) => {
  const w = new Float32Array(64).fill(0.01);
  w[0] = 100;
  const m = quantizeMatrix(w, 1, 64, 'q8');
  t.is(m.deq[40], Math.fround(127 * Math.fround(0.01 / 127))); // second group: exact up to the scale's rounding
  const row = quantizeMatrix(w, 1, 64, 'int8');
  t.is(row.deq[40], 0); // the per-row form loses it
});


test.serial('f16_finite_set: skipping the inf/NaN detection changes no bit for finite weights; f16_special finds every inf/NaN', (t) => {
  t.is(k.f16_finite(), 0, 'off by default');
  try {
    const r = rng(123);
    // rows off the 4-row groups, cols off the 8-column steps, and beyond the scaled-x area (chunked x)
    for (const [rows, cols] of [[1, 5], [7, 64], [21, 137], [13, 16645]] as const) {
      A.reset();
      const w = normalish(r, rows * cols, 0.5);
      for (let i = 0; i < 20; i++) w[(i * 71) % w.length] = (r() - 0.5) * 1e-6; // subnormals
      const m = quantizeMatrix(w, rows, cols, 'f16');
      const h = new Uint16Array(m.bytes.buffer, m.bytes.byteOffset, rows * cols);
      h[0] = 0x7bff; // the largest finite halves
      h[h.length - 1] = 0xfbff;
      const W = A.putBytes(m.bytes, 2);
      t.is(k.f16_special(W, 2 * cols, rows, cols), 0, `${rows}x${cols}: all finite`);
      for (const big of [1, 1e6]) {
        const x = normalish(r, cols);
        x[cols >> 1] = big;
        const X = A.putF32(x, 1), on = A.out(rows), off = A.out(rows);
        k.f16_finite_set(0);
        k.matvec_f16(off, W, X, 0, rows, cols);
        k.f16_finite_set(1);
        t.is(k.f16_finite(), 1);
        k.matvec_f16(on, W, X, 0, rows, cols);
        t.is(firstBitMismatch(A.f32(on, rows), A.f32(off, rows)), null, `${rows}x${cols} |x| up to ${big}`);
      }
      // any single inf or NaN, in the 8-column body or the tail, in any row
      for (const [pos, bits] of [[0, 0x7c00], [rows * cols - 1, 0xfc00], [Math.floor(rows * cols / 2), 0x7e01], [(rows - 1) * cols + 3, 0xfe00]] as const) {
        const saved = h[pos]!;
        h[pos] = bits;
        t.is(k.f16_special(A.putBytes(m.bytes), 2 * cols, rows, cols), 1, `${rows}x${cols}: 0x${bits.toString(16)} at ${pos}`);
        h[pos] = saved;
      }
    }
    // strided rows: only the cols values of each row are looked at
    A.reset();
    const rec = new Uint16Array(4 * 16).fill(0x3c00);
    for (let i = 0; i < 4; i++) rec[i * 16 + 12] = 0x7c00; // inf in each row's padding
    t.is(k.f16_special(A.putBytes(rec), 32, 4, 12), 0);
    t.is(k.f16_special(A.putBytes(rec), 32, 4, 13), 1);
  } finally {
    k.f16_finite_set(0);
  }
});
