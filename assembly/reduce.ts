// Internal reductions shared by softmax, sampling and attention (not module exports).

import { hmax, hsum, exp4, exp1 } from "./simd";

/** max of x[0..n) (NaN lanes propagate); -inf for n == 0. */
export function vmax(x: usize, n: usize): f32 {
  let m: f32 = -Infinity;
  let i: usize = 0;
  if (n >= 4) {
    let v = v128.load(x);
    for (i = 4; i + 4 <= n; i += 4) v = f32x4.max(v, v128.load(x + (i << 2)));
    m = hmax(v);
  }
  for (; i < n; i++) m = max<f32>(m, load<f32>(x + (i << 2)));
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

