// Internal reductions shared by softmax, sampling and attention (not module exports).

import { hmax, hsum, exp4, exp1 } from "./simd";

/**
 * max of x[0..n) ignoring NaN (-inf for n == 0 or all NaN). pmax(a, b) = a < b ? b : a
 * keeps a when b is NaN; a NaN input still makes softmax NaN through exp and the sum.
 */
export function vmax(x: usize, n: usize): f32 {
  let v = f32x4.splat(-Infinity);
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) v = f32x4.pmax(v, v128.load(x + (i << 2)));
  let m = hmax(v);
  for (; i < n; i++) {
    const y = load<f32>(x + (i << 2));
    if (y > m) m = y;
  }
  return m;
}

/** x[i] = exp(x[i] * t - mx); returns the sum (4 lanes, then pairwise). */
export function expShiftSum(x: usize, n: usize, t: f32, mx: f32): f32 {
  const T = f32x4.splat(t), M = f32x4.splat(mx);
  let s = f32x4.splat(0);
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) {
    const e = exp4(f32x4.sub(f32x4.mul(v128.load(x + (i << 2)), T), M));
    v128.store(x + (i << 2), e);
    s = f32x4.add(s, e);
  }
  let sum = hsum(s);
  for (; i < n; i++) {
    const e = exp1(load<f32>(x + (i << 2)) * t - mx);
    store<f32>(x + (i << 2), e);
    sum += e;
  }
  return sum;
}

