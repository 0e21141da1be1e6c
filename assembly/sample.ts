// Sampling helpers over logits.

import { scale, softmax } from "./activation";

/** Index of the first maximum; NaNs are ignored (0 if n <= 0 or every value is NaN). */
export function argmax(x: usize, n: i32): i32 {
  const m = <usize>n;
  if (n <= 0) return 0;
  // pass 1: the maximum. pmax(a, b) = a < b ? b : a keeps a when b is NaN.
  let v = f32x4.splat(-Infinity);
  let i: usize = 0;
  for (; i + 4 <= m; i += 4) v = f32x4.pmax(v, v128.load(x + (i << 2)));
  let best: f32 = f32x4.extract_lane(v, 0);
  if (f32x4.extract_lane(v, 1) > best) best = f32x4.extract_lane(v, 1);
  if (f32x4.extract_lane(v, 2) > best) best = f32x4.extract_lane(v, 2);
  if (f32x4.extract_lane(v, 3) > best) best = f32x4.extract_lane(v, 3);
  for (; i < m; i++) {
    const y = load<f32>(x + (i << 2));
    if (y > best) best = y;
  }
  // pass 2: its first position (4 lanes compared at once, then the lowest set lane)
  const B = f32x4.splat(best);
  i = 0;
  for (; i + 4 <= m; i += 4) {
    const mask = i32x4.bitmask(f32x4.eq(v128.load(x + (i << 2)), B));
    if (mask) return <i32>i + ctz(mask);
  }
  for (; i < m; i++) if (load<f32>(x + (i << 2)) == best) return <i32>i;
  return 0;
}

/** x = softmax(x * invTemp), in place. */
export function softmax_temp(x: usize, n: i32, invTemp: f32): void {
  scale(x, n, invTemp);
  softmax(x, n);
}
