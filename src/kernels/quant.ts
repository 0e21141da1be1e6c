/**
 * Host-side weight encoding for the .flm writer and the kernel tests:
 * f32 -> f16 bits (round to nearest even) and f32 -> int8 with one scale per row.
 * The WebAssembly kernels decode exactly what these encode.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 -> IEEE binary16 bits, round-to-nearest-even, overflow to inf, NaN kept. */
export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // rounds to zero
    mant |= 0x800000; // implicit bit
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++; // may carry into exponent: correct
  return sign | h;
}

/** IEEE binary16 bits -> f32 value (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function encodeF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[i] = f32ToF16Bits(src[i]!);
  return dst;
}

/**
 * Symmetric int8 with one f32 scale: scale = max|x| / 127, q = round(x / scale)
 * (half away from zero), clamped to [-127, 127]. Decoding is fround(q * scale).
 */
export function encodeI8Row(src: Float32Array, dst: Int8Array = new Int8Array(src.length)): number {
  let max = 0;
  for (let i = 0; i < src.length; i++) max = Math.max(max, Math.abs(src[i]!));
  const scale = Math.fround(max / 127);
  if (scale === 0) {
    dst.fill(0);
    return 0;
  }
  for (let i = 0; i < src.length; i++) {
    const v = src[i]! / scale;
    const q = Math.sign(v) * Math.round(Math.abs(v));
    dst[i] = Math.max(-127, Math.min(127, q));
  }
  return scale;
}

/** q8: values per scale group (the last group of a row may be shorter). */
export const Q8_GROUP = 32;

/** Scale groups of a q8 row of n values. */
export const q8Groups = (n: number): number => Math.ceil(n / Q8_GROUP);

/**
 * q8: each group of Q8_GROUP consecutive values of the row (the last one may be
 * shorter) quantized as encodeI8Row; returns the group scales (into `scales`).
 */
export function encodeQ8Row(src: Float32Array, dst: Int8Array = new Int8Array(src.length), scales: Float32Array = new Float32Array(q8Groups(src.length))): Float32Array {
  for (let g = 0; g * Q8_GROUP < src.length; g++) {
    const a = g * Q8_GROUP, b = Math.min(a + Q8_GROUP, src.length);
    scales[g] = encodeI8Row(src.subarray(a, b), dst.subarray(a, b));
  }
  return scales;
}

export const DTYPE_BYTES = { f32: 4, f16: 2, int8: 1, q8: 1 } as const;
