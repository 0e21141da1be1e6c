// Thresholded activation sparsity for gated FFNs: the gate rows stay
// resident, gate activations act_gate(gate·x) (activation.ts: silu, relu,
// fatrelu, drelu's relu) are computed for every neuron, and only neurons
// whose |act_gate(gate·x)| passes a threshold (relu family: != 0) have their up and down
// parts read and computed. Two kernels per dtype: the gate activations over
// resident gate parts, and the FFN over (up, down) parts with the gate
// activations given.

import { dots_f32, dots_f16, dots_f32_p, dots_f16_p, dots_i8_p, dots_q8_p, f16_prepare, quantize_x, QB, QG } from "./gemv";
import { silu, act_gate, act_up, ACT_SILU } from "./activation";
import { axpy1_f32, axpy1_f16, axpy1_i8, axpy1_q8, q8ScaleAt } from "./ffn";
import { XQ, MAXD_I8, UPS, GATED_GB } from "./arena";

const T_F32 = 0, T_F16 = 1, T_I8 = 2, T_Q8 = 3;
/** Neurons per block of up dots. */
const GB: usize = GATED_GB; // (64) UPS, this instance's scratch (arena.ts), holds a batch's up dots

/** Bytes of the values of a part: where the int8 scale sits. */
// @ts-ignore: decorator
@inline function valuesBytes(t: i32, d: usize): usize {
  return t == T_F32 ? d << 2 : t == T_F16 ? d << 1 : t == T_Q8 ? q8ScaleAt(d) : d;
}

/** x quantized to XQ for the int8 dots (d <= MAXD_I8). */
// @ts-ignore: decorator
@inline function xs_of(d: usize): usize {
  return XQ + ((d + QB - 1) / QB) * QB * 2;
}

function gate_act(t: i32, out: usize, x: usize, d: usize, n: usize, gate: usize, stride: usize, afn: i32, athr: f32): void {
  if (t == T_F32) dots_f32(out, gate, stride, x, <i32>n, <i32>d);
  else if (t == T_F16) dots_f16(out, gate, stride, x, <i32>n, <i32>d, f16_prepare(x, d));
  else if (t == T_Q8) {
    quantize_x(XQ, xs_of(d), x, d);
    dots_q8_p(out, gate, stride, gate + q8ScaleAt(d), stride, 0, 0, XQ, xs_of(d), <i32>n, <i32>d);
  } else {
    quantize_x(XQ, xs_of(d), x, d);
    dots_i8_p(out, gate, stride, 0, 0, XQ, xs_of(d), <i32>n, <i32>d);
    for (let i: usize = 0; i < n; i++) store<f32>(out + (i << 2), load<f32>(out + (i << 2)) * load<f32>(gate + i * stride + d));
  }
  gate_half(out, n, afn, athr);
}

/** out[i] = act_gate(out[i]) over n values (SiLU: the SIMD silu, as before). */
function gate_half(out: usize, n: usize, afn: i32, athr: f32): void {
  if (afn == ACT_SILU) { silu(out, <i32>n); return; }
  for (let i: usize = 0; i < n; i++) store<f32>(out + (i << 2), act_gate(afn, athr, load<f32>(out + (i << 2))));
}

/** out[i] = act_gate(gate_i · x) (silu, relu, fatrelu at athr, relu for drelu) for n neurons whose gate parts are at gate + i·stride. */
export function gate_act_f32(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, afn: i32, athr: f32): void {
  gate_act(T_F32, out, x, <usize>d, <usize>n, gate, <usize>stride, afn, athr);
}
export function gate_act_f16(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, afn: i32, athr: f32): void {
  gate_act(T_F16, out, x, <usize>d, <usize>n, gate, <usize>stride, afn, athr);
}
/** int8: d must be at most 32768 (the quantized-x area). */
export function gate_act_i8(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, afn: i32, athr: f32): void {
  gate_act(T_I8, out, x, <usize>d, <usize>n, gate, <usize>stride, afn, athr);
}
/** q8: d must be at most 32768 (the quantized-x area). */
export function gate_act_q8(out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, afn: i32, athr: f32): void {
  gate_act(T_Q8, out, x, <usize>d, <usize>n, gate, <usize>stride, afn, athr);
}

function ffn_gated(t: i32, out: usize, x: usize, d: usize, ptrs: usize, n: usize, act: usize, hOut: usize, afn: i32): void {
  memory.fill(out, 0, d << 2);
  let k16: f32 = 0;
  if (t == T_F16) k16 = f16_prepare(x, d);
  else if (t == T_I8 || t == T_Q8) quantize_x(XQ, xs_of(d), x, d);
  const vb = valuesBytes(t, d);
  for (let n0: usize = 0; n0 < n; n0 += GB) {
    const m = min(GB, n - n0);
    const p0 = ptrs + ((n0 * 2) << 2);
    if (t == T_F32) dots_f32_p(UPS, 0, 0, p0, 8, x, <i32>m, <i32>d);
    else if (t == T_F16) dots_f16_p(UPS, 0, 0, p0, 8, x, <i32>m, <i32>d, k16);
    else if (t == T_Q8) dots_q8_p(UPS, 0, 0, vb, 0, p0, 8, XQ, xs_of(d), <i32>m, <i32>d);
    else dots_i8_p(UPS, 0, 0, p0, 8, XQ, xs_of(d), <i32>m, <i32>d);
    for (let k: usize = 0; k < m; k++) {
      const i = n0 + k;
      const up = <usize>load<u32>(ptrs + ((i * 2) << 2));
      const down = <usize>load<u32>(ptrs + ((i * 2 + 1) << 2));
      let u = load<f32>(UPS + (k << 2));
      if (t == T_I8) u *= load<f32>(up + vb);
      const h = load<f32>(act + (i << 2)) * act_up(afn, u);
      if (hOut) store<f32>(hOut + (i << 2), h);
      if (h == 0) continue;
      if (t == T_F32) axpy1_f32(out, d, down, h);
      else if (t == T_F16) axpy1_f16(out, d, down, h);
      else if (t == T_Q8) axpy1_q8(out, d, down, down + vb, h);
      else axpy1_i8(out, d, down, h * load<f32>(down + vb));
    }
  }
}

/**
 * out[d] = Σ_j act[j] · (up_j · x) · down_j over n neurons whose (up, down)
 * part addresses are listed at ptrs (u32 [n][2]); act[j] = act_gate(gate_j · x)
 * of listed neuron j (gate_act_*); dReLU takes relu(up_j · x). athr: unused (the
 * threshold is in act already), kept for the common trailing (afn, athr). hOut (0 = none) receives the n activations.
 */
export function ffn_gated_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated(T_F32, out, x, <usize>d, ptrs, <usize>n, act, hOut, afn);
}
export function ffn_gated_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated(T_F16, out, x, <usize>d, ptrs, <usize>n, act, hOut, afn);
}
/** int8: d must be at most 32768 (the quantized-x area). */
export function ffn_gated_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated(T_I8, out, x, <usize>d, ptrs, <usize>n, act, hOut, afn);
}
/** q8: d must be at most 32768 (the quantized-x area). */
export function ffn_gated_q8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, act: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_gated(T_Q8, out, x, <usize>d, ptrs, <usize>n, act, hOut, afn);
}

/** Largest d the int8 gated kernels take. */
export function gated_i8_max_d(): i32 {
  return <i32>MAXD_I8;
}

// ---------------------------------------------------------------- split kernels (threads build)
//
// src/kernels/pool.ts splits these over threads, bit-identical to the whole calls:
// gate_act_rows: gate_act over neurons [r0, r1) (r0 a multiple of 8, r1 too unless
// r1 = n: the dots' single-row remainder stays the same); ffn_gated in two phases (as
// the batched FFN, batch.ts): gated_h, the activations act[i]·(up_i·x) of neurons
// [n0, n1) (n0 a multiple of GB = 64) into h, then gated_down, columns [j0, j1)
// of out (multiples of 8) from all of h, one axpy1 per nonzero h as ffn_gated.
// t: 0 = f32, 1 = f16, 2 = int8, 3 = q8 (its down columns split at multiples of 32).

export function gate_act_rows(t: i32, out: usize, x: usize, d: i32, n: i32, gate: usize, stride: i32, r0: i32, r1: i32, afn: i32, athr: f32): void {
  const dd = <usize>d, st = <usize>stride, m = r1 - r0;
  const o = out + (<usize>r0 << 2), g = gate + <usize>r0 * st;
  if (t == T_F32) dots_f32(o, g, st, x, m, d);
  else if (t == T_F16) dots_f16(o, g, st, x, m, d, f16_prepare(x, dd));
  else if (t == T_Q8) {
    quantize_x(XQ, xs_of(dd), x, dd);
    dots_q8_p(o, g, st, g + q8ScaleAt(dd), st, 0, 0, XQ, xs_of(dd), m, d);
  } else {
    quantize_x(XQ, xs_of(dd), x, dd);
    dots_i8_p(o, g, st, 0, 0, XQ, xs_of(dd), m, d);
    for (let i: usize = 0; i < <usize>m; i++) store<f32>(o + (i << 2), load<f32>(o + (i << 2)) * load<f32>(g + i * st + dd));
  }
  gate_half(o, <usize>m, afn, athr);
}

export function gated_h(t: i32, x: usize, d: i32, ptrs: usize, n: i32, act: usize, h: usize, n0: i32, n1: i32, afn: i32, athr: f32): void {
  const dd = <usize>d, e = <usize>n1;
  let k16: f32 = 0;
  if (t == T_F16) k16 = f16_prepare(x, dd);
  else if (t == T_I8 || t == T_Q8) quantize_x(XQ, xs_of(dd), x, dd);
  const vb = valuesBytes(t, dd);
  for (let b = <usize>n0; b < e; b += GB) {
    const m = min(GB, e - b);
    const p0 = ptrs + ((b * 2) << 2);
    if (t == T_F32) dots_f32_p(UPS, 0, 0, p0, 8, x, <i32>m, d);
    else if (t == T_F16) dots_f16_p(UPS, 0, 0, p0, 8, x, <i32>m, d, k16);
    else if (t == T_Q8) dots_q8_p(UPS, 0, 0, vb, 0, p0, 8, XQ, xs_of(dd), <i32>m, d);
    else dots_i8_p(UPS, 0, 0, p0, 8, XQ, xs_of(dd), <i32>m, d);
    for (let k: usize = 0; k < m; k++) {
      const i = b + k;
      let u = load<f32>(UPS + (k << 2));
      if (t == T_I8) u *= load<f32>(<usize>load<u32>(ptrs + ((i * 2) << 2)) + vb);
      store<f32>(h + (i << 2), load<f32>(act + (i << 2)) * act_up(afn, u));
    }
  }
}

export function gated_down(t: i32, out: usize, d: i32, ptrs: usize, n: i32, h: usize, j0: i32, j1: i32): void {
  const dd = <usize>d;
  const w = <usize>(j1 - j0);
  const o = out + (<usize>j0 << 2);
  memory.fill(o, 0, w << 2);
  const vb = valuesBytes(t, dd);
  const co: usize = t == T_F32 ? <usize>j0 << 2 : t == T_F16 ? <usize>j0 << 1 : <usize>j0;
  for (let i: usize = 0; i < <usize>n; i++) {
    const hv = load<f32>(h + (i << 2));
    if (hv == 0) continue;
    const down = <usize>load<u32>(ptrs + ((i * 2 + 1) << 2));
    if (t == T_F32) axpy1_f32(o, w, down + co, hv);
    else if (t == T_F16) axpy1_f16(o, w, down + co, hv);
    else if (t == T_Q8) axpy1_q8(o, w, down + co, down + vb + ((<usize>j0 / QG) << 2), hv);
    else axpy1_i8(o, w, down + co, hv * load<f32>(down + vb));
  }
}
