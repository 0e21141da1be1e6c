// Shared SIMD helpers, all inlined into the kernels (nothing here is exported
// from the module). Conventions: pointers are byte offsets (usize), loads and
// stores are unaligned-safe (wasm SIMD loads never trap on alignment).

/** Horizontal sum of an f32x4: (v0 + v2) + (v1 + v3). */
// @ts-ignore: decorator
@inline export function hsum(v: v128): f32 {
  const s = f32x4.add(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1);
}

// ---- multiply-add steps (the relaxed-SIMD build fuses them) ----
//
// ASC_FEATURE_RELAXED_SIMD is a compile-time constant: the plain build
// (asconfig "release", "mt") keeps the separate multiply and add, the relaxed
// one ("relaxed", "mt-relaxed") uses f32x4.relaxed_madd, which V8 compiles to
// one FMA where the CPU has it (else mul + add, the same everywhere in the
// process). Every kernel computing the same dot goes through the same step,
// so batched, single-row and split results stay bit-identical within a build.

/**
 * Order-A step of a dot (gemv.ts): acc + (a*x + b*y); relaxed: acc + fma(b, y, a*x).
 * Measured (bench/kernels.ts, 4096x4096, Zen 4): this form keeps one add on each
 * accumulator's chain, so the 2x2 prompt tiles run as fast as plain while the
 * matvecs gain; two chained FMAs, fma(b, y, fma(a, x, acc)), made the tiles ~30%
 * slower (FMA latency on four accumulators).
 */
// @ts-ignore: decorator
@inline export function dot2(acc: v128, a: v128, x: v128, b: v128, y: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.add(acc, f32x4.relaxed_madd(b, y, f32x4.mul(a, x)));
  return f32x4.add(acc, f32x4.add(f32x4.mul(a, x), f32x4.mul(b, y)));
}

/** acc + a*x (fused in the relaxed build). */
// @ts-ignore: decorator
@inline export function madd(a: v128, x: v128, acc: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, x, acc);
  return f32x4.add(acc, f32x4.mul(a, x));
}

/** Horizontal sum of an i32x4 (wrapping). */
// @ts-ignore: decorator
@inline export function hsum_i32(v: v128): i32 {
  const s = i32x4.add(v, v128.shuffle<i32>(v, v, 2, 3, 0, 1));
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1);
}

/** Horizontal max of an f32x4 without NaNs (pmax: one maxps on x64, f32x4.max is ~8 instructions). */
// @ts-ignore: decorator
@inline export function hmax(v: v128): f32 {
  const s = f32x4.pmax(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return max<f32>(f32x4.extract_lane(s, 0), f32x4.extract_lane(s, 1));
}

/** Sums four f32x4 accumulators into one f32x4 of their four horizontal sums. */
// @ts-ignore: decorator
@inline export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  // transpose-and-add: lanes of the result are hsum(a), hsum(b), hsum(c), hsum(d)
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 1, 4, 5), v128.shuffle<f32>(a, b, 2, 3, 6, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 1, 4, 5), v128.shuffle<f32>(c, d, 2, 3, 6, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 2, 4, 6), v128.shuffle<f32>(ab, cd, 1, 3, 5, 7));
}

/** Same as hsum4 for i32x4 accumulators. */
// @ts-ignore: decorator
@inline export function hsum4_i32(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(v128.shuffle<i32>(a, b, 0, 1, 4, 5), v128.shuffle<i32>(a, b, 2, 3, 6, 7));
  const cd = i32x4.add(v128.shuffle<i32>(c, d, 0, 1, 4, 5), v128.shuffle<i32>(c, d, 2, 3, 6, 7));
  return i32x4.add(v128.shuffle<i32>(ab, cd, 0, 2, 4, 6), v128.shuffle<i32>(ab, cd, 1, 3, 5, 7));
}

// ---- binary16 -> f32 ----
//
// For a half h = s|eeeee|mmmmmmmmmm the f32 bits s<<31 | (h & 0x7fff) << 13
// are the value times 2^-112 for every finite h (normals keep their mantissa,
// subnormals become f32 subnormals with the same integer mantissa), so one
// multiply by 2^112 (exact: a power of two) gives the value. Only e == 31
// (inf/NaN) needs a fix: force the f32 exponent to 255.
// The 32-bit patterns are built in the 16-bit domain, 8 halves per op:
// upper16 = (h >>s 3) & 0x8fff keeps the sign and moves exp|mant[9:3] down;
// lower16 = h << 13 holds mant[2:0]; interleaving (lower, upper) gives the i32.

/** 2^112 as f32: rescales the bit-trick floats to the f16 value. */
export const F16_SCALE: f32 = 5.192296858534828e33;

/** upper halves of the f32 patterns of 8 halves (inf/NaN not fixed). */
// @ts-ignore: decorator
@inline export function f16_upper(h: v128): v128 {
  return v128.and(i16x8.shr_s(h, 3), i16x8.splat(<i16>0x8fff));
}

/** upper halves with exponent forced to 255 for inf/NaN (bits 14..12 set). */
// @ts-ignore: decorator
@inline export function f16_upper_exact(h: v128): v128 {
  const expAll = i16x8.splat(0x7c00);
  const special = i16x8.eq(v128.and(h, expAll), expAll);
  return v128.or(f16_upper(h), v128.and(special, i16x8.splat(0x7000)));
}

/** i32 patterns of halves 0..3 from (lower16, upper16). */
// @ts-ignore: decorator
@inline export function f16_bits_lo(lower: v128, upper: v128): v128 {
  return v128.shuffle<i16>(lower, upper, 0, 8, 1, 9, 2, 10, 3, 11);
}

/** i32 patterns of halves 4..7 from (lower16, upper16). */
// @ts-ignore: decorator
@inline export function f16_bits_hi(lower: v128, upper: v128): v128 {
  return v128.shuffle<i16>(lower, upper, 4, 12, 5, 13, 6, 14, 7, 15);
}

// ---- rounding to integers ----

/**
 * v + RMAGIC (1.5 * 2^23) rounds v to an integer ties-to-even (f32x4.nearest's
 * rounding) and leaves it in the low mantissa bits (bits - RMAGIC_BITS), for
 * |v| < 2^22: two instructions where nearest and trunc_sat take ~9 in V8
 * (trunc_sat's NaN and overflow fix-ups). A NaN v gives a meaningless integer.
 */
export const RMAGIC: f32 = 12582912.0;
export const RMAGIC_BITS: i32 = 0x4b400000;

// ---- exp ----

/**
 * e^x on 4 lanes (Cephes expf polynomial, ~1-2 ulp). Range reduction
 * x = n ln2 + r with |r| <= ln2/2; 2^n is applied as two factors 2^(n>>1) and
 * 2^(n - n>>1) so results overflow to +inf and underflow gradually to 0
 * exactly where f32 does. NaN propagates.
 */
// @ts-ignore: decorator
@inline export function exp4(x: v128): v128 {
  // clamp so n stays in [-150, 129]; outside, the result is 0 or inf anyway.
  // pmax(x, lo) = x < lo ? lo : x and pmin(x, hi) = hi < x ? hi : x keep NaN (and are single instructions)
  x = f32x4.pmin(f32x4.pmax(x, f32x4.splat(-104.0)), f32x4.splat(89.0));
  const t = f32x4.add(f32x4.mul(x, f32x4.splat(1.44269504088896341)), f32x4.splat(RMAGIC));
  const n = f32x4.sub(t, f32x4.splat(RMAGIC)); // nearest(x log2 e), exactly
  // Cody-Waite: ln2 = C1 + C2 with C1 exact in few bits so n*C1 is exact
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(-2.12194440e-4)));
  let p = f32x4.splat(1.9875691500e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  p = f32x4.add(f32x4.mul(f32x4.mul(p, r), r), f32x4.add(r, f32x4.splat(1.0)));
  // 2^n in two normal factors (n in [-150, 129] -> each in [-75, 65])
  const ni = i32x4.sub(t, i32x4.splat(RMAGIC_BITS)); // n as an integer (a NaN x gives NaN through p)
  const n1 = i32x4.shr_s(ni, 1);
  const n2 = i32x4.sub(ni, n1);
  const bias = i32x4.splat(127);
  const s1 = i32x4.shl(i32x4.add(n1, bias), 23);
  const s2 = i32x4.shl(i32x4.add(n2, bias), 23);
  return f32x4.mul(f32x4.mul(p, s1), s2);
}

/** Scalar e^x through the same vector code (so tails match SIMD lanes). */
// @ts-ignore: decorator
@inline export function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/** silu(x) = x / (1 + e^-x) on 4 lanes. */
// @ts-ignore: decorator
@inline export function silu4(x: v128): v128 {
  return f32x4.div(x, f32x4.add(f32x4.splat(1.0), exp4(f32x4.neg(x))));
}

/** Scalar silu through the vector code. */
// @ts-ignore: decorator
@inline export function silu1(x: f32): f32 {
  return f32x4.extract_lane(silu4(f32x4.splat(x)), 0);
}
