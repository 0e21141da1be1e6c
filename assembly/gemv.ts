// Internal building blocks shared by matvec.ts, attention.ts and ffn.ts (not
// exported from the module): "dots" = out[r] = W_r . x for `rows` rows, row r at
// W + r*stride, or, when `ptrs` is not 0, at the u32 address ptrs[r*pstep bytes].
// So the same code serves row-major matrices (stride = row bytes), FFN neuron
// records (stride = record stride) and gathered records (pointer tables).
//
// Shape (measured on V8/x64, bench/README "Far rows"): rows go four at a time
// (q8: eight), one from each quarter of the call's rows, so each weight stream
// reads its own region of memory: from DRAM that is 1.2-2.9x faster than
// neighbouring rows side by side, whose streams share pages. A group keeps
// 4 accumulators + 2 x vectors in registers (more rows spill: V8 uses 16 xmm).
// A row's arithmetic never depends on its group, so any grouping (and any
// split over threads) gives the same bits. (q4.ts keeps neighbouring rows:
// far rows measured 0.85x end to end in its FFN.)

import { hsum, hsum_i32, f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE, dot2, madd, RMAGIC, RMAGIC_BITS } from "./simd";
import { XQ, XQ_BYTES, ACC, XK, XK_FLOATS } from "./arena";

// ACC (8 accumulators, f32x4, of the current row group), XK and XQ are this
// instance's scratch areas (arena.ts); each dots call reads their addresses once.

/** Address of row r: W + r*stride, or the u32 at ptrs + r*pstep when a pointer table is given. */
// @ts-ignore: decorator
@inline function rowp(W: usize, stride: usize, ptrs: usize, pstep: usize, r: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + r * pstep) : W + r * stride;
}

// ---------------------------------------------------------------- f32

/** One row: SIMD partial sums over ncols (multiple of 8), in f32_group4's per-row order (so any row grouping gives the same bits). */
export function f32_row1(p: usize, x: usize, ncols: usize): v128 {
  let a = f32x4.splat(0);
  const end = x + (ncols << 2);
  for (let q = x; q < end; q += 32) {
    a = dot2(a, v128.load(p), v128.load(q), v128.load(p, 16), v128.load(q, 16));
    p += 32;
  }
  return a;
}

/** Columns [c, cols) of one f32 row (fewer than 8). */
// @ts-ignore: decorator
@inline export function f32_tail(p: usize, x: usize, c: usize, cols: usize): f32 {
  let s: f32 = 0;
  if (c + 4 <= cols) {
    s = hsum(f32x4.mul(v128.load(p + (c << 2)), v128.load(x + (c << 2))));
    c += 4;
  }
  for (; c < cols; c++) s += load<f32>(p + (c << 2)) * load<f32>(x + (c << 2));
  return s;
}

/** out[r] = W_r . x for r < rows, f32 rows at W + r*stride. */
export function dots_f32(out: usize, W: usize, stride: usize, x: usize, rows: i32, cols: i32): void {
  dots_f32_p(out, W, stride, 0, 0, x, rows, cols);
}

/**
 * out[r + iq] for i < 4: rows r, r + q, r + 2q, r + 3q (one from each quarter of a
 * call's m4 = 4q rows). The four sums stay in registers: for rows as short as an
 * attention head's (64 values) a round trip through memory cost as much as the dots.
 */
// @ts-ignore: decorator
@inline function f32_group4(out: usize, W: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, r: usize, q: usize, n: usize): void {
  const main = n & ~7, mb = main << 2;
  const p0 = rowp(W, stride, ptrs, pstep, r), p1 = rowp(W, stride, ptrs, pstep, r + q);
  const p2 = rowp(W, stride, ptrs, pstep, r + 2 * q), p3 = rowp(W, stride, ptrs, pstep, r + 3 * q);
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let o: usize = 0; o < mb; o += 32) {
    const xa = v128.load(x + o), xb = v128.load(x + o, 16);
    // per row: one add into the accumulator per step (sum of two products first; simd.ts dot2)
    a0 = dot2(a0, v128.load(p0 + o), xa, v128.load(p0 + o, 16), xb);
    a1 = dot2(a1, v128.load(p1 + o), xa, v128.load(p1 + o, 16), xb);
    a2 = dot2(a2, v128.load(p2 + o), xa, v128.load(p2 + o, 16), xb);
    a3 = dot2(a3, v128.load(p3 + o), xa, v128.load(p3 + o, 16), xb);
  }
  store<f32>(out + (r << 2), hsum(a0) + f32_tail(p0, x, main, n));
  store<f32>(out + ((r + q) << 2), hsum(a1) + f32_tail(p1, x, main, n));
  store<f32>(out + ((r + 2 * q) << 2), hsum(a2) + f32_tail(p2, x, main, n));
  store<f32>(out + ((r + 3 * q) << 2), hsum(a3) + f32_tail(p3, x, main, n));
}

/** out[r] alone (a call's rows past m4). */
// @ts-ignore: decorator
@inline function f32_single(out: usize, W: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, r: usize, n: usize): void {
  const p = rowp(W, stride, ptrs, pstep, r), main = n & ~7;
  store<f32>(out + (r << 2), hsum(f32_row1(p, x, main)) + f32_tail(p, x, main, n));
}

/** As dots_f32, rows from a pointer table when ptrs != 0 (see rowp). */
export function dots_f32_p(out: usize, W: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, rows: i32, cols: i32): void {
  const n = <usize>cols, m = <usize>rows;
  // rows [0, m4) four at a time, one from each quarter: four weight streams far apart
  const m4 = m & ~3, q = m4 >> 2;
  for (let r: usize = 0; r < q; r++) f32_group4(out, W, stride, ptrs, pstep, x, r, q, n);
  for (let r = m4; r < m; r++) f32_single(out, W, stride, ptrs, pstep, x, r, n);
}

/**
 * dots_f32_p for two matrices whose rows interleave in memory (an FFN record's
 * gate and up parts): a group's gate rows, then its up rows, so each weight
 * stream runs on through the record instead of coming back for the up parts.
 * Every row's arithmetic is dots_f32_p's.
 */
export function dots2_f32_p(outA: usize, outB: usize, WA: usize, WB: usize, stride: usize, ptrsA: usize, ptrsB: usize, pstep: usize, x: usize, rows: i32, cols: i32): void {
  const n = <usize>cols, m = <usize>rows;
  const m4 = m & ~3, q = m4 >> 2;
  for (let r: usize = 0; r < q; r++) {
    f32_group4(outA, WA, stride, ptrsA, pstep, x, r, q, n);
    f32_group4(outB, WB, stride, ptrsB, pstep, x, r, q, n);
  }
  for (let r = m4; r < m; r++) {
    f32_single(outA, WA, stride, ptrsA, pstep, x, r, n);
    f32_single(outB, WB, stride, ptrsB, pstep, x, r, n);
  }
}

// ---------------------------------------------------------------- f16
//
// Fast path: weights decoded with f16_upper (no inf/NaN fix) against x scaled
// by 2^k (k = 112 unless |x| is large), so the 2^112 rescale of the bit trick
// costs nothing per weight; the result is multiplied by 2^(112-k) at the end.
// f16_prepare writes the scaled x once per call (to XQ, the int8 FFNs' x area,
// unused by the f16 paths) so the inner loop does not rescale it per row group;
// for cols > MAXD_F16X it is scaled chunk by chunk into XK instead.
// The fast decode turns f16 inf/NaN into finite garbage, so each group also
// tracks max(h << 1) (unsigned): >= 0xf800 means an exponent of 31 was seen and
// the block's rows are recomputed with the exact decode (never for sane weights).
// Per 8 weights and row: 5 decode ops, 2 detection ops, 2 mul + 2 add; the
// detection is skipped where the host checked the weights at load (f16_finite_set).
// V8 rematerializes v128 constants inside loops (3 instructions each), so the
// loop constants are loaded from F16C once per call instead.

const F16_CHUNK: usize = XK_FLOATS; // columns per chunk: 512 B of each row (256)

/** Largest cols whose scaled x fits XQ (f16_prepare). */
export const MAXD_F16X: usize = XQ_BYTES >> 2;
/** Loop constants: 8 x 0x8fff (f16_upper mask), 8 x 0xf800 (inf/NaN threshold of h << 1). */
const F16C: usize = memory.data<u16>([0x8fff, 0x8fff, 0x8fff, 0x8fff, 0x8fff, 0x8fff, 0x8fff, 0x8fff,
  0xf800, 0xf800, 0xf800, 0xf800, 0xf800, 0xf800, 0xf800, 0xf800], 16);

/**
 * Largest |x_i| (scaled: |x_i * s_i|) of n f32 at x, as its bit pattern: an
 * integer max of the sign-cleared bits (one pmaxsd a vector; f32x4.max is ~8
 * instructions in V8), in which NaN patterns sort above inf's 0x7f800000.
 */
// @ts-ignore: decorator
@inline function absmax_bits(x: usize, s: usize, n: usize, scaled: bool): u32 {
  const A = i32x4.splat(0x7fffffff);
  let m4 = i32x4.splat(0);
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) {
    const v = scaled ? f32x4.mul(v128.load(x + (i << 2)), v128.load(s + (i << 2))) : v128.load(x + (i << 2));
    m4 = i32x4.max_s(m4, v128.and(v, A));
  }
  m4 = i32x4.max_s(m4, v128.shuffle<i32>(m4, m4, 2, 3, 0, 1));
  let m = max<i32>(i32x4.extract_lane(m4, 0), i32x4.extract_lane(m4, 1));
  for (; i < n; i++) {
    const v = scaled ? load<f32>(x + (i << 2)) * load<f32>(s + (i << 2)) : load<f32>(x + (i << 2));
    m = max<i32>(m, reinterpret<i32>(v) & 0x7fffffff);
  }
  return <u32>m;
}

/**
 * Scale for x so that |x * 2^k| < 2^127: returns 2^k (k <= 112); post-factor is 2^112 / it.
 * k = 112 (exact products) unless max|x| >= 2^15; then products smaller than
 * 2^-126 * 2^(112-k) lose bits, which is negligible next to the large terms.
 */
export function f16_xscale(x: usize, n: usize): f32 {
  const mb = absmax_bits(x, 0, n, false);
  // NaN or inf in x (bits >= inf's): any scale gives NaN/inf outputs, as the reference would
  if (mb < 0x47000000 || mb >= 0x7f800000) return F16_SCALE; // below 32768
  const e = <i32>(mb >> 23) - 127; // max|x| in [2^e, 2^(e+1)), e >= 15
  return reinterpret<f32>(<u32>(126 - e + 127) << 23); // 2^(126-e): x' < 2^127
}

/** xk[0..n) = x[0..n) * k (n rounded up to 4: buffers have room). */
function f16_scale_x(xk: usize, x: usize, n: usize, k: f32): void {
  const K = f32x4.splat(k);
  for (let i: usize = 0; i < n; i += 4) v128.store(xk + (i << 2), f32x4.mul(v128.load(x + (i << 2)), K));
}

/**
 * Per-call setup of x for dots_f16(_p): returns k = f16_xscale(x, n) and, when
 * n <= MAXD_F16X, writes x * k to XQ. Call it before the dots of a call (and
 * again after anything else wrote XQ).
 */
export function f16_prepare(x: usize, n: usize): f32 {
  const k = f16_xscale(x, n);
  if (n <= MAXD_F16X) f16_scale_x(XQ, x, n & ~7, k);
  return k;
}

/**
 * f16 group of rows p0..p3 over ncols (multiple of 8) against scaled x; returns
 * true if an inf/NaN weight was seen (only when `check`: F16_FINITE says there are none).
 */
// @ts-ignore: decorator
@inline function f16_rows4_body(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, ncols: usize, check: bool): bool {
  let a0 = v128.load(acc), a1 = v128.load(acc, 16), a2 = v128.load(acc, 32), a3 = v128.load(acc, 48);
  const M = v128.load(F16C);
  let det = i16x8.splat(0);
  const end = x + (ncols << 2);
  for (let q = x; q < end; q += 32) {
    const xa = v128.load(q), xb = v128.load(q, 16);
    let h = v128.load(p0), u = v128.and(i16x8.shr_s(h, 3), M), l = i16x8.shl(h, 13);
    a0 = dot2(a0, f16_bits_lo(l, u), xa, f16_bits_hi(l, u), xb);
    if (check) det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p1); u = v128.and(i16x8.shr_s(h, 3), M); l = i16x8.shl(h, 13);
    a1 = dot2(a1, f16_bits_lo(l, u), xa, f16_bits_hi(l, u), xb);
    if (check) det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p2); u = v128.and(i16x8.shr_s(h, 3), M); l = i16x8.shl(h, 13);
    a2 = dot2(a2, f16_bits_lo(l, u), xa, f16_bits_hi(l, u), xb);
    if (check) det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p3); u = v128.and(i16x8.shr_s(h, 3), M); l = i16x8.shl(h, 13);
    a3 = dot2(a3, f16_bits_lo(l, u), xa, f16_bits_hi(l, u), xb);
    if (check) det = i16x8.max_u(det, i16x8.shl(h, 1));
    p0 += 16; p1 += 16; p2 += 16; p3 += 16;
  }
  v128.store(acc, a0); v128.store(acc, a1, 16); v128.store(acc, a2, 32); v128.store(acc, a3, 48);
  return check && v128.any_true(i16x8.ge_u(det, v128.load(F16C, 16)));
}

function f16_rows4(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, ncols: usize): bool {
  return f16_rows4_body(acc, p0, p1, p2, p3, x, ncols, true);
}

/** f16_rows4 without the inf/NaN detection: 2 of its ~11 operations per 8 weights and row. */
function f16_rows4_finite(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, ncols: usize): bool {
  return f16_rows4_body(acc, p0, p1, p2, p3, x, ncols, false);
}

/** 1 when the host checked every f16 weight the kernels will read to be finite (f16_finite_set). In memory, so every instance on a shared arena sees it. */
const F16_FINITE: usize = memory.data<u32>([0]);

/**
 * Says whether every f16 weight the kernels will read was checked finite
 * (f16_special over each of them): then the f16 dots skip their per-weight
 * inf/NaN detection, the same bits for finite weights, ~14% faster. Only for
 * weights that stay put (a dense model's): streamed records are not checked.
 */
export function f16_finite_set(on: i32): void {
  store<u32>(F16_FINITE, on != 0 ? 1 : 0);
}

/** 1 when the f16 dots skip the inf/NaN detection (f16_finite_set). */
export function f16_finite(): i32 {
  return <i32>load<u32>(F16_FINITE);
}

/** 1 if any of `rows` rows of `cols` halves (row r at p + r * stride bytes) is inf or NaN, else 0. */
export function f16_special(p: usize, stride: usize, rows: i32, cols: i32): i32 {
  const n = <usize>cols, main = n & ~7;
  for (let r: usize = 0; r < <usize>rows; r++) {
    const row = p + r * stride;
    if (f16_row_special(row, main)) return 1;
    for (let c = main; c < n; c++) if ((load<u16>(row + (c << 1)) & 0x7c00) == 0x7c00) return 1;
  }
  return 0;
}

/** Scalar f16 bits -> f32 (exact, same construction as the vector decode). */
// @ts-ignore: decorator
@inline export function f16_to_f32(h: u32): f32 {
  let bits = ((h & 0x8000) << 16) | ((h & 0x7fff) << 13);
  if ((h & 0x7c00) == 0x7c00) bits |= 0x7f800000; // inf/NaN: exponent 255, payload kept
  const v = reinterpret<f32>(bits);
  return (h & 0x7c00) == 0x7c00 ? v : v * F16_SCALE;
}

/** True if f16 row p has an inf/NaN (exponent 31) among its first `main` halves (a multiple of 8). */
export function f16_row_special(p: usize, main: usize): bool {
  let det = i16x8.splat(0);
  for (let c: usize = 0; c < main; c += 8) det = i16x8.max_u(det, i16x8.shl(v128.load(p + (c << 1)), 1));
  return v128.any_true(i16x8.ge_u(det, i16x8.splat(<i16>0xf800)));
}

/** Exact f16 row dot (inf/NaN weights decoded properly); slow path and remainders. */
export function f16_row_exact(p: usize, x: usize, ncols: usize): f32 {
  let a = f32x4.splat(0), b = f32x4.splat(0);
  const S = f32x4.splat(F16_SCALE);
  let c: usize = 0;
  for (; c + 8 <= ncols; c += 8) {
    const h = v128.load(p + (c << 1));
    const u = f16_upper_exact(h), l = i16x8.shl(h, 13);
    a = f32x4.add(a, f32x4.mul(f32x4.mul(f16_bits_lo(l, u), S), v128.load(x + (c << 2))));
    b = f32x4.add(b, f32x4.mul(f32x4.mul(f16_bits_hi(l, u), S), v128.load(x + (c << 2), 16)));
  }
  let s = hsum(f32x4.add(a, b));
  for (; c < ncols; c++) s += f16_to_f32(load<u16>(p + (c << 1))) * load<f32>(x + (c << 2));
  return s;
}

/** Columns [c, cols) of an f16 row (fewer than 8), exact. */
// @ts-ignore: decorator
@inline export function f16_tail(p: usize, x: usize, c: usize, cols: usize): f32 {
  let s: f32 = 0;
  for (; c < cols; c++) s += f16_to_f32(load<u16>(p + (c << 1))) * load<f32>(x + (c << 2));
  return s;
}

/** out[r] = W_r . x for f16 rows at W + r*stride; k = f16_prepare(x, cols) (see there). */
export function dots_f16(out: usize, W: usize, stride: usize, x: usize, rows: i32, cols: i32, k: f32): void {
  dots_f16_p(out, W, stride, 0, 0, x, rows, cols, k);
}

/** As dots_f16, rows from a pointer table when ptrs != 0 (see rowp). */
export function dots_f16_p(out: usize, W: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, rows: i32, cols: i32, k: f32): void {
  const n = <usize>cols, m = <usize>rows;
  const main = n & ~7;
  const post: f32 = F16_SCALE / k; // exact power of two
  const pre = n <= MAXD_F16X; // x * k is in XQ (f16_prepare)
  const acc = ACC, xq = XQ, xkb = XK;
  const finite = load<u32>(F16_FINITE) != 0; // the host checked the weights: no inf/NaN to detect
  // rows [0, m4) four at a time, one from each quarter (far-apart weight streams), chunk by chunk
  const m4 = m & ~3, q = m4 >> 2;
  for (let r: usize = 0; r < q; r++) {
    const p0 = rowp(W, stride, ptrs, pstep, r), p1 = rowp(W, stride, ptrs, pstep, r + q);
    const p2 = rowp(W, stride, ptrs, pstep, r + 2 * q), p3 = rowp(W, stride, ptrs, pstep, r + 3 * q);
    memory.fill(acc, 0, 64);
    let special = false;
    for (let c0: usize = 0; c0 < main; c0 += F16_CHUNK) {
      const nc = min(F16_CHUNK, main - c0), o = c0 << 1;
      let xk = xq + (c0 << 2);
      if (!pre) { f16_scale_x(xkb, x + (c0 << 2), nc, k); xk = xkb; }
      if (finite) f16_rows4_finite(acc, p0 + o, p1 + o, p2 + o, p3 + o, xk, nc);
      else special |= f16_rows4(acc, p0 + o, p1 + o, p2 + o, p3 + o, xk, nc);
    }
    for (let i: usize = 0; i < 4; i++) {
      const ri = r + i * q, p = rowp(W, stride, ptrs, pstep, ri);
      // only a row with an inf/NaN weight of its own takes the exact path: any grouping gives the same bits
      const s = special && f16_row_special(p, main) ? f16_row_exact(p, x, n) : hsum(v128.load(acc + (i << 4))) * post + f16_tail(p, x, main, n);
      store<f32>(out + (ri << 2), s);
    }
  }
  for (let r = m4; r < m; r++) {
    store<f32>(out + (r << 2), f16_row_exact(rowp(W, stride, ptrs, pstep, r), x, n));
  }
}

// ---------------------------------------------------------------- int8
//
// Activation quantization (done once per call by quantize_x):
//   x is cut in blocks of QB = 128 columns; block b gets m_b = max|x| over the
//   block, scale_b = m_b / 32767 and q_j = roundTiesToEven(x_j * (32767 / m_b))
//   as int16 (|q| <= 32767). Blocks with m_b < 2^-100 are all-zero (scale 0);
//   a NaN/inf in a block makes its scale NaN (outputs NaN). The last block may
//   be partial (its columns go through the 8-wide/scalar path).
// Dot: sum_b scale_b * sum_{j in b} w_j q_j, the inner sum exact in int32
//   (i32x4.dot_i16x8_s: |partial| <= 128 * 127 * 32767 < 2^31 per block), so
//   the only error is the rounding of x to 16 bits: |x_j - q_j scale_b| <= m_b/65534.

export const QB: usize = 128;

/** Bytes of scratch for quantize_x with n columns: int16 values + f32 block scales. */
// @ts-ignore: decorator
@inline export function qx_bytes(n: usize): usize {
  const nb = (n + QB - 1) / QB;
  return nb * QB * 2 + nb * 4;
}

/** Quantizes x[0..n) into xq (int16, n values; room for nb*QB) and xs (f32 [nb]), as described above. */
export function quantize_x(xq: usize, xs: usize, x: usize, n: usize): void {
  quantize(xq, xs, x, 0, n, false);
}

/** quantize_x of c[i] = fround(x[i] * s[i]), without writing c: a column-scaled matrix's coefficients (rows.ts). */
export function quantize_x_scaled(xq: usize, xs: usize, x: usize, s: usize, n: usize): void {
  quantize(xq, xs, x, s, n, true);
}

// @ts-ignore: decorator
@inline function quantize(xq: usize, xs: usize, x: usize, s: usize, n: usize, scaled: bool): void {
  const nb = (n + QB - 1) / QB;
  const R = f32x4.splat(RMAGIC), RB = i32x4.splat(RMAGIC_BITS);
  for (let b: usize = 0; b < nb; b++) {
    const c0 = b * QB;
    const len = min(QB, n - c0);
    const xb = x + (c0 << 2), sb = s + (c0 << 2);
    const qb = xq + (c0 << 1);
    const mb = absmax_bits(xb, sb, len, scaled);
    let scale: f32 = 0, inv: f32 = 0;
    if (mb >= 0x7f800000) scale = NaN; // a NaN or inf in the block (its q values are then meaningless)
    else {
      const m = reinterpret<f32>(mb);
      if (m >= 7.888609052210118e-31) { scale = m / 32767.0; inv = 32767.0 / m; } // 2^-100
    }
    store<f32>(xs + (b << 2), scale);
    const vinv = f32x4.splat(inv);
    let i: usize = 0;
    for (; i + 8 <= len; i += 8) {
      let v0 = v128.load(xb + (i << 2)), v1 = v128.load(xb + (i << 2), 16);
      if (scaled) { v0 = f32x4.mul(v0, v128.load(sb + (i << 2))); v1 = f32x4.mul(v1, v128.load(sb + (i << 2), 16)); }
      const lo = i32x4.sub(f32x4.add(f32x4.mul(v0, vinv), R), RB);
      const hi = i32x4.sub(f32x4.add(f32x4.mul(v1, vinv), R), RB);
      v128.store(qb + (i << 1), i16x8.narrow_i32x4_s(lo, hi));
    }
    for (; i < len; i++) {
      const v = scaled ? load<f32>(xb + (i << 2)) * load<f32>(sb + (i << 2)) : load<f32>(xb + (i << 2));
      store<i16>(qb + (i << 1), <i16>(reinterpret<i32>(v * inv + RMAGIC) - RMAGIC_BITS));
    }
  }
}

/** int8 group of rows p0..p3 over nb full blocks (xq, xs at the first of them). acc holds f32 sums. */
function i8_rows4(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, xq: usize, xs: usize, nb: usize): void {
  let f0 = v128.load(acc), f1 = v128.load(acc, 16), f2 = v128.load(acc, 32), f3 = v128.load(acc, 48);
  let q = xq;
  for (let b: usize = 0; b < nb; b++) {
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    const qend = q + (QB << 1);
    for (; q < qend; q += 32) {
      const xa = v128.load(q), xb = v128.load(q, 16);
      // load8x8_s sign-extends 8 weights to i16; dot_i16x8_s sums adjacent products in i32
      a0 = i32x4.add(a0, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p0), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p0, 8), xb)));
      a1 = i32x4.add(a1, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p1), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p1, 8), xb)));
      a2 = i32x4.add(a2, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p2), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p2, 8), xb)));
      a3 = i32x4.add(a3, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p3), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p3, 8), xb)));
      p0 += 16; p1 += 16; p2 += 16; p3 += 16;
    }
    const s = v128.load32_splat(xs + (b << 2));
    f0 = f32x4.add(f0, f32x4.mul(f32x4.convert_i32x4_s(a0), s));
    f1 = f32x4.add(f1, f32x4.mul(f32x4.convert_i32x4_s(a1), s));
    f2 = f32x4.add(f2, f32x4.mul(f32x4.convert_i32x4_s(a2), s));
    f3 = f32x4.add(f3, f32x4.mul(f32x4.convert_i32x4_s(a3), s));
  }
  v128.store(acc, f0); v128.store(acc, f1, 16); v128.store(acc, f2, 32); v128.store(acc, f3, 48);
}

/** One int8 row over columns [c0, c1) of a single block (integer sum, unscaled). */
function i8_row_part(p: usize, xq: usize, c0: usize, c1: usize): i32 {
  let a = i32x4.splat(0);
  let c = c0;
  for (; c + 8 <= c1; c += 8) a = i32x4.add(a, i32x4.dot_i16x8_s(v128.load8x8_s(p + c), v128.load(xq + (c << 1))));
  let s = hsum_i32(a);
  for (; c < c1; c++) s += <i32>load<i8>(p + c) * <i32>load<i16>(xq + (c << 1));
  return s;
}

/** One int8 row, all columns (row 1-3 remainders and the partial last block). */
export function i8_row(p: usize, xq: usize, xs: usize, b0: usize, n: usize): f32 {
  let s: f32 = 0;
  const nb = (n + QB - 1) / QB;
  for (let b = b0; b < nb; b++) {
    const c0 = b * QB;
    s += <f32>i8_row_part(p, xq, c0, min(c0 + QB, n)) * load<f32>(xs + (b << 2));
  }
  return s;
}

/** i8_row over the partial last block after `full` full ones: 0 without a call when n is a multiple of QB. */
// @ts-ignore: decorator
@inline export function i8_rest(p: usize, xq: usize, xs: usize, full: usize, n: usize): f32 {
  return n % QB ? i8_row(p, xq, xs, full, n) : 0;
}

/** out[r] = sum_b scale_b * (W_r . q) for int8 rows at W + r*stride (row scales not applied). */
export function dots_i8(out: usize, W: usize, stride: usize, xq: usize, xs: usize, rows: i32, cols: i32): void {
  dots_i8_p(out, W, stride, 0, 0, xq, xs, rows, cols);
}

/** As dots_i8, rows from a pointer table when ptrs != 0 (see rowp). */
export function dots_i8_p(out: usize, W: usize, stride: usize, ptrs: usize, pstep: usize, xq: usize, xs: usize, rows: i32, cols: i32): void {
  const n = <usize>cols, m = <usize>rows;
  const full = n / QB; // full blocks go through the SIMD groups
  const acc = ACC;
  // rows [0, m4) four at a time, one from each quarter (far-apart weight streams)
  const m4 = m & ~3, q = m4 >> 2;
  for (let r: usize = 0; r < q; r++) {
    memory.fill(acc, 0, 64);
    i8_rows4(acc, rowp(W, stride, ptrs, pstep, r), rowp(W, stride, ptrs, pstep, r + q),
      rowp(W, stride, ptrs, pstep, r + 2 * q), rowp(W, stride, ptrs, pstep, r + 3 * q), xq, xs, full);
    for (let i: usize = 0; i < 4; i++) {
      const ri = r + i * q, p = rowp(W, stride, ptrs, pstep, ri);
      store<f32>(out + (ri << 2), hsum(v128.load(acc + (i << 4))) + i8_rest(p, xq, xs, full, n));
    }
  }
  for (let r = m4; r < m; r++) {
    store<f32>(out + (r << 2), i8_row(rowp(W, stride, ptrs, pstep, r), xq, xs, 0, n));
  }
}

// ---------------------------------------------------------------- q8 (int8, one f32 scale per group of 32)
//
// A q8 row is `cols` int8 values plus ceil(cols / QG) f32 scales, scale g for
// columns [QG*g, QG*g + QG). Against x quantized by quantize_x (QB = 128 =
// 4 groups per x block), per row (the order every q8 kernel keeps, so rows in
// groups of 8, single rows, batched tiles and any split give the same bits):
//   F (f32x4) = 0
//   for each full group g: A = the i32x4 lanes of the 4 dot_i16x8_s of its 32
//     columns (exact integers), F += convert(A) * fround(ws_g * xs_{g/4})
//     (q8_fold_k: one fused multiply-add in the relaxed build)
//   result = hsum(F), plus, when cols % QG != 0, f32(partial group's integer
//     sum) * fround(ws_G * xs_{G/4}) for the last (partial) group G.
// Scales of row r: at S + r*sstride, or (pointer table) at ptrs[r] + S (see q8sp).

export const QG: usize = 32;

/** Scale pointer of row r: S + r*sstride, or the u32 at ptrs + r*pstep plus S when a pointer table is given. */
// @ts-ignore: decorator
@inline function q8sp(S: usize, sstride: usize, ptrs: usize, pstep: usize, r: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + r * pstep) + S : S + r * sstride;
}

/** i32x4 lanes of one full group: 32 int8 weights at p against 32 int16 x at q. */
// @ts-ignore: decorator
@inline export function q8_group(p: usize, q: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p), v128.load(q)), i32x4.dot_i16x8_s(v128.load8x8_s(p, 8), v128.load(q, 16))),
    i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p, 16), v128.load(q, 32)), i32x4.dot_i16x8_s(v128.load8x8_s(p, 24), v128.load(q, 48))));
}

/** F + convert(a) * (ws * xs), ws splat from s (fused in the relaxed build: q8_fold_k). */
// @ts-ignore: decorator
@inline export function q8_fold(F: v128, a: v128, s: usize, X: v128): v128 {
  return q8_fold_k(F, a, f32x4.mul(v128.load32_splat(s), X));
}

/** F + convert(a) * k: every q8 kernel's fold of a group's integer sums (one multiply-add). */
// @ts-ignore: decorator
@inline export function q8_fold_k(F: v128, a: v128, k: v128): v128 {
  return madd(f32x4.convert_i32x4_s(a), k, F);
}

/** The F of one row over ng full groups (p: values, s: scales). */
export function q8_row1(p: usize, s: usize, xq: usize, xs: usize, ng: usize): v128 {
  let F = f32x4.splat(0);
  for (let g: usize = 0; g < ng; g++) {
    const X = v128.load32_splat(xs + ((g >> 2) << 2));
    F = q8_fold(F, q8_group(p + (g << 5), xq + (g << 6)), s + (g << 2), X);
  }
  return F;
}

/** The partial last group's term (0 when n is a multiple of QG). */
export function q8_tail(p: usize, s: usize, xq: usize, xs: usize, n: usize): f32 {
  const g = n / QG;
  let c = g * QG;
  if (c == n) return 0;
  let a = i32x4.splat(0);
  for (; c + 8 <= n; c += 8) a = i32x4.add(a, i32x4.dot_i16x8_s(v128.load8x8_s(p + c), v128.load(xq + (c << 1))));
  let sum = hsum_i32(a);
  for (; c < n; c++) sum += <i32>load<i8>(p + c) * <i32>load<i16>(xq + (c << 1));
  return <f32>sum * (load<f32>(s + (g << 2)) * load<f32>(xs + ((g >> 2) << 2)));
}

/** hsum(F) plus the partial group's term when there is one. */
// @ts-ignore: decorator
@inline export function q8_finish(F: v128, p: usize, s: usize, xq: usize, xs: usize, n: usize): f32 {
  const h = hsum(F);
  return n % QG ? h + q8_tail(p, s, xq, xs, n) : h;
}

/** 8 q8 rows over ng full groups in one pass (8 weight streams in flight); F of row i stored at acc + 16i. */
function q8_rows8(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, p4: usize, p5: usize, p6: usize, p7: usize,
  s0: usize, s1: usize, s2: usize, s3: usize, s4: usize, s5: usize, s6: usize, s7: usize, xq: usize, xs: usize, ng: usize): void {
  let f0 = f32x4.splat(0), f1 = f32x4.splat(0), f2 = f32x4.splat(0), f3 = f32x4.splat(0);
  let f4 = f32x4.splat(0), f5 = f32x4.splat(0), f6 = f32x4.splat(0), f7 = f32x4.splat(0);
  for (let g: usize = 0; g < ng; g++) {
    const X = v128.load32_splat(xs + ((g >> 2) << 2));
    const q = xq + (g << 6), o = g << 5, so = g << 2;
    f0 = q8_fold(f0, q8_group(p0 + o, q), s0 + so, X);
    f1 = q8_fold(f1, q8_group(p1 + o, q), s1 + so, X);
    f2 = q8_fold(f2, q8_group(p2 + o, q), s2 + so, X);
    f3 = q8_fold(f3, q8_group(p3 + o, q), s3 + so, X);
    f4 = q8_fold(f4, q8_group(p4 + o, q), s4 + so, X);
    f5 = q8_fold(f5, q8_group(p5 + o, q), s5 + so, X);
    f6 = q8_fold(f6, q8_group(p6 + o, q), s6 + so, X);
    f7 = q8_fold(f7, q8_group(p7 + o, q), s7 + so, X);
  }
  v128.store(acc, f0); v128.store(acc, f1, 16); v128.store(acc, f2, 32); v128.store(acc, f3, 48);
  v128.store(acc, f4, 64); v128.store(acc, f5, 80); v128.store(acc, f6, 96); v128.store(acc, f7, 112);
}

/**
 * out[r] = W_r . x for q8 rows (values at rowp, scales at q8sp) against x
 * quantized by quantize_x (xq, xs); every scale already applied.
 */
export function dots_q8_p(out: usize, W: usize, stride: usize, S: usize, sstride: usize, ptrs: usize, pstep: usize, xq: usize, xs: usize, rows: i32, cols: i32): void {
  const n = <usize>cols, m = <usize>rows;
  const ng = n / QG;
  const acc = ACC;
  // eight rows at a time, one from each eighth (far-apart weight streams); the rest one by one
  const q = m >> 3;
  for (let r: usize = 0; r < q; r++) {
    q8_rows8(acc, rowp(W, stride, ptrs, pstep, r), rowp(W, stride, ptrs, pstep, r + q),
      rowp(W, stride, ptrs, pstep, r + 2 * q), rowp(W, stride, ptrs, pstep, r + 3 * q),
      rowp(W, stride, ptrs, pstep, r + 4 * q), rowp(W, stride, ptrs, pstep, r + 5 * q),
      rowp(W, stride, ptrs, pstep, r + 6 * q), rowp(W, stride, ptrs, pstep, r + 7 * q),
      q8sp(S, sstride, ptrs, pstep, r), q8sp(S, sstride, ptrs, pstep, r + q), q8sp(S, sstride, ptrs, pstep, r + 2 * q), q8sp(S, sstride, ptrs, pstep, r + 3 * q),
      q8sp(S, sstride, ptrs, pstep, r + 4 * q), q8sp(S, sstride, ptrs, pstep, r + 5 * q), q8sp(S, sstride, ptrs, pstep, r + 6 * q), q8sp(S, sstride, ptrs, pstep, r + 7 * q),
      xq, xs, ng);
    for (let i: usize = 0; i < 8; i++) {
      const ri = r + i * q;
      store<f32>(out + (ri << 2), q8_finish(v128.load(acc + (i << 4)), rowp(W, stride, ptrs, pstep, ri), q8sp(S, sstride, ptrs, pstep, ri), xq, xs, n));
    }
  }
  for (let r = q << 3; r < m; r++) {
    const p = rowp(W, stride, ptrs, pstep, r), s = q8sp(S, sstride, ptrs, pstep, r);
    store<f32>(out + (r << 2), q8_finish(q8_row1(p, s, xq, xs, ng), p, s, xq, xs, n));
  }
}

/** q8 row dot against f32 x (exact products; used when d > MAXD_I8): per group sum_j q_j x_j (f32x4 lanes), times the group scale. */
export function q8_dot_f32(p: usize, s: usize, x: usize, n: usize): f32 {
  let F = f32x4.splat(0);
  let t: f32 = 0;
  for (let c0: usize = 0; c0 < n; c0 += QG) {
    const c1 = min(c0 + QG, n);
    let a = f32x4.splat(0);
    let c = c0;
    for (; c + 4 <= c1; c += 4) {
      const w = f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(i16x8.extend_low_i8x16_s(v128.load32_zero(p + c))));
      a = f32x4.add(a, f32x4.mul(w, v128.load(x + (c << 2))));
    }
    let r: f32 = 0;
    for (; c < c1; c++) r += <f32>load<i8>(p + c) * load<f32>(x + (c << 2));
    F = f32x4.add(F, f32x4.mul(a, v128.load32_splat(s + ((c0 / QG) << 2))));
    t += r * load<f32>(s + ((c0 / QG) << 2));
  }
  return hsum(F) + t;
}
