/**
 * Plain TypeScript references for the WebAssembly kernels (computed in float64
 * from the same f32 inputs), an arena bump allocator that can hand out
 * deliberately unaligned pointers, a seeded PRNG, and FFN record builders that
 * follow the layout in src/kernels/types.ts.
 */

import { encodeF16, encodeI8Row, encodeQ8Row, f16BitsToF32, q8Groups } from '../../src/kernels/quant.js';
import type { Kernels } from '../../src/kernels/types.js';

// ---------------------------------------------------------------- PRNG

export { rng } from '../../src/util/random.js';

/** n uniform values in [lo, hi) as f32. */
export function uniform(r: () => number, n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * r();
  return a;
}

/** n roughly normal values (sum of 4 uniforms) times sd. */
export function normalish(r: () => number, n: number, sd = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() + r() + r() + r() - 2) * 1.7320508 * sd;
  return a;
}

// ---------------------------------------------------------------- arena

/**
 * Bump allocator over the kernels' arena. `alloc(bytes, misalign)` returns a
 * 16-aligned pointer plus `misalign` bytes, so tests can hit unaligned loads.
 * Not thread-safe; tests using it are synchronous.
 */
export class Arena {
  private cur: number;
  constructor(readonly k: Kernels) {
    this.cur = k.heap_base();
  }
  get u8(): Uint8Array {
    return new Uint8Array(this.k.memory.buffer);
  }
  reset(): this {
    this.cur = this.k.heap_base();
    return this;
  }
  alloc(bytes: number, misalign = 0): number {
    const p = ((this.cur + 15) & ~15) + misalign;
    this.cur = p + bytes + 16; // guard gap between blocks
    if (this.cur > this.k.memory.buffer.byteLength) throw new RangeError('test arena exhausted');
    return p;
  }
  putBytes(src: ArrayBufferView, misalign = 0): number {
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    const p = this.alloc(bytes.length, misalign);
    this.u8.set(bytes, p);
    return p;
  }
  putF32(a: Float32Array, misalign = 0): number {
    return this.putBytes(a, misalign);
  }
  /** Fills n f32 with a sentinel (NaN) so unwritten outputs show up. */
  out(n: number, misalign = 0): number {
    const p = this.alloc(n * 4, misalign);
    const dv = new DataView(this.k.memory.buffer);
    for (let i = 0; i < n; i++) dv.setUint32(p + 4 * i, 0x7fc0dead, true);
    return p;
  }
  f32(p: number, n: number): Float32Array {
    const a = new Float32Array(n);
    new Uint8Array(a.buffer).set(this.u8.subarray(p, p + n * 4));
    return a;
  }
}

// ---------------------------------------------------------------- comparison

export interface Mismatch { i: number; got: number; want: number; tol: number }

/** First index where |got - want| > tol[i] (or a NaN/inf class mismatch), else null. */
export function firstMismatch(got: ArrayLike<number>, want: ArrayLike<number>, tol: ArrayLike<number> | number): Mismatch | null {
  if (got.length !== want.length) return { i: -1, got: got.length, want: want.length, tol: 0 };
  for (let i = 0; i < got.length; i++) {
    const g = got[i]!, w = want[i]!;
    const t = typeof tol === 'number' ? tol : tol[i]!;
    if (Number.isNaN(w) || !Number.isFinite(w)) {
      if (!(Object.is(g, w) || (Number.isNaN(w) && Number.isNaN(g)))) return { i, got: g, want: w, tol: t };
      continue;
    }
    if (!(Math.abs(g - w) <= t)) return { i, got: g, want: w, tol: t };
  }
  return null;
}

/** Bitwise f32 equality (NaN == any NaN). */
export function firstBitMismatch(got: Float32Array, want: Float32Array): Mismatch | null {
  const gu = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const wu = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < got.length; i++) {
    if (Number.isNaN(want[i]!) ? !Number.isNaN(got[i]!) : gu[i] !== wu[i]) return { i, got: got[i]!, want: want[i]!, tol: 0 };
  }
  return null;
}

// ---------------------------------------------------------------- dense references

/** Dot product in float64 and the sum of |terms| (the scale for rounding tolerances). */
export function dot64(a: ArrayLike<number>, aOff: number, b: ArrayLike<number>, n: number): { v: number; abs: number } {
  let v = 0, abs = 0;
  for (let i = 0; i < n; i++) {
    const t = a[aOff + i]! * b[i]!;
    v += t;
    abs += Math.abs(t);
  }
  return { v, abs };
}

/**
 * Relative tolerance of f32 reductions against a float64 reference, applied to
 * sum|terms|: blocked SIMD sums accumulate at most a few hundred roundings of
 * 2^-24 per lane at the sizes tested; 1e-5 leaves headroom yet catches any
 * wrong/missing/duplicated term of relative weight above 1e-5.
 */
export const F32_REL = 1e-5;

/** The activation quantization of the int8 kernels (gemv.ts): per-128-column block max / 32767. */
export const QB = 128;
export function quantErrBound(x: Float32Array): Float32Array {
  const e = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += QB) {
    let m = 0;
    for (let j = b; j < Math.min(b + QB, x.length); j++) m = Math.max(m, Math.abs(x[j]!));
    // half a quantization step (m/32767/2), plus slack for the f32 scale/inverse roundings
    for (let j = b; j < Math.min(b + QB, x.length); j++) e[j] = (m / 65534) * 1.001 + m * 1e-7;
  }
  return e;
}

export type Dtype = 'f32' | 'f16' | 'int8' | 'q8';

/** The kernels' name suffix of a dtype (ffn_relu_i8, matvec_q8, ...). */
export const kernelSuffix = (dtype: Dtype): 'f32' | 'f16' | 'i8' | 'q8' => (dtype === 'int8' ? 'i8' : dtype);

/** A quantized matrix: encoded bytes plus the f32 values the kernels should see (int8: scales [rows]; q8: [rows][ceil(cols / 32)]). */
export interface QMatrix { dtype: Dtype; rows: number; cols: number; bytes: Uint8Array; deq: Float32Array; scales?: Float32Array }

export function quantizeMatrix(w: Float32Array, rows: number, cols: number, dtype: Dtype): QMatrix {
  if (dtype === 'f32') return { dtype, rows, cols, bytes: new Uint8Array(w.slice().buffer), deq: w.slice() };
  if (dtype === 'f16') {
    const h = encodeF16(w);
    const deq = new Float32Array(w.length);
    for (let i = 0; i < w.length; i++) deq[i] = f16BitsToF32(h[i]!);
    return { dtype, rows, cols, bytes: new Uint8Array(h.buffer), deq };
  }
  const q = new Int8Array(w.length);
  const deq = new Float32Array(w.length);
  if (dtype === 'q8') {
    const g = q8Groups(cols);
    const scales = new Float32Array(rows * g);
    for (let r = 0; r < rows; r++) {
      encodeQ8Row(w.subarray(r * cols, (r + 1) * cols), q.subarray(r * cols, (r + 1) * cols), scales.subarray(r * g, (r + 1) * g));
      for (let c = 0; c < cols; c++) deq[r * cols + c] = Math.fround(q[r * cols + c]! * scales[r * g + (c >> 5)]!);
    }
    return { dtype, rows, cols, bytes: new Uint8Array(q.buffer), deq, scales };
  }
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const s = encodeI8Row(w.subarray(r * cols, (r + 1) * cols), q.subarray(r * cols, (r + 1) * cols));
    scales[r] = s;
    for (let c = 0; c < cols; c++) deq[r * cols + c] = Math.fround(q[r * cols + c]! * s);
  }
  return { dtype, rows, cols, bytes: new Uint8Array(q.buffer), deq, scales };
}

/** out = W x + bias with per-row tolerances (f32 rounding; plus x quantization for int8). */
export function matvecRef(m: QMatrix, x: Float32Array, bias?: Float32Array): { want: Float64Array; tol: Float64Array } {
  return deqMatvecRef(m, x, bias ?? null, m.dtype === 'int8' || m.dtype === 'q8');
}

/** W x + bias in float64 over dequantized weights, with per-row tolerances: f32 rounding, plus the int16 quantization of x when the kernel quantizes it. */
export function deqMatvecRef(m: { rows: number; cols: number; deq: Float32Array }, x: Float32Array, bias: Float32Array | null, quantizedX: boolean): { want: Float64Array; tol: Float64Array } {
  const want = new Float64Array(m.rows), tol = new Float64Array(m.rows);
  const qe = quantizedX ? quantErrBound(x) : null;
  for (let r = 0; r < m.rows; r++) {
    const { v, abs } = dot64(m.deq, r * m.cols, x, m.cols);
    let t = F32_REL * (abs + (bias ? Math.abs(bias[r]!) : 0)) + 1e-30;
    if (qe) for (let c = 0; c < m.cols; c++) t += Math.abs(m.deq[r * m.cols + c]!) * qe[c]!;
    want[r] = v + (bias ? bias[r]! : 0);
    tol[r] = t;
  }
  return { want, tol };
}

// ---------------------------------------------------------------- elementwise references

export const silu64 = (v: number): number => v / (1 + Math.exp(-v));

export function softmax64(x: ArrayLike<number>, t = 1): Float64Array {
  const y = Float64Array.from(x as ArrayLike<number>, (v) => Math.fround(v * t));
  let m = -Infinity;
  for (const v of y) m = Math.max(m, v);
  let s = 0;
  for (let i = 0; i < y.length; i++) { y[i] = Math.exp(y[i]! - m); s += y[i]!; }
  for (let i = 0; i < y.length; i++) y[i]! /= s;
  return y;
}

export function layernorm64(x: Float32Array, w: Float32Array, b: Float32Array | null, eps: number): Float64Array {
  const n = x.length;
  let mean = 0;
  for (const v of x) mean += v;
  mean /= n;
  let vr = 0;
  for (const v of x) vr += (v - mean) ** 2;
  vr /= n;
  const inv = 1 / Math.sqrt(vr + eps);
  return Float64Array.from(x, (v, i) => (v - mean) * inv * w[i]! + (b ? b[i]! : 0));
}

export function rmsnorm64(x: Float32Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return Float64Array.from(x, (v, i) => v * inv * w[i]!);
}

/** Rope exactly as f32 arithmetic does it (every product and sum rounded to f32). */
export function rope32(vec: Float32Array, nHeads: number, headDim: number, cos: Float32Array, sin: Float32Array, half: boolean): Float32Array {
  const f = Math.fround;
  const out = vec.slice();
  const h2 = headDim >> 1;
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < h2; i++) {
      const i0 = h * headDim + (half ? i : 2 * i), i1 = half ? i0 + h2 : i0 + 1;
      const a = vec[i0]!, b = vec[i1]!, c = cos[i]!, s = sin[i]!;
      out[i0] = f(f(a * c) - f(b * s));
      out[i1] = f(f(a * s) + f(b * c));
    }
  }
  return out;
}

/** Attention for one query; returns out and per-element tolerances. */
export function attention64(q: Float32Array, k: Float32Array, v: Float32Array, nHeads: number, nKvHeads: number, headDim: number, nPos: number, scale: number): { want: Float64Array; tol: Float64Array } {
  const want = new Float64Array(nHeads * headDim), tol = new Float64Array(nHeads * headDim);
  const kvDim = nKvHeads * headDim;
  const group = nHeads / nKvHeads;
  for (let h = 0; h < nHeads; h++) {
    const kvh = Math.floor(h / group);
    const s = new Float64Array(nPos);
    const sAbs = new Float64Array(nPos);
    for (let t = 0; t < nPos; t++) {
      let d = 0, da = 0;
      for (let j = 0; j < headDim; j++) {
        const p = q[h * headDim + j]! * k[t * kvDim + kvh * headDim + j]!;
        d += p;
        da += Math.abs(p);
      }
      s[t] = d * scale;
      sAbs[t] = da * Math.abs(scale);
    }
    let m = -Infinity;
    for (const x of s) m = Math.max(m, x);
    let sum = 0;
    for (let t = 0; t < nPos; t++) { s[t] = Math.exp(s[t]! - m); sum += s[t]!; }
    for (let t = 0; t < nPos; t++) s[t]! /= sum;
    for (let j = 0; j < headDim; j++) {
      let o = 0, oa = 0, sens = 0;
      for (let t = 0; t < nPos; t++) {
        const vv = v[t * kvDim + kvh * headDim + j]!;
        o += s[t]! * vv;
        oa += Math.abs(s[t]! * vv);
        // a score error e moves p_t by about p_t * 2e (softmax is 1-Lipschitz in log space)
        sens += s[t]! * Math.abs(vv) * 2 * F32_REL * (sAbs[t]! + 1);
      }
      want[h * headDim + j] = o;
      tol[h * headDim + j] = F32_REL * oa + sens + 1e-7;
    }
  }
  return { want, tol };
}

// ---------------------------------------------------------------- FFN records

export interface FfnLayout {
  dtype: Dtype;
  kind: 'relu' | 'swiglu';
  d: number;
  n: number;
  hasBias: boolean;
  bundled: boolean;
}

export interface FfnRecords {
  bytes: Uint8Array;
  /** byte offset of each part's neuron 0 within `bytes` (relu: [up, down]; swiglu: [gate, up, down]) */
  partOff: number[];
  stride: number;
  partBytes: number;
  /** dequantized parts [part][neuron * d + j], biases [neuron] (up part) */
  deq: Float32Array[];
  bias: Float32Array | null;
}

const ELEM = { f32: 4, f16: 2, int8: 1, q8: 1 } as const;

/** Offset of a part's scale(s): after the values (q8: 4-aligned). */
export const scaleAtOf = (dtype: Dtype, d: number): number => (dtype === 'q8' ? (d + 3) & ~3 : d * ELEM[dtype]);

/** Part size: d values, then (int8) an f32 scale or (q8, 4-aligned) ceil(d/32) f32 scales, then (hasBias) an f32 bias slot, padded to 16. */
export function partBytesOf(dtype: Dtype, d: number, hasBias: boolean): number {
  const raw = scaleAtOf(dtype, d) + (dtype === 'int8' ? 4 : dtype === 'q8' ? 4 * q8Groups(d) : 0) + (hasBias ? 4 : 0);
  return (raw + 15) & ~15;
}

/**
 * Builds neuron records for `parts` (f32 source values [neuron * d + j] per part):
 * bundled: neuron i = [part0 | part1 | ...] at i*stride, stride = nParts*partBytes;
 * split: part p is its own array of n records, stride = partBytes.
 * Bias slots hold `bias[i]` in the up part (relu) and garbage elsewhere (must be ignored).
 */
export function buildRecords(L: FfnLayout, parts: Float32Array[], bias: Float32Array | null, r: () => number): FfnRecords {
  const nParts = parts.length;
  const pb = partBytesOf(L.dtype, L.d, L.hasBias);
  const stride = L.bundled ? nParts * pb : pb;
  const bytes = new Uint8Array(nParts * L.n * pb);
  const dv = new DataView(bytes.buffer);
  const partOff = parts.map((_, p) => (L.bundled ? p * pb : p * L.n * pb));
  const deq = parts.map(() => new Float32Array(L.n * L.d));
  const upPart = L.kind === 'relu' ? 0 : 1;
  for (let p = 0; p < nParts; p++) {
    for (let i = 0; i < L.n; i++) {
      const off = partOff[p]! + i * stride;
      const src = parts[p]!.subarray(i * L.d, (i + 1) * L.d);
      const m = quantizeMatrix(src, 1, L.d, L.dtype);
      bytes.set(m.bytes, off);
      deq[p]!.set(m.deq, i * L.d);
      let tail = off + L.d * ELEM[L.dtype];
      if (L.dtype === 'int8') { dv.setFloat32(tail, m.scales![0]!, true); tail += 4; }
      if (L.dtype === 'q8') {
        for (let j = tail; j < off + scaleAtOf('q8', L.d); j++) bytes[j] = (r() * 256) | 0; // alignment gap: garbage
        tail = off + scaleAtOf('q8', L.d);
        for (const s of m.scales!) { dv.setFloat32(tail, s, true); tail += 4; }
      }
      if (L.hasBias) dv.setFloat32(tail, p === upPart && bias ? bias[i]! : (r() - 0.5) * 1e3, true);
      // padding bytes: garbage, the kernels must not read them as values
      for (let j = tail + (L.hasBias ? 4 : 0); j < off + pb; j++) bytes[j] = (r() * 256) | 0;
    }
  }
  return { bytes, partOff, stride, partBytes: pb, deq, bias: L.hasBias ? bias : null };
}

/**
 * FFN reference on the dequantized records: h and out, with tolerances that
 * propagate each dot's error bound (f32 rounding, plus x quantization for int8)
 * through the activation (relu: 1-Lipschitz; silu' <= 1.1) and the down sum.
 */
export function ffnRef(L: FfnLayout, R: FfnRecords, x: Float32Array): { h: Float64Array; hTol: Float64Array; out: Float64Array; outTol: Float64Array } {
  const { d, n } = L;
  const qe = L.dtype === 'int8' || L.dtype === 'q8' ? quantErrBound(x) : null;
  const dotErr = (part: Float32Array, i: number, abs: number): number => {
    let t = F32_REL * abs + 1e-30;
    if (qe) for (let j = 0; j < d; j++) t += Math.abs(part[i * d + j]!) * qe[j]!;
    return t;
  };
  const h = new Float64Array(n), hTol = new Float64Array(n);
  const down = R.deq[R.deq.length - 1]!;
  for (let i = 0; i < n; i++) {
    if (L.kind === 'relu') {
      const up = R.deq[0]!;
      const { v, abs } = dot64(up, i * d, x, d);
      const b = R.bias ? R.bias[i]! : 0;
      h[i] = Math.max(0, v + b);
      hTol[i] = dotErr(up, i, abs) + F32_REL * Math.abs(b);
    } else {
      const g = dot64(R.deq[0]!, i * d, x, d), u = dot64(R.deq[1]!, i * d, x, d);
      const eg = dotErr(R.deq[0]!, i, g.abs), eu = dotErr(R.deq[1]!, i, u.abs);
      h[i] = silu64(g.v) * u.v;
      hTol[i] = 1.1 * eg * (Math.abs(u.v) + eu) + Math.abs(silu64(g.v)) * eu + F32_REL * Math.abs(h[i]!);
    }
  }
  return { h, hTol, ...downRef(h, hTol, down, n, d) };
}

/** out = down^T h in float64 over n neurons of d columns (down: [n][d]), each column's tolerance from f32 rounding and h's own. */
export function downRef(h: Float64Array, hTol: Float64Array, down: Float32Array, n: number, d: number): { out: Float64Array; outTol: Float64Array } {
  const out = new Float64Array(d), outTol = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    let o = 0, oa = 0, prop = 0;
    for (let i = 0; i < n; i++) {
      const w = down[i * d + j]!;
      o += h[i]! * w;
      oa += Math.abs(h[i]! * w);
      prop += hTol[i]! * Math.abs(w);
    }
    out[j] = o;
    outTol[j] = F32_REL * oa + prop + 1e-30;
  }
  return { out, outTol };
}
