// FFN over neuron records (types.ts / docs/FORMAT.md): part p of neuron i at
// partPtr_p + i*stride (or listed in a u32 pointer table: the *_ptrs kernels);
// a part is d values, then (int8) an f32 scale or (q8, at the 4-aligned
// offset after the values) ceil(d/32) f32 group scales, then (hasBias) an f32
// bias slot. out[d] is overwritten.
//
// Neurons go in batches of NB: the up (and gate) dots of a batch use the same
// row-grouped code as matvec (rows = neurons, row stride = record stride),
// then each neuron with h != 0 is queued for the down pass; the down axpys
// run 4 neurons at a time so out is loaded/stored once per 4 down rows.
// Skipping h == 0 is what makes ReLU sparsity pay even when every neuron is given.
// The neurons are summed in 8 fixed ranges, added in order ("neuron ranges" below).
// Whether a batch first touches the next batch's records is the host's choice
// (ffn_touch_set): it pays on some CPUs and costs on others (touch_parts).
// The gated kernels (ffn_swiglu_*: gate, up, down parts) take the activation as their
// last two parameters (afn, athr: activation.ts glu1): SiLU, ReLU, FATReLU, dReLU.

import { hsum, f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";
import { MAXD_I8, XQ, HB, QP, QA, QS, PT, FFN_NB, FFN_RANGES } from "./arena";
import { dots_f32_p, dots2_f32_p, dots_f16_p, dots_i8_p, dots_q8_p, q8_dot_f32, f16_prepare, f16_to_f32, quantize_x, QB, QG } from "./gemv";
import { glu1 } from "./activation";

const NB: usize = FFN_NB; // neurons per batch (64; f32: batchOf)
// HB (up / gate dots of the current batch, 2 x NB f32), QP / QA (the down-pass
// queue) and XQ are this instance's scratch areas (arena.ts).


// ---------------------------------------------------------------- down pass queue
//
// Up to 4 pending (down part pointer, coefficient) pairs; flushed as one axpy4.

let qn: i32 = 0; // pending pairs in QP (pointers) / QA (coefficients)

// dtype codes for the queue
const T_F32 = 0, T_F16 = 1, T_I8 = 2, T_Q8 = 3;

/** out[j] += sum_k a_k * down_k[j], 4 f32 rows. */
export function axpy4_f32(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  const A0 = f32x4.splat(a0), A1 = f32x4.splat(a1), A2 = f32x4.splat(a2), A3 = f32x4.splat(a3);
  let j: usize = 0;
  for (; j + 4 <= d; j += 4) {
    const o = j << 2;
    const acc = f32x4.add(
      f32x4.add(f32x4.mul(v128.load(p0 + o), A0), f32x4.mul(v128.load(p1 + o), A1)),
      f32x4.add(f32x4.mul(v128.load(p2 + o), A2), f32x4.mul(v128.load(p3 + o), A3)));
    v128.store(out + o, f32x4.add(v128.load(out + o), acc));
  }
  for (; j < d; j++) {
    const o = j << 2;
    store<f32>(out + o, load<f32>(out + o) + ((load<f32>(p0 + o) * a0 + load<f32>(p1 + o) * a1) + (load<f32>(p2 + o) * a2 + load<f32>(p3 + o) * a3)));
  }
}

/** out[j] += a * down[j], one f32 row. */
export function axpy1_f32(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a);
  let j: usize = 0;
  for (; j + 4 <= d; j += 4) v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), f32x4.mul(v128.load(p + (j << 2)), A)));
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + load<f32>(p + (j << 2)) * a);
}

// f16 down rows: exact decode (inf/NaN included) without the 2^112 rescale; the
// coefficient carries it instead (a * 2^112, exact while |a| < 2^15), so each
// product b * (a 2^112) equals a * w rounded once. Larger |a| use the 1-row path.

/** Decoded-but-unscaled f16 lanes 0..3 / 4..7 of 8 halves at p (exact for inf/NaN). */
// @ts-ignore: decorator
@inline function f16raw_lo(h: v128): v128 { return f16_bits_lo(i16x8.shl(h, 13), f16_upper_exact(h)); }
// @ts-ignore: decorator
@inline function f16raw_hi(h: v128): v128 { return f16_bits_hi(i16x8.shl(h, 13), f16_upper_exact(h)); }

export function axpy4_f16(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  const A0 = f32x4.splat(a0 * F16_SCALE), A1 = f32x4.splat(a1 * F16_SCALE), A2 = f32x4.splat(a2 * F16_SCALE), A3 = f32x4.splat(a3 * F16_SCALE);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const h0 = v128.load(p0 + (j << 1)), h1 = v128.load(p1 + (j << 1)), h2 = v128.load(p2 + (j << 1)), h3 = v128.load(p3 + (j << 1));
    const o = out + (j << 2);
    const lo = f32x4.add(
      f32x4.add(f32x4.mul(f16raw_lo(h0), A0), f32x4.mul(f16raw_lo(h1), A1)),
      f32x4.add(f32x4.mul(f16raw_lo(h2), A2), f32x4.mul(f16raw_lo(h3), A3)));
    const hi = f32x4.add(
      f32x4.add(f32x4.mul(f16raw_hi(h0), A0), f32x4.mul(f16raw_hi(h1), A1)),
      f32x4.add(f32x4.mul(f16raw_hi(h2), A2), f32x4.mul(f16raw_hi(h3), A3)));
    v128.store(o, f32x4.add(v128.load(o), lo));
    v128.store(o, f32x4.add(v128.load(o, 16), hi), 16);
  }
  for (; j < d; j++) {
    const o = out + (j << 2);
    store<f32>(o, load<f32>(o) + ((f16_to_f32(load<u16>(p0 + (j << 1))) * a0 + f16_to_f32(load<u16>(p1 + (j << 1))) * a1)
      + (f16_to_f32(load<u16>(p2 + (j << 1))) * a2 + f16_to_f32(load<u16>(p3 + (j << 1))) * a3)));
  }
}

/** One f16 down row, exact for any coefficient (decode * 2^112, then * a). */
export function axpy1_f16(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a), S = f32x4.splat(F16_SCALE);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const h = v128.load(p + (j << 1));
    const o = out + (j << 2);
    v128.store(o, f32x4.add(v128.load(o), f32x4.mul(f32x4.mul(f16raw_lo(h), S), A)));
    v128.store(o, f32x4.add(v128.load(o, 16), f32x4.mul(f32x4.mul(f16raw_hi(h), S), A)), 16);
  }
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + f16_to_f32(load<u16>(p + (j << 1))) * a);
}

/** Columns [j, j+8) of 4 int8 rows times the coefficients A_k (splat): the body of axpy4_i8 and axpy4_q8. */
// @ts-ignore: decorator
@inline function axpy4_i8_8(out: usize, j: usize, p0: usize, p1: usize, p2: usize, p3: usize, A0: v128, A1: v128, A2: v128, A3: v128): void {
  const q0 = v128.load8x8_s(p0 + j), q1 = v128.load8x8_s(p1 + j), q2 = v128.load8x8_s(p2 + j), q3 = v128.load8x8_s(p3 + j);
  const o = out + (j << 2);
  const lo = f32x4.add(
    f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q0)), A0), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q1)), A1)),
    f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q2)), A2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q3)), A3)));
  const hi = f32x4.add(
    f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q0)), A0), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q1)), A1)),
    f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q2)), A2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q3)), A3)));
  v128.store(o, f32x4.add(v128.load(o), lo));
  v128.store(o, f32x4.add(v128.load(o, 16), hi), 16);
}

/** out[j] += sum_k a_k * q_k[j] for 4 int8 rows (a_k already includes the row scale). */
export function axpy4_i8(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  const A0 = f32x4.splat(a0), A1 = f32x4.splat(a1), A2 = f32x4.splat(a2), A3 = f32x4.splat(a3);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) axpy4_i8_8(out, j, p0, p1, p2, p3, A0, A1, A2, A3);
  for (; j < d; j++) {
    const o = out + (j << 2);
    store<f32>(o, load<f32>(o) + ((<f32>load<i8>(p0 + j) * a0 + <f32>load<i8>(p1 + j) * a1) + (<f32>load<i8>(p2 + j) * a2 + <f32>load<i8>(p3 + j) * a3)));
  }
}

export function axpy1_i8(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const q = v128.load8x8_s(p + j);
    const o = out + (j << 2);
    v128.store(o, f32x4.add(v128.load(o), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), A)));
    v128.store(o, f32x4.add(v128.load(o, 16), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), A)), 16);
  }
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + <f32>load<i8>(p + j) * a);
}

// q8 down rows (one f32 scale per group of 32 values, at s): column j gets
// q_k[j] * fround(a_k * ws_k[j / 32]), summed as axpy4_i8 / axpy1_i8 do. The
// columns start at a group boundary (callers split at multiples of 32).


/** out[j] += sum_k fround(a_k * s_k[j/32]) * q_k[j] for 4 q8 rows (values p_k, scales s_k). */
export function axpy4_q8(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, s0: usize, s1: usize, s2: usize, s3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  for (let g: usize = 0; g < d; g += QG) {
    const so = (g / QG) << 2;
    const b0 = a0 * load<f32>(s0 + so), b1 = a1 * load<f32>(s1 + so), b2 = a2 * load<f32>(s2 + so), b3 = a3 * load<f32>(s3 + so);
    const A0 = f32x4.splat(b0), A1 = f32x4.splat(b1), A2 = f32x4.splat(b2), A3 = f32x4.splat(b3);
    const e = min(g + QG, d);
    let j = g;
    for (; j + 16 <= e; j += 16) { // two steps of 8 per iteration (the same per-column arithmetic)
      axpy4_i8_8(out, j, p0, p1, p2, p3, A0, A1, A2, A3);
      axpy4_i8_8(out, j + 8, p0, p1, p2, p3, A0, A1, A2, A3);
    }
    for (; j + 8 <= e; j += 8) axpy4_i8_8(out, j, p0, p1, p2, p3, A0, A1, A2, A3);
    for (; j < e; j++) {
      const o = out + (j << 2);
      store<f32>(o, load<f32>(o) + ((<f32>load<i8>(p0 + j) * b0 + <f32>load<i8>(p1 + j) * b1) + (<f32>load<i8>(p2 + j) * b2 + <f32>load<i8>(p3 + j) * b3)));
    }
  }
}

/** out[j] += fround(a * s[j/32]) * q[j], one q8 row. */
export function axpy1_q8(out: usize, d: usize, p: usize, s: usize, a: f32): void {
  for (let g: usize = 0; g < d; g += QG) {
    const b = a * load<f32>(s + ((g / QG) << 2));
    const A = f32x4.splat(b);
    const e = min(g + QG, d);
    let j = g;
    for (; j + 8 <= e; j += 8) {
      const q = v128.load8x8_s(p + j);
      const o = out + (j << 2);
      v128.store(o, f32x4.add(v128.load(o), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), A)));
      v128.store(o, f32x4.add(v128.load(o, 16), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), A)), 16);
    }
    for (; j < e; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + <f32>load<i8>(p + j) * b);
  }
}

/** Runs one down row now (queue leftovers and coefficients the 4-row path can't take); sp: q8 scales. */
function down1(t: i32, out: usize, d: usize, p: usize, sp: usize, a: f32): void {
  if (t == T_F32) axpy1_f32(out, d, p, a);
  else if (t == T_F16) axpy1_f16(out, d, p, a);
  else if (t == T_Q8) axpy1_q8(out, d, p, sp, a);
  else axpy1_i8(out, d, p, a);
}

/** Queues down row p (q8: scales at sp) with coefficient a; every 4th call runs the 4-row axpy. */
function push(t: i32, out: usize, d: usize, p: usize, sp: usize, a: f32): void {
  // f16 folds 2^112 into the coefficient: larger |a| would overflow, run it alone (exact)
  if (t == T_F16 && !(abs<f32>(a) < 32768.0)) { down1(t, out, d, p, sp, a); return; }
  store<usize>(QP + (<usize>qn << 2), p);
  store<usize>(QS + (<usize>qn << 2), sp);
  store<f32>(QA + (<usize>qn << 2), a);
  if (++qn < 4) return;
  qn = 0;
  const p0 = load<usize>(QP), p1 = load<usize>(QP, 4), p2 = load<usize>(QP, 8), p3 = load<usize>(QP, 12);
  const a0 = load<f32>(QA), a1 = load<f32>(QA, 4), a2 = load<f32>(QA, 8), a3 = load<f32>(QA, 12);
  if (t == T_F32) axpy4_f32(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
  else if (t == T_F16) axpy4_f16(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
  else if (t == T_Q8) axpy4_q8(out, d, p0, p1, p2, p3, load<usize>(QS), load<usize>(QS, 4), load<usize>(QS, 8), load<usize>(QS, 12), a0, a1, a2, a3);
  else axpy4_i8(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
}

/** Runs what is left in the queue. */
function flush(t: i32, out: usize, d: usize): void {
  for (let k = 0; k < qn; k++) down1(t, out, d, load<usize>(QP + (<usize>k << 2)), load<usize>(QS + (<usize>k << 2)), load<f32>(QA + (<usize>k << 2)));
  qn = 0;
}

// ---------------------------------------------------------------- up / gate dots

/** Per-call setup of x for the dtype: f16 scale factor, or int8 quantization. */
let f16k: f32 = 0;
let i8q: bool = false;

export function prepare_x(t: i32, x: usize, d: usize): void {
  if (t == T_F16) f16k = f16_prepare(x, d);
  else if (t == T_I8 || t == T_Q8) {
    i8q = d <= MAXD_I8;
    if (i8q) quantize_x(XQ, XQ + ((d + QB - 1) / QB) * QB * 2, x, d);
  }
}

/** int8 row dot against f32 x (exact products; used when d > MAXD_I8). */
function i8_dot_f32(p: usize, x: usize, d: usize): f32 {
  let a = f32x4.splat(0), b = f32x4.splat(0);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
    const q = v128.load8x8_s(p + j);
    a = f32x4.add(a, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(q)), v128.load(x + (j << 2))));
    b = f32x4.add(b, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(q)), v128.load(x + (j << 2), 16)));
  }
  let s = hsum(f32x4.add(a, b));
  for (; j < d; j++) s += <f32>load<i8>(p + j) * load<f32>(x + (j << 2));
  return s;
}

/**
 * dst[k] = part_k . x for m neurons (no int8 scale applied). Part k is at
 * p + k*stride, or at the u32 ptrs[k * pstep bytes] when ptrs != 0.
 */
export function dots(t: i32, dst: usize, p: usize, stride: usize, ptrs: usize, pstep: usize, x: usize, m: usize, d: usize): void {
  if (t == T_F32) dots_f32_p(dst, p, stride, ptrs, pstep, x, <i32>m, <i32>d);
  else if (t == T_F16) dots_f16_p(dst, p, stride, ptrs, pstep, x, <i32>m, <i32>d, f16k);
  else if (t == T_Q8) {
    const so = q8ScaleAt(d);
    if (i8q) dots_q8_p(dst, p, stride, ptrs ? so : p + so, stride, ptrs, pstep, XQ, XQ + ((d + QB - 1) / QB) * QB * 2, <i32>m, <i32>d);
    else {
      for (let k: usize = 0; k < m; k++) {
        const pk = ptrs ? <usize>load<u32>(ptrs + k * pstep) : p + k * stride;
        store<f32>(dst + (k << 2), q8_dot_f32(pk, pk + so, x, d));
      }
    }
  } else if (i8q) dots_i8_p(dst, p, stride, ptrs, pstep, XQ, XQ + ((d + QB - 1) / QB) * QB * 2, <i32>m, <i32>d);
  else {
    for (let k: usize = 0; k < m; k++) {
      const pk = ptrs ? <usize>load<u32>(ptrs + k * pstep) : p + k * stride;
      store<f32>(dst + (k << 2), i8_dot_f32(pk, x, d));
    }
  }
}

/**
 * Neurons per batch. f32 takes 8 (decode 1.05-1.11x of 4 on one thread, equal
 * on two; 16 measured 0.88x of 4, and 4 1.06x of 32; without the touch 4 to 64
 * measured alike): a batch's gate, up and down parts are read while in cache,
 * each record front to back.
 * A weight stream that skips (the down part, in a pass over gate and up) reads
 * DRAM at half the rate of a stream that runs on (bench/README "Far rows").
 */
// @ts-ignore: decorator
@inline export function batchOf(t: i32): usize {
  return t == T_F32 ? 8 : NB;
}

/** Sum of the touched bytes (touch_parts): the loads have a use (it is never read). */
let touched: u32 = 0;

/** 1 when the f32, f16, int8 and q8 FFNs touch the next batch (ffn_touch_set). In memory, not a global, so every instance on a shared arena sees it. */
const TOUCH: usize = memory.data<u32>([0]);

/**
 * Turns the touch of the next batch's records on (1) or off (0) for the f32,
 * f16, int8 and q8 FFN kernels (q4's always touches). The output bits are the
 * same either way; only the speed differs, by CPU (bench/README "The touch,
 * reversed on another host"), so the host times both (src/engine/ffn.ts chooseFfnTouch).
 */
export function ffn_touch_set(on: i32): void {
  store<u32>(TOUCH, on != 0 ? 1 : 0);
}

/** 1 when the FFN kernels touch the next batch's records (ffn_touch_set). */
export function ffn_touch(): i32 {
  return <i32>load<u32>(TOUCH);
}

/**
 * Touches a byte per cache line of the nParts parts (pb bytes each) of neurons
 * [i0, i1): the next batch, before this one computes. wasm has no prefetch
 * instruction; on a CPU whose prefetchers lose the record-by-record reads this
 * pays (decode 1.12-1.56x, bench/README "Far rows"), on one whose prefetchers
 * follow them it is a serial pass that costs (0.70-0.96x). Returns a sum to keep.
 * base: part 0 of neuron 0; without ptrs the whole record (stride bytes) is touched.
 */
export function touch_parts(base: usize, stride: usize, ptrs: usize, nParts: usize, i0: usize, i1: usize, pb: usize): u32 {
  let s: u32 = 0;
  for (let i = i0; i < i1; i++) {
    if (ptrs) {
      for (let p: usize = 0; p < nParts; p++) {
        const a = <usize>load<u32>(ptrs + ((i * nParts + p) << 2));
        for (let q = a; q < a + pb; q += 64) s += load<u8>(q);
      }
    } else {
      const a = base + i * stride; // the record (bundled), or the row of a split layout's first matrix
      for (let q = a; q < a + stride; q += 64) s += load<u8>(q);
    }
  }
  return s;
}

/** Keeps a touch_parts sum from another module (q4.ts). */
export function keep_touched(s: u32): void {
  touched += s;
}

/** Gate dots into G and up dots into U for neurons [n0, n0 + m) (records, or the u32 [n][3] table at ptrs). */
export function gate_up_dots(t: i32, G: usize, U: usize, gate: usize, up: usize, stride: usize, ptrs: usize, n0: usize, x: usize, m: usize, d: usize): void {
  if (t == T_F32) {
    if (ptrs) dots2_f32_p(G, U, 0, 0, 0, ptrs + ((n0 * 3) << 2), ptrs + ((n0 * 3 + 1) << 2), 12, x, <i32>m, <i32>d);
    else dots2_f32_p(G, U, gate + n0 * stride, up + n0 * stride, stride, 0, 0, 0, x, <i32>m, <i32>d);
  } else if (ptrs) {
    dots(t, G, 0, 0, ptrs + ((n0 * 3) << 2), 12, x, m, d);
    dots(t, U, 0, 0, ptrs + ((n0 * 3 + 1) << 2), 12, x, m, d);
  } else {
    dots(t, G, gate + n0 * stride, stride, 0, 0, x, m, d);
    dots(t, U, up + n0 * stride, stride, 0, 0, x, m, d);
  }
}

// ---------------------------------------------------------------- drivers

/** q8 parts: byte offset of the group scales (after the d values, 4-aligned). */
// @ts-ignore: decorator
@inline export function q8ScaleAt(d: usize): usize {
  return (d + 3) & ~(<usize>3);
}

/** Byte offset of the f32 after the values of a part (int8 scale, q8 scales, or bias for f32/f16). */
// @ts-ignore: decorator
@inline function tailOffset(t: i32, d: usize): usize {
  return t == T_F32 ? d << 2 : t == T_F16 ? d << 1 : t == T_Q8 ? q8ScaleAt(d) : d;
}

/** Byte offset of the bias slot of a part. */
// @ts-ignore: decorator
@inline function biasOffset(t: i32, d: usize): usize {
  return t == T_I8 ? d + 4 : t == T_Q8 ? q8ScaleAt(d) + (((d + QG - 1) / QG) << 2) : tailOffset(t, d);
}

// Neuron i's part p: partPtr_p + i*stride (records), or ptrs[i*nParts + p] (u32 table).
// @ts-ignore: decorator
@inline function partAt(base: usize, stride: usize, ptrs: usize, nParts: usize, p: usize, i: usize): usize {
  return ptrs ? <usize>load<u32>(ptrs + ((i * nParts + p) << 2)) : base + i * stride;
}

/**
 * The ReLU FFN of neurons [0, n) into out (x prepared: prepare_x); nt >= n: the
 * neurons that follow up to the call's end, so the last batch touches the next range's first.
 */
function relu_range(t: i32, out: usize, x: usize, d: usize, n: usize, nt: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize): void {
  memory.fill(out, 0, d << 2);
  qn = 0;
  const off = tailOffset(t, d);
  const biasOff = biasOffset(t, d); // int8 parts: scale(s), then bias
  const nb = batchOf(t);
  const touch = load<u32>(TOUCH) != 0;
  let sink: u32 = 0;
  for (let n0: usize = 0; n0 < n; n0 += nb) {
    const m = min(nb, n - n0);
    if (touch) sink += touch_parts(up, stride, ptrs, 2, n0 + nb, min(n0 + 2 * nb, nt), off);
    if (ptrs) dots(t, HB, 0, 0, ptrs + ((n0 * 2) << 2), 8, x, m, d);
    else dots(t, HB, up + n0 * stride, stride, 0, 0, x, m, d);
    for (let k: usize = 0; k < m; k++) {
      const i = n0 + k;
      const u = partAt(up, stride, ptrs, 2, 0, i);
      let h = load<f32>(HB + (k << 2));
      if (t == T_I8) h *= load<f32>(u + off);
      if (hasBias) h += load<f32>(u + biasOff);
      h = max<f32>(h, 0); // NaN stays NaN (and is not skipped)
      if (hOut) store<f32>(hOut + (i << 2), h);
      if (h != 0) {
        const dp = partAt(down, stride, ptrs, 2, 1, i);
        push(t, out, d, dp, dp + off, t == T_I8 ? h * load<f32>(dp + off) : h);
      }
    }
  }
  flush(t, out, d);
  touched += sink;
}

/** The gated FFN of neurons [0, n) into out (x prepared: prepare_x); nt as relu_range. */
function swiglu_range(t: i32, out: usize, x: usize, d: usize, n: usize, nt: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hOut: usize, afn: i32, athr: f32): void {
  memory.fill(out, 0, d << 2);
  qn = 0;
  const off = tailOffset(t, d);
  const UB = HB + (NB << 2);
  const nb = batchOf(t);
  const touch = load<u32>(TOUCH) != 0;
  let sink: u32 = 0;
  for (let n0: usize = 0; n0 < n; n0 += nb) {
    const m = min(nb, n - n0);
    if (touch) sink += touch_parts(gate, stride, ptrs, 3, n0 + nb, min(n0 + 2 * nb, nt), off);
    gate_up_dots(t, HB, UB, gate, up, stride, ptrs, n0, x, m, d);
    for (let k: usize = 0; k < m; k++) {
      const i = n0 + k;
      let g = load<f32>(HB + (k << 2)), u = load<f32>(UB + (k << 2));
      if (t == T_I8) {
        g *= load<f32>(partAt(gate, stride, ptrs, 3, 0, i) + off);
        u *= load<f32>(partAt(up, stride, ptrs, 3, 1, i) + off);
      }
      const h = glu1(afn, athr, g, u);
      if (hOut) store<f32>(hOut + (i << 2), h);
      if (h != 0) {
        const dp = partAt(down, stride, ptrs, 3, 2, i);
        push(t, out, d, dp, dp + off, t == T_I8 ? h * load<f32>(dp + off) : h);
      }
    }
  }
  flush(t, out, d);
  touched += sink;
}

// ---------------------------------------------------------------- neuron ranges
//
// out = (((P_0 + P_1) + P_2) + ...) where P_r is the FFN of the neurons in range
// r alone (its own down queue). The ranges are fixed by (n, d), never by the
// thread count, so the threads build can give each range to any thread (records
// read on end, one hand-off per FFN) and still return the one-thread bits.

/** Down-sum ranges of an FFN over d columns: FFN_RANGES, or 1 when a partial sum would not fit PT (arena.ts). */
// @ts-ignore: decorator
@inline export function ffnRanges(d: usize): usize {
  return d <= MAXD_I8 ? FFN_RANGES : 1;
}

/** First neuron (or list position) of range r of n, at a multiple of NB (so no batch straddles two). */
// @ts-ignore: decorator
@inline export function rangeStart(n: usize, R: usize, r: usize): usize {
  return min(n, ((r * n) / R + NB - 1) & ~(NB - 1));
}

/** Whether range r of n is empty (small n: its 64-aligned start equals the next one's). */
// @ts-ignore: decorator
@inline export function rangeEmpty(n: usize, R: usize, r: usize): bool {
  return rangeStart(n, R, r) == rangeStart(n, R, r + 1);
}

/** out += p (d f32): adds a range's partial sum. */
export function add_partial(out: usize, p: usize, d: usize): void {
  let j: usize = 0;
  for (; j + 4 <= d; j += 4) v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), v128.load(p + (j << 2))));
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + load<f32>(p + (j << 2)));
}

/**
 * Range r of an FFN into dst (x prepared): the neurons' parts from base
 * pointers (+ first * stride) or from the pointer table (+ first * nParts
 * entries); hOut, when given, gets their activations at their positions.
 */
function ffn_range_into(t: i32, gated: bool, dst: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize, afn: i32, athr: f32, r: usize): void {
  const R = ffnRanges(d), a = rangeStart(n, R, r), m = rangeStart(n, R, r + 1) - a, np: usize = gated ? 3 : 2;
  const pt = ptrs ? ptrs + ((a * np) << 2) : 0, h = hOut ? hOut + (a << 2) : 0, o = a * stride;
  if (gated) swiglu_range(t, dst, x, d, m, n - a, gate + o, up + o, down + o, stride, pt, h, afn, athr);
  else relu_range(t, dst, x, d, m, n - a, up + o, down + o, stride, pt, hasBias, h);
}

/** The whole FFN: range 0 into out, each later non-empty range into PT, then added. */
function ffn_all(t: i32, gated: bool, out: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize, afn: i32, athr: f32): void {
  prepare_x(t, x, d);
  ffn_range_into(t, gated, out, x, d, n, gate, up, down, stride, ptrs, hasBias, hOut, afn, athr, 0);
  const R = ffnRanges(d);
  for (let r: usize = 1; r < R; r++) {
    if (rangeEmpty(n, R, r)) continue;
    ffn_range_into(t, gated, PT, x, d, n, gate, up, down, stride, ptrs, hasBias, hOut, afn, athr, r);
    add_partial(out, PT, d);
  }
}

// @ts-ignore: decorator
@inline function ffn_relu(t: i32, out: usize, x: usize, d: usize, n: usize, up: usize, down: usize, stride: usize, ptrs: usize, hasBias: bool, hOut: usize): void {
  ffn_all(t, false, out, x, d, n, 0, up, down, stride, ptrs, hasBias, hOut, 0, 0);
}
// @ts-ignore: decorator
@inline function ffn_swiglu(t: i32, out: usize, x: usize, d: usize, n: usize, gate: usize, up: usize, down: usize, stride: usize, ptrs: usize, hOut: usize, afn: i32, athr: f32): void {
  ffn_all(t, true, out, x, d, n, gate, up, down, stride, ptrs, false, hOut, afn, athr);
}

export function ffn_relu_f32(out: usize, x: usize, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_F32, out, x, <usize>d, <usize>n, up, down, <usize>stride, 0, hasBias != 0, hOut);
}
export function ffn_relu_f16(out: usize, x: usize, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_F16, out, x, <usize>d, <usize>n, up, down, <usize>stride, 0, hasBias != 0, hOut);
}
export function ffn_relu_i8(out: usize, x: usize, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_I8, out, x, <usize>d, <usize>n, up, down, <usize>stride, 0, hasBias != 0, hOut);
}
export function ffn_swiglu_f32(out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_F32, out, x, <usize>d, <usize>n, gate, up, down, <usize>stride, 0, hOut, afn, athr);
}
export function ffn_swiglu_f16(out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_F16, out, x, <usize>d, <usize>n, gate, up, down, <usize>stride, 0, hOut, afn, athr);
}
export function ffn_swiglu_i8(out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_I8, out, x, <usize>d, <usize>n, gate, up, down, <usize>stride, 0, hOut, afn, athr);
}

export function ffn_relu_q8(out: usize, x: usize, d: i32, n: i32, up: usize, down: usize, stride: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_Q8, out, x, <usize>d, <usize>n, up, down, <usize>stride, 0, hasBias != 0, hOut);
}
export function ffn_swiglu_q8(out: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_Q8, out, x, <usize>d, <usize>n, gate, up, down, <usize>stride, 0, hOut, afn, athr);
}

// Scattered records (sparse path): `ptrs` is u32 [n][2] = (up, down) for relu,
// [n][3] = (gate, up, down) for swiglu; hOut[j] is neuron j's activation.
// A 0 ptrs table with n > 0 is a host bug; n == 0 just zeroes out.

export function ffn_relu_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_F32, out, x, <usize>d, <usize>n, 0, 0, 0, ptrs, hasBias != 0, hOut);
}
export function ffn_relu_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_F16, out, x, <usize>d, <usize>n, 0, 0, 0, ptrs, hasBias != 0, hOut);
}
export function ffn_relu_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_I8, out, x, <usize>d, <usize>n, 0, 0, 0, ptrs, hasBias != 0, hOut);
}
export function ffn_swiglu_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_F32, out, x, <usize>d, <usize>n, 0, 0, 0, 0, ptrs, hOut, afn, athr);
}
export function ffn_swiglu_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_F16, out, x, <usize>d, <usize>n, 0, 0, 0, 0, ptrs, hOut, afn, athr);
}
export function ffn_swiglu_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_I8, out, x, <usize>d, <usize>n, 0, 0, 0, 0, ptrs, hOut, afn, athr);
}

export function ffn_relu_q8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu(T_Q8, out, x, <usize>d, <usize>n, 0, 0, 0, ptrs, hasBias != 0, hOut);
}
export function ffn_swiglu_q8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize, afn: i32, athr: f32): void {
  ffn_swiglu(T_Q8, out, x, <usize>d, <usize>n, 0, 0, 0, 0, ptrs, hOut, afn, athr);
}

// ---------------------------------------------------------------- split kernels (threads build)
//
// One FFN call (ffn_relu_* / ffn_swiglu_* and their _ptrs forms) split over
// threads by its neuron ranges (src/kernels/pool.ts): ffn_ranges computes ranges
// [r0, r1), range 0 into out and range r > 0 into parts + (r - 1) * d f32; then
// ffn_ranges_sum adds ranges 1.. to out in order. Each range is the one the
// whole call computes (its own queue, records read on end), so together they
// are bit-identical to it for any split.
// kind: the dtype t (0 f32, 1 f16, 2 int8, 3 q8) | 8 gated | 16 bias | afn << 5.
// ptrs != 0: the u32 pointer table of the _ptrs forms (gate/up/down ignored).

export function ffn_ranges(kind: i32, out: usize, parts: usize, x: usize, d: i32, n: i32, gate: usize, up: usize, down: usize, stride: i32, ptrs: usize, hOut: usize, athr: f32, r0: i32, r1: i32): void {
  const t = kind & 7, dd = <usize>d, nn = <usize>n, R = ffnRanges(dd);
  prepare_x(t, x, dd);
  for (let r = <usize>r0; r < <usize>r1; r++) {
    if (r > 0 && rangeEmpty(nn, R, r)) continue;
    ffn_range_into(t, (kind & 8) != 0, r == 0 ? out : parts + (r - 1) * (dd << 2), x, dd, nn, gate, up, down, <usize>stride, ptrs, (kind & 16) != 0, hOut, kind >> 5, athr, r);
  }
}

/** Neuron ranges of an FFN over d columns (1: nothing to split). */
export function ffn_range_count(d: i32): i32 {
  return <i32>ffnRanges(<usize>d);
}

/** Bytes of ffn_ranges' `parts` for d columns: ranges 1.. of d f32 each. */
export function ffn_parts_bytes(d: i32): i32 {
  return <i32>((ffnRanges(<usize>d) - 1) * (<usize>d << 2));
}

/** Adds ranges 1.. of a split FFN call (ffn_ranges: parts) to out, in order, as the whole call does. */
export function ffn_ranges_sum(out: usize, parts: usize, d: i32, n: i32): void {
  const dd = <usize>d, nn = <usize>n, R = ffnRanges(dd);
  for (let r: usize = 1; r < R; r++) {
    if (!rangeEmpty(nn, R, r)) add_partial(out, parts + (r - 1) * (dd << 2), dd);
  }
}
