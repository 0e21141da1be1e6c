/**
 * Batched (prompt) kernels against the one-token kernels, bit for bit: a
 * prompt prefilled in blocks must give exactly the logits of token-by-token
 * decoding. Shapes cover row counts off the 8/4-row groups, column counts
 * off the 8-column steps and 128-column int8 blocks, odd token counts, f16
 * rows with inf weights (the exact-decode path), and sparse ReLU activations.
 */
import test from 'ava';
import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import { Arena, rng, uniform, normalish, firstBitMismatch, quantizeMatrix, buildRecords, type Dtype, type FfnLayout } from './helpers/kernel-reference.js';

let k: Kernels;
let A: Arena;

test.before(async () => {
  k = await loadKernels(createArena(128 << 20));
  A = new Arena(k);
});

const sfx = (d: Dtype) => (d === 'int8' ? 'i8' : d);

/** T token rows of `cols` f32, `pad` extra floats per row (so ldx != cols*4). */
function tokens(r: () => number, T: number, cols: number, pad: number): { ptr: number; ld: number; rows: Float32Array[] } {
  const ld = (cols + pad) * 4;
  const rows = Array.from({ length: T }, () => normalish(r, cols));
  const all = new Float32Array(T * (cols + pad));
  rows.forEach((x, t) => all.set(x, t * (cols + pad)));
  return { ptr: A.putF32(all, 4), ld, rows };
}

test('matmul_* equals matvec_* per token, bit for bit (f32, f16, int8, q8; with and without bias)', (t) => {
  let seed = 1;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const [rows, cols] of [[1, 1], [3, 7], [4, 8], [9, 17], [13, 129], [17, 300], [37, 260], [64, 768], [70, 2049]] as const) {
      for (const T of [1, 2, 5, 8]) {
        A.reset();
        const r = rng(seed++);
        const m = quantizeMatrix(normalish(r, rows * cols, 0.3), rows, cols, dtype);
        const W = A.putBytes(m.bytes), S = m.scales ? A.putF32(m.scales) : 0;
        const bias = seed % 2 ? A.putF32(uniform(r, rows)) : 0;
        const X = tokens(r, T, cols, seed % 3);
        const ldo = (rows + 3) * 4;
        const out = A.out(T * (rows + 3));
        const scratch = A.alloc(k.batch_scratch_bytes(T, cols));
        if (dtype === 'int8' || dtype === 'q8') k[`matmul_${sfx(dtype) as 'i8' | 'q8'}`](out, ldo, W, S, X.ptr, X.ld, bias, T, rows, cols, scratch);
        else k[`matmul_${dtype}`](out, ldo, W, X.ptr, X.ld, bias, T, rows, cols, scratch);
        const one = A.out(rows), i8s = A.alloc(k.matvec_i8_scratch_bytes(cols));
        for (let tk = 0; tk < T; tk++) {
          const x = X.ptr + tk * X.ld;
          if (dtype === 'int8' || dtype === 'q8') k[`matvec_${sfx(dtype) as 'i8' | 'q8'}`](one, W, S, x, bias, rows, cols, i8s);
          else k[`matvec_${dtype}`](one, W, x, bias, rows, cols);
          const got = A.f32(out + tk * ldo, rows);
          t.is(firstBitMismatch(got, A.f32(one, rows)), null, `${dtype} ${rows}x${cols} T=${T} token ${tk}`);
        }
      }
    }
  }
});

test('matmul_f16: a row with an inf weight takes the exact path, as matvec_f16 does', (t) => {
  A.reset();
  const r = rng(77);
  const rows = 21, cols = 40, T = 3;
  const m = quantizeMatrix(normalish(r, rows * cols, 0.3), rows, cols, 'f16');
  const h = new Uint16Array(m.bytes.buffer, m.bytes.byteOffset, rows * cols);
  h[9 * cols + 5] = 0x7c00; // +inf in row 9 (second 8-row block)
  h[17 * cols + 3] = 0xfc00; // -inf in row 17 (the 4-row block)
  const W = A.putBytes(m.bytes);
  const X = tokens(r, T, cols, 0);
  const out = A.out(T * rows), one = A.out(rows);
  k.matmul_f16(out, rows * 4, W, X.ptr, X.ld, 0, T, rows, cols, A.alloc(k.batch_scratch_bytes(T, cols)));
  for (let tk = 0; tk < T; tk++) {
    k.matvec_f16(one, W, X.ptr + tk * X.ld, 0, rows, cols);
    t.is(firstBitMismatch(A.f32(out + tk * rows * 4, rows), A.f32(one, rows)), null, `token ${tk}`);
  }
});

test('ffn_*_batch equals the one-token FFN kernels per token, bit for bit', (t) => {
  let seed = 500;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const kind of ['relu', 'swiglu'] as const) {
      for (const [d, n] of [[8, 4], [13, 7], [64, 70], [129, 133], [260, 200]] as const) {
        for (const T of [1, 3, 6]) {
          A.reset();
          const r = rng(seed++);
          const hasBias = kind === 'relu' && seed % 2 === 0;
          const L: FfnLayout = { dtype, kind, d, n, hasBias, bundled: seed % 3 !== 0 };
          const nParts = kind === 'relu' ? 2 : 3;
          const R = buildRecords(L, Array.from({ length: nParts }, () => normalish(r, n * d, 0.3)), uniform(r, n, -0.5, 0.2), r);
          const base = A.putBytes(R.bytes);
          const p = R.partOff.map((o) => base + o);
          const X = tokens(r, T, d, 1);
          const ldo = (d + 2) * 4;
          const out = A.out(T * (d + 2));
          const scratch = A.alloc(k.batch_scratch_bytes(T, d)), Hb = A.alloc(T * n * 4);
          const s = sfx(dtype);
          if (kind === 'relu') k[`ffn_relu_${s}_batch`](out, ldo, X.ptr, X.ld, T, d, n, p[0]!, p[1]!, R.stride, hasBias ? 1 : 0, Hb, scratch);
          else k[`ffn_swiglu_${s}_batch`](out, ldo, X.ptr, X.ld, T, d, n, p[0]!, p[1]!, p[2]!, R.stride, Hb, scratch);
          const one = A.out(d);
          let zeros = 0;
          for (let tk = 0; tk < T; tk++) {
            const x = X.ptr + tk * X.ld;
            const H = A.out(n);
            if (kind === 'relu') k[`ffn_relu_${s}`](one, x, d, n, p[0]!, p[1]!, R.stride, hasBias ? 1 : 0, H);
            else k[`ffn_swiglu_${s}`](one, x, d, n, p[0]!, p[1]!, p[2]!, R.stride, H);
            zeros += A.f32(H, n).filter((v) => v === 0).length;
            t.is(firstBitMismatch(A.f32(out + tk * ldo, d), A.f32(one, d)), null, `${kind} ${dtype} d=${d} n=${n} T=${T} token ${tk}`);
          }
          if (kind === 'relu' && n >= 70) t.true(zeros > 0, 'relu data has inactive neurons (the skipped down rows)');
        }
      }
    }
  }
});

test('ffn_relu_f16_batch: an inf weight in a down row and activations >= 2^15 (run alone) stay bit-identical', (t) => {
  A.reset();
  const r = rng(91);
  const d = 24, n = 70, T = 5;
  const L: FfnLayout = { dtype: 'f16', kind: 'relu', d, n, hasBias: false, bundled: true };
  const up = normalish(r, n * d, 0.3);
  for (let j = 0; j < d; j++) up[3 * d + j] = 2000; // neuron 3: huge activation for positive-sum tokens
  const R = buildRecords(L, [up, normalish(r, n * d, 0.3)], null, r);
  const h = new Uint16Array(R.bytes.buffer, R.bytes.byteOffset, R.bytes.length / 2);
  h[(R.partOff[1]! + 10 * R.stride) / 2 + 7] = 0x7c00; // +inf in neuron 10's down row
  const base = A.putBytes(R.bytes);
  const p = R.partOff.map((o) => base + o);
  const X = tokens(r, T, d, 0);
  new Float32Array(k.memory.buffer, X.ptr, T * d).forEach((_, i, a) => { a[i] = Math.abs(a[i]!) * 4; });
  const out = A.out(T * d), one = A.out(d), H = A.out(n);
  k.ffn_relu_f16_batch(out, d * 4, X.ptr, X.ld, T, d, n, p[0]!, p[1]!, R.stride, 0, A.alloc(T * n * 4), A.alloc(k.batch_scratch_bytes(T, d)));
  let large = 0;
  for (let tk = 0; tk < T; tk++) {
    k.ffn_relu_f16(one, X.ptr + tk * X.ld, d, n, p[0]!, p[1]!, R.stride, 0, H);
    large += A.f32(H, n).filter((v) => v >= 32768).length;
    t.is(firstBitMismatch(A.f32(out + tk * d * 4, d), A.f32(one, d)), null, `token ${tk}`);
  }
  t.true(large > 0, 'some activations take the run-alone path');
});
