// Dense matrix-vector products: out[r] = W[r,:] . x (+ bias[r]), W row-major.
// All three share one shape: 4 rows at a time (each x vector loaded once is
// used by 4 rows), two vectors per row per step (independent add chains hide
// the f32 add latency), then a 1-row loop for rows % 4 and scalar column tails.

import { hsum, hsum4, hsum4_i32, hsum_i32, f16_upper, f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";

// ---------------------------------------------------------------- f32

/** Scalar dot of n f32 from a and b (column tails). */
// @ts-ignore: decorator
@inline function dotTail(a: usize, b: usize, n: usize): f32 {
  let s: f32 = 0;
  for (let i: usize = 0; i < n; i++) s += load<f32>(a + (i << 2)) * load<f32>(b + (i << 2));
  return s;
}

export function matvec_f32(out: usize, W: usize, x: usize, bias: usize, rows: i32, cols: i32): void {
  const rowBytes = <usize>cols << 2;
  const end8 = <usize>(cols & ~7) << 2; // bytes covered by the 2-vector loop
  const end4 = <usize>(cols & ~3) << 2;
  const tail = <usize>(cols & 3);
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const w0 = W + <usize>r * rowBytes;
    const w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    let c: usize = 0;
    for (; c < end8; c += 32) {
      const xa = v128.load(x + c), xb = v128.load(x + c, 16);
      a0 = f32x4.add(a0, f32x4.mul(v128.load(w0 + c), xa));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(w1 + c), xa));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(w2 + c), xa));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(w3 + c), xa));
      b0 = f32x4.add(b0, f32x4.mul(v128.load(w0 + c, 16), xb));
      b1 = f32x4.add(b1, f32x4.mul(v128.load(w1 + c, 16), xb));
      b2 = f32x4.add(b2, f32x4.mul(v128.load(w2 + c, 16), xb));
      b3 = f32x4.add(b3, f32x4.mul(v128.load(w3 + c, 16), xb));
    }
    if (c < end4) {
      const xa = v128.load(x + c);
      a0 = f32x4.add(a0, f32x4.mul(v128.load(w0 + c), xa));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(w1 + c), xa));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(w2 + c), xa));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(w3 + c), xa));
      c = end4;
    }
    let s = hsum4(f32x4.add(a0, b0), f32x4.add(a1, b1), f32x4.add(a2, b2), f32x4.add(a3, b3));
    if (tail) {
      s = f32x4.add(s, f32x4(dotTail(w0 + c, x + c, tail), dotTail(w1 + c, x + c, tail), dotTail(w2 + c, x + c, tail), dotTail(w3 + c, x + c, tail)));
    }
    if (bias) s = f32x4.add(s, v128.load(bias + (<usize>r << 2)));
    v128.store(out + (<usize>r << 2), s);
  }
  for (; r < rows; r++) {
    const w0 = W + <usize>r * rowBytes;
    let a0 = f32x4.splat(0), b0 = f32x4.splat(0);
    let c: usize = 0;
    for (; c < end8; c += 32) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load(w0 + c), v128.load(x + c)));
      b0 = f32x4.add(b0, f32x4.mul(v128.load(w0 + c, 16), v128.load(x + c, 16)));
    }
    if (c < end4) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load(w0 + c), v128.load(x + c)));
      c = end4;
    }
    let s = hsum(f32x4.add(a0, b0)) + dotTail(w0 + c, x + c, tail);
    if (bias) s += load<f32>(bias + (<usize>r << 2));
    store<f32>(out + (<usize>r << 2), s);
  }
}
