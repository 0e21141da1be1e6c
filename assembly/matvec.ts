// Dense matrix-vector products: out[r] = W[r,:] . x (+ bias[r]), W row-major
// [rows][cols]. The blocked loops live in gemv.ts (shared with the FFN kernels).

import { dots_f32, dots_f16, dots_i8, dots_q8_p, f16_prepare, quantize_x, qx_bytes, QB, QG } from "./gemv";

/** out[r] += bias[r] (no-op when bias is 0). */
// @ts-ignore: decorator
@inline function addBias(out: usize, bias: usize, rows: i32): void {
  if (!bias) return;
  const n = <usize>rows;
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) v128.store(out + (i << 2), f32x4.add(v128.load(out + (i << 2)), v128.load(bias + (i << 2))));
  for (; i < n; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) + load<f32>(bias + (i << 2)));
}

export function matvec_f32(out: usize, W: usize, x: usize, bias: usize, rows: i32, cols: i32): void {
  dots_f32(out, W, <usize>cols << 2, x, rows, cols);
  addBias(out, bias, rows);
}

export function matvec_f16(out: usize, W: usize, x: usize, bias: usize, rows: i32, cols: i32): void {
  dots_f16(out, W, <usize>cols << 1, x, rows, cols, f16_prepare(x, <usize>cols));
  addBias(out, bias, rows);
}

/** Scratch for matvec_i8: x as int16 in blocks of 128 columns + one f32 scale per block (see gemv.ts). */
export function matvec_i8_scratch_bytes(cols: i32): i32 {
  return <i32>((qx_bytes(<usize>cols) + 15) & ~15);
}

export function matvec_i8(out: usize, W: usize, scales: usize, x: usize, bias: usize, rows: i32, cols: i32, scratch: usize): void {
  const n = <usize>cols;
  const xq = scratch;
  const xs = scratch + ((n + QB - 1) / QB) * QB * 2;
  quantize_x(xq, xs, x, n);
  dots_i8(out, W, n, xq, xs, rows, cols);
  // row scales (and bias) applied once per row, after the integer/block sums
  scaleBias(out, scales, bias, <usize>rows);
}

/**
 * q8: W int8 [rows][cols], `scales` f32 [rows][ceil(cols / 32)] (one per group
 * of 32 columns of a row); scratch as matvec_i8 (matvec_i8_scratch_bytes).
 */
export function matvec_q8(out: usize, W: usize, scales: usize, x: usize, bias: usize, rows: i32, cols: i32, scratch: usize): void {
  const n = <usize>cols;
  const xs = scratch + ((n + QB - 1) / QB) * QB * 2;
  quantize_x(scratch, xs, x, n);
  dots_q8_p(out, W, n, scales, ((n + QG - 1) / QG) << 2, 0, 0, scratch, xs, rows, cols);
  addBias(out, bias, rows);
}

/** out[i] = out[i] * scales[i] (+ bias[i]) for i < m. */
// @ts-ignore: decorator
@inline function scaleBias(out: usize, scales: usize, bias: usize, m: usize): void {
  let i: usize = 0;
  if (bias) {
    for (; i + 4 <= m; i += 4) {
      v128.store(out + (i << 2), f32x4.add(f32x4.mul(v128.load(out + (i << 2)), v128.load(scales + (i << 2))), v128.load(bias + (i << 2))));
    }
    for (; i < m; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) * load<f32>(scales + (i << 2)) + load<f32>(bias + (i << 2)));
  } else {
    for (; i + 4 <= m; i += 4) v128.store(out + (i << 2), f32x4.mul(v128.load(out + (i << 2)), v128.load(scales + (i << 2))));
    for (; i < m; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) * load<f32>(scales + (i << 2)));
  }
}

// ---------------------------------------------------------------- row ranges (threads build)
//
// matvec over rows [r0, r1) only, for src/kernels/pool.ts. Bit-identical to the
// whole call when r0 is a multiple of 8 and r1 is a multiple of 8 or rows: the
// last rows % 4 rows of an f16 or int8 call (q4: rows % 8) take a single-row
// path with its own arithmetic, so such a split keeps every row's arithmetic.

export function matvec_f32_rows(out: usize, W: usize, x: usize, bias: usize, rows: i32, cols: i32, r0: i32, r1: i32): void {
  const o = <usize>r0 << 2;
  dots_f32(out + o, W + <usize>r0 * (<usize>cols << 2), <usize>cols << 2, x, r1 - r0, cols);
  addBias(out + o, bias ? bias + o : 0, r1 - r0);
}

export function matvec_f16_rows(out: usize, W: usize, x: usize, bias: usize, rows: i32, cols: i32, r0: i32, r1: i32): void {
  const o = <usize>r0 << 2;
  // every thread scales x into its own XQ (arena.ts thread scratch)
  dots_f16(out + o, W + <usize>r0 * (<usize>cols << 1), <usize>cols << 1, x, r1 - r0, cols, f16_prepare(x, <usize>cols));
  addBias(out + o, bias ? bias + o : 0, r1 - r0);
}

/** matvec_i8's quantization of x into `scratch` (once per call, before the row ranges). */
export function matvec_i8_prepare(x: usize, cols: i32, scratch: usize): void {
  const n = <usize>cols;
  quantize_x(scratch, scratch + ((n + QB - 1) / QB) * QB * 2, x, n);
}

/** matvec_i8 rows [r0, r1), x already quantized in `scratch` by matvec_i8_prepare (read only here). */
export function matvec_i8_rows(out: usize, W: usize, scales: usize, bias: usize, rows: i32, cols: i32, scratch: usize, r0: i32, r1: i32): void {
  const n = <usize>cols;
  const xs = scratch + ((n + QB - 1) / QB) * QB * 2;
  const o = <usize>r0 << 2;
  dots_i8(out + o, W + <usize>r0 * n, n, scratch, xs, r1 - r0, cols);
  scaleBias(out + o, scales + o, bias ? bias + o : 0, <usize>(r1 - r0));
}

/** matvec_q8 rows [r0, r1), x already quantized in `scratch` by matvec_i8_prepare (read only here). */
export function matvec_q8_rows(out: usize, W: usize, scales: usize, bias: usize, rows: i32, cols: i32, scratch: usize, r0: i32, r1: i32): void {
  const n = <usize>cols;
  const xs = scratch + ((n + QB - 1) / QB) * QB * 2;
  const o = <usize>r0 << 2, sst = ((n + QG - 1) / QG) << 2;
  dots_q8_p(out + o, W + <usize>r0 * n, n, scales + <usize>r0 * sst, sst, 0, 0, scratch, xs, r1 - r0, cols);
  addBias(out + o, bias ? bias + o : 0, r1 - r0);
}
