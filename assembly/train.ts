// Training kernels for the low-rank neuron predictors (`flashlm calibrate`):
// a register-blocked matrix product, a transpose, the class-weighted logistic
// loss with its gradient, column sums and an Adam step. All f32, row-major,
// pointers are byte offsets into the arena; nothing is allocated.

import { hsum, exp4 } from "./simd";

// ---------------------------------------------------------------- matmul

/** Sum over k < K of a[k]*b[k] for columns [c, K) (scalar tail). */
// @ts-ignore: decorator
@inline function tailDot(a: usize, b: usize, c: usize, K: usize): f32 {
  let s: f32 = 0;
  for (; c < K; c++) s += load<f32>(a + (c << 2)) * load<f32>(b + (c << 2));
  return s;
}

/**
 * C[M,N] = A[M,K] · B[N,K]ᵀ (+ C when accumulate != 0): every output is the dot
 * of a row of A and a row of B. Blocks of 2 rows of A × 4 rows of B keep 8
 * accumulators in registers (6 loads per 8 multiply-adds).
 */
export function mm_nt(C: usize, A: usize, B: usize, M: i32, N: i32, K: i32, accumulate: i32): void {
  const m = <usize>M, n = <usize>N, kk = <usize>K;
  const main = kk & ~3;
  const rowA = kk << 2, rowB = kk << 2, rowC = n << 2;
  let i: usize = 0;
  for (; i + 2 <= m; i += 2) {
    const a0 = A + i * rowA, a1 = a0 + rowA;
    const c0 = C + i * rowC, c1 = c0 + rowC;
    let j: usize = 0;
    for (; j + 4 <= n; j += 4) {
      const b0 = B + j * rowB, b1 = b0 + rowB, b2 = b1 + rowB, b3 = b2 + rowB;
      let s00 = f32x4.splat(0), s01 = f32x4.splat(0), s02 = f32x4.splat(0), s03 = f32x4.splat(0);
      let s10 = f32x4.splat(0), s11 = f32x4.splat(0), s12 = f32x4.splat(0), s13 = f32x4.splat(0);
      for (let c: usize = 0; c < main; c += 4) {
        const o = c << 2;
        const x0 = v128.load(a0 + o), x1 = v128.load(a1 + o);
        let w = v128.load(b0 + o);
        s00 = f32x4.add(s00, f32x4.mul(x0, w)); s10 = f32x4.add(s10, f32x4.mul(x1, w));
        w = v128.load(b1 + o);
        s01 = f32x4.add(s01, f32x4.mul(x0, w)); s11 = f32x4.add(s11, f32x4.mul(x1, w));
        w = v128.load(b2 + o);
        s02 = f32x4.add(s02, f32x4.mul(x0, w)); s12 = f32x4.add(s12, f32x4.mul(x1, w));
        w = v128.load(b3 + o);
        s03 = f32x4.add(s03, f32x4.mul(x0, w)); s13 = f32x4.add(s13, f32x4.mul(x1, w));
      }
      let r00 = hsum(s00) + tailDot(a0, b0, main, kk), r01 = hsum(s01) + tailDot(a0, b1, main, kk);
      let r02 = hsum(s02) + tailDot(a0, b2, main, kk), r03 = hsum(s03) + tailDot(a0, b3, main, kk);
      let r10 = hsum(s10) + tailDot(a1, b0, main, kk), r11 = hsum(s11) + tailDot(a1, b1, main, kk);
      let r12 = hsum(s12) + tailDot(a1, b2, main, kk), r13 = hsum(s13) + tailDot(a1, b3, main, kk);
      const o = j << 2;
      if (accumulate) {
        r00 += load<f32>(c0 + o); r01 += load<f32>(c0 + o, 4); r02 += load<f32>(c0 + o, 8); r03 += load<f32>(c0 + o, 12);
        r10 += load<f32>(c1 + o); r11 += load<f32>(c1 + o, 4); r12 += load<f32>(c1 + o, 8); r13 += load<f32>(c1 + o, 12);
      }
      store<f32>(c0 + o, r00); store<f32>(c0 + o, r01, 4); store<f32>(c0 + o, r02, 8); store<f32>(c0 + o, r03, 12);
      store<f32>(c1 + o, r10); store<f32>(c1 + o, r11, 4); store<f32>(c1 + o, r12, 8); store<f32>(c1 + o, r13, 12);
    }
    for (; j < n; j++) {
      const b0 = B + j * rowB;
      let s0 = f32x4.splat(0), s1 = f32x4.splat(0);
      for (let c: usize = 0; c < main; c += 4) {
        const w = v128.load(b0 + (c << 2));
        s0 = f32x4.add(s0, f32x4.mul(v128.load(a0 + (c << 2)), w));
        s1 = f32x4.add(s1, f32x4.mul(v128.load(a1 + (c << 2)), w));
      }
      let r0 = hsum(s0) + tailDot(a0, b0, main, kk), r1 = hsum(s1) + tailDot(a1, b0, main, kk);
      if (accumulate) { r0 += load<f32>(c0 + (j << 2)); r1 += load<f32>(c1 + (j << 2)); }
      store<f32>(c0 + (j << 2), r0);
      store<f32>(c1 + (j << 2), r1);
    }
  }
  for (; i < m; i++) {
    const a0 = A + i * rowA, c0 = C + i * rowC;
    for (let j: usize = 0; j < n; j++) {
      const b0 = B + j * rowB;
      let s0 = f32x4.splat(0);
      for (let c: usize = 0; c < main; c += 4) s0 = f32x4.add(s0, f32x4.mul(v128.load(a0 + (c << 2)), v128.load(b0 + (c << 2))));
      let r = hsum(s0) + tailDot(a0, b0, main, kk);
      if (accumulate) r += load<f32>(c0 + (j << 2));
      store<f32>(c0 + (j << 2), r);
    }
  }
}

/** out[cols,rows] = in[rows,cols]ᵀ (in 8×8 tiles; out must not overlap in). */
export function transpose(out: usize, src: usize, rows: i32, cols: i32): void {
  const R = <usize>rows, Cn = <usize>cols;
  for (let r0: usize = 0; r0 < R; r0 += 8) {
    const r1 = min(r0 + 8, R);
    for (let c0: usize = 0; c0 < Cn; c0 += 8) {
      const c1 = min(c0 + 8, Cn);
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) store<f32>(out + ((c * R + r) << 2), load<f32>(src + ((r * Cn + c) << 2)));
      }
    }
  }
}

// ---------------------------------------------------------------- loss

/**
 * Class-weighted logistic loss over a batch of logits, in place:
 * z = L[t,j] + bias[j] (bias may be 0); y = labels[t,j] (u8, 0 or 1);
 * loss = posWeight * y * softplus(-z) + (1 - y) * softplus(z);
 * L[t,j] becomes d(loss)/dz * scale. Returns the summed (unscaled) loss.
 * softplus(z) = max(z, 0) + log1p(exp(-|z|)), computed stably.
 */
export function bce_grad(L: usize, labels: usize, bias: usize, T: i32, N: i32, posWeight: f32, scale: f32): f64 {
  const n = <usize>N, t = <usize>T;
  const one = f32x4.splat(1), zero = f32x4.splat(0);
  const PW = f32x4.splat(posWeight), S = f32x4.splat(scale);
  let total: f64 = 0;
  for (let r: usize = 0; r < t; r++) {
    const row = L + ((r * n) << 2), lab = labels + r * n;
    let acc = f32x4.splat(0);
    let j: usize = 0;
    for (; j + 4 <= n; j += 4) {
      let z = v128.load(row + (j << 2));
      if (bias) z = f32x4.add(z, v128.load(bias + (j << 2)));
      // y as f32 lanes from 4 u8 labels
      const y = f32x4.convert_i32x4_u(i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(lab + j))));
      const e = exp4(f32x4.neg(f32x4.abs(z))); // exp(-|z|) in (0, 1]
      const sig = f32x4.div(v128.bitselect(one, e, f32x4.ge(z, zero)), f32x4.add(one, e)); // sigmoid(z)
      // log1p(e) for e in (0,1]: log(1+e) via the f32 log of a value in (1, 2]
      const l1p = log4(f32x4.add(one, e));
      const spPos = f32x4.add(f32x4.pmax(z, zero), l1p); // softplus(z)
      const spNeg = f32x4.sub(spPos, z); // softplus(-z)
      const wy = f32x4.mul(PW, y);
      const ny = f32x4.sub(one, y);
      acc = f32x4.add(acc, f32x4.add(f32x4.mul(wy, spNeg), f32x4.mul(ny, spPos)));
      const g = f32x4.add(f32x4.mul(wy, f32x4.sub(sig, one)), f32x4.mul(ny, sig));
      v128.store(row + (j << 2), f32x4.mul(g, S));
    }
    let s: f64 = <f64>hsum(acc);
    for (; j < n; j++) {
      let z = load<f32>(row + (j << 2));
      if (bias) z += load<f32>(bias + (j << 2));
      const y = <f32>load<u8>(lab + j);
      const sig = <f32>(1.0 / (1.0 + Math.exp(-<f64>z)));
      const spPos = <f32>(Math.max(<f64>z, 0) + Math.log1p(Math.exp(-Math.abs(<f64>z))));
      const spNeg = spPos - z;
      s += <f64>(posWeight * y * spNeg + (1 - y) * spPos);
      store<f32>(row + (j << 2), (posWeight * y * (sig - 1) + (1 - y) * sig) * scale);
    }
    total += s;
  }
  return total;
}

/** Natural log on 4 lanes for x in [1, 2] (where the loss needs it): atanh series, |err| < 1e-7. */
// @ts-ignore: decorator
@inline function log4(x: v128): v128 {
  // log(x) = 2 atanh(u), u = (x-1)/(x+1) in [0, 1/3]
  const u = f32x4.div(f32x4.sub(x, f32x4.splat(1)), f32x4.add(x, f32x4.splat(1)));
  const u2 = f32x4.mul(u, u);
  let p = f32x4.splat(<f32>(1.0 / 13));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(<f32>(1.0 / 11)));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(<f32>(1.0 / 9)));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(<f32>(1.0 / 7)));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(<f32>(1.0 / 5)));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(<f32>(1.0 / 3)));
  p = f32x4.add(f32x4.mul(p, u2), f32x4.splat(1));
  return f32x4.mul(f32x4.mul(u, p), f32x4.splat(2));
}

/** out[j] = sum over t of X[t,j] (+ out[j] when accumulate != 0), X [T,N]. */
export function colsum(out: usize, X: usize, T: i32, N: i32, accumulate: i32): void {
  const n = <usize>N, t = <usize>T;
  if (!accumulate) memory.fill(out, 0, n << 2);
  for (let r: usize = 0; r < t; r++) {
    const row = X + ((r * n) << 2);
    let j: usize = 0;
    for (; j + 4 <= n; j += 4) v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), v128.load(row + (j << 2))));
    for (; j < n; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + load<f32>(row + (j << 2)));
  }
}

// ---------------------------------------------------------------- optimizer

/**
 * One Adam step over n parameters: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
 * w -= lr * (m / bc1) / (sqrt(v / bc2) + eps), with bc1 = 1 - b1^t and
 * bc2 = 1 - b2^t passed by the caller.
 */
export function adam_step(w: usize, g: usize, m: usize, v: usize, n: i32, lr: f32, b1: f32, b2: f32, eps: f32, bc1: f32, bc2: f32): void {
  const N = <usize>n;
  const B1 = f32x4.splat(b1), B2 = f32x4.splat(b2), C1 = f32x4.splat(1 - b1), C2 = f32x4.splat(1 - b2);
  const LR = f32x4.splat(lr / bc1), IB2 = f32x4.splat(1 / bc2), EPS = f32x4.splat(eps);
  let i: usize = 0;
  for (; i + 4 <= N; i += 4) {
    const o = i << 2;
    const gi = v128.load(g + o);
    const mi = f32x4.add(f32x4.mul(B1, v128.load(m + o)), f32x4.mul(C1, gi));
    const vi = f32x4.add(f32x4.mul(B2, v128.load(v + o)), f32x4.mul(C2, f32x4.mul(gi, gi)));
    v128.store(m + o, mi);
    v128.store(v + o, vi);
    const step = f32x4.div(f32x4.mul(LR, mi), f32x4.add(f32x4.sqrt(f32x4.mul(vi, IB2)), EPS));
    v128.store(w + o, f32x4.sub(v128.load(w + o), step));
  }
  for (; i < N; i++) {
    const o = i << 2;
    const gi = load<f32>(g + o);
    const mi = b1 * load<f32>(m + o) + (1 - b1) * gi;
    const vi = b2 * load<f32>(v + o) + (1 - b2) * gi * gi;
    store<f32>(m + o, mi);
    store<f32>(v + o, vi);
    store<f32>(w + o, load<f32>(w + o) - (lr / bc1) * mi / (<f32>Math.sqrt(<f64>(vi / bc2)) + eps));
  }
}

/**
 * Confusion counts of thresholded logits against labels, for a threshold
 * sweep: for each of the T×N logits z (+ bias[j]) counts, per histogram bin
 * of z, the positives and the negatives: bin = clamp(floor((z - lo) * invW), 0, bins-1).
 * posHist/negHist are f64[bins] and are added to (not cleared).
 */
export function logit_histogram(L: usize, labels: usize, bias: usize, T: i32, N: i32, lo: f32, invW: f32, bins: i32, posHist: usize, negHist: usize): void {
  const n = <usize>N, t = <usize>T;
  const top = <f32>(bins - 1);
  for (let r: usize = 0; r < t; r++) {
    const row = L + ((r * n) << 2), lab = labels + r * n;
    for (let j: usize = 0; j < n; j++) {
      let z = load<f32>(row + (j << 2));
      if (bias) z += load<f32>(bias + (j << 2));
      let b = Mathf.floor((z - lo) * invW);
      if (!(b >= 0)) b = 0; // NaN lands in bin 0
      else if (b > top) b = top;
      const at = (<usize><i32>b) << 3;
      const h = load<u8>(lab + j) ? posHist : negHist;
      store<f64>(h + at, load<f64>(h + at) + 1);
    }
  }
}
