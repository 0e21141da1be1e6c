// Single-query attention over a KV cache (one decoding step). The cache holds
// f32 rows, or f16 rows (half the memory: a 6.7B-shaped model's 2048-token
// cache is 1 GiB instead of 2 within wasm32's 4 GiB), decoded exactly in
// registers.

import { dots_f32, f16_to_f32 } from "./gemv";
import { vmax, expShiftSum } from "./reduce";
import { axpy4_f32, axpy1_f32 } from "./ffn";
import { hsum, f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";

/**
 * out[j] = sum_t p[t] * V_t[j] for j < n, rows V_t at V + t*stride (f32).
 * Four rows per pass, so each out vector is loaded and stored once per 4 rows.
 */
function weighted_rows(out: usize, V: usize, stride: usize, p: usize, rows: usize, n: usize): void {
  memory.fill(out, 0, n << 2);
  let t: usize = 0;
  for (; t + 4 <= rows; t += 4) {
    const v0 = V + t * stride;
    axpy4_f32(out, n, v0, v0 + stride, v0 + 2 * stride, v0 + 3 * stride, load<f32>(p + (t << 2)), load<f32>(p + (t << 2), 4), load<f32>(p + (t << 2), 8), load<f32>(p + (t << 2), 12));
  }
  for (; t < rows; t++) axpy1_f32(out, n, V + t * stride, load<f32>(p + (t << 2)));
}

/** x . (f16 row p) over n values, the halves decoded exactly (dequant_f16's decode) in registers. */
function dot_f16row(p: usize, x: usize, n: usize): f32 {
  const S = f32x4.splat(F16_SCALE);
  let a = f32x4.splat(0), b = f32x4.splat(0);
  let i: usize = 0;
  for (; i + 8 <= n; i += 8) {
    const h = v128.load(p + (i << 1));
    const u = f16_upper_exact(h), l = i16x8.shl(h, 13);
    a = f32x4.add(a, f32x4.mul(f32x4.mul(f16_bits_lo(l, u), S), v128.load(x + (i << 2))));
    b = f32x4.add(b, f32x4.mul(f32x4.mul(f16_bits_hi(l, u), S), v128.load(x + (i << 2), 16)));
  }
  let s = hsum(f32x4.add(a, b));
  for (; i < n; i++) s += f16_to_f32(load<u16>(p + (i << 1))) * load<f32>(x + (i << 2));
  return s;
}

/** out[j] = sum_t p[t] * V_t[j] for f16 rows V_t at V + t*stride (weighted_rows for an f16 cache). */
function weighted_rows_f16(out: usize, V: usize, stride: usize, p: usize, rows: usize, n: usize): void {
  memory.fill(out, 0, n << 2);
  const S = f32x4.splat(F16_SCALE);
  for (let t: usize = 0; t < rows; t++) {
    const v = V + t * stride;
    const a: f32 = load<f32>(p + (t << 2));
    const A = f32x4.mul(f32x4.splat(a), S);
    let j: usize = 0;
    for (; j + 8 <= n; j += 8) {
      const h = v128.load(v + (j << 1));
      const u = f16_upper_exact(h), l = i16x8.shl(h, 13);
      v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), f32x4.mul(f16_bits_lo(l, u), A)));
      v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2), 16), f32x4.mul(f16_bits_hi(l, u), A)), 16);
    }
    for (; j < n; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + f16_to_f32(load<u16>(v + (j << 1))) * a);
  }
}

/**
 * For each head h: scores[t] = q_h . K_t[kvh] * scale over t < nPos, softmax
 * (max-subtracted), out_h = sum_t p_t V_t[kvh], with kvh = h / (nHeads / nKvHeads).
 * scratch: nPos f32. out may equal q (head h's query is consumed before out_h is written).
 * kvF16: the cache rows are f16 (else f32).
 * headBytes 0: position-major cache, row t = all kv heads (nKvHeads*headDim values);
 * else head-major: kv head g's rows at kCache + g*headBytes, headDim values apart,
 * so a head's positions are one stream (decode at 900 positions: ~1.8x).
 */
export function attention(out: usize, q: usize, kCache: usize, vCache: usize, nHeads: i32, nKvHeads: i32, headDim: i32, nPos: i32, scale: f32, scratch: usize, kvF16: i32, headBytes: i32): void {
  attention_heads(out, q, kCache, vCache, nHeads, nKvHeads, headDim, nPos, scale, scratch, 0, nHeads, kvF16, headBytes);
}

/**
 * attention() for heads [h0, h1) only (the threads build splits heads over
 * threads; each head's arithmetic is independent of the others); scratch:
 * nPos f32 (one per thread).
 */
export function attention_heads(out: usize, q: usize, kCache: usize, vCache: usize, nHeads: i32, nKvHeads: i32, headDim: i32, nPos: i32, scale: f32, scratch: usize, h0: i32, h1: i32, kvF16: i32, headBytes: i32): void {
  const group = nHeads / nKvHeads;
  const hd = <usize>headDim;
  const eltShift: usize = kvF16 ? 1 : 2;
  const hb = <usize>headBytes;
  // bytes between a head's positions, and from one kv head to the next
  const kvStride = hb ? hd << eltShift : <usize>nKvHeads * hd << eltShift;
  const headStep = hb ? hb : hd << eltShift;
  const np = <usize>nPos;
  for (let h = h0; h < h1; h++) {
    const kvOff = <usize>(h / group) * headStep;
    const qh = q + ((<usize>h * hd) << 2);
    const oh = out + ((<usize>h * hd) << 2);
    if (np == 0) { memory.fill(oh, 0, hd << 2); continue; }
    // scores: rows K_t are nPos "matrix rows" of headDim values, stride one cache row
    if (kvF16) for (let t: usize = 0; t < np; t++) store<f32>(scratch + (t << 2), dot_f16row(kCache + kvOff + t * kvStride, qh, hd));
    else dots_f32(scratch, kCache + kvOff, kvStride, qh, nPos, headDim);
    const mx = vmax(scratch, np) * scale;
    // scale folded into the exponent argument: exp(s*scale - max*scale); scale > 0 keeps the max
    const sum = expShiftSum(scratch, np, scale, scale >= 0 ? mx : vmin_scaled(scratch, np, scale));
    const inv: f32 = <f32>1.0 / sum;
    if (kvF16) weighted_rows_f16(oh, vCache + kvOff, kvStride, scratch, np, hd);
    else weighted_rows(oh, vCache + kvOff, kvStride, scratch, np, hd);
    // normalize once at the end (hd multiplies instead of nPos)
    let j: usize = 0;
    const INV = f32x4.splat(inv);
    for (; j + 4 <= hd; j += 4) v128.store(oh + (j << 2), f32x4.mul(v128.load(oh + (j << 2)), INV));
    for (; j < hd; j++) store<f32>(oh + (j << 2), load<f32>(oh + (j << 2)) * inv);
  }
}

/** max of x*s for s < 0 (= min(x) * s). */
function vmin_scaled(x: usize, n: usize, s: f32): f32 {
  let m: f32 = Infinity;
  for (let i: usize = 0; i < n; i++) m = min<f32>(m, load<f32>(x + (i << 2)));
  return m * s;
}
