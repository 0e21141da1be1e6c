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
  // The bits straight from src (no round trip through a scratch float per value: the writer's hot loop).
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i]!;
    const e = ((x >>> 23) & 0xff) - 112; // the f16 exponent
    if ((e - 1) >>> 0 < 30) {
      // Normal in f16: round to nearest even by adding 0xfff + the kept lsb (f32ToF16Bits's rounding, without
      // branches); a carry runs into the exponent, which is right, up to inf.
      const m = (x & 0x7fffff) + 0xfff + ((x >>> 13) & 1);
      dst[i] = ((x >>> 16) & 0x8000) | ((e << 10) + (m >>> 13));
    } else dst[i] = f32ToF16Bits(src[i]!);
  }
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

/** q4: values per scale group. */
export const Q4_GROUP = 32;

/** Scale groups of a q4 row of n values. */
export const q4Groups = (n: number): number => Math.ceil(n / Q4_GROUP);

/** Bytes of the values of a q4 row of n values: 16 per group, the last group padded with zero nibbles. */
export const q4RowBytes = (n: number): number => q4Groups(n) * (Q4_GROUP / 2);

/** Largest finite binary16 value: q4 scales are clamped to it. */
const F16_MAX = 65504;

/**
 * q4: each group of 32 consecutive values of the row (the last may be shorter)
 * gets the f16 scale s = f16(min(max|x| / 7, 65504)) and q = clamp(round(x / s)
 * (half away from zero), -7, 7) (s = 0: q = 0); decoding is q * s, exact in f32.
 * Byte j of group g holds q[32g + j] in its low nibble and q[32g + 16 + j] in its
 * high nibble, 4-bit two's complement; nibbles past the row are 0 (docs/FORMAT.md §7.2).
 * Writes q4RowBytes(n) bytes to `dst` and the f16 scale bits to `scales`.
 */
export function encodeQ4Row(src: Float32Array, dst: Uint8Array = new Uint8Array(q4RowBytes(src.length)), scales: Uint16Array = new Uint16Array(q4Groups(src.length))): Uint16Array {
  dst.fill(0, 0, q4RowBytes(src.length));
  for (let g = 0; g * Q4_GROUP < src.length; g++) {
    const a = g * Q4_GROUP, b = Math.min(a + Q4_GROUP, src.length);
    let max = 0;
    for (let i = a; i < b; i++) max = Math.max(max, Math.abs(src[i]!));
    const bits = f32ToF16Bits(Math.min(Math.fround(max / 7), F16_MAX));
    scales[g] = bits;
    const scale = f16BitsToF32(bits);
    if (scale === 0) continue;
    for (let i = a; i < b; i++) {
      const v = src[i]! / scale;
      const q = Math.max(-7, Math.min(7, Math.sign(v) * Math.round(Math.abs(v))));
      const j = i - a;
      const at = g * 16 + (j & 15);
      dst[at] = dst[at]! | ((q & 15) << (j & 16 ? 4 : 0));
    }
  }
  return scales;
}

/** Value c of a q4 row (values at `bytes`, f16 scale bits `scales`): the decoding the kernels use (q * scale, exact). */
export function q4Value(bytes: Uint8Array, scales: Uint16Array, c: number): number {
  const b = bytes[(c >> 5) * 16 + (c & 15)]!;
  const nib = c & 16 ? b >> 4 : b & 15;
  return Math.fround(((nib << 28) >> 28) * f16BitsToF32(scales[c >> 5]!));
}

/**
 * Bytes of the values of one row of `cols` values (q4: whole 16-byte groups).
 * The values of a [rows, cols] tensor take rows * rowBytes(dtype, cols) bytes.
 */
export function rowBytes(dtype: keyof typeof DTYPE_BYTES | 'q4', cols: number): number {
  return dtype === 'q4' ? q4RowBytes(cols) : cols * DTYPE_BYTES[dtype];
}

export const DTYPE_BYTES = { f32: 4, f16: 2, int8: 1, q8: 1 } as const;
