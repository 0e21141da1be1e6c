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
