// FFN over scattered neuron records (types.ts: ffn_*_ptrs): the same math as
// ffn.ts, but neuron j's parts are at the addresses listed in `ptrs`
// (u32 [n][2] = up, down for relu; u32 [n][3] = gate, up, down for swiglu).
// This is the sparse path: the records are the cache's slots (in any slot
// order) or staging buffers (split files: each part somewhere else).
//
// Bit-exactness contract: for the same records in the same order, the results
// (out and hOut) equal ffn_relu_* / ffn_swiglu_* bit for bit, so the streaming
// engine computes exactly what the dense engine computes. That requires the
// same floating-point operation order per neuron as the contiguous kernels,
// and their order depends on a neuron's position:
//   * up/gate dots go in batches of NB = 64 neurons; inside a batch of m,
//     rows [0, m&~7) go in 8-row blocks, [m&~7, m&~3) in one 4-row group and
//     the last m&3 rows one by one (gemv.ts dots_*). Grouped rows accumulate
//     lane-wise across the columns, single rows use a different order; for f16
//     an inf/NaN weight anywhere in a block sends the whole block (8 or 4 rows)
//     to the exact decode.
//   * down rows (h != 0) are queued 4 at a time (axpy4, one rounding order),
//     leftovers and f16 coefficients >= 2^15 go one by one (axpy1).
// So this file mirrors those structures with pointer lists instead of strides.
// Single rows reuse gemv.ts dots_* directly (rows = 1 takes exactly that path);
// the 4-row groups, the tails and the down queue are private in gemv.ts /
// ffn.ts, so they are mirrored here. test/cache.test.ts checks the results
// against the contiguous kernels bit for bit (every dtype, block class, inf
// weights, large f16 coefficients): any change of operation order in gemv.ts
// or ffn.ts must be mirrored here.

import { hsum, hsum_i32, silu1, f16_upper, f16_upper_exact, f16_bits_lo, f16_bits_hi, F16_SCALE } from "./simd";
import { MAXD_I8, XQ } from "./arena";
import { dots_f32, dots_f16, dots_i8, f16_xscale, f16_to_f32, quantize_x, QB } from "./gemv";

const NB: usize = 64; // neurons per batch (as ffn.ts)
/** up / gate dots of the current batch (2 x NB f32). */
const HB: usize = memory.data(<i32>(NB * 4 * 2), 16);
/** 8 accumulators (f32x4) of the current 8-row block. */
const ACC: usize = memory.data(8 * 16, 16);
/** Part pointers of the current 8-row block. */
const RP: usize = memory.data(8 * 4, 16);

const T_F32 = 0, T_F16 = 1, T_I8 = 2;

// ---------------------------------------------------------------- up / gate dots (mirror gemv.ts)

const F32_CHUNK: usize = 256;
const F16_CHUNK: usize = 256;
const I8_CHUNK_BLOCKS: usize = 4;

/** acc[0..4] += rows p0..p3 times x over ncols (multiple of 8); as gemv.ts f32_rows4. */
function f32_rows4p(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, ncols: usize): void {
  let a0 = v128.load(acc), a1 = v128.load(acc, 16), a2 = v128.load(acc, 32), a3 = v128.load(acc, 48);
  const end = x + (ncols << 2);
  for (let q = x; q < end; q += 32) {
    const xa = v128.load(q), xb = v128.load(q, 16);
    a0 = f32x4.add(a0, f32x4.add(f32x4.mul(v128.load(p0), xa), f32x4.mul(v128.load(p0, 16), xb)));
    a1 = f32x4.add(a1, f32x4.add(f32x4.mul(v128.load(p1), xa), f32x4.mul(v128.load(p1, 16), xb)));
    a2 = f32x4.add(a2, f32x4.add(f32x4.mul(v128.load(p2), xa), f32x4.mul(v128.load(p2, 16), xb)));
    a3 = f32x4.add(a3, f32x4.add(f32x4.mul(v128.load(p3), xa), f32x4.mul(v128.load(p3, 16), xb)));
    p0 += 32; p1 += 32; p2 += 32; p3 += 32;
  }
  v128.store(acc, a0); v128.store(acc, a1, 16); v128.store(acc, a2, 32); v128.store(acc, a3, 48);
}

/** Columns [c, cols) of one f32 row (fewer than 8); as gemv.ts f32_tail. */
// @ts-ignore: decorator
@inline function f32_tail(p: usize, x: usize, c: usize, cols: usize): f32 {
  let s: f32 = 0;
  if (c + 4 <= cols) {
    s = hsum(f32x4.mul(v128.load(p + (c << 2)), v128.load(x + (c << 2))));
    c += 4;
  }
  for (; c < cols; c++) s += load<f32>(p + (c << 2)) * load<f32>(x + (c << 2));
  return s;
}

/** f16 group of 4 rows over ncols (multiple of 8); true if an inf/NaN weight was seen. As gemv.ts f16_rows4. */
function f16_rows4p(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, ncols: usize, k: f32): bool {
  let a0 = v128.load(acc), a1 = v128.load(acc, 16), a2 = v128.load(acc, 32), a3 = v128.load(acc, 48);
  const K = f32x4.splat(k);
  let det = i16x8.splat(0);
  const end = x + (ncols << 2);
  for (let q = x; q < end; q += 32) {
    const xa = f32x4.mul(v128.load(q), K), xb = f32x4.mul(v128.load(q, 16), K);
    let h = v128.load(p0), u = f16_upper(h), l = i16x8.shl(h, 13);
    a0 = f32x4.add(a0, f32x4.add(f32x4.mul(f16_bits_lo(l, u), xa), f32x4.mul(f16_bits_hi(l, u), xb)));
    det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p1); u = f16_upper(h); l = i16x8.shl(h, 13);
    a1 = f32x4.add(a1, f32x4.add(f32x4.mul(f16_bits_lo(l, u), xa), f32x4.mul(f16_bits_hi(l, u), xb)));
    det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p2); u = f16_upper(h); l = i16x8.shl(h, 13);
    a2 = f32x4.add(a2, f32x4.add(f32x4.mul(f16_bits_lo(l, u), xa), f32x4.mul(f16_bits_hi(l, u), xb)));
    det = i16x8.max_u(det, i16x8.shl(h, 1));
    h = v128.load(p3); u = f16_upper(h); l = i16x8.shl(h, 13);
    a3 = f32x4.add(a3, f32x4.add(f32x4.mul(f16_bits_lo(l, u), xa), f32x4.mul(f16_bits_hi(l, u), xb)));
    det = i16x8.max_u(det, i16x8.shl(h, 1));
    p0 += 16; p1 += 16; p2 += 16; p3 += 16;
  }
  v128.store(acc, a0); v128.store(acc, a1, 16); v128.store(acc, a2, 32); v128.store(acc, a3, 48);
  return v128.any_true(i16x8.ge_u(det, i16x8.splat(<i16>0xf800)));
}

/** Columns [c, cols) of an f16 row (fewer than 8), exact; as gemv.ts f16_tail. */
// @ts-ignore: decorator
@inline function f16_tail(p: usize, x: usize, c: usize, cols: usize): f32 {
  let s: f32 = 0;
  for (; c < cols; c++) s += f16_to_f32(load<u16>(p + (c << 1))) * load<f32>(x + (c << 2));
  return s;
}

/** int8 group of 4 rows over nb full blocks; acc holds f32 sums. As gemv.ts i8_rows4. */
function i8_rows4p(acc: usize, p0: usize, p1: usize, p2: usize, p3: usize, xq: usize, xs: usize, nb: usize): void {
  let f0 = v128.load(acc), f1 = v128.load(acc, 16), f2 = v128.load(acc, 32), f3 = v128.load(acc, 48);
  let q = xq;
  for (let b: usize = 0; b < nb; b++) {
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    const qend = q + (QB << 1);
    for (; q < qend; q += 32) {
      const xa = v128.load(q), xb = v128.load(q, 16);
      a0 = i32x4.add(a0, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p0), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p0, 8), xb)));
      a1 = i32x4.add(a1, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p1), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p1, 8), xb)));
      a2 = i32x4.add(a2, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p2), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p2, 8), xb)));
      a3 = i32x4.add(a3, i32x4.add(i32x4.dot_i16x8_s(v128.load8x8_s(p3), xa), i32x4.dot_i16x8_s(v128.load8x8_s(p3, 8), xb)));
      p0 += 16; p1 += 16; p2 += 16; p3 += 16;
    }
    const s = v128.load32_splat(xs + (b << 2));
    f0 = f32x4.add(f0, f32x4.mul(f32x4.convert_i32x4_s(a0), s));
    f1 = f32x4.add(f1, f32x4.mul(f32x4.convert_i32x4_s(a1), s));
    f2 = f32x4.add(f2, f32x4.mul(f32x4.convert_i32x4_s(a2), s));
    f3 = f32x4.add(f3, f32x4.mul(f32x4.convert_i32x4_s(a3), s));
  }
  v128.store(acc, f0); v128.store(acc, f1, 16); v128.store(acc, f2, 32); v128.store(acc, f3, 48);
}

/** One int8 row over columns [c0, c1) of one block (integer sum); as gemv.ts i8_row_part. */
function i8_row_part(p: usize, xq: usize, c0: usize, c1: usize): i32 {
  let a = i32x4.splat(0);
  let c = c0;
  for (; c + 8 <= c1; c += 8) a = i32x4.add(a, i32x4.dot_i16x8_s(v128.load8x8_s(p + c), v128.load(xq + (c << 1))));
  let s = hsum_i32(a);
  for (; c < c1; c++) s += <i32>load<i8>(p + c) * <i32>load<i16>(xq + (c << 1));
  return s;
}

/** One int8 row from column block b0 on; as gemv.ts i8_row. */
function i8_row(p: usize, xq: usize, xs: usize, b0: usize, n: usize): f32 {
  let s: f32 = 0;
  const nb = (n + QB - 1) / QB;
  for (let b = b0; b < nb; b++) {
    const c0 = b * QB;
    s += <f32>i8_row_part(p, xq, c0, min(c0 + QB, n)) * load<f32>(xs + (b << 2));
  }
  return s;
}

/** int8 row dot against f32 x (d > MAXD_I8); as ffn.ts i8_dot_f32. */
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

// Per-call x preparation (as ffn.ts prepare_x).
let f16k: f32 = 0;
let i8q: bool = false;

// @ts-ignore: decorator
@inline function xsAddr(d: usize): usize {
  return XQ + ((d + QB - 1) / QB) * QB * 2;
}

function prepare_x(t: i32, x: usize, d: usize): void {
  if (t == T_F16) f16k = f16_xscale(x, d);
  else if (t == T_I8) {
    i8q = d <= MAXD_I8;
    if (i8q) quantize_x(XQ, xsAddr(d), x, d);
  }
}

/** Part pointer of row r: ptrs is u32 [rows][np], `part` selects the column. */
// @ts-ignore: decorator
@inline function rowPtr(ptrs: usize, np: usize, part: usize, r: usize): usize {
  return <usize>load<u32>(ptrs + ((r * np + part) << 2));
}

/** 8 (or 4) grouped rows whose pointers are in RP: dst[i] = row_i . x, as the gemv.ts blocks. */
function block(t: i32, dst: usize, rows: usize, x: usize, d: usize): void {
  const main = t == T_I8 ? 0 : d & ~7;
  memory.fill(ACC, 0, <i32>(rows << 4));
  if (t == T_F32) {
    for (let c0: usize = 0; c0 < main; c0 += F32_CHUNK) {
      const nc = min(F32_CHUNK, main - c0);
      const xo = x + (c0 << 2), o = c0 << 2;
      f32_rows4p(ACC, load<u32>(RP) + o, load<u32>(RP, 4) + o, load<u32>(RP, 8) + o, load<u32>(RP, 12) + o, xo, nc);
      if (rows == 8) f32_rows4p(ACC + 64, load<u32>(RP, 16) + o, load<u32>(RP, 20) + o, load<u32>(RP, 24) + o, load<u32>(RP, 28) + o, xo, nc);
    }
    for (let i: usize = 0; i < rows; i++) {
      store<f32>(dst + (i << 2), hsum(v128.load(ACC + (i << 4))) + f32_tail(load<u32>(RP + (i << 2)), x, main, d));
    }
  } else if (t == T_F16) {
    const k = f16k;
    const post: f32 = F16_SCALE / k;
    let special = false;
    for (let c0: usize = 0; c0 < main; c0 += F16_CHUNK) {
      const nc = min(F16_CHUNK, main - c0);
      const xo = x + (c0 << 2), o = c0 << 1;
      special |= f16_rows4p(ACC, load<u32>(RP) + o, load<u32>(RP, 4) + o, load<u32>(RP, 8) + o, load<u32>(RP, 12) + o, xo, nc, k);
      if (rows == 8) special |= f16_rows4p(ACC + 64, load<u32>(RP, 16) + o, load<u32>(RP, 20) + o, load<u32>(RP, 24) + o, load<u32>(RP, 28) + o, xo, nc, k);
    }
    for (let i: usize = 0; i < rows; i++) {
      const p = <usize>load<u32>(RP + (i << 2));
      if (special) dots_f16(dst + (i << 2), p, 0, x, 1, <i32>d, k); // one row = gemv.ts f16_row_exact
      else store<f32>(dst + (i << 2), hsum(v128.load(ACC + (i << 4))) * post + f16_tail(p, x, main, d));
    }
  } else {
    const xs = xsAddr(d);
    const full = d / QB;
    for (let b0: usize = 0; b0 < full; b0 += I8_CHUNK_BLOCKS) {
      const nb = min(I8_CHUNK_BLOCKS, full - b0);
      const c0 = b0 * QB;
      const xq = XQ + (c0 << 1), xb = xs + (b0 << 2);
      i8_rows4p(ACC, load<u32>(RP) + c0, load<u32>(RP, 4) + c0, load<u32>(RP, 8) + c0, load<u32>(RP, 12) + c0, xq, xb, nb);
      if (rows == 8) i8_rows4p(ACC + 64, load<u32>(RP, 16) + c0, load<u32>(RP, 20) + c0, load<u32>(RP, 24) + c0, load<u32>(RP, 28) + c0, xq, xb, nb);
    }
    for (let i: usize = 0; i < rows; i++) {
      store<f32>(dst + (i << 2), hsum(v128.load(ACC + (i << 4))) + i8_row(load<u32>(RP + (i << 2)), XQ, xs, full, d));
    }
  }
}

/** dst[r] = part . x for m rows whose part pointers are ptrs[r*np + part] (no int8 scale applied). */
function dots_ptrs(t: i32, dst: usize, ptrs: usize, np: usize, part: usize, x: usize, m: usize, d: usize): void {
  if (t == T_I8 && !i8q) {
    for (let r: usize = 0; r < m; r++) store<f32>(dst + (r << 2), i8_dot_f32(rowPtr(ptrs, np, part, r), x, d));
    return;
  }
  let r: usize = 0;
  for (; r + 8 <= m; r += 8) {
    for (let i: usize = 0; i < 8; i++) store<u32>(RP + (i << 2), <u32>rowPtr(ptrs, np, part, r + i));
    block(t, dst + (r << 2), 8, x, d);
  }
  if (r + 4 <= m) {
    for (let i: usize = 0; i < 4; i++) store<u32>(RP + (i << 2), <u32>rowPtr(ptrs, np, part, r + i));
    block(t, dst + (r << 2), 4, x, d);
    r += 4;
  }
  // single rows: gemv.ts dots_* with rows = 1 take exactly the one-row path
  for (; r < m; r++) {
    const p = rowPtr(ptrs, np, part, r), o = dst + (r << 2);
    if (t == T_F32) dots_f32(o, p, 0, x, 1, <i32>d);
    else if (t == T_F16) dots_f16(o, p, 0, x, 1, <i32>d, f16k);
    else dots_i8(o, p, 0, XQ, xsAddr(d), 1, <i32>d);
  }
}

// ---------------------------------------------------------------- down pass (mirror ffn.ts)

const QP: usize = memory.data(4 * 4, 16);
const QA: usize = memory.data(4 * 4, 16);
let qn: i32 = 0;

function axpy4_f32(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
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

function axpy1_f32(out: usize, d: usize, p: usize, a: f32): void {
  const A = f32x4.splat(a);
  let j: usize = 0;
  for (; j + 4 <= d; j += 4) v128.store(out + (j << 2), f32x4.add(v128.load(out + (j << 2)), f32x4.mul(v128.load(p + (j << 2)), A)));
  for (; j < d; j++) store<f32>(out + (j << 2), load<f32>(out + (j << 2)) + load<f32>(p + (j << 2)) * a);
}

// @ts-ignore: decorator
@inline function f16raw_lo(h: v128): v128 { return f16_bits_lo(i16x8.shl(h, 13), f16_upper_exact(h)); }
// @ts-ignore: decorator
@inline function f16raw_hi(h: v128): v128 { return f16_bits_hi(i16x8.shl(h, 13), f16_upper_exact(h)); }

function axpy4_f16(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
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

function axpy1_f16(out: usize, d: usize, p: usize, a: f32): void {
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

function axpy4_i8(out: usize, d: usize, p0: usize, p1: usize, p2: usize, p3: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  const A0 = f32x4.splat(a0), A1 = f32x4.splat(a1), A2 = f32x4.splat(a2), A3 = f32x4.splat(a3);
  let j: usize = 0;
  for (; j + 8 <= d; j += 8) {
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
  for (; j < d; j++) {
    const o = out + (j << 2);
    store<f32>(o, load<f32>(o) + ((<f32>load<i8>(p0 + j) * a0 + <f32>load<i8>(p1 + j) * a1) + (<f32>load<i8>(p2 + j) * a2 + <f32>load<i8>(p3 + j) * a3)));
  }
}

function axpy1_i8(out: usize, d: usize, p: usize, a: f32): void {
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

function down1(t: i32, out: usize, d: usize, p: usize, a: f32): void {
  if (t == T_F32) axpy1_f32(out, d, p, a);
  else if (t == T_F16) axpy1_f16(out, d, p, a);
  else axpy1_i8(out, d, p, a);
}

function push(t: i32, out: usize, d: usize, p: usize, a: f32): void {
  if (t == T_F16 && !(abs<f32>(a) < 32768.0)) { down1(t, out, d, p, a); return; }
  store<usize>(QP + (<usize>qn << 2), p);
  store<f32>(QA + (<usize>qn << 2), a);
  if (++qn < 4) return;
  qn = 0;
  const p0 = load<usize>(QP), p1 = load<usize>(QP, 4), p2 = load<usize>(QP, 8), p3 = load<usize>(QP, 12);
  const a0 = load<f32>(QA), a1 = load<f32>(QA, 4), a2 = load<f32>(QA, 8), a3 = load<f32>(QA, 12);
  if (t == T_F32) axpy4_f32(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
  else if (t == T_F16) axpy4_f16(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
  else axpy4_i8(out, d, p0, p1, p2, p3, a0, a1, a2, a3);
}

function flush(t: i32, out: usize, d: usize): void {
  for (let k = 0; k < qn; k++) down1(t, out, d, load<usize>(QP + (<usize>k << 2)), load<f32>(QA + (<usize>k << 2)));
  qn = 0;
}

// ---------------------------------------------------------------- drivers

// @ts-ignore: decorator
@inline function tailOffset(t: i32, d: usize): usize {
  return t == T_F32 ? d << 2 : t == T_F16 ? d << 1 : d;
}

function ffn_relu_p(t: i32, out: usize, x: usize, d: usize, ptrs: usize, n: usize, hasBias: bool, hOut: usize): void {
  memory.fill(out, 0, d << 2);
  qn = 0;
  prepare_x(t, x, d);
  const off = tailOffset(t, d);
  const biasOff = t == T_I8 ? off + 4 : off;
  for (let n0: usize = 0; n0 < n; n0 += NB) {
    const m = min(NB, n - n0);
    const pp = ptrs + (n0 << 3); // 2 u32 per neuron
    dots_ptrs(t, HB, pp, 2, 0, x, m, d);
    for (let k: usize = 0; k < m; k++) {
      const u = <usize>load<u32>(pp + (k << 3));
      let h = load<f32>(HB + (k << 2));
      if (t == T_I8) h *= load<f32>(u + off);
      if (hasBias) h += load<f32>(u + biasOff);
      h = max<f32>(h, 0); // NaN stays NaN (and is not skipped)
      if (hOut) store<f32>(hOut + ((n0 + k) << 2), h);
      if (h != 0) {
        const dp = <usize>load<u32>(pp + (k << 3), 4);
        push(t, out, d, dp, t == T_I8 ? h * load<f32>(dp + off) : h);
      }
    }
  }
  flush(t, out, d);
}

function ffn_swiglu_p(t: i32, out: usize, x: usize, d: usize, ptrs: usize, n: usize, hOut: usize): void {
  memory.fill(out, 0, d << 2);
  qn = 0;
  prepare_x(t, x, d);
  const off = tailOffset(t, d);
  const UB = HB + (NB << 2);
  for (let n0: usize = 0; n0 < n; n0 += NB) {
    const m = min(NB, n - n0);
    const pp = ptrs + n0 * 12; // 3 u32 per neuron
    dots_ptrs(t, HB, pp, 3, 0, x, m, d);
    dots_ptrs(t, UB, pp, 3, 1, x, m, d);
    for (let k: usize = 0; k < m; k++) {
      const e = pp + k * 12;
      let g = load<f32>(HB + (k << 2)), u = load<f32>(UB + (k << 2));
      if (t == T_I8) {
        g *= load<f32>(<usize>load<u32>(e) + off);
        u *= load<f32>(<usize>load<u32>(e, 4) + off);
      }
      const h = silu1(g) * u;
      if (hOut) store<f32>(hOut + ((n0 + k) << 2), h);
      if (h != 0) {
        const dp = <usize>load<u32>(e, 8);
        push(t, out, d, dp, t == T_I8 ? h * load<f32>(dp + off) : h);
      }
    }
  }
  flush(t, out, d);
}

export function ffn_relu_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu_p(T_F32, out, x, <usize>d, ptrs, <usize>n, hasBias != 0, hOut);
}
export function ffn_relu_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu_p(T_F16, out, x, <usize>d, ptrs, <usize>n, hasBias != 0, hOut);
}
export function ffn_relu_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hasBias: i32, hOut: usize): void {
  ffn_relu_p(T_I8, out, x, <usize>d, ptrs, <usize>n, hasBias != 0, hOut);
}
export function ffn_swiglu_f32_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize): void {
  ffn_swiglu_p(T_F32, out, x, <usize>d, ptrs, <usize>n, hOut);
}
export function ffn_swiglu_f16_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize): void {
  ffn_swiglu_p(T_F16, out, x, <usize>d, ptrs, <usize>n, hOut);
}
export function ffn_swiglu_i8_ptrs(out: usize, x: usize, d: i32, ptrs: usize, n: i32, hOut: usize): void {
  ffn_swiglu_p(T_I8, out, x, <usize>d, ptrs, <usize>n, hOut);
}
