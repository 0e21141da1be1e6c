// Elementwise kernels. All support in-place use (out == an input): each
// element is read before the same element is written.

import { silu4, silu1 } from "./simd";
import { vmax, expShiftSum } from "./reduce";

/** x *= s over n values. */
export function scale(x: usize, n: i32, s: f32): void {
  const S = f32x4.splat(s);
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) v128.store(x + (i << 2), f32x4.mul(v128.load(x + (i << 2)), S));
  for (; i < m; i++) store<f32>(x + (i << 2), load<f32>(x + (i << 2)) * s);
}

/** In-place stable softmax: exp(x - max) / sum. */
export function softmax(x: usize, n: i32): void {
  const m = <usize>n;
  if (m == 0) return;
  const mx = vmax(x, m);
  const sum = expShiftSum(x, m, 1.0, mx);
  scale(x, n, <f32>1.0 / sum);
}

/** x = max(x, 0) (NaN stays NaN, -0 becomes +0). */
export function relu(x: usize, n: i32): void {
  const Z = f32x4.splat(0);
  const m = <usize>n;
  let i: usize = 0;
  // pmax(x, 0) = x < 0 ? 0 : x keeps NaN; + 0 turns -0 into +0 (f32x4.max is ~8 instructions in V8)
  for (; i + 4 <= m; i += 4) v128.store(x + (i << 2), f32x4.add(f32x4.pmax(v128.load(x + (i << 2)), Z), Z));
  for (; i < m; i++) store<f32>(x + (i << 2), max<f32>(load<f32>(x + (i << 2)), 0));
}

/** x = x * sigmoid(x) = x / (1 + exp(-x)). */
export function silu(x: usize, n: i32): void {
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) v128.store(x + (i << 2), silu4(v128.load(x + (i << 2))));
  for (; i < m; i++) store<f32>(x + (i << 2), silu1(load<f32>(x + (i << 2))));
}

/** out = silu(gate) * up. */
export function swiglu(out: usize, gate: usize, up: usize, n: i32): void {
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) {
    v128.store(out + (i << 2), f32x4.mul(silu4(v128.load(gate + (i << 2))), v128.load(up + (i << 2))));
  }
  for (; i < m; i++) store<f32>(out + (i << 2), silu1(load<f32>(gate + (i << 2))) * load<f32>(up + (i << 2)));
}

/** out = a + b. */
export function add(out: usize, a: usize, b: usize, n: i32): void {
  const m = <usize>n;
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) v128.store(out + (i << 2), f32x4.add(v128.load(a + (i << 2)), v128.load(b + (i << 2))));
  for (; i < m; i++) store<f32>(out + (i << 2), load<f32>(a + (i << 2)) + load<f32>(b + (i << 2)));
}

// ---------------------------------------------------------------- gated FFN activations
//
// Every gated FFN kernel takes (afn, athr) as its last two parameters
// (/tmp/coord/ACTIVATION.md, docs/FORMAT.md arch.gatedAct): h = act_gate(g) * act_up(u).

export const ACT_SILU: i32 = 0, ACT_RELU: i32 = 1, ACT_FATRELU: i32 = 2, ACT_DRELU: i32 = 3;

/** The gate half: silu(g) | relu(g) | (g > athr ? g : 0) | relu(g). f32 max keeps NaN and turns -0 into +0. */
// @ts-ignore: decorator
@inline export function act_gate(afn: i32, athr: f32, g: f32): f32 {
  return afn == ACT_SILU ? silu1(g) : afn == ACT_FATRELU ? (g > athr ? g : <f32>0) : max<f32>(g, 0);
}

/** The up half: relu(u) for dReLU, u otherwise. */
// @ts-ignore: decorator
@inline export function act_up(afn: i32, u: f32): f32 {
  return afn == ACT_DRELU ? max<f32>(u, 0) : u;
}

/** One gated activation: act_gate(g) * act_up(u) (silu: silu1(g) * u, as before). */
// @ts-ignore: decorator
@inline export function glu1(afn: i32, athr: f32, g: f32, u: f32): f32 {
  return act_gate(afn, athr, g) * act_up(afn, u);
}

/** out[i] = glu1(afn, athr, g[i], u[i]) for n values (in place allowed); SiLU through swiglu, whose silu4 lanes are glu1's silu1: the same bits. */
export function glu(out: usize, g: usize, u: usize, n: usize, afn: i32, athr: f32): void {
  if (afn == ACT_SILU) { swiglu(out, g, u, <i32>n); return; }
  for (let i: usize = 0; i < n; i++) store<f32>(out + (i << 2), glu1(afn, athr, load<f32>(g + (i << 2)), load<f32>(u + (i << 2))));
}
