// Thresholded activation sparsity for gated (SwiGLU) FFNs: the gate rows stay
// resident, gate activations silu(gate·x) are computed for every neuron, and
// only neurons whose |silu(gate·x)| passes a threshold have their up and down
// parts read and computed. Two kernels per dtype: the gate activations over
// resident gate parts, and the FFN over (up, down) parts with the gate
// activations given.

import { dots_f32, dots_f16, dots_f32_p, dots_f16_p, dots_i8_p, f16_prepare, quantize_x, QB } from "./gemv";
import { silu } from "./activation";
import { XQ, MAXD_I8 } from "./arena";
import { f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";

const T_F32 = 0, T_F16 = 1, T_I8 = 2;
/** Neurons per block of up dots. */
const GB: usize = 64;
const UPS: usize = memory.data(<i32>GB * 4, 16);

/** Bytes of the values of a part: where the int8 scale sits. */
// @ts-ignore: decorator
@inline function valuesBytes(t: i32, d: usize): usize {
  return t == T_F32 ? d << 2 : t == T_F16 ? d << 1 : d;
}

/** x quantized to XQ for the int8 dots (d <= MAXD_I8). */
// @ts-ignore: decorator
@inline function xs_of(d: usize): usize {
  return XQ + ((d + QB - 1) / QB) * QB * 2;
}

function gate_act(t: i32, out: usize, x: usize, d: usize, n: usize, gate: usize, stride: usize): void {
  if (t == T_F32) dots_f32(out, gate, stride, x, <i32>n, <i32>d);
  else if (t == T_F16) dots_f16(out, gate, stride, x, <i32>n, <i32>d, f16_prepare(x, d));
  else {
    quantize_x(XQ, xs_of(d), x, d);
    dots_i8_p(out, gate, stride, 0, 0, XQ, xs_of(d), <i32>n, <i32>d);
    for (let i: usize = 0; i < n; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) * load<f32>(gate + i * stride + d));
  }
  silu(out, <i32>n);
}

/** out[i] = silu(gate_i · x) for n neurons whose gate parts are at gate + i·stride. */
export function gate_act_f32(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32): void {
  gate_act(T_F32, out, x, <usize>d, <usize>n, gate, <usize>stride);
}
export function gate_act_f16(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32): void {
  gate_act(T_F16, out, x, <usize>d, <usize>n, gate, <usize>stride);
}
/** int8: d must be at most 32768 (the quantized-x area). */
export function gate_act_i8(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32): void {
  gate_act(T_I8, out, x, <usize>d, <usize>n, gate, <usize>stride);
}

function axpy_f32(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a);
  let j: usize = 0;
  for (; j + 4 <= d; j += 4) v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), f32x4.mul(v128.load(p + (j << 2)), A)));
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + load<f32>(p + (j << 2)) * a);
}

function axpy_f16(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a), S = f32x4.splat(F16_SCALE);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const h = v128.load(p + (j << 1));
    const u = f16_upper_exact(h), l = i16x8.shl(h, 13);
    const o = out + (j << 2);
    v128.store(o, f32x4.add(v128.load(o), f32x4.mul(f32x4.mul(f16_bits_lo(l, u), S), A)));
    v128.store(o, f32x4.add(v128.load(o, 16), f32x4.mul(f32x4.mul(f16_bits_hi(l, u), S), A)), 16);
  }
  for (; j < d; j++) {
    const h = <u32>load<u16>(p + (j << 1));
    let bits = ((h & 0x8000) << 16) | ((h & 0x7fff) << 13);
    if ((h & 0x7c00) == 0x7c00) bits |= 0x7f800000;
    const v = (h & 0x7c00) == 0x7c00 ? reinterpret<f32>(bits) : reinterpret<f32>(bits) * F16_SCALE;
    store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + v * a);
  }
}

function axpy_i8(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const q = v128.load8x8_s(p + j);
    const o = out + (j << 2);
    v128.store(o, f32x4.add(v128.load(o), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), A)));
    v128.store(o, f32x4.add(v128.load(o, 16), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), A)), 16);
  }
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + <f32>load<i8>(p + j) * a);
}

function ffn_gated(t: i32, out: usize, x: usize, d: usize, ptrs: usize, n: usize, act: usize, hOut: usize): void {
  memory.fill(out, 0, d << 2);
  let k16: f32 = 0;
  if (t == T_F16) k16 = f16_prepare(x, d);
  else if (t == T_I8) quantize_x(XQ, xs_of(d), x, d);
  const vb = valuesBytes(t, d);
  for (let n0: usize = 0; n0 < n; n0 += GB) {
    const m = min(GB, n - n0);
    const p0 = ptrs + ((n0 * 2) << 2);
    if (t == T_F32) dots_f32_p(UPS, 0, 0, p0, 8, x, <i32>m, <i32>d);
    else if (t == T_F16) dots_f16_p(UPS, 0, 0, p0, 8, x, <i32>m, <i32>d, k16);
    else dots_i8_p(UPS, 0, 0, p0, 8, XQ, xs_of(d), <i32>m, <i32>d);
    for (let k: usize = 0; k < m; k++) {
      const i = n0 + k;
      const up = <usize>load<u32>(ptrs + ((i * 2) << 2));
      const down = <usize>load<u32>(ptrs + ((i * 2 + 1) << 2));
      let u = load<f32>(UPS + (k << 2));
      if (t == T_I8) u *= load<f32>(up + vb);
      const h = load<f32>(act + (i << 2)) * u;
      if (hOut) store<f32>(hOut + (i << 2), h);
      if (h == 0) continue;
      if (t == T_F32) axpy_f32(out, d, down, h);
      else if (t == T_F16) axpy_f16(out, d, down, h);
      else axpy_i8(out, d, down, h * load<f32>(down + vb));
    }
  }
}

/**
 * out[d] = Σ_j act[j] · (up_j · x) · down_j over n neurons whose (up, down)
 * part addresses are listed at ptrs (u32 [n][2]); act[j] = silu(gate_j · x)
 * of listed neuron j. hOut (0 = none) receives the n activations.
 */
export function ffn_gated_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize): void {
  ffn_gated(T_F32, out, x, <usize>d, ptrs, <usize>n, act, hOut);
}
export function ffn_gated_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize): void {
  ffn_gated(T_F16, out, x, <usize>d, ptrs, <usize>n, act, hOut);
}
/** int8: d must be at most 32768 (the quantized-x area). */
export function ffn_gated_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize): void {
  ffn_gated(T_I8, out, x, <usize>d, ptrs, <usize>n, act, hOut);
}

/** Largest d the int8 gated kernels take. */
export function gated_i8_max_d(): i32 {
  return <i32>MAXD_I8;
}
