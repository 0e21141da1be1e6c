// The gated FFN of a resident model in the rows layout (src/engine/ffn.ts
// ResidentFfn): each neuron's gate and up parts stay together in a record
// (`stride` bytes apart, parts as types.ts), while the down projection is kept
// as the matrix it came from, D [d rows][n columns], so the down pass is a
// matvec (one dot per output row) instead of one axpy per neuron: the axpys
// cost ~2x the dots per byte (bench/README "The rows layout").
//
// D holds the down parts' values transposed, their scales as column scales:
//   f32, f16: no scales (S unused);
//   int8: S f32 [n], neuron i's down scale;
//   q8: S f32 [ceil(d / 32)][n], group g of neuron i's down part (rows 32g..32g+31).
// Column scales fold into the coefficients, c_i = h_i * S[g][i] (one rounding),
// and the int8 dots take c quantized as matvec_i8 quantizes x (int16 per
// 128 columns: gemv.ts), so int8 and q8 rows run the integer dots.
//
// Split points (threads build, src/kernels/pool.ts): neurons at multiples of
// 64 (the FFN batch), output rows at multiples of 8, q8 at multiples of 32 (a
// scale group): each row's arithmetic is then the same for any split, and the
// same for a token decoded alone (ffn_rows) and in a prompt block (ffn_rows_batch).

import { prepare_x, gate_up_dots, batchOf, dots } from "./ffn";
import { dots_f32, dots_f16, dots_i8, f16_prepare, quantize_x_scaled, QB, QG } from "./gemv";
import { ffn_batch_act, matmul_rows, fold_scales } from "./batch";
import { glu } from "./activation";
import { HB, FFN_NB, PT, XQ } from "./arena";

const T_F32 = 0, T_F16 = 1, T_I8 = 2, T_Q8 = 3;

/** Where quantize_x puts the block scales of n values quantized to XQ. */
// @ts-ignore: decorator
@inline function xsOf(n: usize): usize {
  return XQ + ((n + QB - 1) / QB) * QB * 2;
}

/**
 * h[i] = act(gate_i · x, up_i · x) for neurons [n0, n1) (n0 a multiple of 64):
 * ffn.ts swiglu_range's dots and activation (int8: the part scales folded in
 * as there), without its down pass.
 */
export function rows_act(t: i32, h: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, stride: i32, n0: i32, n1: i32, afn: i32, athr: f32): void {
  const dd = <usize>d, st = <usize>stride, e = <usize>n1, nb = batchOf(t);
  prepare_x(t, x, dd);
  for (let b = <usize>n0; b < e; b += nb) {
    const m = min(nb, e - b);
    const hb = h + (b << 2);
    // gate dots to G, up dots to U
    let G = HB, U = HB + (FFN_NB << 2);
    if (t != T_F32 && (m & 3) == 0 && up == gate + (st >> 1)) {
      // the batch's gate and up rows in record order, g0 u0 g1 u1 ..., as one 2m-row pass: the
      // weights stream on instead of skipping every other part (twice as fast from memory:
      // bench/README "Far rows"); with m a multiple of 4 every row keeps its 4-row arithmetic
      // (f32's dots2 already reads both rows of a record together)
      dots(t, HB, gate + b * st, st >> 1, 0, 0, x, m << 1, dd);
      G = hb;
      U = PT;
      for (let k: usize = 0; k < m; k++) {
        store<f32>(G + (k << 2), load<f32>(HB + (k << 3)));
        store<f32>(U + (k << 2), load<f32>(HB + (k << 3), 4));
      }
    } else gate_up_dots(t, G, U, gate, up, st, 0, b, x, m, dd);
    if (t == T_I8) fold_scales(G, 0, U, 1, m, gate + b * st, up + b * st, st, dd);
    glu(hb, G, U, m, afn, athr);
  }
}

/** dst[i] = h[i] * s[i] for n values (in place allowed): the coefficients of a column-scaled down matrix. */
function fold_into(dst: usize, h: usize, s: usize, n: usize): void {
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) v128.store(dst + (i << 2), f32x4.mul(v128.load(h + (i << 2)), v128.load(s + (i << 2))));
  for (; i < n; i++) store<f32>(dst + (i << 2), load<f32>(h + (i << 2)) * load<f32>(s + (i << 2)));
}

/** out[r] = D_r · c for rows [a, b) of an int8 D, c = h * s (s: n column scales). */
function i8_rows(out: usize, D: usize, s: usize, h: usize, n: usize, a: usize, b: usize): void {
  quantize_x_scaled(XQ, xsOf(n), h, s, n);
  dots_i8(out + (a << 2), D + a * n, n, XQ, xsOf(n), <i32>(b - a), <i32>n);
}

/**
 * out[r] = D_r · h (with the column scales S folded in) for output rows
 * [r0, r1) of one token; q8 runs each scale group [32g, 32g + 32) as one call.
 */
export function rows_down(t: i32, out: usize, d: i32, n: i32, D: usize, S: usize, h: usize, r0: i32, r1: i32): void {
  const dd = <usize>d, nn = <usize>n, a = <usize>r0, b = <usize>r1;
  if (t == T_F32) dots_f32(out + (a << 2), D + a * (nn << 2), nn << 2, h, r1 - r0, n);
  else if (t == T_F16) dots_f16(out + (a << 2), D + a * (nn << 1), nn << 1, h, r1 - r0, n, f16_prepare(h, nn));
  else if (t == T_I8) i8_rows(out, D, S, h, nn, a, b);
  else {
    for (let g = a / QG; g * QG < b; g++) i8_rows(out, D, S + ((g * nn) << 2), h, nn, max(a, g * QG), min(b, min(dd, (g + 1) * QG)));
  }
}

/**
 * The prompt's down pass, out[t][r] for rows [r0, r1) of T tokens (H: T rows
 * of n f32, `scratch` batch_scratch_bytes(T, n)): f32, f16 and int8 as one
 * batched matmul (int8: H already folded by rows_fold), each row equal to
 * rows_down's; q8 token by token, group by group (rows_down's calls).
 */
export function rows_batch_down(t: i32, out: usize, ldo: i32, T: i32, d: i32, n: i32, D: usize, S: usize, H: usize, scratch: usize, r0: i32, r1: i32): void {
  const nn = <usize>n;
  if (t != T_Q8) {
    // int8: scales 0 = none (the coefficients carry them), as rows_down's dots
    matmul_rows(t, out, ldo, D, 0, H, n << 2, 0, T, d, n, scratch, r0, r1);
    return;
  }
  for (let k: usize = 0; k < <usize>T; k++) rows_down(t, out + k * <usize>ldo, d, n, D, S, H + k * (nn << 2), r0, r1);
}

/** H[t][i] *= s[i] for T rows of n: int8's column scales folded into a block's activations. */
export function rows_fold(H: usize, T: i32, n: i32, s: usize): void {
  const nn = <usize>n;
  for (let k: usize = 0; k < <usize>T; k++) fold_into(H + k * (nn << 2), H + k * (nn << 2), s, nn);
}

// ---------------------------------------------------------------- whole calls (both builds)
// t: 0 f32, 1 f16, 2 int8, 3 q8; int8 and q8 need d and n at most 32768.

/**
 * out[d] = the gated FFN of x in the rows layout: h (n f32, the activations,
 * kept) from the [gate | up] records, then out = D h.
 */
export function ffn_rows(t: i32, out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, stride: i32, D: usize, S: usize, h: usize, afn: i32, athr: f32): void {
  rows_act(t, h, x, d, n, gate, up, stride, 0, n, afn, athr);
  rows_down(t, out, d, n, D, S, h, 0, d);
}

/**
 * ffn_rows for T tokens (x rows ldx bytes apart, out rows ldo), each equal to
 * ffn_rows on it: H has T x n f32 (int8: left folded), `scratch`
 * batch_scratch_bytes(T, max(d, n)) bytes.
 */
export function ffn_rows_batch(t: i32, out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, stride: i32, D: usize, S: usize, H: usize, scratch: usize, afn: i32, athr: f32): void {
  ffn_batch_act(t | 8, x, ldx, T, d, n, gate, up, stride, H, scratch, 0, n, afn, athr);
  if (t == T_I8) rows_fold(H, T, n, S);
  rows_batch_down(t, out, ldo, T, d, n, D, S, H, scratch, 0, d);
}
