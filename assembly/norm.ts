// Normalizations over n values. out may equal x (in place): the last pass reads
// x[i] before writing out[i], and the statistics are complete before it starts.

import { hsum } from "./simd";

/** Sum of x[0..n) with 4 lanes x 2 accumulators (less rounding drift than a serial sum). */
// @ts-ignore: decorator
@inline function vsum(x: usize, n: usize): f32 {
  let a = f32x4.splat(0), b = f32x4.splat(0);
  let i: usize = 0;
  for (; i + 8 <= n; i += 8) {
    a = f32x4.add(a, v128.load(x + (i << 2)));
    b = f32x4.add(b, v128.load(x + (i << 2), 16));
  }
  let s = hsum(f32x4.add(a, b));
  for (; i < n; i++) s += load<f32>(x + (i << 2));
  return s;
}

/** Sum of (x - c)^2 over x[0..n). */
// @ts-ignore: decorator
@inline function vsumsq(x: usize, n: usize, c: f32): f32 {
  const C = f32x4.splat(c);
  let a = f32x4.splat(0), b = f32x4.splat(0);
  let i: usize = 0;
  for (; i + 8 <= n; i += 8) {
    const u = f32x4.sub(v128.load(x + (i << 2)), C), v = f32x4.sub(v128.load(x + (i << 2), 16), C);
    a = f32x4.add(a, f32x4.mul(u, u));
    b = f32x4.add(b, f32x4.mul(v, v));
  }
  let s = hsum(f32x4.add(a, b));
  for (; i < n; i++) {
    const u = load<f32>(x + (i << 2)) - c;
    s += u * u;
  }
  return s;
}

/** out = (x - mean) / sqrt(var + eps) * weight + bias (bias may be 0). Two-pass variance. */
export function layernorm(out: usize, x: usize, weight: usize, bias: usize, n: i32, eps: f32): void {
  const m = <usize>n;
  if (m == 0) return;
  const mean = vsum(x, m) / <f32>n;
  const inv: f32 = <f32>1.0 / Mathf.sqrt(vsumsq(x, m, mean) / <f32>n + eps);
  const MEAN = f32x4.splat(mean), INV = f32x4.splat(inv);
  let i: usize = 0;
  if (bias) {
    for (; i + 4 <= m; i += 4) {
      const v = f32x4.mul(f32x4.mul(f32x4.sub(v128.load(x + (i << 2)), MEAN), INV), v128.load(weight + (i << 2)));
      v128.store(out + (i << 2), f32x4.add(v, v128.load(bias + (i << 2))));
    }
    for (; i < m; i++) {
      store<f32>(out + (i << 2), (load<f32>(x + (i << 2)) - mean) * inv * load<f32>(weight + (i << 2)) + load<f32>(bias + (i << 2)));
    }
  } else {
    for (; i + 4 <= m; i += 4) {
      v128.store(out + (i << 2), f32x4.mul(f32x4.mul(f32x4.sub(v128.load(x + (i << 2)), MEAN), INV), v128.load(weight + (i << 2))));
    }
    for (; i < m; i++) store<f32>(out + (i << 2), (load<f32>(x + (i << 2)) - mean) * inv * load<f32>(weight + (i << 2)));
  }
}

/** out = x / sqrt(mean(x^2) + eps) * weight. */
export function rmsnorm(out: usize, x: usize, weight: usize, n: i32, eps: f32): void {
  const m = <usize>n;
  if (m == 0) return;
  const inv: f32 = <f32>1.0 / Mathf.sqrt(vsumsq(x, m, 0) / <f32>n + eps);
  const INV = f32x4.splat(inv);
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) {
    v128.store(out + (i << 2), f32x4.mul(f32x4.mul(v128.load(x + (i << 2)), INV), v128.load(weight + (i << 2))));
  }
  for (; i < m; i++) store<f32>(out + (i << 2), load<f32>(x + (i << 2)) * inv * load<f32>(weight + (i << 2)));
}
