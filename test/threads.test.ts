/**
 * Multithreaded kernels (src/kernels/pool.ts) against the single-threaded
 * module (wasm/flashlm.wasm): with 1, 2 and 3 threads, every split kernel's
 * outputs (out and hOut) must be BYTE-identical to the single-threaded call on
 * the same inputs. The single-threaded module runs on its own (unshared) arena;
 * the inputs are written at the same offsets in both arenas, so pointer tables
 * are valid in both. Pools are made with minWork 0 so every call that can be
 * split is split. No wall-clock assertions.
 */

import test, { type ExecutionContext } from 'ava';
import { createArena, loadKernels, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL } from '../src/kernels/load.js';
import { createPool, inOneJob, jobGroup, planThreads, poolBytes, threadsUnavailableReason, type KernelPool } from '../src/kernels/pool.js';
import type { Kernels } from '../src/kernels/types.js';
import { encodeF16 } from '../src/kernels/quant.js';
import { rng, uniform, normalish, buildRecords, quantizeMatrix, type Dtype, type FfnLayout } from './helpers/kernel-reference.js';
import { mirror, sameOnPools, type Mirror } from './helpers/mirror.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openModel } from '../src/node.js';
import { MemorySource } from '../src/source/memory.js';
import type { Transformer } from '../src/engine/transformer.js';
import { STORIES_TOK, convertCheckpoint } from './helpers/models.js';
import { writeRandomLlama2c } from './helpers/random-llama2c.js';
import { rowsLayout, toRows } from '../src/engine/ffn.js';
import { entryOf } from './helpers/records.js';

const ARENA = 160 << 20;
/** Inputs start here in both arenas (above both modules' static data and the pools' regions). */
const DATA = 8 << 20;
/** batchScratchBytes: batch_scratch_bytes(BT, BCOLS), set once the module is loaded. */
const LIMITS = { maxPositions: 512, maxNeurons: 2048, maxDim: 1024, batchScratchBytes: 0 };
const BT = 7, BCOLS = 1030;

let st: Kernels; // wasm/flashlm.wasm on an unshared arena
let mt: Kernels; // wasm/flashlm.mt.wasm on a shared arena
const pools = new Map<number, KernelPool>();

test.before(async () => {
  st = await loadKernels(createArena(ARENA), DEFAULT_WASM_URL);
  mt = await loadKernels(createArena(ARENA, { shared: true }), DEFAULT_MT_WASM_URL);
  LIMITS.batchScratchBytes = mt.batch_scratch_bytes(BT, BCOLS);
  let region = Math.ceil(mt.heap_base() / 64) * 64;
  for (const threads of [1, 2, 3]) {
    const bytes = poolBytes(mt, threads, LIMITS);
    const pool = await createPool(mt, { threads, region, ...LIMITS, minWork: 0, adaptive: false });
    pools.set(threads, pool);
    region += Math.ceil(bytes / 64) * 64;
  }
  if (region > DATA) throw new Error('pool regions overlap the test data');
  M = mirror(st, mt, DATA, ARENA);
});

test.after.always(async () => {
  for (const p of pools.values()) await p.close();
});

/** Same bytes at the same offsets in both arenas; made once the modules are. */
let M: Mirror;

/** Runs `call` with the single-threaded kernels and with each pool's kernels; outputs [ptr, f32 count] must match byte for byte. */
const check = (t: ExecutionContext, what: string, outputs: [number, number][], call: (k: Kernels) => void): void => sameOnPools(t, M, st, pools, what, outputs, call);

const sfx = (d: Dtype) => (d === 'int8' ? 'i8' : d);

// ---------------------------------------------------------------- setup

test.serial('planThreads / createPool give 2 and 3 working threads here; bytes are counted', (t) => {
  t.is(pools.get(1)!.threads, 1);
  t.is(pools.get(1)!.fallbackReason, null);
  t.is(pools.get(1)!.kernels, mt, 'one thread: the kernels themselves');
  for (const n of [2, 3]) {
    const p = pools.get(n)!;
    t.is(p.fallbackReason, null);
    t.is(p.threads, n);
    t.is(p.workers, n - 1);
    t.is(p.bytes, poolBytes(mt, n, LIMITS));
  }
  t.is(poolBytes(mt, 1, LIMITS), 0);
  t.true(poolBytes(mt, 3, LIMITS) > poolBytes(mt, 2, LIMITS));
  const per = poolBytes(mt, 3, LIMITS) - poolBytes(mt, 2, LIMITS);
  t.true(per >= (mt as unknown as { thread_scratch_bytes(): number }).thread_scratch_bytes() + LIMITS.maxPositions * 4, 'per-worker bytes hold the module scratch and the attention scores');
});

test.serial('both builds have the same kernels and thread_scratch_bytes; the threads build imports a shared memory', async (t) => {
  const s = st as unknown as Record<string, unknown>, m = mt as unknown as Record<string, unknown>;
  for (const name of Object.keys(s)) t.is(typeof m[name], typeof s[name], name);
  t.is((st as unknown as { thread_scratch_bytes(): number }).thread_scratch_bytes(), (mt as unknown as { thread_scratch_bytes(): number }).thread_scratch_bytes());
  const { compileKernels } = await import('../src/kernels/load.js');
  const mod = await compileKernels(DEFAULT_MT_WASM_URL);
  t.deepEqual(WebAssembly.Module.imports(mod), [{ module: 'env', name: 'memory', kind: 'memory' }]);
  // an unshared arena cannot take the threads build (and vice versa): a clear LinkError
  await t.throwsAsync(loadKernels(createArena(1 << 20), DEFAULT_MT_WASM_URL), { message: /shared arena/ });
  await t.throwsAsync(loadKernels(createArena(1 << 20, { shared: true }), DEFAULT_WASM_URL), { message: /unshared arena/ });
  // the largest arena the module declares: 4 GiB (65536 pages); a big shared arena imports fine
  const big = createArena(1 << 30, { shared: true });
  const kb = await loadKernels(big, mod);
  t.is(kb.memory.buffer.byteLength, 1 << 30);
});

// ---------------------------------------------------------------- matvec

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test.serial(`matvec_${sfx(dtype)}: byte-identical over 1-3 threads (rows/cols not multiples of 8, bias, long rows)`, (t) => {
    let seed = 10;
    const shapes: [number, number][] = [[16, 8], [17, 13], [203, 77], [1000, 300], [37, 1030], [64, 129], [515, 64], [2048, 96]];
    if (dtype === 'f16') shapes.push([40, 17000]); // beyond the scaled-x area: chunk-wise x scaling per thread
    if (dtype === 'int8' || dtype === 'q8') shapes.push([24, 40000]);
    for (const [rows, cols] of shapes) {
      for (const withBias of [false, true]) {
        M.reset();
        const r = rng(seed++);
        const w = normalish(r, rows * cols, 0.5);
        const m = quantizeMatrix(w, rows, cols, dtype);
        const W = M.put(m.bytes, 0);
        const S = m.scales ? M.put(m.scales) : 0;
        const X = M.put(normalish(r, cols), 4);
        const B = withBias ? M.put(uniform(r, rows)) : 0;
        const O = M.out(rows, 8);
        const scratchBytes = st.matvec_i8_scratch_bytes(cols);
        const SCR = M.alloc(scratchBytes);
        const what = `matvec_${sfx(dtype)} ${rows}x${cols} bias=${withBias}`;
        const outs: [number, number][] = dtype === 'int8' || dtype === 'q8' ? [[O, rows], [SCR, scratchBytes >> 2]] : [[O, rows]];
        check(t, what, outs, (k) => {
          if (dtype === 'f32') k.matvec_f32(O, W, X, B, rows, cols);
          else if (dtype === 'f16') k.matvec_f16(O, W, X, B, rows, cols);
          else if (dtype === 'q8') k.matvec_q8(O, W, S, X, B, rows, cols, SCR);
          else k.matvec_i8(O, W, S, X, B, rows, cols, SCR);
        });
      }
    }
  });
}

test.serial('matvec_f16 with inf/NaN weights, subnormals and large |x|: byte-identical', (t) => {
  const r = rng(77);
  for (const [rows, cols] of [[100, 40], [33, 300]] as const) {
    M.reset();
    const h = encodeF16(normalish(r, rows * cols, 0.5));
    h[5 * cols + 3] = 0x7c00; // +inf in row 5
    h[21 * cols + 1] = 0x7e01; // NaN in row 21
    h[30 * cols + 2] = 0x0003; // subnormal
    const W = M.put(h), X = M.put(normalish(r, cols, 5e4)), O = M.out(rows);
    check(t, `f16 specials ${rows}x${cols}`, [[O, rows]], (k) => k.matvec_f16(O, W, X, 0, rows, cols));
  }
});

// ---------------------------------------------------------------- attention

test.serial('attention split by heads: GQA and MHA, nPos 1..500, out == q, byte-identical', (t) => {
  let seed = 500;
  const cases: [number, number, number, number][] = [[8, 2, 64, 37], [8, 8, 32, 1], [6, 3, 48, 200], [32, 8, 64, 300], [4, 1, 16, 500], [5, 5, 24, 65]];
  for (const [nHeads, nKv, hd, nPos] of cases) {
    for (const alias of [false, true]) {
      M.reset();
      const r = rng(seed++);
      const Q = M.put(normalish(r, nHeads * hd));
      const K = M.put(normalish(r, nPos * nKv * hd));
      const V = M.put(normalish(r, nPos * nKv * hd));
      const O = alias ? Q : M.out(nHeads * hd);
      const SCR = M.alloc(nPos * 4);
      const scale = 1 / Math.sqrt(hd);
      // out == q: check() restores the output region (here: q) before every run
      check(t, `attention ${nHeads}/${nKv} hd=${hd} nPos=${nPos}${alias ? ' out=q' : ''}`, [[O, nHeads * hd]],
        (k) => k.attention(O, Q, K, V, nHeads, nKv, hd, nPos, scale, SCR, 0, 0));
      // the same rows as an f16 cache (the f32 buffers hold twice the halves needed)
      check(t, `attention, f16 cache ${nHeads}/${nKv} hd=${hd} nPos=${nPos}${alias ? ' out=q' : ''}`, [[O, nHeads * hd]],
        (k) => k.attention(O, Q, K, V, nHeads, nKv, hd, nPos, scale, SCR, 1, 0));
      // the same buffers read head-major (kv head g's rows at g * nPos * hd floats, hd apart)
      check(t, `attention, head-major ${nHeads}/${nKv} hd=${hd} nPos=${nPos}${alias ? ' out=q' : ''}`, [[O, nHeads * hd]],
        (k) => k.attention(O, Q, K, V, nHeads, nKv, hd, nPos, scale, SCR, 0, nPos * hd * 4));
    }
  }
  // nPos beyond the pool's maxPositions: runs on the caller alone, still identical
  M.reset();
  const r = rng(1);
  const nPos = LIMITS.maxPositions + 3;
  const Q = M.put(normalish(r, 4 * 16)), K = M.put(normalish(r, nPos * 16)), V = M.put(normalish(r, nPos * 16));
  const O = M.out(64), SCR = M.alloc(nPos * 4);
  check(t, 'attention nPos > maxPositions', [[O, 64]], (k) => k.attention(O, Q, K, V, 4, 1, 16, nPos, 0.25, SCR, 0, 0));
});

// ---------------------------------------------------------------- FFN

interface FfnCase { L: FfnLayout; sparse: boolean; xScale?: number; infDown?: boolean }

function ffnCase(t: ExecutionContext, c: FfnCase, seed: number): void {
  const { L } = c;
  M.reset();
  const r = rng(seed);
  const nParts = L.kind === 'relu' ? 2 : 3;
  const parts = Array.from({ length: nParts }, () => normalish(r, L.n * L.d, 0.3));
  // sparse: strongly negative biases switch most relu neurons off (h == 0 is skipped in the down pass)
  const bias = L.hasBias ? uniform(r, L.n, c.sparse ? -2.5 : -0.5, 0.2) : null;
  const R = buildRecords(L, parts, bias, r);
  if (c.infDown && L.dtype === 'f16') {
    const dv = new DataView(R.bytes.buffer);
    const down = R.partOff[nParts - 1]!;
    for (let i = 0; i < L.n; i += 7) dv.setUint16(down + i * R.stride + 2 * ((i * 3) % L.d), 0x7c00, true);
  }
  const base = M.put(R.bytes, 0);
  const x = normalish(r, L.d, c.xScale ?? 1);
  const X = M.put(x, 4), O = M.out(L.d, 8), H = M.out(L.n, 12);
  const p = R.partOff.map((o) => base + o);
  const s = sfx(L.dtype);
  const hb = L.hasBias ? 1 : 0;
  // pointer table over a shuffled selection of the neurons (the sparse path), and over all in order
  const order = Array.from({ length: L.n }, (_, i) => i);
  for (let i = L.n - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [order[i], order[j]] = [order[j]!, order[i]!]; }
  const sel = order.slice(0, Math.max(1, Math.floor(L.n * 0.6)));
  const table = new Uint32Array(sel.length * nParts);
  sel.forEach((nid, j) => { for (let q = 0; q < nParts; q++) table[j * nParts + q] = p[q]! + nid * R.stride; });
  const P = M.put(table);
  const Hs = M.out(sel.length);
  const what = `ffn_${L.kind}_${s} d=${L.d} n=${L.n} bias=${L.hasBias} ${L.bundled ? 'bundled' : 'split'}${c.sparse ? ' sparse' : ''}${c.xScale ? ` |x|~${c.xScale}` : ''}${c.infDown ? ' inf-down' : ''}`;
  for (const withH of [true, false]) {
    const h = withH ? H : 0;
    check(t, `${what} hOut=${withH}`, withH ? [[O, L.d], [H, L.n]] : [[O, L.d]], (k) => {
      if (L.kind === 'relu') k[`ffn_relu_${s}`](O, X, L.d, L.n, p[0]!, p[1]!, R.stride, hb, h);
      else k[`ffn_swiglu_${s}`](O, X, L.d, L.n, p[0]!, p[1]!, p[2]!, R.stride, h);
    });
    const hs = withH ? Hs : 0;
    check(t, `${what} ptrs(${sel.length}) hOut=${withH}`, withH ? [[O, L.d], [Hs, sel.length]] : [[O, L.d]], (k) => {
      if (L.kind === 'relu') k[`ffn_relu_${s}_ptrs`](O, X, L.d, P, sel.length, hb, hs);
      else k[`ffn_swiglu_${s}_ptrs`](O, X, L.d, P, sel.length, hs);
    });
  }
  if (L.kind === 'relu' && c.sparse && L.n >= 64) {
    const h = new Float32Array(new Uint8Array(st.memory.buffer, H, L.n * 4).slice().buffer);
    const zeros = h.filter((v) => v === 0).length;
    t.true(zeros > L.n / 2 && zeros < L.n, `${what}: most but not all activations are 0 (${zeros}/${L.n})`);
  }
}

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test.serial(`ffn_relu_${sfx(dtype)} (+_ptrs): byte-identical over 1-3 threads, dense and sparse, with and without bias`, (t) => {
    let seed = 1000;
    for (const [d, n] of [[16, 64], [29, 70], [64, 200], [203, 131], [520, 300], [96, 1000]] as const) {
      for (const bundled of [true, false]) {
        for (const hasBias of [false, true]) {
          ffnCase(t, { L: { dtype, kind: 'relu', d, n, hasBias, bundled }, sparse: hasBias && (d + n) % 2 === 0 }, seed++);
        }
      }
    }
  });
  test.serial(`ffn_swiglu_${sfx(dtype)} (+_ptrs): byte-identical over 1-3 threads`, (t) => {
    let seed = 2000;
    for (const [d, n] of [[16, 64], [29, 70], [64, 200], [203, 131], [520, 300]] as const) {
      for (const bundled of [true, false]) ffnCase(t, { L: { dtype, kind: 'swiglu', d, n, hasBias: false, bundled }, sparse: false }, seed++);
    }
  });
}

test.serial('ffn f16: activations >= 2^15 (1-row path) and inf in down rows; int8 with d > 32768 (exact f32 path)', (t) => {
  ffnCase(t, { L: { dtype: 'f16', kind: 'relu', d: 72, n: 150, hasBias: false, bundled: true }, sparse: false, xScale: 3e4, infDown: true }, 3001);
  ffnCase(t, { L: { dtype: 'f16', kind: 'swiglu', d: 40, n: 90, hasBias: false, bundled: false }, sparse: false, xScale: 300, infDown: true }, 3002);
  ffnCase(t, { L: { dtype: 'int8', kind: 'relu', d: 33000, n: 70, hasBias: true, bundled: true }, sparse: false }, 3003);
  ffnCase(t, { L: { dtype: 'q8', kind: 'relu', d: 33000, n: 70, hasBias: true, bundled: true }, sparse: false }, 3004);
});

/** Random bundled gated records of n neurons over d columns at the start of a reset M: their layout and part pointers. */
function swigluRecords(dtype: Dtype, d: number, n: number, r: () => number) {
  M.reset();
  const L: FfnLayout = { dtype, kind: 'swiglu', d, n, hasBias: false, bundled: true };
  const R = buildRecords(L, [0, 1, 2].map(() => normalish(r, n * d, 0.3)), null, r);
  const base = M.put(R.bytes, 0);
  return { R, p: R.partOff.map((o) => base + o) };
}

test.serial('an FFN is the fixed-order sum of its 8 neuron ranges (64-aligned), each a call of its own: what lets threads take ranges', (t) => {
  // range r of n neurons starts at min(n, ceil(floor(r * n / 8) / 64) * 64) (assembly/ffn.ts rangeStart)
  const start = (n: number, r: number) => Math.min(n, Math.ceil(Math.floor((r * n) / 8) / 64) * 64);
  let seed = 3200;
  for (const dtype of ['f32', 'q8'] as Dtype[]) {
    // n <= 512: every range has at most 64 neurons, so a call on one range is a single range itself
    for (const [d, n] of [[48, 500], [40, 200]] as const) {
      const r = rng(seed++);
      const { R, p } = swigluRecords(dtype, d, n, r);
      const X = M.put(normalish(r, d)), O = M.out(d), P = M.out(d);
      const s = sfx(dtype);
      st[`ffn_swiglu_${s}`](O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, 0);
      const whole = new Float32Array(new Uint8Array(st.memory.buffer, O, d * 4).slice().buffer);
      const sum = new Float32Array(d);
      let ranges = 0;
      for (let k = 0; k < 8; k++) {
        const a = start(n, k), e = start(n, k + 1);
        if (a === e) continue;
        ranges++;
        const o = a * R.stride;
        st[`ffn_swiglu_${s}`](P, X, d, e - a, p[0]! + o, p[1]! + o, p[2]! + o, R.stride, 0);
        const part = new Float32Array(new Uint8Array(st.memory.buffer, P, d * 4).slice().buffer);
        for (let j = 0; j < d; j++) sum[j] = Math.fround(sum[j]! + part[j]!);
      }
      t.true(ranges >= 3, `${dtype} d=${d} n=${n}: ${ranges} ranges`);
      t.deepEqual(new Uint32Array(whole.buffer), new Uint32Array(sum.buffer), `${dtype} d=${d} n=${n}: the whole call is the ranges' sum, in order`);
    }
  }
});

test.serial('ffn_rows and ffn_rows_batch (the rows layout): byte-identical over 1-3 threads, f32/f16/int8/q8', (t) => {
  let seed = 4000;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const [d, n] of [[16, 64], [29, 70], [100, 200], [203, 131], [520, 300]] as const) {
      M.reset();
      const r = rng(seed++);
      const L: FfnLayout = { dtype, kind: 'swiglu', d, n, hasBias: false, bundled: seed % 2 === 0 };
      const R = buildRecords(L, [0, 1, 2].map(() => normalish(r, n * d, 0.3)), null, r);
      const e = entryOf(L, R);
      const lay = rowsLayout(e, { afn: 0, athr: 0 }, R.bytes.length)!;
      const bytes = R.bytes.slice();
      toRows(e, lay, bytes);
      const base = M.put(bytes, 0);
      const tc = { f32: 0, f16: 1, int8: 2, q8: 3 }[dtype];
      const at = [base, base + R.partBytes, lay.stride, base + lay.down, base + lay.scales] as const;
      const X = M.put(normalish(r, d), 4), O = M.out(d, 8), H = M.out(n, 12);
      check(t, `ffn_rows ${dtype} d=${d} n=${n}`, [[O, d], [H, n]], (k) => k.ffn_rows(tc, O, X, d, n, ...at, H, 0, 0));
      const T = 5, ld = (d + 2) * 4;
      const XB = M.put(normalish(r, T * (d + 2)), 4), OB = M.out(T * d), HB = M.out(T * n), scratch = M.alloc(LIMITS.batchScratchBytes);
      check(t, `ffn_rows_batch ${dtype} d=${d} n=${n} T=${T}`, [[OB, T * d], [HB, T * n]], (k) => k.ffn_rows_batch(tc, OB, d * 4, XB, ld, T, d, n, ...at, HB, scratch, 0, 0));
    }
  }
});

test.serial('ffn without hOut and n > maxNeurons (its ranges need no h buffer), identical', (t) => {
  ffnCase(t, { L: { dtype: 'f32', kind: 'relu', d: 24, n: LIMITS.maxNeurons + 100, hasBias: true, bundled: true }, sparse: true }, 3100);
});

// ---------------------------------------------------------------- gated (thresholded gate sparsity)

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test.serial(`gate_act_${sfx(dtype)} and ffn_gated_${sfx(dtype)}_ptrs: byte-identical over 1-3 threads`, (t) => {
    let seed = 4000;
    for (const [d, n] of [[16, 40], [29, 70], [136, 203], [260, 600]] as const) {
      const r = rng(seed++);
      const { R, p } = swigluRecords(dtype, d, n, r);
      const X = M.put(normalish(r, d)), ACT = M.out(n);
      const s = sfx(dtype);
      check(t, `gate_act_${s} d=${d} n=${n}`, [[ACT, n]], (k) => k[`gate_act_${s}`](ACT, X, d, n, p[0]!, R.stride));
      // threshold: zero the small activations (as the engine does), keep the rest
      const act = new Float32Array(new Uint8Array(st.memory.buffer, ACT, n * 4).slice().buffer).map((v) => (Math.abs(v) < 0.15 ? 0 : v));
      const sel = Array.from({ length: n }, (_, i) => i).filter((i) => i % 3 !== 1);
      const table = new Uint32Array(sel.length * 2);
      sel.forEach((nid, j) => { table[2 * j] = p[1]! + nid * R.stride; table[2 * j + 1] = p[2]! + nid * R.stride; });
      const actSel = M.put(Float32Array.from(sel, (i) => act[i]!));
      const P = M.put(table), O = M.out(d), H = M.out(sel.length);
      for (const withH of [true, false]) {
        check(t, `ffn_gated_${s}_ptrs d=${d} n=${sel.length} hOut=${withH}`, withH ? [[O, d], [H, sel.length]] : [[O, d]],
          (k) => k[`ffn_gated_${s}_ptrs`](O, X, d, P, sel.length, actSel, withH ? H : 0));
      }
    }
  });
}

// ---------------------------------------------------------------- pass-through kernels and lifecycle

test.serial('kernels the pool does not split pass through (same results on the caller)', (t) => {
  M.reset();
  const r = rng(5);
  const n = 333;
  const X = M.put(normalish(r, n)), W = M.put(uniform(r, n, 0.5, 1.5)), O = M.out(n);
  check(t, 'rmsnorm', [[O, n]], (k) => k.rmsnorm(O, X, W, n, 1e-5));
  check(t, 'layernorm', [[O, n]], (k) => k.layernorm(O, X, W, 0, n, 1e-5));
  const S = M.put(normalish(r, n));
  check(t, 'softmax', [[S, n]], (k) => k.softmax(S, n));
  for (const pool of pools.values()) t.is(pool.kernels.argmax(X, n), st.argmax(X, n));
});

test.serial('a trap on a worker (out-of-bounds weights) throws on the caller; the pool keeps working', (t) => {
  const pool = pools.get(2)!;
  const rows = 64, cols = 64;
  const end = mt.memory.buffer.byteLength;
  const W = end - (rows / 2) * cols * 4; // rows [0, 32) in bounds, the rest past the end
  M.reset();
  const X = M.put(new Float32Array(cols).fill(1)), O = M.out(rows);
  // whichever thread claims a chunk past the end traps: the worker's trap is reported as such, the caller's rethrown
  t.throws(() => pool.kernels.matvec_f32(O, W, X, 0, rows, cols), { message: /failed on worker 1|out of bounds/ });
  // every chunk traps: the caller's own trap is rethrown (after the workers are done), or the worker's if it took them all
  t.throws(() => pool.kernels.matvec_f32(O, end - 64, X, 0, rows, cols), { message: /out of bounds|failed on worker 1/ }, 'a trap on any thread is thrown after the workers are done');
  const W2 = M.put(normalish(rng(3), rows * cols));
  check(t, 'after traps', [[O, rows]], (k) => k.matvec_f32(O, W2, X, 0, rows, cols));
});

test.serial('close terminates the workers; the kernels keep working on the caller', async (t) => {
  const region = DATA - (1 << 20); // a spare region below the test data (pools use far less)
  const limits = { maxPositions: 16, maxNeurons: 64 };
  t.true(Math.ceil(mt.heap_base() / 64) * 64 + [...pools.values()].reduce((s, p) => s + Math.ceil(p.bytes / 64) * 64, 0) <= region);
  const pool = await createPool(mt, { threads: 3, region, ...limits, minWork: 0 });
  t.is(pool.threads, 3);
  t.is(pool.workers, 2);
  M.reset();
  const r = rng(9);
  const W = M.put(normalish(r, 64 * 40)), X = M.put(normalish(r, 40)), O = M.out(64);
  st.matvec_f32(O, W, X, 0, 64, 40);
  pool.kernels.matvec_f32(O, W, X, 0, 64, 40);
  t.is(M.diff(O, 256), -1);
  await pool.close();
  t.is(pool.workers, 0, 'no worker left running');
  await pool.close(); // idempotent
  new Uint8Array(mt.memory.buffer, O, 256).fill(0xff);
  pool.kernels.matvec_f32(O, W, X, 0, 64, 40);
  t.is(M.diff(O, 256), -1, 'after close: caller alone, same result');
});

test.serial('fallback: no SharedArrayBuffer (a page without COOP/COEP, an edge isolate) means one thread and a reason', async (t) => {
  const desc = Object.getOwnPropertyDescriptor(globalThis, 'SharedArrayBuffer')!;
  Reflect.deleteProperty(globalThis, 'SharedArrayBuffer');
  try {
    t.is(typeof (globalThis as { SharedArrayBuffer?: unknown }).SharedArrayBuffer, 'undefined');
    const reason = await threadsUnavailableReason();
    t.regex(reason ?? '', /SharedArrayBuffer/);
    const plan = await planThreads(4);
    t.is(plan.threads, 1);
    t.false(plan.shared);
    t.is(plan.wasm.href, DEFAULT_WASM_URL.href);
    t.regex(plan.fallbackReason ?? '', /SharedArrayBuffer/);
    // the planned (unshared) arena and single-threaded build work; a pool on them is the caller alone
    const k = await loadKernels(createArena(1 << 20, { shared: plan.shared }), plan.wasm);
    const pool = await createPool(k, { threads: 4, region: Math.ceil(k.heap_base() / 64) * 64, ...LIMITS });
    t.is(pool.threads, 1);
    t.is(pool.kernels, k);
    t.truthy(pool.fallbackReason);
  } finally {
    Object.defineProperty(globalThis, 'SharedArrayBuffer', desc);
  }
  t.is(await threadsUnavailableReason(), null);
});

test.serial('fallback: a thread that may not block (browser main thread) and an unshared arena', async (t) => {
  const wait = Atomics.wait;
  (Atomics as { wait: unknown }).wait = () => { throw new TypeError('Atomics.wait cannot be called in this context'); };
  try {
    const plan = await planThreads(2);
    t.is(plan.threads, 1);
    t.regex(plan.fallbackReason ?? '', /worker/);
  } finally {
    (Atomics as { wait: unknown }).wait = wait;
  }
  const k = await loadKernels(createArena(1 << 20));
  const pool = await createPool(k, { threads: 2, region: Math.ceil(k.heap_base() / 64) * 64, ...LIMITS });
  t.is(pool.threads, 1);
  t.regex(pool.fallbackReason ?? '', /not shared/);
  t.deepEqual(await planThreads(1), { threads: 1, shared: false, wasm: DEFAULT_WASM_URL, fallbackReason: null });
});

// ---------------------------------------------------------------- batched (prompt) kernels

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  test.serial(`matmul_${sfx(dtype)} (T tokens): byte-identical over 1-3 threads`, (t) => {
    let seed = 900;
    for (const [rows, cols, T] of [[16, 8, 2], [203, 77, 5], [37, 1030, 7], [515, 64, 3], [64, 129, 1]] as const) {
      M.reset();
      const r = rng(seed++);
      const m = quantizeMatrix(normalish(r, rows * cols, 0.5), rows, cols, dtype);
      const W = M.put(m.bytes), S = m.scales ? M.put(m.scales) : 0;
      const bias = seed % 2 ? M.put(uniform(r, rows)) : 0;
      const X = M.put(normalish(r, T * (cols + 1)));
      const ldx = (cols + 1) * 4, ldo = (rows + 2) * 4;
      const out = M.out(T * (rows + 2));
      const scratch = M.alloc(st.batch_scratch_bytes(T, cols));
      check(t, `${dtype} ${rows}x${cols} T=${T}`, [[out, T * (rows + 2)]], (k) => {
        if (dtype === 'int8' || dtype === 'q8') k[`matmul_${sfx(dtype) as 'i8' | 'q8'}`](out, ldo, W, S, X, ldx, bias, T, rows, cols, scratch);
        else k[`matmul_${dtype}`](out, ldo, W, X, ldx, bias, T, rows, cols, scratch);
      });
    }
  });

  test.serial(`ffn_*_${sfx(dtype)}_batch (T tokens): byte-identical over 1-3 threads, relu with bias and swiglu`, (t) => {
    let seed = 950;
    for (const kind of ['relu', 'swiglu'] as const) {
      for (const [d, n, T] of [[64, 70, 3], [129, 300, 7], [520, 200, 2]] as const) {
        M.reset();
        const r = rng(seed++);
        const hasBias = kind === 'relu';
        const L: FfnLayout = { dtype, kind, d, n, hasBias, bundled: seed % 2 === 0 };
        const nParts = kind === 'relu' ? 2 : 3;
        const R = buildRecords(L, Array.from({ length: nParts }, () => normalish(r, n * d, 0.3)), uniform(r, n, -0.5, 0.2), r);
        const base = M.put(R.bytes);
        const p = R.partOff.map((o) => base + o);
        const X = M.put(normalish(r, T * d));
        const out = M.out(T * d), H = M.out(T * n);
        const scratch = M.alloc(st.batch_scratch_bytes(T, d));
        const s = sfx(dtype);
        check(t, `${kind} ${dtype} d=${d} n=${n} T=${T}`, [[out, T * d]], (k) => {
          if (kind === 'relu') k[`ffn_relu_${s}_batch`](out, d * 4, X, d * 4, T, d, n, p[0]!, p[1]!, R.stride, 1, H, scratch);
          else k[`ffn_swiglu_${s}_batch`](out, d * 4, X, d * 4, T, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, scratch);
        });
      }
    }
  });
}

// ---------------------------------------------------------------- one job for several calls

test.serial('jobGroup: independent calls (matvecs of several dtypes, attention rows) run as ONE job, byte-identical; a group over 64 calls is cut', (t) => {
  t.is(jobGroup(st), null, 'plain kernels: nothing to collect');
  t.is(jobGroup(pools.get(1)!.kernels), null, 'a one-thread pool: nothing to collect');
  M.reset();
  const r = rng(4242);
  const rows = 203, cols = 77;
  const mats = (['f32', 'f16', 'int8', 'q8'] as Dtype[]).map((dtype) => {
    const m = quantizeMatrix(normalish(r, rows * cols, 0.5), rows, cols, dtype);
    return { dtype, W: M.put(m.bytes, 0), S: m.scales ? M.put(m.scales) : 0, O: M.out(rows, 8) };
  });
  const X = M.put(normalish(r, cols), 4);
  const SCR = M.alloc(st.matvec_i8_scratch_bytes(cols));
  // attention rows of a block: token i sees positions 0..i
  const nHeads = 6, nKv = 3, hd = 16, T = 5;
  const Q = M.put(normalish(r, T * nHeads * hd));
  const K = M.put(normalish(r, T * nKv * hd)), V = M.put(normalish(r, T * nKv * hd));
  const ATT = M.out(T * nHeads * hd), SC = M.alloc(T * 4 + 64);
  const outs: [number, number][] = [...mats.map((m) => [m.O, rows] as [number, number]), [ATT, T * nHeads * hd]];
  const calls = (k: Kernels) => {
    for (const m of mats) {
      if (m.dtype === 'f32') k.matvec_f32(m.O, m.W, X, 0, rows, cols);
      else if (m.dtype === 'f16') k.matvec_f16(m.O, m.W, X, 0, rows, cols);
      else if (m.dtype === 'q8') k.matvec_q8(m.O, m.W, m.S, X, 0, rows, cols, SCR); // the same x and scratch as int8
      else k.matvec_i8(m.O, m.W, m.S, X, 0, rows, cols, SCR);
    }
    for (let i = 0; i < T; i++) k.attention(ATT + i * nHeads * hd * 4, Q + i * nHeads * hd * 4, K, V, nHeads, nKv, hd, i + 1, 0.25, SC, 0, 0);
  };
  const jobs = new Map([...pools].map(([n, p]) => [n, p.jobs]));
  check(t, 'a group of 4 matvecs and 5 attention rows', outs, (k) => inOneJob(k, () => calls(k)));
  for (const n of [2, 3]) t.is(pools.get(n)!.jobs - jobs.get(n)!, 1, `${n} threads: one hand-off for the group`);
  check(t, 'the same calls one by one', outs, calls);
  for (const n of [2, 3]) t.is(pools.get(n)!.jobs - jobs.get(n)!, 1 + 4 + T, `${n} threads: one hand-off per call outside a group`);

  // 70 matvecs (more than a job's 64 segments): two jobs, each output identical
  M.reset();
  const W = M.put(normalish(r, rows * cols, 0.5), 0), X2 = M.put(normalish(r, cols * 70), 4);
  const O = M.out(70 * rows);
  const before = pools.get(2)!.jobs;
  check(t, '70 matvecs in one group', [[O, 70 * rows]], (k) => inOneJob(k, () => {
    for (let i = 0; i < 70; i++) k.matvec_f32(O + i * rows * 4, W, X2 + i * cols * 4, 0, rows, cols);
  }));
  t.is(pools.get(2)!.jobs - before, 2);
  // an error inside a group: the pool stays usable
  t.throws(() => inOneJob(pools.get(2)!.kernels, () => { throw new Error('boom'); }), { message: 'boom' });
  check(t, 'after a failed group', [[O, rows]], (k) => k.matvec_f32(O, W, X2, 0, rows, cols));
});

// ---------------------------------------------------------------- end to end

test.serial('a model (GQA, 2 layers, dim 512) gives the same logits on 1, 2 and 3 threads: prompt blocks and decode, f32/f16/int8/q8 (default split sizes)', async (t) => {
  t.timeout(180_000);
  const dir = mkdtempSync(join(tmpdir(), 'flashlm-threads-'));
  try {
    const ckpt = join(dir, 'model.bin');
    // big enough that the default minWork splits q/k/v/o, the FFN, lm_head and (past ~128 positions) attention
    await writeRandomLlama2c(ckpt, { dim: 512, hiddenDim: 1024, nLayers: 2, nHeads: 8, nKvHeads: 4, vocabSize: 512, seqLen: 256 }, 11);
    const ids = Array.from({ length: 200 }, (_, i) => 2 + ((i * 37) % 500));
    for (const dtype of ['f32', 'f16', 'int8', 'q8'] as const) {
      const bytes = await convertCheckpoint(ckpt, { dtype, tokenizer: STORIES_TOK });
      const runs = new Map<number, Float32Array[]>();
      for (const threads of [1, 2, 3]) {
        const m = await openModel(new MemorySource(bytes), { contextLength: 256, threads, batchSize: 32, kvDtype: dtype === 'f16' ? 'f16' : 'f32' });
        try {
          t.is(m.threading.threads, threads);
          const tr = (m as unknown as { transformer: Transformer }).transformer;
          const got: Float32Array[] = [];
          // prompt in blocks of 32 (the last one shorter), then 6 greedy decode steps
          for (let pos = 0; pos < ids.length; pos += 32) {
            const T = Math.min(32, ids.length - pos);
            await tr.forwardBlock(ids, pos, pos, T);
            got.push(tr.logitsView.slice());
          }
          let pos = ids.length;
          for (let i = 0; i < 6; i++, pos++) {
            const last = got[got.length - 1]!;
            let best = 0;
            for (let j = 1; j < last.length; j++) if (last[j]! > last[best]!) best = j;
            await tr.forward(best, pos);
            got.push(tr.logitsView.slice());
          }
          const pool = (m as unknown as { pool: KernelPool }).pool;
          if (threads > 1) t.true(pool.jobs >= 32, `${dtype}, ${threads} threads: the work was split (${pool.jobs} jobs; a busy machine may run later ones on the caller)`);
          runs.set(threads, got);
        } finally {
          await m.close();
        }
      }
      const one = runs.get(1)!;
      for (const n of [2, 3]) {
        const other = runs.get(n)!;
        const same = one.every((l, i) => Buffer.from(l.buffer).equals(Buffer.from(other[i]!.buffer)));
        t.true(same, `${dtype}: ${n} threads give 1 thread's logits bit for bit`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
