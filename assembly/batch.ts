// Batched kernels for prompt processing: T tokens through the same weights,
// so each weight row is loaded from memory once per block instead of once per
// token (rows go in pairs against tokens in pairs: a 2x2 register tile).
//
// Every (row, token) result is bit-identical to the one-token kernel's
// (matvec.ts, ffn.ts) for that token: each accumulator follows the same
// summation order as gemv.ts — rows [0, rows & ~3) the 4-row groups' order
// ("A": per 8 columns, acc += w[0:4]x[0:4] + w[4:8]x[4:8]), the last rows & 3
// rows the single-row order ("B"); every q8 row has the one q8 order of
// gemv.ts, every q4 row the one q4 order of q4.ts (one row against four
// tokens, then two: q4.ts q4_tile4 / q4_tile, each group decoded once for
// all of them) — so a prompt prefilled in blocks yields the same logits as
// token-by-token decoding.
//
// X rows are `ldx` bytes apart, out rows `ldo` bytes apart (out[t][r]). All
// scratch comes from the host (batch_scratch_bytes): nothing static, so any
// number of instances may share the memory. The *_rows / ffn_batch_act /
// ffn_batch_down range kernels let the threads build split one call (rows at
// multiples of 8, neurons at multiples of NB, output columns at multiples of
// 8, or 32 for q8 and q4), each thread with its own scratch, with the same bits for
// any split.

import { hsum, f16_bits_lo, f16_bits_hi, F16_SCALE, dot2 } from "./simd";
import { f32_tail, f32_row1, f16_row_exact, f16_tail, f16_xscale, i8_row, i8_rest, quantize_x, qx_bytes, QB, QG, q8_row1, q8_finish, q8_fold_k } from "./gemv";
import { axpy4_f32, axpy1_f32, q8ScaleAt, ffn_relu_i8, ffn_swiglu_i8, ffn_relu_q8, ffn_swiglu_q8, ffnRanges, rangeStart, add_partial } from "./ffn";
import { dequant_f16, dequant_i8 } from "./dequant";
import { MAXD_I8 } from "./arena";
import { glu } from "./activation";
import { q4_quantize, q4_tile, q4_tile4, q4_tail, q4_row, q4_decode_down, q4_scale, q4groups, q4ScaleAt, q4BiasAt, ffn_relu_q4, ffn_swiglu_q4 } from "./q4";

const T_F32 = 0, T_F16 = 1, T_I8 = 2, T_Q8 = 3, T_Q4 = 4;
/** Neurons per FFN batch: as ffn.ts, so each up/gate row keeps its place in the 4-row groups. */
const NB: usize = 64;
/** Per-token down queue: 4 u32 pointers, 4 f32 coefficients, a count (at 32), 4 u32 q8 scale pointers (at 48). */
const QSTRIDE: usize = 64;

// ---------------------------------------------------------------- scratch layout
//
// PX   T x ldp      prepared x per token (f16: x * k_t; int8: quantized blocks)
// KS   T f32        f16 scale k_t per token
// DEC  8 rows       f16 rows of one row block, decoded to f32 patterns
// ACC  64 B         a tile's four accumulators
// UB   T x NB f32   up dots of one neuron batch (gated)
// DD   NB rows      one batch of down rows decoded to f32 (f16, int8)
// PEND T x 3 rows   down rows a token's queue still holds when DD is refilled
// Q    T x 64 B     per-token down queues
// RG   T u32        tokens of a batch whose down groups are regular
// PR   T x cols f32 one neuron range's partial down sums (ffn.ts neuron ranges)

// @ts-ignore: decorator
@inline function colsR(cols: usize): usize { return (cols + 7) & ~7; }
/** Bytes per token of prepared x (f16: x * k; int8: quantized blocks + scales). */
// @ts-ignore: decorator
@inline function ldp(cols: usize): usize { return max<usize>(colsR(cols) << 2, (qx_bytes(cols) + 15) & ~15); }
// @ts-ignore: decorator
@inline function offKS(T: usize, cols: usize): usize { return T * ldp(cols); }
// @ts-ignore: decorator
@inline function offDEC(T: usize, cols: usize): usize { return (offKS(T, cols) + (T << 2) + 15) & ~15; }
// @ts-ignore: decorator
@inline function offACC(T: usize, cols: usize): usize { return offDEC(T, cols) + (colsR(cols) << 5); }
// @ts-ignore: decorator
@inline function offUB(T: usize, cols: usize): usize { return offACC(T, cols) + 64; }
// @ts-ignore: decorator
@inline function offDD(T: usize, cols: usize): usize { return offUB(T, cols) + T * (NB << 2); }
// @ts-ignore: decorator
@inline function offPEND(T: usize, cols: usize): usize { return offDD(T, cols) + NB * (colsR(cols) << 2); }
// @ts-ignore: decorator
@inline function offQ(T: usize, cols: usize): usize { return offPEND(T, cols) + T * 3 * (colsR(cols) << 2); }
// @ts-ignore: decorator
@inline function offRG(T: usize, cols: usize): usize { return offQ(T, cols) + T * QSTRIDE; }

// @ts-ignore: decorator
@inline function offPR(T: usize, cols: usize): usize { return (offRG(T, cols) + (T << 2) + 15) & ~15; }

/** Scratch bytes for any batched kernel call (or range of one) with up to T tokens and up to `cols` columns (FFN: d). */
export function batch_scratch_bytes(T: i32, cols: i32): i32 {
  return <i32>(offPR(<usize>T, <usize>cols) + <usize>T * (colsR(<usize>cols) << 2));
}

// ---------------------------------------------------------------- tiles

/** Order-A accumulators of rows p0, p1 against x0, x1 over ncols (multiple of 8), stored at acc as r0x0, r0x1, r1x0, r1x1. */
function tile_f32(acc: usize, p0: usize, p1: usize, x0: usize, x1: usize, ncols: usize): void {
  let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
  const end = ncols << 2;
  for (let c: usize = 0; c < end; c += 32) {
    const w0a = v128.load(p0 + c), w0b = v128.load(p0 + c, 16);
    const w1a = v128.load(p1 + c), w1b = v128.load(p1 + c, 16);
    const xa = v128.load(x0 + c), xb = v128.load(x0 + c, 16);
    a00 = dot2(a00, w0a, xa, w0b, xb);
    a10 = dot2(a10, w1a, xa, w1b, xb);
    const ya = v128.load(x1 + c), yb = v128.load(x1 + c, 16);
    a01 = dot2(a01, w0a, ya, w0b, yb);
    a11 = dot2(a11, w1a, ya, w1b, yb);
  }
  v128.store(acc, a00); v128.store(acc, a01, 16); v128.store(acc, a10, 32); v128.store(acc, a11, 48);
}

/** As tile_f32 for int8 rows against quantized tokens (q, s: int16 blocks and block scales), nb full blocks (gemv.ts i8_rows4 order). */
function tile_i8(acc: usize, p0: usize, p1: usize, q0: usize, s0: usize, q1: usize, s1: usize, nb: usize): void {
  let f00 = f32x4.splat(0), f01 = f32x4.splat(0), f10 = f32x4.splat(0), f11 = f32x4.splat(0);
  for (let b: usize = 0; b < nb; b++) {
    let a00 = i32x4.splat(0), a01 = i32x4.splat(0), a10 = i32x4.splat(0), a11 = i32x4.splat(0);
    const c0 = b * QB;
    for (let c = c0; c < c0 + QB; c += 16) {
      const w0a = v128.load8x8_s(p0 + c), w0b = v128.load8x8_s(p0 + c, 8);
      const w1a = v128.load8x8_s(p1 + c), w1b = v128.load8x8_s(p1 + c, 8);
      const xa = v128.load(q0 + (c << 1)), xb = v128.load(q0 + (c << 1), 16);
      a00 = i32x4.add(a00, i32x4.add(i32x4.dot_i16x8_s(w0a, xa), i32x4.dot_i16x8_s(w0b, xb)));
      a10 = i32x4.add(a10, i32x4.add(i32x4.dot_i16x8_s(w1a, xa), i32x4.dot_i16x8_s(w1b, xb)));
      const ya = v128.load(q1 + (c << 1)), yb = v128.load(q1 + (c << 1), 16);
      a01 = i32x4.add(a01, i32x4.add(i32x4.dot_i16x8_s(w0a, ya), i32x4.dot_i16x8_s(w0b, yb)));
      a11 = i32x4.add(a11, i32x4.add(i32x4.dot_i16x8_s(w1a, ya), i32x4.dot_i16x8_s(w1b, yb)));
    }
    const sx = v128.load32_splat(s0 + (b << 2)), sy = v128.load32_splat(s1 + (b << 2));
    f00 = f32x4.add(f00, f32x4.mul(f32x4.convert_i32x4_s(a00), sx));
    f10 = f32x4.add(f10, f32x4.mul(f32x4.convert_i32x4_s(a10), sx));
    f01 = f32x4.add(f01, f32x4.mul(f32x4.convert_i32x4_s(a01), sy));
    f11 = f32x4.add(f11, f32x4.mul(f32x4.convert_i32x4_s(a11), sy));
  }
  v128.store(acc, f00); v128.store(acc, f01, 16); v128.store(acc, f10, 32); v128.store(acc, f11, 48);
}

// ---------------------------------------------------------------- cores (no bias, no int8 row scale)

/**
 * out[t][r] = W_r . x_t as dots_f32 computes it, for rows [r0, r1) of an
 * m-row matrix (r0 a multiple of 8, or 0); rows at W + r*stride.
 */
function core_f32(out: usize, ldo: usize, W: usize, stride: usize, X: usize, ldx: usize, T: usize, m: usize, n: usize, S: usize, r0: usize, r1: usize): void {
  const main = n & ~7, mA = min(m & ~3, r1);
  const acc = S + offACC(T, n);
  let r = r0;
  for (; r < mA; r += 2) {
    const p0 = W + r * stride, p1 = p0 + stride;
    for (let t: usize = 0; t < T; t += 2) {
      const two = t + 1 < T;
      const x0 = X + t * ldx, x1 = two ? x0 + ldx : x0;
      tile_f32(acc, p0, p1, x0, x1, main);
      const o = out + t * ldo + (r << 2);
      store<f32>(o, hsum(v128.load(acc)) + f32_tail(p0, x0, main, n));
      store<f32>(o, hsum(v128.load(acc, 32)) + f32_tail(p1, x0, main, n), 4);
      if (two) {
        store<f32>(o + ldo, hsum(v128.load(acc, 16)) + f32_tail(p0, x1, main, n));
        store<f32>(o + ldo, hsum(v128.load(acc, 48)) + f32_tail(p1, x1, main, n), 4);
      }
    }
  }
  for (; r < r1; r++) {
    const p = W + r * stride;
    for (let t: usize = 0; t < T; t++) {
      const x = X + t * ldx;
      store<f32>(out + t * ldo + (r << 2), hsum(f32_row1(p, x, main)) + f32_tail(p, x, main, n));
    }
  }
}

/** f16: per token k_t = f16_xscale(x_t) and x_t * k_t over the main columns (gemv.ts f16_prepare). */
function prepare_f16(X: usize, ldx: usize, T: usize, n: usize, S: usize): void {
  const main = n & ~7, lp = ldp(n), ks = S + offKS(T, n);
  for (let t: usize = 0; t < T; t++) {
    const x = X + t * ldx, px = S + t * lp;
    const k = f16_xscale(x, n);
    store<f32>(ks + (t << 2), k);
    const K = f32x4.splat(k);
    for (let c: usize = 0; c < main; c += 4) v128.store(px + (c << 2), f32x4.mul(v128.load(x + (c << 2)), K));
  }
}

/** Writes the f32 patterns of f16 row p (finite halves; main columns) to dst; returns true if an inf/NaN half was seen. */
function decode_f16(dst: usize, p: usize, main: usize): bool {
  const M = i16x8.splat(<i16>0x8fff);
  let det = i16x8.splat(0);
  for (let c: usize = 0; c < main; c += 8) {
    const h = v128.load(p + (c << 1));
    const u = v128.and(i16x8.shr_s(h, 3), M), l = i16x8.shl(h, 13);
    v128.store(dst + (c << 2), f16_bits_lo(l, u));
    v128.store(dst + (c << 2), f16_bits_hi(l, u), 16);
    det = i16x8.max_u(det, i16x8.shl(h, 1));
  }
  return v128.any_true(i16x8.ge_u(det, i16x8.splat(<i16>0xf800)));
}

/**
 * out[t][r] = W_r . x_t as dots_f16 computes it (prepare_f16 first), rows
 * [r0, r1) (r0 a multiple of 8). Rows go in dots_f16's blocks (8s, then a 4),
 * each decoded once for all tokens; a block with an inf/NaN weight is computed
 * with the exact decode, as there.
 */
function core_f16(out: usize, ldo: usize, W: usize, stride: usize, X: usize, ldx: usize, T: usize, m: usize, n: usize, S: usize, r0: usize, r1: usize): void {
  const main = n & ~7, lp = ldp(n), ks = S + offKS(T, n), rowBytes = colsR(n) << 2;
  const dec = S + offDEC(T, n), acc = S + offACC(T, n);
  let r = r0;
  while (r + 4 <= m && r < r1) {
    const nr: usize = r + 8 <= m ? 8 : 4;
    let special: u32 = 0; // bit i: row r + i has an inf/NaN weight (it alone takes the exact path, as in dots_f16_p)
    for (let i: usize = 0; i < nr; i++) if (decode_f16(dec + i * rowBytes, W + (r + i) * stride, main)) special |= 1 << <u32>i;
    for (let i: usize = 0; i < nr; i += 2) {
      const p0 = W + (r + i) * stride, p1 = p0 + stride;
      const e0 = (special >> <u32>i) & 1, e1 = (special >> <u32>(i + 1)) & 1;
      if (e0 && e1) {
        for (let t: usize = 0; t < T; t++) {
          const x = X + t * ldx, o = out + t * ldo + ((r + i) << 2);
          store<f32>(o, f16_row_exact(p0, x, n));
          store<f32>(o, f16_row_exact(p1, x, n), 4);
        }
        continue;
      }
      const d0 = dec + i * rowBytes, d1 = d0 + rowBytes;
      for (let t: usize = 0; t < T; t += 2) {
        const two = t + 1 < T;
        const t1 = two ? t + 1 : t;
        const x0 = X + t * ldx, x1 = X + t1 * ldx;
        tile_f32(acc, d0, d1, S + t * lp, S + t1 * lp, main);
        const post0: f32 = F16_SCALE / load<f32>(ks + (t << 2)), post1: f32 = F16_SCALE / load<f32>(ks + (t1 << 2));
        const o = out + t * ldo + ((r + i) << 2);
        store<f32>(o, hsum(v128.load(acc)) * post0 + f16_tail(p0, x0, main, n));
        store<f32>(o, hsum(v128.load(acc, 32)) * post0 + f16_tail(p1, x0, main, n), 4);
        if (two) {
          store<f32>(o + ldo, hsum(v128.load(acc, 16)) * post1 + f16_tail(p0, x1, main, n));
          store<f32>(o + ldo, hsum(v128.load(acc, 48)) * post1 + f16_tail(p1, x1, main, n), 4);
        }
        if (e0 | e1) { // one row of the pair is special: overwrite its (garbage) fast results
          const pe = e0 ? p0 : p1, oe = o + (e0 ? 0 : 4);
          store<f32>(oe, f16_row_exact(pe, x0, n));
          if (two) store<f32>(oe + ldo, f16_row_exact(pe, x1, n));
        }
      }
    }
    r += nr;
  }
  for (; r < r1; r++) {
    const p = W + r * stride;
    for (let t: usize = 0; t < T; t++) store<f32>(out + t * ldo + (r << 2), f16_row_exact(p, X + t * ldx, n));
  }
}

/** int8: each token's x quantized as quantize_x does (gemv.ts). */
function prepare_i8(X: usize, ldx: usize, T: usize, n: usize, S: usize): void {
  const lp = ldp(n), nb = (n + QB - 1) / QB;
  for (let t: usize = 0; t < T; t++) {
    const q = S + t * lp;
    quantize_x(q, q + nb * QB * 2, X + t * ldx, n);
  }
}

/** out[t][r] = sum_b scale_b(x_t) * (W_r . q_t) as dots_i8 computes it, rows [r0, r1) (prepare_i8 first; row scales not applied). */
function core_i8(out: usize, ldo: usize, W: usize, stride: usize, T: usize, m: usize, n: usize, S: usize, r0: usize, r1: usize): void {
  const lp = ldp(n), nb = (n + QB - 1) / QB, full = n / QB, mA = min(m & ~3, r1);
  const acc = S + offACC(T, n);
  let r = r0;
  for (; r < mA; r += 2) {
    const p0 = W + r * stride, p1 = p0 + stride;
    for (let t: usize = 0; t < T; t += 2) {
      const two = t + 1 < T;
      const q0 = S + t * lp, q1 = two ? q0 + lp : q0;
      const s0 = q0 + nb * QB * 2, s1 = q1 + nb * QB * 2;
      tile_i8(acc, p0, p1, q0, s0, q1, s1, full);
      const o = out + t * ldo + (r << 2);
      store<f32>(o, hsum(v128.load(acc)) + i8_rest(p0, q0, s0, full, n));
      store<f32>(o, hsum(v128.load(acc, 32)) + i8_rest(p1, q0, s0, full, n), 4);
      if (two) {
        store<f32>(o + ldo, hsum(v128.load(acc, 16)) + i8_rest(p0, q1, s1, full, n));
        store<f32>(o + ldo, hsum(v128.load(acc, 48)) + i8_rest(p1, q1, s1, full, n), 4);
      }
    }
  }
  for (; r < r1; r++) {
    const p = W + r * stride;
    for (let t: usize = 0; t < T; t++) {
      const q = S + t * lp;
      store<f32>(out + t * ldo + (r << 2), i8_row(p, q, q + nb * QB * 2, 0, n));
    }
  }
}

/**
 * q8: the F accumulators (gemv.ts q8 order) of rows p0, p1 (scales sp0, sp1)
 * against quantized tokens (q0, s0), (q1, s1) over ng full groups, stored at
 * acc as r0x0, r0x1, r1x0, r1x1.
 */
function tile_q8(acc: usize, p0: usize, p1: usize, sp0: usize, sp1: usize, q0: usize, s0: usize, q1: usize, s1: usize, ng: usize): void {
  let f00 = f32x4.splat(0), f01 = f32x4.splat(0), f10 = f32x4.splat(0), f11 = f32x4.splat(0);
  for (let g: usize = 0; g < ng; g++) {
    // each weight vector loaded once for both tokens; the i32 lanes are q8_group's (exact sums)
    let a00 = i32x4.splat(0), a01 = i32x4.splat(0), a10 = i32x4.splat(0), a11 = i32x4.splat(0);
    const c0 = g << 5;
    for (let c = c0; c < c0 + 32; c += 16) {
      const w0a = v128.load8x8_s(p0 + c), w0b = v128.load8x8_s(p0 + c, 8);
      const w1a = v128.load8x8_s(p1 + c), w1b = v128.load8x8_s(p1 + c, 8);
      const xa = v128.load(q0 + (c << 1)), xb = v128.load(q0 + (c << 1), 16);
      a00 = i32x4.add(a00, i32x4.add(i32x4.dot_i16x8_s(w0a, xa), i32x4.dot_i16x8_s(w0b, xb)));
      a10 = i32x4.add(a10, i32x4.add(i32x4.dot_i16x8_s(w1a, xa), i32x4.dot_i16x8_s(w1b, xb)));
      const ya = v128.load(q1 + (c << 1)), yb = v128.load(q1 + (c << 1), 16);
      a01 = i32x4.add(a01, i32x4.add(i32x4.dot_i16x8_s(w0a, ya), i32x4.dot_i16x8_s(w0b, yb)));
      a11 = i32x4.add(a11, i32x4.add(i32x4.dot_i16x8_s(w1a, ya), i32x4.dot_i16x8_s(w1b, yb)));
    }
    // q8_fold's arithmetic: F + convert(a) * fround(ws * xs), through the same q8_fold_k
    const so = g << 2, xo = (g >> 2) << 2;
    const X0 = v128.load32_splat(s0 + xo), X1 = v128.load32_splat(s1 + xo);
    const W0 = v128.load32_splat(sp0 + so), W1 = v128.load32_splat(sp1 + so);
    f00 = q8_fold_k(f00, a00, f32x4.mul(W0, X0));
    f10 = q8_fold_k(f10, a10, f32x4.mul(W1, X0));
    f01 = q8_fold_k(f01, a01, f32x4.mul(W0, X1));
    f11 = q8_fold_k(f11, a11, f32x4.mul(W1, X1));
  }
  v128.store(acc, f00); v128.store(acc, f01, 16); v128.store(acc, f10, 32); v128.store(acc, f11, 48);
}

/**
 * out[t][r] = W_r . x_t as dots_q8_p computes it, rows [r0, r1) (prepare_i8
 * first); row r's values at W + r*stride, its scales at Sc + r*sstride.
 */
function core_q8(out: usize, ldo: usize, W: usize, stride: usize, Sc: usize, sstride: usize, T: usize, n: usize, S: usize, r0: usize, r1: usize): void {
  const lp = ldp(n), nb = (n + QB - 1) / QB, ng = n / QG;
  const acc = S + offACC(T, n);
  let r = r0;
  for (; r + 2 <= r1; r += 2) {
    const p0 = W + r * stride, p1 = p0 + stride;
    const c0 = Sc + r * sstride, c1 = c0 + sstride;
    for (let t: usize = 0; t < T; t += 2) {
      const two = t + 1 < T;
      const q0 = S + t * lp, q1 = two ? q0 + lp : q0;
      const s0 = q0 + nb * QB * 2, s1 = q1 + nb * QB * 2;
      tile_q8(acc, p0, p1, c0, c1, q0, s0, q1, s1, ng);
      const o = out + t * ldo + (r << 2);
      store<f32>(o, q8_finish(v128.load(acc), p0, c0, q0, s0, n));
      store<f32>(o, q8_finish(v128.load(acc, 32), p1, c1, q0, s0, n), 4);
      if (two) {
        store<f32>(o + ldo, q8_finish(v128.load(acc, 16), p0, c0, q1, s1, n));
        store<f32>(o + ldo, q8_finish(v128.load(acc, 48), p1, c1, q1, s1, n), 4);
      }
    }
  }
  for (; r < r1; r++) {
    const p = W + r * stride, c = Sc + r * sstride;
    for (let t: usize = 0; t < T; t++) {
      const q = S + t * lp, xs = q + nb * QB * 2;
      store<f32>(out + t * ldo + (r << 2), q8_finish(q8_row1(p, c, q, xs, ng), p, c, q, xs, n));
    }
  }
}

/** q4: each token's x quantized and reordered as q4_quantize does (q4.ts). */
function prepare_q4(X: usize, ldx: usize, T: usize, n: usize, S: usize): void {
  const lp = ldp(n);
  for (let t: usize = 0; t < T; t++) q4_quantize(S + t * lp, X + t * ldx, n);
}

/**
 * out[t][r] = W_r . x_t as q4.ts dots_q4_p computes it (every row has the one
 * q4 order), rows [r0, r1) (prepare_q4 first); row r's values at W + r*stride,
 * its f16 scales at Sc + r*sstride. One row against four tokens at a time
 * (8-17% faster than two at the model shapes: the decode is shared by more).
 */
function core_q4(out: usize, ldo: usize, W: usize, stride: usize, Sc: usize, sstride: usize, T: usize, n: usize, S: usize, r0: usize, r1: usize): void {
  const lp = ldp(n), xo = ((n + QB - 1) / QB) * QB * 2, G = q4groups(n), nblk = G >> 2;
  const acc = S + offACC(T, n);
  for (let r = r0; r < r1; r++) {
    const p = W + r * stride, s = Sc + r * sstride;
    let t: usize = 0;
    for (; t + 4 <= T; t += 4) {
      const q0 = S + t * lp, q1 = q0 + lp, q2 = q1 + lp, q3 = q2 + lp;
      q4_tile4(acc, p, s, q0, q0 + xo, q1, q1 + xo, q2, q2 + xo, q3, q3 + xo, nblk);
      const o = out + t * ldo + (r << 2);
      store<f32>(o, hsum(v128.load(acc)) + q4_tail(p, s, q0, q0 + xo, nblk, G));
      store<f32>(o + ldo, hsum(v128.load(acc, 16)) + q4_tail(p, s, q1, q1 + xo, nblk, G));
      store<f32>(o + 2 * ldo, hsum(v128.load(acc, 32)) + q4_tail(p, s, q2, q2 + xo, nblk, G));
      store<f32>(o + 3 * ldo, hsum(v128.load(acc, 48)) + q4_tail(p, s, q3, q3 + xo, nblk, G));
    }
    for (; t + 2 <= T; t += 2) {
      const q0 = S + t * lp, q1 = q0 + lp;
      q4_tile(acc, p, s, q0, q0 + xo, q1, q1 + xo, nblk);
      const o = out + t * ldo + (r << 2);
      store<f32>(o, hsum(v128.load(acc)) + q4_tail(p, s, q0, q0 + xo, nblk, G));
      store<f32>(o + ldo, hsum(v128.load(acc, 16)) + q4_tail(p, s, q1, q1 + xo, nblk, G));
    }
    if (t < T) {
      const q = S + t * lp;
      store<f32>(out + t * ldo + (r << 2), q4_row(p, s, q, q + xo, G));
    }
  }
}

// ---------------------------------------------------------------- matmul (dense layers)

/**
 * out[t][r] = W_r . x_t (+ bias[r]) for rows [r0, r1) of every token, each
 * equal to matvec_* (t: 0 f32, 1 f16, 2 int8 with per-row `scales`, 3 q8
 * with f32 group `scales`, 4 q4 with f16 group `scales`; int8 with scales 0:
 * the unscaled sums). The
 * bias (and int8 row scale) are applied as matvec.ts does: one rounding each.
 */
export function matmul_rows(t: i32, out: usize, ldo: i32, W: usize, scales: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize, r0: i32, r1: i32): void {
  const lo = <usize>ldo, lx = <usize>ldx, nT = <usize>T, m = <usize>rows, n = <usize>cols, a = <usize>r0, b = <usize>r1;
  if (t == T_F32) core_f32(out, lo, W, n << 2, x, lx, nT, m, n, scratch, a, b);
  else if (t == T_F16) {
    prepare_f16(x, lx, nT, n, scratch);
    core_f16(out, lo, W, n << 1, x, lx, nT, m, n, scratch, a, b);
  } else if (t == T_Q8) {
    prepare_i8(x, lx, nT, n, scratch);
    core_q8(out, lo, W, n, scales, ((n + QG - 1) / QG) << 2, nT, n, scratch, a, b);
  } else if (t == T_Q4) {
    prepare_q4(x, lx, nT, n, scratch);
    core_q4(out, lo, W, q4ScaleAt(n), scales, q4groups(n) << 1, nT, n, scratch, a, b);
  } else {
    prepare_i8(x, lx, nT, n, scratch);
    core_i8(out, lo, W, n, nT, m, n, scratch, a, b);
  }
  const rowScales = t == T_I8 && scales != 0; // int8 without scales: the raw sums (rows.ts)
  if (!rowScales && !bias) return;
  for (let k: usize = 0; k < nT; k++) {
    const o = out + k * lo;
    for (let r = a; r < b; r++) {
      let v = load<f32>(o + (r << 2));
      if (rowScales) v *= load<f32>(scales + (r << 2));
      if (bias) v += load<f32>(bias + (r << 2));
      store<f32>(o + (r << 2), v);
    }
  }
}

/** out[t] = W x_t (+ bias) for T tokens, each equal to matvec_f32(out_t, W, x_t, bias, rows, cols). */
export function matmul_f32(out: usize, ldo: i32, W: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize): void {
  matmul_rows(T_F32, out, ldo, W, 0, x, ldx, bias, T, rows, cols, scratch, 0, rows);
}

/** As matmul_f32 for f16 W (each token equal to matvec_f16). */
export function matmul_f16(out: usize, ldo: i32, W: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize): void {
  matmul_rows(T_F16, out, ldo, W, 0, x, ldx, bias, T, rows, cols, scratch, 0, rows);
}

/** As matmul_f32 for int8 W with per-row `scales` (each token equal to matvec_i8). */
export function matmul_i8(out: usize, ldo: i32, W: usize, scales: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize): void {
  matmul_rows(T_I8, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch, 0, rows);
}

/** As matmul_f32 for q8 W with group `scales` f32 [rows][ceil(cols / 32)] (each token equal to matvec_q8). */
export function matmul_q8(out: usize, ldo: i32, W: usize, scales: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize): void {
  matmul_rows(T_Q8, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch, 0, rows);
}

/** As matmul_f32 for q4 W (16 * ceil(cols / 32) bytes a row) with f16 group `scales` [rows][ceil(cols / 32)] (each token equal to matvec_q4). */
export function matmul_q4(out: usize, ldo: i32, W: usize, scales: usize, x: usize, ldx: i32, bias: usize, T: i32, rows: i32, cols: i32, scratch: usize): void {
  matmul_rows(T_Q4, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch, 0, rows);
}

// ---------------------------------------------------------------- FFN over resident records
//
// Two phases, each splittable over threads: activations h[t][i] for a range
// of neurons, then the down pass for a range of output columns. The down pass
// decodes each batch of NB down rows to f32 once for all tokens (f16, int8)
// and runs every token's own queue over them with the f32 axpys. That is the
// one-token kernel's arithmetic: its f16 axpy multiplies the raw pattern
// (value * 2^-112) by a * 2^112 and its int8 axpy the exact integer by a, the
// same real products as value * a, so every product rounds the same.

// q8 down rows are decoded to their exact integers (as int8 rows) and take
// per-group coefficients fround(a * ws_g): the products q * fround(a * ws_g) and
// the per-column sums of ffn.ts axpy4_q8 / axpy1_q8, so the same bits.

/** ffn.ts axpy4_q8 on decoded rows p_k (f32 integers) with group scales s_k (the columns start at a group boundary). */
function axpy4_f32g(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, s0: usize, s1: usize, s2: usize, s3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  for (let g: usize = 0; g < d; g += QG) {
    const so = (g / QG) << 2;
    const b0 = a0 * load<f32>(s0 + so), b1 = a1 * load<f32>(s1 + so), b2 = a2 * load<f32>(s2 + so), b3 = a3 * load<f32>(s3 + so);
    const e = min(g + QG, d);
    let j = g;
    if (e - g == QG) {
      // a full group: 8 steps of 4 columns, axpy4_f32's per-column arithmetic
      const B0 = f32x4.splat(b0), B1 = f32x4.splat(b1), B2 = f32x4.splat(b2), B3 = f32x4.splat(b3);
      for (; j < e; j += 4) {
        const o = j << 2;
        const acc = f32x4.add(
          f32x4.add(f32x4.mul(v128.load(p0 + o), B0), f32x4.mul(v128.load(p1 + o), B1)),
          f32x4.add(f32x4.mul(v128.load(p2 + o), B2), f32x4.mul(v128.load(p3 + o), B3)));
        v128.store(out + o, f32x4.add(v128.load(out + o), acc));
      }
    } else {
      const o = j << 2;
      axpy4_f32(out + o, e - j, p0 + o, p1 + o, p2 + o, p3 + o, b0, b1, b2, b3);
    }
  }
}

/** ffn.ts axpy1_q8 on a decoded row. */
function axpy1_f32g(out: usize, d: usize, p: usize, s: usize, a: f32): void {
  for (let g: usize = 0; g < d; g += QG) {
    const o = g << 2;
    axpy1_f32(out + o, min(QG, d - g), p + o, a * load<f32>(s + ((g / QG) << 2)));
  }
}

/**
 * q4.ts axpy4_q4 on rows decoded by q4_decode_down (16q for whole groups, q
 * for a partial last one) with f16 group scales at s_k: per whole group the
 * coefficients fround(a * ws * 2^-4) against 16q, per partial group a * ws
 * against q, and the same per-column sums.
 */
function axpy4_f32g4(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, s0: usize, s1: usize, s2: usize, s3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  for (let j: usize = 0; j < d; j += QG) {
    const g = j / QG, o = j << 2;
    const w0 = q4_scale(s0, g), w1 = q4_scale(s1, g), w2 = q4_scale(s2, g), w3 = q4_scale(s3, g);
    if (d - j >= QG) {
      // a whole group inline: 8 steps of 4 columns, axpy4_f32's per-column arithmetic
      const B0 = f32x4.splat(a0 * w0 * 0.0625), B1 = f32x4.splat(a1 * w1 * 0.0625), B2 = f32x4.splat(a2 * w2 * 0.0625), B3 = f32x4.splat(a3 * w3 * 0.0625);
      for (let c = o; c < o + (QG << 2); c += 16) {
        const acc = f32x4.add(
          f32x4.add(f32x4.mul(v128.load(p0 + c), B0), f32x4.mul(v128.load(p1 + c), B1)),
          f32x4.add(f32x4.mul(v128.load(p2 + c), B2), f32x4.mul(v128.load(p3 + c), B3)));
        v128.store(out + c, f32x4.add(v128.load(out + c), acc));
      }
    } else {
      axpy4_f32(out + o, d - j, p0 + o, p1 + o, p2 + o, p3 + o, a0 * w0, a1 * w1, a2 * w2, a3 * w3);
    }
  }
}

/** q4.ts axpy1_q4 on a row decoded by q4_decode_down. */
function axpy1_f32g4(out: usize, d: usize, p: usize, s: usize, a: f32): void {
  for (let j: usize = 0; j < d; j += QG) {
    const o = j << 2, w = q4_scale(s, j / QG);
    axpy1_f32(out + o, min(QG, d - j), p + o, d - j >= QG ? a * w * 0.0625 : a * w);
  }
}

/** Runs one down row now (ffn.ts down1, on a decoded row; q8: with its group scales sp). */
// @ts-ignore: decorator
@inline function down1(t: i32, out: usize, d: usize, p: usize, sp: usize, a: f32): void {
  if (t == T_Q8) axpy1_f32g(out, d, p, sp, a);
  else if (t == T_Q4) axpy1_f32g4(out, d, p, sp, a);
  else axpy1_f32(out, d, p, a);
}

/**
 * Queues down row p (decoded f32) with coefficient a in queue q: ffn.ts push's
 * grouping, including its rule that f16 coefficients >= 2^15 run alone.
 */
function qpush(q: usize, t: i32, out: usize, d: usize, p: usize, sp: usize, a: f32): void {
  if (t == T_F16 && !(abs<f32>(a) < 32768.0)) { down1(t, out, d, p, sp, a); return; }
  const n = load<u32>(q, 32);
  store<u32>(q + (<usize>n << 2), <u32>p);
  store<f32>(q + (<usize>n << 2), a, 16);
  store<u32>(q + (<usize>n << 2), <u32>sp, 48);
  if (n < 3) { store<u32>(q, n + 1, 32); return; }
  store<u32>(q, 0, 32);
  if (t == T_Q8) {
    axpy4_f32g(out, d, <usize>load<u32>(q), <usize>load<u32>(q, 4), <usize>load<u32>(q, 8), <usize>load<u32>(q, 12),
      <usize>load<u32>(q, 48), <usize>load<u32>(q, 52), <usize>load<u32>(q, 56), <usize>load<u32>(q, 60),
      load<f32>(q, 16), load<f32>(q, 20), load<f32>(q, 24), load<f32>(q, 28));
    return;
  }
  if (t == T_Q4) {
    axpy4_f32g4(out, d, <usize>load<u32>(q), <usize>load<u32>(q, 4), <usize>load<u32>(q, 8), <usize>load<u32>(q, 12),
      <usize>load<u32>(q, 48), <usize>load<u32>(q, 52), <usize>load<u32>(q, 56), <usize>load<u32>(q, 60),
      load<f32>(q, 16), load<f32>(q, 20), load<f32>(q, 24), load<f32>(q, 28));
    return;
  }
  axpy4_f32(out, d, <usize>load<u32>(q), <usize>load<u32>(q, 4), <usize>load<u32>(q, 8), <usize>load<u32>(q, 12),
    load<f32>(q, 16), load<f32>(q, 20), load<f32>(q, 24), load<f32>(q, 28));
}

function qflush(q: usize, t: i32, out: usize, d: usize): void {
  const n = <usize>load<u32>(q, 32);
  for (let k: usize = 0; k < n; k++) down1(t, out, d, <usize>load<u32>(q + (k << 2)), <usize>load<u32>(q + (k << 2), 48), load<f32>(q + (k << 2), 16));
  store<u32>(q, 0, 32);
}

/** Up/gate dots of one batch of m neurons for every token: dst[t][k], rows ldh bytes apart. */
function batch_dots(t: i32, dst: usize, ldh: usize, p: usize, stride: usize, X: usize, ldx: usize, T: usize, m: usize, d: usize, S: usize): void {
  if (t == T_F32) core_f32(dst, ldh, p, stride, X, ldx, T, m, d, S, 0, m);
  else if (t == T_F16) core_f16(dst, ldh, p, stride, X, ldx, T, m, d, S, 0, m);
  else if (t == T_Q8) core_q8(dst, ldh, p, stride, p + q8ScaleAt(d), stride, T, d, S, 0, m);
  else if (t == T_Q4) core_q4(dst, ldh, p, stride, p + q4ScaleAt(d), stride, T, d, S, 0, m);
  else core_i8(dst, ldh, p, stride, T, m, d, S, 0, m);
}

/** Byte offset of the f32 after a part's values (int8 scale, q8 scales, or f32/f16 bias). */
// @ts-ignore: decorator
@inline function tailOffset(t: i32, d: usize): usize {
  return t == T_F32 ? d << 2 : t == T_F16 ? d << 1 : t == T_Q8 ? q8ScaleAt(d) : t == T_Q4 ? q4ScaleAt(d) : d;
}

/** int8 gated batch: the gate dots (rows ldh bytes apart at G) and up dots (NB apart at U) of m neurons times their part scales (at gate / up + i * st + off), as the one-token kernel folds them. */
export function fold_scales(G: usize, ldh: usize, U: usize, T: usize, m: usize, gate: usize, up: usize, st: usize, off: usize): void {
  for (let k: usize = 0; k < T; k++) {
    for (let j: usize = 0; j < m; j++) {
      store<f32>(G + k * ldh + (j << 2), load<f32>(G + k * ldh + (j << 2)) * load<f32>(gate + j * st + off));
      store<f32>(U + k * (NB << 2) + (j << 2), load<f32>(U + k * (NB << 2) + (j << 2)) * load<f32>(up + j * st + off));
    }
  }
}

/**
 * Phase 1: h[t][i] (T rows of n f32 at H) for neurons [n0, n1) (n0 a multiple
 * of NB) of every token: the one-token kernel's dots and activation, with the
 * int8 row scales folded in as there. code = dtype | gated << 3 | hasBias << 4;
 * (afn, athr): the gated activation (activation.ts), ignored when not gated.
 * int8 needs d <= 32768 (the one-token kernel's quantized path).
 */
export function ffn_batch_act(code: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, stride: i32, H: usize, scratch: usize, n0: i32, n1: i32, afn: i32, athr: f32): void {
  const t = code & 7, gated = (code & 8) != 0, hasBias = (code & 16) != 0;
  const lx = <usize>ldx, nT = <usize>T, dd = <usize>d, st = <usize>stride, S = scratch, ldh = <usize>n << 2;
  if (t == T_F16) prepare_f16(x, lx, nT, dd, S);
  else if (t == T_I8 || t == T_Q8) prepare_i8(x, lx, nT, dd, S);
  else if (t == T_Q4) prepare_q4(x, lx, nT, dd, S);
  const off = tailOffset(t, dd);
  // int8 parts: scale, then bias; q8: the group scales, then bias; q4: the f16 scales, then bias (4-aligned)
  const biasOff = t == T_I8 ? off + 4 : t == T_Q8 ? off + (((dd + QG - 1) / QG) << 2) : t == T_Q4 ? q4BiasAt(dd) : off;
  for (let b = <usize>n0; b < <usize>n1; b += NB) {
    const m = min(NB, <usize>n1 - b);
    const hb = H + (b << 2);
    if (gated) {
      // gate dots go to h, up dots to UB
      const ub = S + offUB(nT, dd);
      batch_dots(t, hb, ldh, gate + b * st, st, x, lx, nT, m, dd, S);
      batch_dots(t, ub, NB << 2, up + b * st, st, x, lx, nT, m, dd, S);
      if (t == T_I8) fold_scales(hb, ldh, ub, nT, m, gate + b * st, up + b * st, st, off);
      for (let k: usize = 0; k < nT; k++) glu(hb + k * ldh, hb + k * ldh, ub + k * (NB << 2), m, afn, athr);
    } else {
      batch_dots(t, hb, ldh, up + b * st, st, x, lx, nT, m, dd, S);
      for (let k: usize = 0; k < nT; k++) {
        for (let j: usize = 0; j < m; j++) {
          const u = up + (b + j) * st;
          const hp = hb + k * ldh + (j << 2);
          let h = load<f32>(hp);
          if (t == T_I8) h *= load<f32>(u + off);
          if (hasBias) h += load<f32>(u + biasOff);
          store<f32>(hp, max<f32>(h, 0)); // NaN stays NaN (and is not skipped)
        }
      }
    }
  }
}

/**
 * Phase 2: out[t][j0, j1) = sum over all n neurons of h[t][i] * down_i, as
 * the one-token kernel adds it: per neuron range (ffn.ts), each token's own
 * queue (j0 a multiple of 8, j1 too unless j1 = d).
 */
export function ffn_batch_down(t: i32, out: usize, ldo: i32, T: i32, d: i32, n: i32, down: usize, stride: i32, H: usize, scratch: usize, j0: i32, j1: i32): void {
  const nT = <usize>T, dd = <usize>d, nn = <usize>n, S = scratch, c0 = <usize>j0, w = <usize>j1 - c0;
  // the one-token kernel's neuron ranges (ffn.ts): range 0 into out, each later one into PR, then added
  const R = ffnRanges(dd), PR = S + offPR(nT, dd);
  down_range(t, out + (c0 << 2), <usize>ldo, nT, dd, nn, down, <usize>stride, H, S, c0, w, 0, rangeStart(nn, R, 1));
  for (let r: usize = 1; r < R; r++) {
    const a = rangeStart(nn, R, r), e = rangeStart(nn, R, r + 1);
    if (a == e) continue;
    down_range(t, PR, w << 2, nT, dd, nn, down, <usize>stride, H, S, c0, w, a, e);
    for (let k: usize = 0; k < nT; k++) add_partial(out + k * <usize>ldo + (c0 << 2), PR + k * (w << 2), w);
  }
}

/** Neurons [a, end) of the down pass into o0[t][0, w) (rows lo bytes apart; columns c0.. of out), every token's queue fresh. */
function down_range(t: i32, o0: usize, lo: usize, nT: usize, dd: usize, nn: usize, down: usize, st: usize, H: usize, S: usize, c0: usize, w: usize, a: usize, end: usize): void {
  const ldh = nn << 2, Q = S + offQ(nT, dd), RG = S + offRG(nT, dd);
  const DD = S + offDD(nT, dd), PEND = S + offPEND(nT, dd), rowBytes = colsR(dd) << 2;
  const off = tailOffset(t, dd);
  const so = t == T_Q4 ? off + ((c0 / QG) << 1) : off + ((c0 / QG) << 2); // q8, q4: c0 is a multiple of 32
  for (let k: usize = 0; k < nT; k++) {
    memory.fill(o0 + k * lo, 0, w << 2);
    store<u32>(Q + k * QSTRIDE, 0, 32);
  }
  for (let b: usize = a; b < end; b += NB) {
    const m = min(NB, end - b);
    // this batch's down rows as f32 (columns c0.. at the row start); f32 rows are used in place
    if (t != T_F32) {
      for (let j: usize = 0; j < m; j++) {
        const dp = down + (b + j) * st, dst = DD + j * rowBytes;
        if (t == T_F16) dequant_f16(dst, dp + (c0 << 1), <i32>w);
        else if (t == T_Q4) q4_decode_down(dst, dp + (c0 >> 1), w);
        else dequant_i8(dst, dp + c0, <i32>w, 1.0);
      }
    }
    // Tokens whose queue is empty here and that queue every neuron of the batch
    // (no zero h, no f16 coefficient run alone) flush exactly the groups
    // [b + 4g, b + 4g + 4): run those group by group for all of them, so the
    // four rows stay in L1 while every such token's out takes them.
    let nreg: usize = 0;
    if ((m & 3) == 0) {
      for (let k: usize = 0; k < nT; k++) {
        if (load<u32>(Q + k * QSTRIDE, 32) != 0) continue;
        const hb = H + k * ldh + (b << 2);
        let ok = true;
        for (let j: usize = 0; j < m && ok; j++) {
          const h = load<f32>(hb + (j << 2));
          ok = h != 0 && (t != T_F16 || abs<f32>(h) < 32768.0);
        }
        if (ok) store<u32>(RG + (nreg++ << 2), <u32>k);
      }
      for (let g: usize = 0; g < m; g += 4) {
        let p0 = down + (b + g) * st + (c0 << 2), p1 = p0 + st, p2 = p1 + st, p3 = p2 + st;
        if (t != T_F32) { p0 = DD + g * rowBytes; p1 = p0 + rowBytes; p2 = p1 + rowBytes; p3 = p2 + rowBytes; }
        if (t == T_Q8 || t == T_Q4) {
          // per-group coefficients (ffn.ts axpy4_q8, q4.ts axpy4_q4)
          const r0 = down + (b + g) * st + so;
          for (let e: usize = 0; e < nreg; e++) {
            const k = <usize>load<u32>(RG + (e << 2));
            const hp = H + k * ldh + ((b + g) << 2);
            if (t == T_Q8) axpy4_f32g(o0 + k * lo, w, p0, p1, p2, p3, r0, r0 + st, r0 + 2 * st, r0 + 3 * st,
              load<f32>(hp), load<f32>(hp, 4), load<f32>(hp, 8), load<f32>(hp, 12));
            else axpy4_f32g4(o0 + k * lo, w, p0, p1, p2, p3, r0, r0 + st, r0 + 2 * st, r0 + 3 * st,
              load<f32>(hp), load<f32>(hp, 4), load<f32>(hp, 8), load<f32>(hp, 12));
          }
          continue;
        }
        let s0: f32 = 1, s1: f32 = 1, s2: f32 = 1, s3: f32 = 1;
        if (t == T_I8) {
          const r0 = down + (b + g) * st + off;
          s0 = load<f32>(r0); s1 = load<f32>(r0 + st); s2 = load<f32>(r0 + 2 * st); s3 = load<f32>(r0 + 3 * st);
        }
        for (let e: usize = 0; e < nreg; e++) {
          const k = <usize>load<u32>(RG + (e << 2));
          const hp = H + k * ldh + ((b + g) << 2);
          let a0 = load<f32>(hp), a1 = load<f32>(hp, 4), a2 = load<f32>(hp, 8), a3 = load<f32>(hp, 12);
          if (t == T_I8) { a0 *= s0; a1 *= s1; a2 *= s2; a3 *= s3; }
          axpy4_f32(o0 + k * lo, w, p0, p1, p2, p3, a0, a1, a2, a3);
        }
      }
    }
    let ri: usize = 0;
    for (let k: usize = 0; k < nT; k++) {
      if (ri < nreg && <usize>load<u32>(RG + (ri << 2)) == k) { ri++; continue; }
      const o = o0 + k * lo, q = Q + k * QSTRIDE, hb = H + k * ldh + (b << 2);
      for (let j: usize = 0; j < m; j++) {
        const h = load<f32>(hb + (j << 2));
        if (h == 0) continue;
        const dp = down + (b + j) * st;
        qpush(q, t, o, w, t == T_F32 ? dp + (c0 << 2) : DD + j * rowBytes, dp + so, t == T_I8 ? h * load<f32>(dp + off) : h);
      }
      // rows still queued must outlive DD's refill: move them to the token's own slots
      const pn = <usize>load<u32>(q, 32);
      for (let e: usize = 0; e < pn; e++) {
        const src = <usize>load<u32>(q + (e << 2));
        if (src >= DD && src < DD + NB * rowBytes) {
          const dst = PEND + (k * 3 + e) * rowBytes;
          memory.copy(dst, src, w << 2);
          store<u32>(q + (e << 2), <u32>dst);
        }
      }
    }
  }
  for (let k: usize = 0; k < nT; k++) qflush(Q + k * QSTRIDE, t, o0 + k * lo, w);
}

function ffn_batch(t: i32, gated: bool, out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hasBias: bool, H: usize, S: usize, afn: i32 = 0, athr: f32 = 0): void {
  ffn_batch_act(t | (gated ? 8 : 0) | (hasBias ? 16 : 0), x, ldx, T, d, n, gate, up, stride, H, S, 0, n, afn, athr);
  ffn_batch_down(t, out, ldo, T, d, n, down, stride, H, S, 0, d);
}

// out[t] = FFN(x_t) for T tokens over n resident records (ffn.ts layout): each
// equal to the one-token kernel. H: T x n f32 for the activations.

export function ffn_relu_f32_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, H: usize, scratch: usize): void {
  ffn_batch(T_F32, false, out, ldo, x, ldx, T, d, n, 0, up, down, stride, hasBias != 0, H, scratch);
}
export function ffn_relu_f16_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, H: usize, scratch: usize): void {
  ffn_batch(T_F16, false, out, ldo, x, ldx, T, d, n, 0, up, down, stride, hasBias != 0, H, scratch);
}
export function ffn_relu_i8_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, H: usize, scratch: usize): void {
  if (<usize>d > MAXD_I8) { // the one-token kernel's exact f32 path
    for (let k: i32 = 0; k < T; k++) ffn_relu_i8(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, up, down, stride, hasBias, 0);
    return;
  }
  ffn_batch(T_I8, false, out, ldo, x, ldx, T, d, n, 0, up, down, stride, hasBias != 0, H, scratch);
}
export function ffn_swiglu_f32_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, H: usize, scratch: usize, afn: i32, athr: f32): void {
  ffn_batch(T_F32, true, out, ldo, x, ldx, T, d, n, gate, up, down, stride, false, H, scratch, afn, athr);
}
export function ffn_swiglu_f16_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, H: usize, scratch: usize, afn: i32, athr: f32): void {
  ffn_batch(T_F16, true, out, ldo, x, ldx, T, d, n, gate, up, down, stride, false, H, scratch, afn, athr);
}
export function ffn_swiglu_i8_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, H: usize, scratch: usize, afn: i32, athr: f32): void {
  if (<usize>d > MAXD_I8) {
    for (let k: i32 = 0; k < T; k++) ffn_swiglu_i8(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, gate, up, down, stride, 0, afn, athr);
    return;
  }
  ffn_batch(T_I8, true, out, ldo, x, ldx, T, d, n, gate, up, down, stride, false, H, scratch, afn, athr);
}
export function ffn_relu_q8_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, H: usize, scratch: usize): void {
  if (<usize>d > MAXD_I8) { // the one-token kernel's exact f32 path
    for (let k: i32 = 0; k < T; k++) ffn_relu_q8(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, up, down, stride, hasBias, 0);
    return;
  }
  ffn_batch(T_Q8, false, out, ldo, x, ldx, T, d, n, 0, up, down, stride, hasBias != 0, H, scratch);
}
export function ffn_swiglu_q8_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, H: usize, scratch: usize, afn: i32, athr: f32): void {
  if (<usize>d > MAXD_I8) {
    for (let k: i32 = 0; k < T; k++) ffn_swiglu_q8(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, gate, up, down, stride, 0, afn, athr);
    return;
  }
  ffn_batch(T_Q8, true, out, ldo, x, ldx, T, d, n, gate, up, down, stride, false, H, scratch, afn, athr);
}
export function ffn_relu_q4_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, H: usize, scratch: usize): void {
  if (<usize>d > MAXD_I8) { // the one-token kernel's exact f32 path
    for (let k: i32 = 0; k < T; k++) ffn_relu_q4(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, up, down, stride, hasBias, 0);
    return;
  }
  ffn_batch(T_Q4, false, out, ldo, x, ldx, T, d, n, 0, up, down, stride, hasBias != 0, H, scratch);
}
export function ffn_swiglu_q4_batch(out: usize, ldo: i32, x: usize, ldx: i32, T: i32, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, H: usize, scratch: usize, afn: i32, athr: f32): void {
  if (<usize>d > MAXD_I8) {
    for (let k: i32 = 0; k < T; k++) ffn_swiglu_q4(out + <usize>k * <usize>ldo, x + <usize>k * <usize>ldx, d, n, gate, up, down, stride, 0, afn, athr);
    return;
  }
  ffn_batch(T_Q4, true, out, ldo, x, ldx, T, d, n, gate, up, down, stride, false, H, scratch, afn, athr);
}
