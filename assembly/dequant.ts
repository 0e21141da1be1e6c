// Dequantization, bit-exact with src/kernels/quant.ts (f16BitsToF32, and
// fround(q * scale) for int8).

import { f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";
import { f16_to_f32 } from "./gemv";

/** dst[i] = f16 src[i] as f32 (subnormals, +-0, +-inf and NaN included; NaN payloads kept). */
export function dequant_f16(dst: usize, src: usize, n: i32): void {
  const S = f32x4.splat(F16_SCALE);
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 8 <= m; i += 8) {
    const h = v128.load(src + (i << 1));
    const u = f16_upper_exact(h), l = i16x8.shl(h, 13);
    v128.store(dst + (i << 2), f32x4.mul(f16_bits_lo(l, u), S));
    v128.store(dst + (i << 2), f32x4.mul(f16_bits_hi(l, u), S), 16);
  }
  for (; i < m; i++) store<f32>(dst + (i << 2), f16_to_f32(load<u16>(src + (i << 1))));
}

/** dst[i] = fround(q[i] * scale): int8 -> f32 is exact, so one f32 multiply rounds once. */
export function dequant_i8(dst: usize, src: usize, n: i32, scale: f32): void {
  const S = f32x4.splat(scale);
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 8 <= m; i += 8) {
    const q = v128.load8x8_s(src + i); // 8 x i16
    v128.store(dst + (i << 2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), S));
    v128.store(dst + (i << 2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), S), 16);
  }
  for (; i < m; i++) store<f32>(dst + (i << 2), <f32>load<i8>(src + i) * scale);
}

/** q8: dst[i] = fround(q[i] * scales[i >> 5]) (one f32 scale per group of 32 values). */
export function dequant_q8(dst: usize, src: usize, scales: usize, n: i32): void {
  const m = <usize>n;
  for (let g: usize = 0; g < m; g += 32) dequant_i8(dst + (g << 2), src + g, <i32>min<usize>(32, m - g), load<f32>(scales + (g >> 3)));
}

/** f32 -> f16 bits, round to nearest even (overflow to +-inf, gradual underflow, NaN stays NaN): quant.ts f32ToF16Bits. */
function f32_to_f16(f: f32): u32 {
  const x = reinterpret<u32>(f);
  const sign = (x >> 16) & 0x8000;
  const e = <i32>((x >> 23) & 0xff);
  let m = x & 0x7fffff;
  if (e == 0xff) return sign | 0x7c00 | (m ? 0x200 | (m >> 13) : 0);
  const exp = e - 112; // the f16 biased exponent
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    // subnormal: the implicit bit joins the mantissa, shifted to units of 2^-24
    m |= 0x800000;
    const shift = <u32>(14 - exp);
    let h = m >> shift;
    const rem = m & ((<u32>1 << shift) - 1), half = <u32>1 << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return sign | h;
  }
  let h = (<u32>exp << 10) | (m >> 13);
  const rem = m & 0x1fff;
  // a carry out of the mantissa steps the exponent (up to inf): still the correctly rounded value
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** dst[i] = src[i] as f16 (round to nearest even): the f16 KV cache's rows. */
export function encode_f16(dst: usize, src: usize, n: i32): void {
  for (let i: usize = 0; i < <usize>n; i++) store<u16>(dst + (i << 1), <u16>f32_to_f16(load<f32>(src + (i << 2))));
}
