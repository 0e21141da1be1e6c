// 4-bit weights (dtype q4, docs/FORMAT.md §7.2): every kernel family for q4
// rows — matvec, FFN over records and pointer lists (ungated and gated), gate
// activations, row dequantization and the threads build's range kernels.
//
// A q4 row of n values is G = ceil(n / 32) groups of 16 bytes plus G f16
// scales. Byte j of group g holds value 32g + j in its low nibble and value
// 32g + 16 + j in its high nibble, as 4-bit two's complement (q in [-7, 7]);
// nibbles past n are 0. Weights are decoded in registers, never to memory:
// the 16 bytes read as 8 i16 lanes hold, in lane k, columns 2k, 16+2k, 2k+1
// and 17+2k in bits 0-3, 4-7, 8-11 and 12-15, so a 16-bit shift left then an
// arithmetic shift right by 12 (native on x64, unlike 8-bit shifts) gives each
// as sign-extended i16 — 7 ops for the 32 weights. They are dotted with x
// quantized to int16 (gemv.ts quantize_x, the int8 kernels' x) whose columns
// q4_quantize reorders per group to match: evens of 0-15, odds of 0-15, evens
// of 16-31, odds of 16-31. Integer sums are exact (|sum| <= 7·32767·32 < 2^24).
//
// Per row (the order every q4 kernel keeps, so any row split or pointer
// list gives the same bits):
//   F (f32x4) = 0;  for each block b of 4 whole groups (128 columns = one x
//     block of quantize_x): A = the 4 groups' exact integer sums,
//     F += convert(A) * (ws_{4b..4b+3} * xs_b)
//   t = 0;  for each remaining group g: t += f32(sum_g) * (ws_g * xs_{g/4})
//   result = hsum(F) + t
// For d > MAXD_I8 (the FFNs' quantized-x area) x stays f32 (q4_dot_f32).

import { hsum, hsum_i32, hsum4_i32, F16_SCALE, f16_upper_exact, f16_bits_lo } from "./simd";
import { quantize_x, QB, f16_to_f32 } from "./gemv";
import { XQ, ACC, HB, QP, QA, QS, UPS, PT, MAXD_I8, FFN_NB, GATED_GB } from "./arena";
import { act_gate, act_up, glu1, silu, ACT_SILU } from "./activation";
import { touch_parts, keep_touched, ffnRanges, rangeStart, rangeEmpty, add_partial } from "./ffn";

/** Values per group (one f16 scale each). */
export const Q4G: usize = 32;

/** Groups of a row of n values. */
// @ts-ignore: decorator
@inline export function q4groups(n: usize): usize { return (n + 31) >> 5; }

/** Bytes of the values of a row (16 per group): where a record's scales start. */
// @ts-ignore: decorator
@inline export function q4ScaleAt(d: usize): usize { return q4groups(d) << 4; }

/** Byte offset of a record's bias slot (after the f16 scales, 4-aligned). */
// @ts-ignore: decorator
@inline export function q4BiasAt(d: usize): usize { return (q4ScaleAt(d) + (q4groups(d) << 1) + 3) & ~(<usize>3); }

/** Where quantize_x puts the block scales after the int16 values. */
// @ts-ignore: decorator
@inline function xs_at(xq: usize, n: usize): usize { return xq + ((n + QB - 1) / QB) * QB * 2; }

/**
 * x quantized as for int8 (quantize_x), the int16 slots up to the group
 * boundary zeroed (so padding nibbles add 0 on every thread), and each group's
 * 32 values reordered to the decode order (see the top of this file).
 */
export function q4_quantize(xq: usize, x: usize, n: usize): void {
  quantize_x(xq, xs_at(xq, n), x, n);
  const e = (n + 31) & ~(<usize>31);
  if (e > n) memory.fill(xq + (n << 1), 0, (e - n) << 1);
  for (let q = xq; q < xq + (e << 1); q += 64) {
    const a = v128.load(q), b = v128.load(q, 16), c = v128.load(q, 32), d = v128.load(q, 48);
    v128.store(q, v128.shuffle<i16>(a, b, 0, 2, 4, 6, 8, 10, 12, 14));
    v128.store(q, v128.shuffle<i16>(a, b, 1, 3, 5, 7, 9, 11, 13, 15), 16);
    v128.store(q, v128.shuffle<i16>(c, d, 0, 2, 4, 6, 8, 10, 12, 14), 32);
    v128.store(q, v128.shuffle<i16>(c, d, 1, 3, 5, 7, 9, 11, 13, 15), 48);
  }
}

// @ts-ignore: decorator
@inline function rowp(W: usize, stride: usize, ptrs: usize, pstep: usize, r: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + r * pstep) : W + r * stride;
}
/** Scales of row r: S + r*sstride, or (pointer table) ptrs[r] + S. */
// @ts-ignore: decorator
@inline function scalep(S: usize, sstride: usize, ptrs: usize, pstep: usize, r: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + r * pstep) + S : S + r * sstride;
}

/** Signed value of column c of a q4 row at p (scalar: partial groups). */
// @ts-ignore: decorator
@inline function q4_at(p: usize, c: usize): i32 {
  const b = <i32>load<u8>(p + ((c >> 5) << 4) + (c & 15));
  return (((c & 16) ? b >> 4 : b) << 28) >> 28;
}

/** 4 f16 scales at s as f32x4 (exact, inf/NaN included: simd.ts's f16 decode, as dequant_f16). */
// @ts-ignore: decorator
@inline function h4(s: usize): v128 {
  const h = v128.load64_zero(s);
  return f32x4.mul(f16_bits_lo(i16x8.shl(h, 13), f16_upper_exact(h)), f32x4.splat(F16_SCALE));
}

// Decoding in column order (dequant, axpy, f32 dots): lo8(v) = shl(v, 4) holds 16·q of
// columns 0-15 as i8, hi8(v) = and(v, 0xf0) of columns 16-31; their extend_low /
// extend_high give the i16x8 of columns 0-7, 8-15 / 16-23, 24-31 (callers unroll
// the four: a runtime choice between them would compile to computing all four).

// @ts-ignore: decorator
@inline function lo8(v: v128): v128 { return i8x16.shl(v, 4); }
// @ts-ignore: decorator
@inline function hi8(v: v128): v128 { return v128.and(v, i8x16.splat(-16)); }
/** f32x4 of lanes 0-3 / 4-7 of an i16x8. */
// @ts-ignore: decorator
@inline function cvt_lo(w: v128): v128 { return f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(w)); }
// @ts-ignore: decorator
@inline function cvt_hi(w: v128): v128 { return f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(w)); }

/** i32x4 lanes of (one group at p) . (32 int16 x at q, in decode order); exact. */
// @ts-ignore: decorator
@inline function q4_group(p: usize, q: usize): v128 {
  const v = v128.load(p);
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shr_s(i16x8.shl(v, 12), 12), v128.load(q)), i32x4.dot_i16x8_s(i16x8.shr_s(i16x8.shl(v, 4), 12), v128.load(q, 16))),
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shr_s(i16x8.shl(v, 8), 12), v128.load(q, 32)), i32x4.dot_i16x8_s(i16x8.shr_s(v, 12), v128.load(q, 48))));
}

/** F + one block of 4 groups (values p, scales s, x at q with block scale X). */
// @ts-ignore: decorator
@inline function q4_block(F: v128, p: usize, s: usize, q: usize, X: v128): v128 {
  const A = hsum4_i32(q4_group(p, q), q4_group(p + 16, q + 64), q4_group(p + 32, q + 128), q4_group(p + 48, q + 192));
  return f32x4.add(F, f32x4.mul(f32x4.convert_i32x4_s(A), f32x4.mul(h4(s), X)));
}

/** The remaining groups [4*nblk, G) of one row (0 when none). */
export function q4_tail(p: usize, s: usize, xq: usize, xs: usize, nblk: usize, G: usize): f32 {
  let t: f32 = 0;
  for (let g = nblk << 2; g < G; g++) {
    const a = hsum_i32(q4_group(p + (g << 4), xq + (g << 6)));
    t += <f32>a * (f16_to_f32(load<u16>(s + (g << 1))) * load<f32>(xs + ((g >> 2) << 2)));
  }
  return t;
}

/** One row, all columns. */
export function q4_row(p: usize, s: usize, xq: usize, xs: usize, G: usize): f32 {
  const nblk = G >> 2;
  let F = f32x4.splat(0);
  for (let b: usize = 0; b < nblk; b++) F = q4_block(F, p + (b << 6), s + (b << 3), xq + (b << 8), v128.load32_splat(xs + (b << 2)));
  return hsum(F) + q4_tail(p, s, xq, xs, nblk, G);
}

/** 8 rows over nblk blocks in one pass (8 weight streams in flight); F of row i stored at acc + 16i. */
function q4_rows8(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, p4: usize, p5: usize, p6: usize, p7: usize,
  s0: usize, s1: usize, s2: usize, s3: usize, s4: usize, s5: usize, s6: usize, s7: usize, xq: usize, xs: usize, nblk: usize): void {
  let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
  let f4 = f32x4.splat(0), f5 = f32x4.splat(0), f6 = f32x4.splat(0), f7 = f32x4.splat(0);
  for (let b: usize = 0; b < nblk; b++) {
    const X = v128.load32_splat(xs + (b << 2));
    const q = xq + (b << 8), o = b << 6, so = b << 3;
    f0 = q4_block(f0, p0 + o, s0 + so, q, X);
    f1 = q4_block(f1, p1 + o, s1 + so, q, X);
    f2 = q4_block(f2, p2 + o, s2 + so, q, X);
    f3 = q4_block(f3, p3 + o, s3 + so, q, X);
    f4 = q4_block(f4, p4 + o, s4 + so, q, X);
    f5 = q4_block(f5, p5 + o, s5 + so, q, X);
    f6 = q4_block(f6, p6 + o, s6 + so, q, X);
    f7 = q4_block(f7, p7 + o, s7 + so, q, X);
  }
  v128.store(acc, f0); v128.store(acc, f1, 16); v128.store(acc, f2, 32); v128.store(acc, f3, 48);
  v128.store(acc, f4, 64); v128.store(acc, f5, 80); v128.store(acc, f6, 96); v128.store(acc, f7, 112);
}

/**
 * out[r] = W_r . x for q4 rows (values at rowp, scales at scalep) against x
 * quantized by q4_quantize (xq, xs). acc: this instance's ACC (128 bytes).
 */
function dots_q4_p(out: usize, W: usize, stride: usize, S: usize, sstride: usize, ptrs: usize, pstep: usize, xq: usize, xs: usize, rows: usize, cols: usize, acc: usize): void {
  const G = q4groups(cols), nblk = G >> 2;
  let r: usize = 0;
  for (; r + 8 <= rows; r += 8) {
    q4_rows8(acc, rowp(W, stride, ptrs, pstep, r), rowp(W, stride, ptrs, pstep, r + 1), rowp(W, stride, ptrs, pstep, r + 2), rowp(W, stride, ptrs, pstep, r + 3),
      rowp(W, stride, ptrs, pstep, r + 4), rowp(W, stride, ptrs, pstep, r + 5), rowp(W, stride, ptrs, pstep, r + 6), rowp(W, stride, ptrs, pstep, r + 7),
      scalep(S, sstride, ptrs, pstep, r), scalep(S, sstride, ptrs, pstep, r + 1), scalep(S, sstride, ptrs, pstep, r + 2), scalep(S, sstride, ptrs, pstep, r + 3),
      scalep(S, sstride, ptrs, pstep, r + 4), scalep(S, sstride, ptrs, pstep, r + 5), scalep(S, sstride, ptrs, pstep, r + 6), scalep(S, sstride, ptrs, pstep, r + 7),
      xq, xs, nblk);
    for (let i: usize = 0; i < 8; i++) {
      const t = nblk << 2 < G ? q4_tail(rowp(W, stride, ptrs, pstep, r + i), scalep(S, sstride, ptrs, pstep, r + i), xq, xs, nblk, G) : <f32>0;
      store<f32>(out + ((r + i) << 2), hsum(v128.load(acc + (i << 4))) + t);
    }
  }
  for (; r < rows; r++) store<f32>(out + (r << 2), q4_row(rowp(W, stride, ptrs, pstep, r), scalep(S, sstride, ptrs, pstep, r), xq, xs, G));
}

/** a + the 8 products of w (i16x8) and the f32 x at xp, as 4 lanes. */
// @ts-ignore: decorator
@inline function dot8(a: v128, w: v128, xp: usize): v128 {
  return f32x4.add(a, f32x4.add(f32x4.mul(cvt_lo(w), v128.load(xp)), f32x4.mul(cvt_hi(w), v128.load(xp, 16))));
}

/** One q4 row against f32 x (exact products; d > MAXD_I8): per group sum_j q_j x_j (f32x4 lanes) times its scale. */
function q4_dot_f32(p: usize, s: usize, x: usize, n: usize): f32 {
  let F = f32x4.splat(0);
  let t: f32 = 0;
  const full = n >> 5;
  for (let g: usize = 0; g < full; g++) {
    const v = v128.load(p + (g << 4)), xg = x + (g << 7);
    const l = lo8(v), h = hi8(v);
    let a = dot8(f32x4.splat(0), i16x8.extend_low_i8x16_s(l), xg);
    a = dot8(a, i16x8.extend_high_i8x16_s(l), xg + 32);
    a = dot8(a, i16x8.extend_low_i8x16_s(h), xg + 64);
    a = dot8(a, i16x8.extend_high_i8x16_s(h), xg + 96);
    // a holds 16 * the group's dot (exact scaling by a power of two)
    F = f32x4.add(F, f32x4.mul(a, f32x4.splat(f16_to_f32(load<u16>(s + (g << 1))) * 0.0625)));
  }
  if (full << 5 < n) {
    let r: f32 = 0;
    for (let c = full << 5; c < n; c++) r += <f32>q4_at(p, c) * load<f32>(x + (c << 2));
    t = r * f16_to_f32(load<u16>(s + (full << 1)));
  }
  return hsum(F) + t;
}

// ---------------------------------------------------------------- batched (prompt) helpers for batch.ts
//
// One row against two tokens: each group's 16 bytes are decoded once into the
// four i16x8 and dotted with both tokens' x (the integer sums are exact, so
// any association gives q4_group's lanes); per block the fold is q4_block's.

/** i32x4 lanes of a decoded group (w0..w3, decode order) against 32 int16 x at q. */
// @ts-ignore: decorator
@inline function q4_gdot(w0: v128, w1: v128, w2: v128, w3: v128, q: usize): v128 {
  return i32x4.add(i32x4.add(i32x4.dot_i16x8_s(w0, v128.load(q)), i32x4.dot_i16x8_s(w1, v128.load(q, 16))),
    i32x4.add(i32x4.dot_i16x8_s(w2, v128.load(q, 32)), i32x4.dot_i16x8_s(w3, v128.load(q, 48))));
}

/** Lanes (hsum a, hsum a, hsum b, hsum b) pairs: the first half of hsum4_i32 (exact). */
// @ts-ignore: decorator
@inline function pair_i32(a: v128, b: v128): v128 {
  return i32x4.add(v128.shuffle<i32>(a, b, 0, 1, 4, 5), v128.shuffle<i32>(a, b, 2, 3, 6, 7));
}

/**
 * The F accumulators (q4_row's, before hsum and tail) of row p (scales s)
 * against quantized tokens (q0, xs0) and (q1, xs1) over nblk whole blocks,
 * stored at acc (token 0) and acc + 16 (token 1).
 */
export function q4_tile(acc: usize, p: usize, s: usize, q0: usize, xs0: usize, q1: usize, xs1: usize, nblk: usize): void {
  let F0 = f32x4.splat(0), F1 = f32x4.splat(0);
  for (let b: usize = 0; b < nblk; b++) {
    const pb = p + (b << 6), a0 = q0 + (b << 8), a1 = q1 + (b << 8);
    let v = v128.load(pb);
    let w0 = i16x8.shr_s(i16x8.shl(v, 12), 12), w1 = i16x8.shr_s(i16x8.shl(v, 4), 12), w2 = i16x8.shr_s(i16x8.shl(v, 8), 12), w3 = i16x8.shr_s(v, 12);
    let g0 = q4_gdot(w0, w1, w2, w3, a0), h0 = q4_gdot(w0, w1, w2, w3, a1);
    v = v128.load(pb, 16);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    const ab0 = pair_i32(g0, q4_gdot(w0, w1, w2, w3, a0 + 64)), ab1 = pair_i32(h0, q4_gdot(w0, w1, w2, w3, a1 + 64));
    v = v128.load(pb, 32);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    g0 = q4_gdot(w0, w1, w2, w3, a0 + 128); h0 = q4_gdot(w0, w1, w2, w3, a1 + 128);
    v = v128.load(pb, 48);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    const cd0 = pair_i32(g0, q4_gdot(w0, w1, w2, w3, a0 + 192)), cd1 = pair_i32(h0, q4_gdot(w0, w1, w2, w3, a1 + 192));
    // lanes = the 4 groups' exact sums (hsum4_i32's second half)
    const A0 = i32x4.add(v128.shuffle<i32>(ab0, cd0, 0, 2, 4, 6), v128.shuffle<i32>(ab0, cd0, 1, 3, 5, 7));
    const A1 = i32x4.add(v128.shuffle<i32>(ab1, cd1, 0, 2, 4, 6), v128.shuffle<i32>(ab1, cd1, 1, 3, 5, 7));
    const S = h4(s + (b << 3));
    F0 = f32x4.add(F0, f32x4.mul(f32x4.convert_i32x4_s(A0), f32x4.mul(S, v128.load32_splat(xs0 + (b << 2)))));
    F1 = f32x4.add(F1, f32x4.mul(f32x4.convert_i32x4_s(A1), f32x4.mul(S, v128.load32_splat(xs1 + (b << 2)))));
  }
  v128.store(acc, F0);
  v128.store(acc, F1, 16);
}

/** As q4_tile for four tokens (q_k, xs_k), F of token k stored at acc + 16k: the decode shared by four. */
export function q4_tile4(acc: usize, p: usize, s: usize, q0: usize, xs0: usize, q1: usize, xs1: usize, q2: usize, xs2: usize, q3: usize, xs3: usize, nblk: usize): void {
  let F0 = f32x4.splat(0), F1 = f32x4.splat(0), F2 = f32x4.splat(0), F3 = f32x4.splat(0);
  for (let b: usize = 0; b < nblk; b++) {
    const pb = p + (b << 6), o = b << 8;
    let v = v128.load(pb);
    let w0 = i16x8.shr_s(i16x8.shl(v, 12), 12), w1 = i16x8.shr_s(i16x8.shl(v, 4), 12), w2 = i16x8.shr_s(i16x8.shl(v, 8), 12), w3 = i16x8.shr_s(v, 12);
    let g0 = q4_gdot(w0, w1, w2, w3, q0 + o), g1 = q4_gdot(w0, w1, w2, w3, q1 + o), g2 = q4_gdot(w0, w1, w2, w3, q2 + o), g3 = q4_gdot(w0, w1, w2, w3, q3 + o);
    v = v128.load(pb, 16);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    const ab0 = pair_i32(g0, q4_gdot(w0, w1, w2, w3, q0 + o + 64)), ab1 = pair_i32(g1, q4_gdot(w0, w1, w2, w3, q1 + o + 64));
    const ab2 = pair_i32(g2, q4_gdot(w0, w1, w2, w3, q2 + o + 64)), ab3 = pair_i32(g3, q4_gdot(w0, w1, w2, w3, q3 + o + 64));
    v = v128.load(pb, 32);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    g0 = q4_gdot(w0, w1, w2, w3, q0 + o + 128); g1 = q4_gdot(w0, w1, w2, w3, q1 + o + 128); g2 = q4_gdot(w0, w1, w2, w3, q2 + o + 128); g3 = q4_gdot(w0, w1, w2, w3, q3 + o + 128);
    v = v128.load(pb, 48);
    w0 = i16x8.shr_s(i16x8.shl(v, 12), 12); w1 = i16x8.shr_s(i16x8.shl(v, 4), 12); w2 = i16x8.shr_s(i16x8.shl(v, 8), 12); w3 = i16x8.shr_s(v, 12);
    const cd0 = pair_i32(g0, q4_gdot(w0, w1, w2, w3, q0 + o + 192)), cd1 = pair_i32(g1, q4_gdot(w0, w1, w2, w3, q1 + o + 192));
    const cd2 = pair_i32(g2, q4_gdot(w0, w1, w2, w3, q2 + o + 192)), cd3 = pair_i32(g3, q4_gdot(w0, w1, w2, w3, q3 + o + 192));
    const S = h4(s + (b << 3));
    F0 = f32x4.add(F0, f32x4.mul(f32x4.convert_i32x4_s(i32x4.add(v128.shuffle<i32>(ab0, cd0, 0, 2, 4, 6), v128.shuffle<i32>(ab0, cd0, 1, 3, 5, 7))), f32x4.mul(S, v128.load32_splat(xs0 + (b << 2)))));
    F1 = f32x4.add(F1, f32x4.mul(f32x4.convert_i32x4_s(i32x4.add(v128.shuffle<i32>(ab1, cd1, 0, 2, 4, 6), v128.shuffle<i32>(ab1, cd1, 1, 3, 5, 7))), f32x4.mul(S, v128.load32_splat(xs1 + (b << 2)))));
    F2 = f32x4.add(F2, f32x4.mul(f32x4.convert_i32x4_s(i32x4.add(v128.shuffle<i32>(ab2, cd2, 0, 2, 4, 6), v128.shuffle<i32>(ab2, cd2, 1, 3, 5, 7))), f32x4.mul(S, v128.load32_splat(xs2 + (b << 2)))));
    F3 = f32x4.add(F3, f32x4.mul(f32x4.convert_i32x4_s(i32x4.add(v128.shuffle<i32>(ab3, cd3, 0, 2, 4, 6), v128.shuffle<i32>(ab3, cd3, 1, 3, 5, 7))), f32x4.mul(S, v128.load32_splat(xs3 + (b << 2)))));
  }
  v128.store(acc, F0); v128.store(acc, F1, 16); v128.store(acc, F2, 32); v128.store(acc, F3, 48);
}

/**
 * Down row for the batched down pass: w values from column c0 (a multiple of
 * 32; p at its first byte) as f32: 16q for whole groups (axpy4_q4's lanes),
 * q for a partial last group (its scalar path).
 */
export function q4_decode_down(dst: usize, p: usize, w: usize): void {
  const full = w >> 5;
  for (let g: usize = 0; g < full; g++) {
    const v = v128.load(p + (g << 4));
    const o = dst + (g << 7);
    const l = lo8(v), h = hi8(v);
    const a = i16x8.extend_low_i8x16_s(l), b = i16x8.extend_high_i8x16_s(l), c = i16x8.extend_low_i8x16_s(h), d = i16x8.extend_high_i8x16_s(h);
    v128.store(o, cvt_lo(a)); v128.store(o, cvt_hi(a), 16);
    v128.store(o, cvt_lo(b), 32); v128.store(o, cvt_hi(b), 48);
    v128.store(o, cvt_lo(c), 64); v128.store(o, cvt_hi(c), 80);
    v128.store(o, cvt_lo(d), 96); v128.store(o, cvt_hi(d), 112);
  }
  for (let c = full << 5; c < w; c++) store<f32>(dst + (c << 2), <f32>q4_at(p, c));
}

/** Scale of group g of a q4 part whose f16 scales are at s (exact). */
// @ts-ignore: decorator
@inline export function q4_scale(s: usize, g: usize): f32 {
  return f16_to_f32(load<u16>(s + (g << 1)));
}

// ---------------------------------------------------------------- matvec

/** out[i] += bias[i] (no-op when bias is 0). */
function addBias(out: usize, bias: usize, n: usize): void {
  if (!bias) return;
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) v128.store(out + (i << 2), f32x4.add(v128.load(out + (i << 2)), v128.load(bias + (i << 2))));
  for (; i < n; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) + load<f32>(bias + (i << 2)));
}

/**
 * q4: W [rows][16 * ceil(cols / 32)] bytes, `scales` f16 [rows][ceil(cols / 32)];
 * scratch: matvec_i8_scratch_bytes(cols) bytes (x quantized as for int8).
 */
export function matvec_q4(out: usize, W: usize, scales: usize, x: usize, bias: usize, rows: i32, cols: i32, scratch: usize): void {
  const n = <usize>cols;
  q4_quantize(scratch, x, n);
  dots_q4_p(out, W, q4ScaleAt(n), scales, q4groups(n) << 1, 0, 0, scratch, xs_at(scratch, n), <usize>rows, n, ACC);
  addBias(out, bias, <usize>rows);
}

/** matvec_q4's quantization of x into `scratch`, once per call before the row ranges (threads build). */
export function matvec_q4_prepare(x: usize, cols: i32, scratch: usize): void {
  q4_quantize(scratch, x, <usize>cols);
}

/** matvec_q4 rows [r0, r1) (r0 a multiple of 8, r1 too unless r1 = rows), x prepared by matvec_q4_prepare. */
export function matvec_q4_rows(out: usize, W: usize, scales: usize, bias: usize, rows: i32, cols: i32, scratch: usize, r0: i32, r1: i32): void {
  const n = <usize>cols, o = <usize>r0 << 2, rb = q4ScaleAt(n), sst = q4groups(n) << 1;
  dots_q4_p(out + o, W + <usize>r0 * rb, rb, scales + <usize>r0 * sst, sst, 0, 0, scratch, xs_at(scratch, n), <usize>(r1 - r0), n, ACC);
  addBias(out + o, bias ? bias + o : 0, <usize>(r1 - r0));
}

/** dst[0..8) = w (i16x8) * S. */
// @ts-ignore: decorator
@inline function store8(dst: usize, w: v128, S: v128): void {
  v128.store(dst, f32x4.mul(cvt_lo(w), S));
  v128.store(dst, f32x4.mul(cvt_hi(w), S), 16);
}

/** dst[i] = q[i] * scale of its group (exact: a 4-bit integer times an f16 value fits an f32). */
export function dequant_q4(dst: usize, src: usize, scales: usize, n: i32): void {
  const m = <usize>n, full = m >> 5;
  for (let g: usize = 0; g < full; g++) {
    const v = v128.load(src + (g << 4));
    const S = f32x4.splat(f16_to_f32(load<u16>(scales + (g << 1))) * 0.0625); // lo8/hi8 give 16q; s/16 is a normal f32 for every f16 s
    const o = dst + (g << 7);
    const l = lo8(v), h = hi8(v);
    store8(o, i16x8.extend_low_i8x16_s(l), S);
    store8(o + 32, i16x8.extend_high_i8x16_s(l), S);
    store8(o + 64, i16x8.extend_low_i8x16_s(h), S);
    store8(o + 96, i16x8.extend_high_i8x16_s(h), S);
  }
  if (full << 5 < m) {
    const s = f16_to_f32(load<u16>(scales + (full << 1)));
    for (let c = full << 5; c < m; c++) store<f32>(dst + (c << 2), <f32>q4_at(src, c) * s);
  }
}

// ---------------------------------------------------------------- down rows (axpy)
//
// Column j of down row k gets b_k * q_k[j] with b_k = fround(a_k * ws_k[j / 32]),
// computed as (16 q) * (b_k / 16) (the same product unless b_k / 16 is
// subnormal); 4 rows are summed as ((r0 + r1) + (r2 + r3)) before out.
// Columns start at a group boundary (callers split at multiples of 32).

/** out[0..8) += ((w0 B0 + w1 B1) + (w2 B2 + w3 B3)) for 4 rows' i16x8 of 16·q. */
// @ts-ignore: decorator
@inline function axpy4_8(oc: usize, w0: v128, w1: v128, w2: v128, w3: v128, B0: v128, B1: v128, B2: v128, B3: v128): void {
  const lo = f32x4.add(f32x4.add(f32x4.mul(cvt_lo(w0), B0), f32x4.mul(cvt_lo(w1), B1)), f32x4.add(f32x4.mul(cvt_lo(w2), B2), f32x4.mul(cvt_lo(w3), B3)));
  const hi = f32x4.add(f32x4.add(f32x4.mul(cvt_hi(w0), B0), f32x4.mul(cvt_hi(w1), B1)), f32x4.add(f32x4.mul(cvt_hi(w2), B2), f32x4.mul(cvt_hi(w3), B3)));
  v128.store(oc, f32x4.add(v128.load(oc), lo));
  v128.store(oc, f32x4.add(v128.load(oc, 16), hi), 16);
}

/** out[0..8) += w B for one row's i16x8 of 16·q. */
// @ts-ignore: decorator
@inline function axpy1_8(oc: usize, w: v128, B: v128): void {
  v128.store(oc, f32x4.add(v128.load(oc), f32x4.mul(cvt_lo(w), B)));
  v128.store(oc, f32x4.add(v128.load(oc, 16), f32x4.mul(cvt_hi(w), B)), 16);
}

/** out[j] += sum_k b_k q_k[j] for 4 q4 rows (values p_k, f16 scales s_k), coefficients a_k. */
function axpy4_q4(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, s0: usize, s1: usize, s2: usize, s3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  const full = d >> 5;
  for (let g: usize = 0; g < full; g++) {
    const go = g << 4, so = g << 1;
    const B0 = f32x4.splat(a0 * f16_to_f32(load<u16>(s0 + so)) * 0.0625), B1 = f32x4.splat(a1 * f16_to_f32(load<u16>(s1 + so)) * 0.0625);
    const B2 = f32x4.splat(a2 * f16_to_f32(load<u16>(s2 + so)) * 0.0625), B3 = f32x4.splat(a3 * f16_to_f32(load<u16>(s3 + so)) * 0.0625);
    const v0 = v128.load(p0 + go), v1 = v128.load(p1 + go), v2 = v128.load(p2 + go), v3 = v128.load(p3 + go);
    const o = out + (g << 7);
    const l0 = lo8(v0), l1 = lo8(v1), l2 = lo8(v2), l3 = lo8(v3);
    axpy4_8(o, i16x8.extend_low_i8x16_s(l0), i16x8.extend_low_i8x16_s(l1), i16x8.extend_low_i8x16_s(l2), i16x8.extend_low_i8x16_s(l3), B0, B1, B2, B3);
    axpy4_8(o + 32, i16x8.extend_high_i8x16_s(l0), i16x8.extend_high_i8x16_s(l1), i16x8.extend_high_i8x16_s(l2), i16x8.extend_high_i8x16_s(l3), B0, B1, B2, B3);
    const h0 = hi8(v0), h1 = hi8(v1), h2 = hi8(v2), h3 = hi8(v3);
    axpy4_8(o + 64, i16x8.extend_low_i8x16_s(h0), i16x8.extend_low_i8x16_s(h1), i16x8.extend_low_i8x16_s(h2), i16x8.extend_low_i8x16_s(h3), B0, B1, B2, B3);
    axpy4_8(o + 96, i16x8.extend_high_i8x16_s(h0), i16x8.extend_high_i8x16_s(h1), i16x8.extend_high_i8x16_s(h2), i16x8.extend_high_i8x16_s(h3), B0, B1, B2, B3);
  }
  if (full << 5 < d) {
    const so = full << 1;
    const b0 = a0 * f16_to_f32(load<u16>(s0 + so)), b1 = a1 * f16_to_f32(load<u16>(s1 + so));
    const b2 = a2 * f16_to_f32(load<u16>(s2 + so)), b3 = a3 * f16_to_f32(load<u16>(s3 + so));
    for (let j = full << 5; j < d; j++) {
      const o = out + (j << 2);
      store<f32>(o, load<f32>(o) + ((<f32>q4_at(p0, j) * b0 + <f32>q4_at(p1, j) * b1) + (<f32>q4_at(p2, j) * b2 + <f32>q4_at(p3, j) * b3)));
    }
  }
}

/** out[j] += b q[j] for one q4 row (b = fround(a * ws[j / 32])). */
function axpy1_q4(out: usize, d: usize, p: usize, s: usize, a: f32): void {
  const full = d >> 5;
  for (let g: usize = 0; g < full; g++) {
    const B = f32x4.splat(a * f16_to_f32(load<u16>(s + (g << 1))) * 0.0625);
    const v = v128.load(p + (g << 4));
    const o = out + (g << 7);
    const l = lo8(v), h = hi8(v);
    axpy1_8(o, i16x8.extend_low_i8x16_s(l), B);
    axpy1_8(o + 32, i16x8.extend_high_i8x16_s(l), B);
    axpy1_8(o + 64, i16x8.extend_low_i8x16_s(h), B);
    axpy1_8(o + 96, i16x8.extend_high_i8x16_s(h), B);
  }
  if (full << 5 < d) {
    const b = a * f16_to_f32(load<u16>(s + (full << 1)));
    for (let j = full << 5; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + <f32>q4_at(p, j) * b);
  }
}

// Down-pass queue: up to 4 pending (down part, coefficient) pairs in QP / QS / QA
// (this instance's scratch), flushed as one axpy4_q4.
let qn: i32 = 0;

function push(out: usize, d: usize, p: usize, sp: usize, a: f32): void {
  store<usize>(QP + (<usize>qn << 2), p);
  store<usize>(QS + (<usize>qn << 2), sp);
  store<f32>(QA + (<usize>qn << 2), a);
  if (++qn < 4) return;
  qn = 0;
  axpy4_q4(out, d, load<usize>(QP), load<usize>(QP, 4), load<usize>(QP, 8), load<usize>(QP, 12),
    load<usize>(QS), load<usize>(QS, 4), load<usize>(QS, 8), load<usize>(QS, 12),
    load<f32>(QA), load<f32>(QA, 4), load<f32>(QA, 8), load<f32>(QA, 12));
}

function flush(out: usize, d: usize): void {
  for (let k = 0; k < qn; k++) axpy1_q4(out, d, load<usize>(QP + (<usize>k << 2)), load<usize>(QS + (<usize>k << 2)), load<f32>(QA + (<usize>k << 2)));
  qn = 0;
}

// ---------------------------------------------------------------- FFN over records / pointer lists
//
// As ffn.ts: part p of neuron i at partPtr_p + i*stride, or listed in a u32
// table (ptrs); a part is the d values (16 * ceil(d / 32) bytes), the f16
// group scales at q4ScaleAt(d), then (hasBias) the f32 bias slot, 4-aligned.
// Neurons in batches of NB (64): the up (and gate) dots of a batch, then the
// down rows of the neurons with h != 0 through the 4-row queue.

const NB: usize = FFN_NB;
/** Whether x was quantized into XQ (d <= MAXD_I8) by prepare. */
let xq_ok: bool = false;

function prepare(x: usize, d: usize): void {
  xq_ok = d <= MAXD_I8;
  if (xq_ok) q4_quantize(XQ, x, d);
}

/** dst[k] = part_k . x for m neurons at p + k*stride, or at ptrs[k * pstep bytes]. */
function dots(dst: usize, p: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, m: usize, d: usize): void {
  const so = q4ScaleAt(d);
  if (xq_ok) dots_q4_p(dst, p, stride, ptrs ? so : p + so, stride, ptrs, pstep, XQ, xs_at(XQ, d), m, d, ACC);
  else {
    for (let k: usize = 0; k < m; k++) {
      const pk = rowp(p, stride, ptrs, pstep, k);
      store<f32>(dst + (k << 2), q4_dot_f32(pk, pk + so, x, d));
    }
  }
}

// @ts-ignore: decorator
@inline function partAt(base: usize, stride: usize, ptrs: usize, nParts: usize, p: usize, i: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + ((i * nParts + p) << 2)) : base + i * stride;
}

/**
 * Neurons [n0, n1) (n0 a multiple of NB): relu(up·x + bias) into h (when given),
 * down rows queued into out; batches touch the next one's records up to neuron nt.
 */
function relu_h(x: usize, d: usize, up: usize, stride: usize, ptrs: usize, hasBias: bool, h: usize, n0: usize, n1: usize, nt: usize, out: usize, down: usize): void {
  const bo = q4BiasAt(d), so = q4ScaleAt(d);
  let sink: u32 = 0;
  for (let b = n0; b < n1; b += NB) {
    const m = min(NB, n1 - b);
    sink += touch_parts(up, stride, ptrs, 2, b + NB, min(b + 2 * NB, nt), so); // the next batch's records (ffn.ts)
    if (ptrs) dots(HB, 0, 0, ptrs + ((b * 2) << 2), 8, x, m, d);
    else dots(HB, up + b * stride, stride, 0, 0, x, m, d);
    for (let k: usize = 0; k < m; k++) {
      const i = b + k;
      let hv = load<f32>(HB + (k << 2));
      if (hasBias) hv += load<f32>(partAt(up, stride, ptrs, 2, 0, i) + bo);
      hv = max<f32>(hv, 0); // NaN stays NaN (and is not skipped)
      if (h) store<f32>(h + (i << 2), hv);
      if (hv != 0) {
        const dp = partAt(down, stride, ptrs, 2, 1, i);
        push(out, d, dp, dp + so, hv);
      }
    }
  }
  keep_touched(sink);
}

/** Gated: h = glu1(afn, athr, gate·x, up·x) of neurons [n0, n1) into h (when given), down rows queued into out; nt as relu_h. */
function gated_batch(x: usize, d: usize, gate: usize, up: usize, stride: usize, ptrs: usize, h: usize, n0: usize, n1: usize, nt: usize, afn: i32, athr: f32, out: usize, down: usize): void {
  const so = q4ScaleAt(d);
  const UB = HB + (NB << 2);
  let sink: u32 = 0;
  for (let b = n0; b < n1; b += NB) {
    const m = min(NB, n1 - b);
    sink += touch_parts(gate, stride, ptrs, 3, b + NB, min(b + 2 * NB, nt), so);
    if (ptrs) {
      dots(HB, 0, 0, ptrs + ((b * 3) << 2), 12, x, m, d);
      dots(UB, 0, 0, ptrs + ((b * 3 + 1) << 2), 12, x, m, d);
    } else {
      dots(HB, gate + b * stride, stride, 0, 0, x, m, d);
      dots(UB, up + b * stride, stride, 0, 0, x, m, d);
    }
    for (let k: usize = 0; k < m; k++) {
      const i = b + k;
      const hv = glu1(afn, athr, load<f32>(HB + (k << 2)), load<f32>(UB + (k << 2)));
      if (h) store<f32>(h + (i << 2), hv);
      if (hv != 0) {
        const dp = partAt(down, stride, ptrs, 3, 2, i);
        push(out, d, dp, dp + so, hv);
      }
    }
  }
  keep_touched(sink);
}

/** Range r of an FFN into dst (x prepared; ffn.ts ffn_range_into): neurons [a, b) with their own queue. */
function range_into(gated: bool, dst: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize, afn: i32, athr: f32, r: usize): void {
  const R = ffnRanges(d), a = rangeStart(n, R, r), b = rangeStart(n, R, r + 1);
  memory.fill(dst, 0, d << 2);
  qn = 0;
  if (gated) gated_batch(x, d, gate, up, stride, ptrs, hOut, a, b, n, afn, athr, dst, down);
  else relu_h(x, d, up, stride, ptrs, hasBias, hOut, a, b, n, dst, down);
  flush(dst, d);
}

/** The whole FFN: range 0 into out, each later non-empty range into PT, then added (ffn.ts ffn_all). */
function ffn_all(gated: bool, out: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize, afn: i32, athr: f32): void {
  prepare(x, d);
  range_into(gated, out, x, d, n, gate, up, down, stride, ptrs, hasBias, hOut, afn, athr, 0);
  const R = ffnRanges(d);
  for (let r: usize = 1; r < R; r++) {
    if (rangeEmpty(n, R, r)) continue;
    range_into(gated, PT, x, d, n, gate, up, down, stride, ptrs, hasBias, hOut, afn, athr, r);
    add_partial(out, PT, d);
  }
}

// @ts-ignore: decorator
@inline function ffn_relu(out: usize, x: usize, d: usize, n: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize): void {
  ffn_all(false, out, x, d, n, 0, up, down, stride, ptrs, hasBias, hOut, 0, 0);
}

// @ts-ignore: decorator
@inline function ffn_gated3(out: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_all(true, out, x, d, n, gate, up, down, stride, ptrs, false, hOut, afn, athr);
}

/** out[d] = sum_i relu(up_i . x + bias_i) * down_i over q4 records (hOut: 0 or n f32 activations). */
export function ffn_relu_q4(out: usize, x: usize, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(out, x, <usize>d, <usize>n, up, down, <usize>stride, 0, hasBias != 0, hOut);
}
/** out[d] = sum_i glu1(afn, athr, gate_i . x, up_i . x) * down_i over q4 records. */
export function ffn_swiglu_q4(out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated3(out, x, <usize>d, <usize>n, gate, up, down, <usize>stride, 0, hOut, afn, athr);
}
/** As ffn_relu_q4, ptrs u32 [n][2] = (up, down). */
export function ffn_relu_q4_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(out, x, <usize>d, <usize>n, 0, 0, 0, ptrs, hasBias != 0, hOut);
}
/** As ffn_swiglu_q4, ptrs u32 [n][3] = (gate, up, down). */
export function ffn_swiglu_q4_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated3(out, x, <usize>d, <usize>n, 0, 0, 0, 0, ptrs, hOut, afn, athr);
}

// ---------------------------------------------------------------- gate-mode kernels (gated.ts's, for q4)

const GB: usize = GATED_GB;

/** out[i] = act_gate(gate_i · x) over n neurons (q4 parts at gate + i*stride); d <= 32768. */
function gate_act(out: usize, x: usize, d: usize, n: usize, gate: usize, stride: usize, afn: i32, athr: f32): void {
  q4_quantize(XQ, x, d);
  dots_q4_p(out, gate, stride, gate + q4ScaleAt(d), stride, 0, 0, XQ, xs_at(XQ, d), n, d, ACC);
  if (afn == ACT_SILU) silu(out, <i32>n);
  else for (let i: usize = 0; i < n; i++) store<f32>(out + (i << 2), act_gate(afn, athr, load<f32>(out + (i << 2))));
}

export function gate_act_q4(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, afn: i32, athr: f32): void {
  gate_act(out, x, <usize>d, <usize>n, gate, <usize>stride, afn, athr);
}

/** h[i] = act[i] * act_up(up_i · x) for listed neurons [n0, n1) (n0 a multiple of GB); with out, the down rows too (axpy1 each, as gated.ts). */
function gated_up(x: usize, d: usize, ptrs: usize, act: usize, h: usize, n0: usize, n1: usize, afn: i32, out: usize): void {
  const so = q4ScaleAt(d);
  for (let b = n0; b < n1; b += GB) {
    const m = min(GB, n1 - b);
    dots_q4_p(UPS, 0, 0, so, 0, ptrs + ((b * 2) << 2), 8, XQ, xs_at(XQ, d), m, d, ACC);
    for (let k: usize = 0; k < m; k++) {
      const i = b + k;
      const hv = load<f32>(act + (i << 2)) * act_up(afn, load<f32>(UPS + (k << 2)));
      if (h) store<f32>(h + (i << 2), hv);
      if (out && hv != 0) {
        const dp = <usize>load<u32>(ptrs + ((i * 2 + 1) << 2));
        axpy1_q4(out, d, dp, dp + so, hv);
      }
    }
  }
}

/** out[d] = sum_j act[j] * act_up(up_j · x) * down_j over listed (up, down) q4 parts; d <= 32768. athr unused (in act already). */
export function ffn_gated_q4_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize, afn: i32, athr: f32): void {
  const dd = <usize>d;
  memory.fill(out, 0, dd << 2);
  q4_quantize(XQ, x, dd);
  gated_up(x, dd, ptrs, act, hOut, 0, <usize>n, afn, out);
}

// ---------------------------------------------------------------- range kernels (threads build, src/kernels/pool.ts)
//
// Same argument lists as ffn.ts / gated.ts's split kernels (the dtype code t
// is ignored: always q4), so the pool fills one slot layout for every dtype;
// together bit-identical to the whole calls for any split (FFN neuron ranges,
// gated neurons at multiples of 64, rows at multiples of 8, down columns at
// multiples of 32).

/** ffn.ts ffn_ranges for q4 records (kind's dtype bits ignored); ffn_ranges_sum adds the parts. */
export function q4_ffn_ranges(kind: i32, out: usize, parts: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, ptrs: usize, hOut: usize, athr: f32, r0: i32, r1: i32): void {
  const dd = <usize>d, nn = <usize>n, R = ffnRanges(dd);
  prepare(x, dd);
  for (let r = <usize>r0; r < <usize>r1; r++) {
    if (r > 0 && rangeEmpty(nn, R, r)) continue;
    range_into((kind & 8) != 0, r == 0 ? out : parts + (r - 1) * (dd << 2), x, dd, nn, gate, up, down, <usize>stride, ptrs, (kind & 16) != 0, hOut, kind >> 5, athr, r);
  }
}

export function q4_gate_act_rows(t: i32, out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, r0: i32, r1: i32, afn: i32, athr: f32): void {
  gate_act(out + (<usize>r0 << 2), x, <usize>d, <usize>(r1 - r0), gate + <usize>r0 * <usize>stride, <usize>stride, afn, athr);
}

export function q4_gated_h(t: i32, x: usize, d: i32, ptrs: usize, n: i32, act: usize, h: usize, n0: i32, n1: i32, afn: i32, athr: f32): void {
  q4_quantize(XQ, x, <usize>d);
  gated_up(x, <usize>d, ptrs, act, h, <usize>n0, <usize>n1, afn, 0);
}

export function q4_gated_down(t: i32, out: usize, d: i32, ptrs: usize, n: i32, h: usize, j0: i32, j1: i32): void {
  const dd = <usize>d, w = <usize>(j1 - j0);
  const o = out + (<usize>j0 << 2);
  memory.fill(o, 0, w << 2);
  const co = <usize>j0 >> 1, so = q4ScaleAt(dd) + ((<usize>j0 >> 5) << 1);
  for (let i: usize = 0; i < <usize>n; i++) {
    const hv = load<f32>(h + (i << 2));
    if (hv == 0) continue;
    const dp = <usize>load<u32>(ptrs + ((i * 2 + 1) << 2));
    axpy1_q4(o, w, dp + co, dp + so, hv);
  }
}
