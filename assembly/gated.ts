// Thresholded activation sparsity for gated (SwiGLU) FFNs: the gate rows stay
// resident, gate activations silu(gate·x) are computed for every neuron, and
// only neurons whose |silu(gate·x)| passes a threshold have their up and down
// parts read and computed. Two kernels per dtype: the gate activations over
// resident gate parts, and the FFN over (up, down) parts with the gate
// activations given.

import { dots_f32, dots_f16, dots_f32_p, dots_f16_p, dots_i8_p, f16_prepare, quantize_x, QB } from "./gemv";
import { silu } from "./activation";
import { axpy1_f32, axpy1_f16, axpy1_i8 } from "./ffn";
import { XQ, MAXD_I8 } from "./arena";

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
      if (t == T_F32) axpy1_f32(out, d, down, h);
      else if (t == T_F16) axpy1_f16(out, d, down, h);
      else axpy1_i8(out, d, down, h * load<f32>(down + vb));
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
