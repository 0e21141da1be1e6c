/**
 * Dense matvec throughput: matvec_f32 / matvec_f16 / matvec_i8 (WASM SIMD) and a
 * plain JS Float32Array loop, at 4096x4096 by default; matvec_f16_checked is
 * matvec_f16 told its weights are finite (f16_finite_set, as a dense model's
 * are once checked at open), which skips the per-weight inf/NaN detection.
 *
 *   node --import=tsx bench/kernels.ts [--rows 4096] [--cols 4096] [--reps 15]
 *     [--resident 64] [--batch 32] [--mt-rows 4096] [--mt-cols 11008] [--threads N] [--no-threads]
 *     [--only-threads] [--versus-grain BYTES]
 *     [--simd auto|plain|relaxed]
 *
 * --simd picks the kernels build (src/kernels/load.ts kernelsUrl; default auto:
 * the relaxed-SIMD build where the runtime has it: Node 20 needs
 * --experimental-wasm-relaxed-simd). Where relaxed SIMD is available, a last
 * table times both builds on the same weights, interleaved: the f32/f16 matvec
 * from memory and in L2, and the f32/f16 prompt tiles (matmul).
 *
 * The decode shape: f32/f16/i8/q8 matvec over many distinct --decode-rows x
 * --decode-cols matrices (default 768 x 768) from memory, as a model's layers.
 *
 * Also: each kernel on the first --resident rows only (in L2: its compute-bound
 * rate, in weights/ns, next to its rate from memory), and the batched prompt
 * kernels matmul_* (f32, f16, int8, q8, q4) for --batch tokens against as many
 * matvec calls.
 *
 * Threads (src/kernels/pool.ts): matvec_f32/f16/i8 at mt-rows x mt-cols with the
 * threads build on one shared arena, for 1 … N threads (N: --threads, default
 * os.availableParallelism()), round-robin like above; prints each thread count's
 * median and its speed-up over one thread (target: 2 threads >= 1.7x), and checks
 * that every thread count's output is byte-identical to one thread's.
 * --versus-grain BYTES adds, for each thread count above one, a pool that cuts
 * calls into chunks of that many weight bytes (the pool's `grain`), interleaved
 * with the default; --only-threads runs this table alone.
 *
 * Each kernel gets its own weight matrix (so none is served from another's
 * cache), is warmed up, then all kernels run round-robin `reps` times (so
 * background load hits them alike); we report the median (and best) time.
 * GFLOP/s = 2*rows*cols / time; GB/s counts weight bytes only (4, 2, 1 per
 * weight; the int8 row scales and x are negligible). Prints a table, then one
 * line of JSON.
 */

import { availableParallelism } from 'node:os';
import { createArena, loadKernels, kernelsUrl, relaxedSimdSupported, simdBuild, DEFAULT_WASM_URL, RELAXED_WASM_URL, PROBE_ARENA_BYTES, type SimdMode } from '../src/kernels/load.js';
import { createPool, poolBytes, threadsUnavailableReason, type KernelPool } from '../src/kernels/pool.js';
import { encodeF16, encodeI8Row, encodeQ4Row, encodeQ8Row, q4Groups, q4RowBytes, q8Groups } from '../src/kernels/quant.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const simdIdx = process.argv.indexOf('--simd');
const simdMode = (simdIdx >= 0 ? process.argv[simdIdx + 1] : 'auto') as SimdMode;
const rows = arg('rows', 4096);
const cols = arg('cols', 4096);
const reps = arg('reps', 15);
const n = rows * cols;

// deterministic normal-ish weights (the f16 path is data independent for normal values)
let seed = 12345;
const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
const w = new Float32Array(n);
for (let i = 0; i < n; i++) w[i] = (rand() + rand() + rand() - 1.5) * 0.05;
const x = new Float32Array(cols);
for (let i = 0; i < cols; i++) x[i] = rand() * 2 - 1;

const align = (p: number) => (p + 63) & ~63;
const median = (a: number[]) => { const s = [...a].sort((p, q) => p - q); const m = s.length >> 1; return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2; };
const pad = (s: string | number, w: number) => String(s).padStart(w);
const bytesNeeded = n * (4 + 2 + 2 + 1 + 1 + 1) + rows * 4 * 4 + cols * 16 + (1 << 20) + 40 * (rows + cols) * 4 * 4 + 40 * cols * 64;
const memory = createArena(bytesNeeded + 65536 * 4);
const k = await loadKernels(memory, kernelsUrl(false, simdMode));
const u8 = () => new Uint8Array(memory.buffer);

let cur = align(k.heap_base());
const put = (src: ArrayBufferView) => {
  const p = cur;
  u8().set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength), p);
  cur = align(p + src.byteLength);
  return p;
};
const reserve = (bytes: number) => {
  const p = cur;
  cur = align(p + bytes);
  return p;
};

const W32 = put(w);
const h16 = encodeF16(w);
const W16 = put(h16);
// the same halves with subnormals flushed to +-0 (what a converter that flushes |w| < 2^-14 writes)
let subnormals = 0;
const h16ftz = h16.map((h) => ((h & 0x7c00) === 0 && (h & 0x3ff) !== 0 ? (subnormals++, h & 0x8000) : h));
const W16ftz = put(h16ftz);
const q = new Int8Array(n);
const scales = new Float32Array(rows);
for (let r = 0; r < rows; r++) scales[r] = encodeI8Row(w.subarray(r * cols, (r + 1) * cols), q.subarray(r * cols, (r + 1) * cols));
const W8 = put(q);
const S8 = put(scales);
// q8 (one f32 scale per 32 weights) and q4 (4 bits, one f16 scale per 32 weights) of the same weights
const q8v = new Int8Array(n), q8s = new Float32Array(rows * q8Groups(cols));
for (let r = 0; r < rows; r++) encodeQ8Row(w.subarray(r * cols, (r + 1) * cols), q8v.subarray(r * cols, (r + 1) * cols), q8s.subarray(r * q8Groups(cols), (r + 1) * q8Groups(cols)));
const WQ8 = put(q8v), SQ8 = put(q8s);
const rb4 = q4RowBytes(cols), g4 = q4Groups(cols);
const q4v = new Uint8Array(rows * rb4), q4s = new Uint16Array(rows * g4);
for (let r = 0; r < rows; r++) encodeQ4Row(w.subarray(r * cols, (r + 1) * cols), q4v.subarray(r * rb4, (r + 1) * rb4), q4s.subarray(r * g4, (r + 1) * g4));
const WQ4 = put(q4v), SQ4 = put(q4s);
const X = put(x);
const OUT = reserve(rows * 4);
const SCRATCH = reserve(k.matvec_i8_scratch_bytes(cols));

// plain JS reference loop on its own copy of the weights
const wJs = w.slice();
const outJs = new Float32Array(rows);
function jsMatvec(): void {
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += wJs[o + c]! * x[c]!;
    outJs[r] = s;
  }
}

interface Case { name: string; bytesPerWeight: number; run: () => void; times: number[] }
/** Runs f with the f16 kernels told the weights are finite (a dense model's, checked at open: Kernels.f16_finite_set). */
const checked = (f: () => void) => {
  k.f16_finite_set(1);
  f();
  k.f16_finite_set(0);
};
const cases: Case[] = [
  { name: 'matvec_f32', bytesPerWeight: 4, run: () => k.matvec_f32(OUT, W32, X, 0, rows, cols), times: [] },
  { name: 'matvec_f16', bytesPerWeight: 2, run: () => k.matvec_f16(OUT, W16, X, 0, rows, cols), times: [] },
  { name: 'matvec_f16_ftz', bytesPerWeight: 2, run: () => k.matvec_f16(OUT, W16ftz, X, 0, rows, cols), times: [] },
  { name: 'matvec_f16_checked', bytesPerWeight: 2, run: () => checked(() => k.matvec_f16(OUT, W16, X, 0, rows, cols)), times: [] },
  { name: 'matvec_i8', bytesPerWeight: 1, run: () => k.matvec_i8(OUT, W8, S8, X, 0, rows, cols, SCRATCH), times: [] },
  // q8 and q4 count their group scales too (the bytes a streamed record carries): 1 + 4/32 and 0.5 + 2/32 per weight
  { name: 'matvec_q8', bytesPerWeight: (q8v.byteLength + q8s.byteLength) / n, run: () => k.matvec_q8(OUT, WQ8, SQ8, X, 0, rows, cols, SCRATCH), times: [] },
  { name: 'matvec_q4', bytesPerWeight: (q4v.byteLength + q4s.byteLength) / n, run: () => k.matvec_q4(OUT, WQ4, SQ4, X, 0, rows, cols, SCRATCH), times: [] },
  { name: 'js_f32_loop', bytesPerWeight: 4, run: jsMatvec, times: [] },
];

if (process.argv.includes('--only-threads')) {
  const threads = await benchThreads();
  console.log(JSON.stringify({ bench: 'kernels', node: process.version, reps, threads }));
  process.exit(0);
}

// sanity: the three kernels agree with the JS loop (guards against benchmarking a broken build)
jsMatvec();
for (const c of cases.slice(0, 6)) {
  c.run();
  const got = new Float32Array(memory.buffer, OUT, rows);
  let err = 0, mag = 0;
  for (let r = 0; r < rows; r++) { err = Math.max(err, Math.abs(got[r]! - outJs[r]!)); mag = Math.max(mag, Math.abs(outJs[r]!)); }
  if (!(err <= (c.name === 'matvec_q4' ? 0.1 : 0.02) * mag)) throw new Error(`${c.name} disagrees with the JS loop: max err ${err} vs max |out| ${mag}`);
}

for (const c of cases) for (let i = 0; i < 3; i++) c.run(); // warm-up (tier-up to optimized code)
for (let i = 0; i < reps; i++) {
  for (const c of cases) {
    const t0 = performance.now();
    c.run();
    c.times.push(performance.now() - t0);
  }
}

const flops = 2 * rows * cols;
const results = cases.map((c) => {
  const ms = median(c.times), best = Math.min(...c.times);
  return {
    name: c.name,
    ms: +ms.toFixed(3),
    bestMs: +best.toFixed(3),
    gflops: +(flops / ms / 1e6).toFixed(2),
    gbs: +((n * c.bytesPerWeight) / ms / 1e6).toFixed(2),
    bestGbs: +((n * c.bytesPerWeight) / best / 1e6).toFixed(2),
  };
});
const by = Object.fromEntries(results.map((r) => [r.name, r]));
const ratio = (a: string) => +(by[a]!.gbs / by.matvec_f32!.gbs).toFixed(3);

console.log(`matvec ${rows}x${cols}, median of ${reps} (best in brackets), weights-only GB/s; kernels build: ${simdBuild(k)}`);
console.log(`${'kernel'.padEnd(12)} ${pad('ms', 16)} ${pad('GFLOP/s', 9)} ${pad('GB/s', 16)}`);
for (const r of results) {
  console.log(`${r.name.padEnd(12)} ${pad(`${r.ms.toFixed(2)} [${r.bestMs.toFixed(2)}]`, 16)} ${pad(r.gflops.toFixed(2), 9)} ${pad(`${r.gbs.toFixed(2)} [${r.bestGbs.toFixed(2)}]`, 16)}`);
}
console.log(`GB/s ratio f16/f32 = ${ratio('matvec_f16')} (subnormal-free halves: ${ratio('matvec_f16_ftz')}), int8/f32 = ${ratio('matvec_i8')}; wasm f32 / JS loop = ${(by.matvec_f32!.gflops / by.js_f32_loop!.gflops).toFixed(1)}x`);
console.log(`q4 vs int8 (q8): ${(by.matvec_q8!.ms / by.matvec_q4!.ms).toFixed(2)}x the speed, ${(by.matvec_q4!.gbs / by.matvec_q8!.gbs).toFixed(2)}x the GB/s (q4 reads ${((q4v.byteLength + q4s.byteLength) / (q8v.byteLength + q8s.byteLength)).toFixed(3)}x the bytes); q4 vs per-row int8: ${(by.matvec_i8!.ms / by.matvec_q4!.ms).toFixed(2)}x the speed`);
console.log(`f16 test matrix: ${subnormals} subnormal halves (${((100 * subnormals) / n).toFixed(2)}%); sparse subnormals cost x86 FP assists, see matvec_f16_ftz`);
const targets = {
  f32_gflops_ge_9: by.matvec_f32!.gflops >= 9,
  f16_gbs_ge_f32: ratio('matvec_f16') >= 1,
  i8_gbs_ge_f32: ratio('matvec_i8') >= 1,
};
console.log(`targets: ${Object.entries(targets).map(([k, v]) => `${k} ${v ? 'met' : 'NOT met'}`).join(', ')}`);
const residentResults = benchResident();
const decodeShapeResults = await benchDecodeShape();
const batchResults = benchBatched();
const threadResults = process.argv.includes('--no-threads') ? null : await benchThreads();
const relaxedResults = relaxedSimdSupported() ? await benchRelaxed() : null;
console.log(JSON.stringify({
  bench: 'kernels', rows, cols, reps, node: process.version, kernels: simdBuild(k),
  results,
  ratios: { f16_f32_gbs: ratio('matvec_f16'), f16ftz_f32_gbs: ratio('matvec_f16_ftz'), i8_f32_gbs: ratio('matvec_i8'), wasm_js_f32: +(by.matvec_f32!.gflops / by.js_f32_loop!.gflops).toFixed(2) },
  f16Subnormals: subnormals,
  targets,
  resident: residentResults,
  decodeShape: decodeShapeResults,
  batched: batchResults,
  ...(threadResults ? { threads: threadResults } : {}),
  ...(relaxedResults ? { relaxed: relaxedResults } : {}),
}));

/**
 * Compute-bound rates: the same kernels on the matrix's first `resident` rows
 * (default 64: 1 MiB of f32, so every dtype's slice stays in L2 between calls)
 * in weights per ns, next to the rate from memory of the main table. A kernel
 * whose resident rate is near its streamed rate is bound by its arithmetic
 * (f16: the conversion), not by DRAM.
 */
function benchResident() {
  const m = arg('resident', 64), calls = Math.max(1, Math.round(rows / m));
  const out: { name: string; residentGw: number; streamedGw: number }[] = [];
  const kinds = cases.filter((c) => c.name !== 'js_f32_loop').map((c) => {
    const run = c.name === 'matvec_f32' ? () => k.matvec_f32(OUT, W32, X, 0, m, cols)
      : c.name === 'matvec_f16' ? () => k.matvec_f16(OUT, W16, X, 0, m, cols)
      : c.name === 'matvec_f16_ftz' ? () => k.matvec_f16(OUT, W16ftz, X, 0, m, cols)
      : c.name === 'matvec_f16_checked' ? () => checked(() => k.matvec_f16(OUT, W16, X, 0, m, cols))
      : c.name === 'matvec_i8' ? () => k.matvec_i8(OUT, W8, S8, X, 0, m, cols, SCRATCH)
      : c.name === 'matvec_q8' ? () => k.matvec_q8(OUT, WQ8, SQ8, X, 0, m, cols, SCRATCH)
      : () => k.matvec_q4(OUT, WQ4, SQ4, X, 0, m, cols, SCRATCH);
    return { name: c.name, run, times: [] as number[] };
  });
  for (const c of kinds) for (let i = 0; i < 3; i++) c.run();
  for (let i = 0; i < reps; i++) {
    for (const c of kinds) {
      const t0 = performance.now();
      for (let j = 0; j < calls; j++) c.run();
      c.times.push((performance.now() - t0) / calls);
    }
  }
  console.log(`\ncompute-bound: the first ${m} rows (in L2) vs the whole matrix (from memory), weights per ns (median)`);
  console.log(`${'kernel'.padEnd(15)} ${pad('resident', 9)} ${pad('streamed', 9)}`);
  for (const c of kinds) {
    const residentGw = +((m * cols) / median(c.times) / 1e6).toFixed(2), streamedGw = +(n / by[c.name]!.ms / 1e6).toFixed(2);
    out.push({ name: c.name, residentGw, streamedGw });
    console.log(`${c.name.padEnd(15)} ${pad(residentGw.toFixed(2), 9)} ${pad(streamedGw.toFixed(2), 9)}`);
  }
  return out;
}

/**
 * The decode shape from memory: matvec over --decode-rows x --decode-cols
 * matrices (default 768 x 768, the attention projections of bench:decode's
 * model), each call on a different one of ~96 MiB of them (per dtype), as a
 * model's layers follow each other. Small matrices are where the order the
 * kernels read rows in matters (gemv.ts: rows far apart, not side by side).
 */
async function benchDecodeShape() {
  const dr = arg('decode-rows', 768), dc = arg('decode-cols', 768), dn = dr * dc;
  const src = w.subarray(0, Math.min(n, dn));
  const m32 = new Float32Array(dn);
  for (let i = 0; i < dn; i++) m32[i] = src[i % src.length]!;
  const m16 = encodeF16(m32), m8 = new Int8Array(dn), s8 = new Float32Array(dr);
  for (let r = 0; r < dr; r++) s8[r] = encodeI8Row(m32.subarray(r * dc, (r + 1) * dc), m8.subarray(r * dc, (r + 1) * dc));
  const mq = new Int8Array(dn), sq = new Float32Array(dr * q8Groups(dc));
  for (let r = 0; r < dr; r++) encodeQ8Row(m32.subarray(r * dc, (r + 1) * dc), mq.subarray(r * dc, (r + 1) * dc), sq.subarray(r * q8Groups(dc), (r + 1) * q8Groups(dc)));
  const kinds = [
    { name: 'matvec_f32', parts: [m32] as ArrayBufferView[] },
    { name: 'matvec_f16', parts: [m16] },
    { name: 'matvec_i8', parts: [m8, s8] },
    { name: 'matvec_q8', parts: [mq, sq] },
  ];
  const total = 384 * 2 ** 20;
  const mem = createArena(total + dc * 64 + (4 << 20));
  const dk = await loadKernels(mem, kernelsUrl(false, simdMode));
  let at = align(dk.heap_base());
  const xp = at; new Float32Array(mem.buffer, xp, dc).set(x.subarray(0, Math.min(cols, dc))); at = align(at + dc * 4);
  const op = at; at = align(at + dr * 4);
  const sp = at; at = align(at + dk.matvec_i8_scratch_bytes(dc));
  const out: { name: string; gbs: number; bestGbs: number }[] = [];
  const runs = kinds.map((kd) => {
    const bytes = kd.parts.reduce((a, v) => a + align(v.byteLength), 0), count = Math.max(2, Math.floor(total / 4 / bytes));
    const bases: number[] = [];
    for (let i = 0; i < count; i++) {
      bases.push(at);
      for (const v of kd.parts) { new Uint8Array(mem.buffer).set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), at); at = align(at + v.byteLength); }
    }
    const off = align(kd.parts[0]!.byteLength);
    const call = kd.name === 'matvec_f32' ? (b: number) => dk.matvec_f32(op, b, xp, 0, dr, dc)
      : kd.name === 'matvec_f16' ? (b: number) => dk.matvec_f16(op, b, xp, 0, dr, dc)
      : kd.name === 'matvec_i8' ? (b: number) => dk.matvec_i8(op, b, b + off, xp, 0, dr, dc, sp)
      : (b: number) => dk.matvec_q8(op, b, b + off, xp, 0, dr, dc, sp);
    return { name: kd.name, bytes: bytes * count, run: () => { for (const b of bases) call(b); }, times: [] as number[] };
  });
  for (const r of runs) r.run();
  for (let i = 0; i < Math.max(5, reps >> 1); i++) {
    for (const r of runs) {
      const t0 = performance.now();
      r.run();
      r.times.push(performance.now() - t0);
    }
  }
  console.log(`\ndecode shape from memory: ${dr}x${dc} matrices, each call on the next of ~96 MiB of them, GB/s of weights and scales (median [best])`);
  for (const r of runs) {
    const gbs = +(r.bytes / median(r.times) / 1e6).toFixed(2), bestGbs = +(r.bytes / Math.min(...r.times) / 1e6).toFixed(2);
    out.push({ name: r.name, gbs, bestGbs });
    console.log(`${r.name.padEnd(12)} ${pad(`${gbs.toFixed(2)} [${bestGbs.toFixed(2)}]`, 16)}`);
  }
  return { rows: dr, cols: dc, results: out };
}

/**
 * Prompt processing: matmul_* over T tokens (each weight read once per block)
 * against T matvec_* calls on the same weights (the per-token path), at the
 * same shape; the outputs are compared bit for bit first.
 */
function benchBatched() {
  const T = arg('batch', 32);
  const xs = new Float32Array(T * cols);
  for (let i = 0; i < xs.length; i++) xs[i] = rand() * 2 - 1;
  const XB = put(xs);
  const OB = reserve(T * rows * 4), O1 = reserve(rows * 4);
  const SB = reserve(k.batch_scratch_bytes(T, cols));
  const rowsOut: { dtype: string; batchMs: number; perTokenMs: number; speedup: number; gflops: number }[] = [];
  const kinds = [
    { dtype: 'f32', mm: () => k.matmul_f32(OB, rows * 4, W32, XB, cols * 4, 0, T, rows, cols, SB), mv: (t: number, o: number) => k.matvec_f32(o, W32, XB + t * cols * 4, 0, rows, cols) },
    { dtype: 'f16', mm: () => k.matmul_f16(OB, rows * 4, W16, XB, cols * 4, 0, T, rows, cols, SB), mv: (t: number, o: number) => k.matvec_f16(o, W16, XB + t * cols * 4, 0, rows, cols) },
    { dtype: 'int8', mm: () => k.matmul_i8(OB, rows * 4, W8, S8, XB, cols * 4, 0, T, rows, cols, SB), mv: (t: number, o: number) => k.matvec_i8(o, W8, S8, XB + t * cols * 4, 0, rows, cols, SCRATCH) },
    { dtype: 'q8', mm: () => k.matmul_q8(OB, rows * 4, WQ8, SQ8, XB, cols * 4, 0, T, rows, cols, SB), mv: (t: number, o: number) => k.matvec_q8(o, WQ8, SQ8, XB + t * cols * 4, 0, rows, cols, SCRATCH) },
    { dtype: 'q4', mm: () => k.matmul_q4(OB, rows * 4, WQ4, SQ4, XB, cols * 4, 0, T, rows, cols, SB), mv: (t: number, o: number) => k.matvec_q4(o, WQ4, SQ4, XB + t * cols * 4, 0, rows, cols, SCRATCH) },
  ];
  for (const c of kinds) {
    c.mm();
    for (let t = 0; t < T; t++) {
      c.mv(t, O1);
      const a = new Uint32Array(memory.buffer, OB + t * rows * 4, rows), b = new Uint32Array(memory.buffer, O1, rows);
      for (let r = 0; r < rows; r++) if (a[r] !== b[r]) throw new Error(`matmul_${c.dtype} differs from matvec at token ${t}, row ${r}`);
    }
    const bt: number[] = [], pt: number[] = [];
    for (let i = 0; i < Math.max(3, reps >> 2); i++) {
      let t0 = performance.now();
      c.mm();
      bt.push(performance.now() - t0);
      t0 = performance.now();
      for (let t = 0; t < T; t++) c.mv(t, O1);
      pt.push(performance.now() - t0);
    }
    const b = median(bt), p = median(pt);
    rowsOut.push({ dtype: c.dtype, batchMs: +b.toFixed(3), perTokenMs: +p.toFixed(3), speedup: +(p / b).toFixed(2), gflops: +((flops * T) / b / 1e6).toFixed(1) });
  }
  console.log(`\nbatched (prompt) kernels: ${T} tokens through ${rows}x${cols}, matmul vs ${T} matvec calls (bit-identical outputs)`);
  console.log(`${'dtype'.padEnd(6)} ${pad('matmul ms', 10)} ${pad('matvec ms', 10)} ${pad('speed-up', 9)} ${pad('GFLOP/s', 8)}`);
  for (const r of rowsOut) console.log(`${r.dtype.padEnd(6)} ${pad(r.batchMs.toFixed(2), 10)} ${pad(r.perTokenMs.toFixed(2), 10)} ${pad(r.speedup.toFixed(2), 9)} ${pad(r.gflops.toFixed(1), 8)}`);
  return { T, results: rowsOut };
}

/** matvec_f32/f16/i8 over 1 … N threads on one shared arena (threads build). */
async function benchThreads() {
  const mtRows = arg('mt-rows', 4096), mtCols = arg('mt-cols', 11008);
  const maxThreads = arg('threads', availableParallelism());
  const reason = await threadsUnavailableReason();
  if (reason) {
    console.log(`\nthreads: unavailable here (${reason})`);
    return { unavailable: reason };
  }
  const nn = mtRows * mtCols;
  const limits = { maxPositions: 1, maxNeurons: 1 };
  const probe = await loadKernels(createArena(PROBE_ARENA_BYTES, { shared: true }), kernelsUrl(true, simdMode));
  // --versus-grain N: each thread count > 1 also runs with chunks of N weight bytes (pool option grain), interleaved
  const versusGrain = arg('versus-grain', 0);
  const cfgs = Array.from({ length: maxThreads }, (_, i) => i + 1).flatMap((t) => (versusGrain > 0 && t > 1 ? [{ t }, { t, grain: versusGrain }] : [{ t }]));
  const poolTotal = cfgs.reduce((s, c) => s + align(poolBytes(probe, c.t, limits)), 0);
  const mem = createArena(probe.heap_base() + poolTotal + nn * (4 + 2 + 1) + mtRows * 4 * 4 + mtCols * 16 + (1 << 20), { shared: true });
  const mk = await loadKernels(mem, kernelsUrl(true, simdMode));
  let at = align(mk.heap_base());
  const pools: KernelPool[] = [];
  for (const c of cfgs) {
    pools.push(await createPool(mk, { threads: c.t, region: at, ...limits, ...(c.grain ? { grain: c.grain } : {}) }));
    at = align(at + poolBytes(mk, c.t, limits));
  }
  const bytesU8 = () => new Uint8Array(mem.buffer);
  const place = (src: ArrayBufferView) => {
    const p = at;
    bytesU8().set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength), p);
    at = align(p + src.byteLength);
    return p;
  };
  // weights: the same deterministic normal-ish values in f32, f16 (subnormals flushed) and int8
  const wm = new Float32Array(nn);
  seed = 777;
  for (let i = 0; i < nn; i++) wm[i] = (rand() + rand() + rand() - 1.5) * 0.05;
  const M32 = place(wm);
  const M16 = place(encodeF16(wm).map((h) => ((h & 0x7c00) === 0 ? h & 0x8000 : h)));
  const qm = new Int8Array(nn);
  const sm = new Float32Array(mtRows);
  for (let r = 0; r < mtRows; r++) sm[r] = encodeI8Row(wm.subarray(r * mtCols, (r + 1) * mtCols), qm.subarray(r * mtCols, (r + 1) * mtCols));
  const M8 = place(qm), S8m = place(sm);
  const xm = new Float32Array(mtCols);
  for (let i = 0; i < mtCols; i++) xm[i] = rand() * 2 - 1;
  const XM = place(xm);
  const OM = at; at = align(at + mtRows * 4);
  const SCM = at; at = align(at + mk.matvec_i8_scratch_bytes(mtCols));

  const kinds = [
    { name: 'matvec_f32', bpw: 4, run: (k: typeof mk) => k.matvec_f32(OM, M32, XM, 0, mtRows, mtCols) },
    { name: 'matvec_f16', bpw: 2, run: (k: typeof mk) => k.matvec_f16(OM, M16, XM, 0, mtRows, mtCols) },
    { name: 'matvec_i8', bpw: 1, run: (k: typeof mk) => k.matvec_i8(OM, M8, S8m, XM, 0, mtRows, mtCols, SCM) },
  ];
  const cells = kinds.flatMap((kd) => pools.map((p, i) => ({ kind: kd, pool: p, grain: cfgs[i]!.grain, times: [] as number[] })));
  // identical outputs for every thread count (the pool's contract), then warm-up
  for (const kd of kinds) {
    let ref: Uint8Array | null = null;
    for (const p of pools) {
      kd.run(p.kernels);
      const got = bytesU8().slice(OM, OM + mtRows * 4);
      if (ref && !got.every((v, i) => v === ref![i])) throw new Error(`${kd.name} with ${p.threads} threads differs from 1 thread`);
      ref ??= got;
    }
  }
  for (const c of cells) for (let i = 0; i < 3; i++) c.kind.run(c.pool.kernels);
  for (let i = 0; i < reps; i++) {
    for (const c of cells) {
      const t0 = performance.now();
      c.kind.run(c.pool.kernels);
      c.times.push(performance.now() - t0);
    }
  }
  for (const p of pools) await p.close();

  console.log(`\nthreads: matvec ${mtRows}x${mtCols} (threads build, one shared arena), median of ${reps} (best in brackets)`);
  console.log(`${'kernel'.padEnd(12)} ${pad('threads', 7)} ${pad('ms', 16)} ${pad('GB/s', 8)} ${pad('speed-up', 9)}`);
  const out = kinds.map((kd) => {
    const mine = cells.filter((c) => c.kind === kd);
    const one = median(mine[0]!.times);
    const rowsOut = mine.map((c) => {
      const ms = median(c.times), best = Math.min(...c.times);
      const r = { threads: c.pool.threads, ...(c.grain ? { grain: c.grain } : {}), ms: +ms.toFixed(3), bestMs: +best.toFixed(3), gbs: +((nn * kd.bpw) / ms / 1e6).toFixed(2), speedup: +(one / ms).toFixed(2) };
      console.log(`${kd.name.padEnd(12)} ${pad(r.threads, 7)} ${pad(`${ms.toFixed(2)} [${best.toFixed(2)}]`, 16)} ${pad(r.gbs.toFixed(2), 8)} ${pad(`${r.speedup.toFixed(2)}x`, 9)}${c.grain ? `  (chunks of ${c.grain} bytes)` : ''}`);
      return r;
    });
    return { name: kd.name, rows: mtRows, cols: mtCols, byThreads: rowsOut };
  });
  const two = out.map((o) => o.byThreads.find((r) => r.threads === 2 && !('grain' in r))?.speedup).filter((v): v is number => v !== undefined);
  if (two.length) console.log(`target 2 threads >= 1.7x: ${two.every((v) => v >= 1.7) ? 'met' : 'NOT met'} (${out.map((o, i) => `${o.name} ${two[i]}x`).join(', ')})`);
  return { rows: mtRows, cols: mtCols, results: out };
}

/**
 * Plain vs relaxed SIMD: both builds instantiated on this arena (the same
 * static layout, so they share it; calls never overlap) run the f32/f16
 * matvec (from memory, and on the first --resident rows in L2) and the f32/f16
 * prompt tiles (matmul, --batch tokens), interleaved round-robin. Weights-only
 * GB/s (matmul: weight bytes once per call), medians.
 */
async function benchRelaxed() {
  const kp = await loadKernels(memory, DEFAULT_WASM_URL);
  const kr = await loadKernels(memory, RELAXED_WASM_URL);
  if (kp.heap_base() !== kr.heap_base()) throw new Error('the two builds lay out their static area differently');
  const m = arg('resident', 64), calls = Math.max(1, Math.round(rows / m));
  const T = arg('batch', 32);
  const xs = new Float32Array(T * cols);
  for (let i = 0; i < xs.length; i++) xs[i] = rand() * 2 - 1;
  const XB = put(xs);
  const OB = reserve(T * rows * 4);
  const SB = reserve(kp.batch_scratch_bytes(T, cols));
  type K = typeof kp;
  const kinds: { name: string; bytes: number; run: (k: K) => void }[] = [
    { name: 'matvec_f32', bytes: n * 4, run: (k) => k.matvec_f32(OUT, W32, X, 0, rows, cols) },
    { name: 'matvec_f16', bytes: n * 2, run: (k) => k.matvec_f16(OUT, W16ftz, X, 0, rows, cols) },
    { name: `matvec_f32 L2 (${m} rows)`, bytes: m * cols * 4 * calls, run: (k) => { for (let j = 0; j < calls; j++) k.matvec_f32(OUT, W32, X, 0, m, cols); } },
    { name: `matvec_f16 L2 (${m} rows)`, bytes: m * cols * 2 * calls, run: (k) => { for (let j = 0; j < calls; j++) k.matvec_f16(OUT, W16ftz, X, 0, m, cols); } },
    { name: `matmul_f32 (T=${T})`, bytes: n * 4, run: (k) => k.matmul_f32(OB, rows * 4, W32, XB, cols * 4, 0, T, rows, cols, SB) },
    { name: `matmul_f16 (T=${T})`, bytes: n * 2, run: (k) => k.matmul_f16(OB, rows * 4, W16ftz, XB, cols * 4, 0, T, rows, cols, SB) },
  ];
  const cells = kinds.flatMap((kd) => [{ kd, k: kp, times: [] as number[] }, { kd, k: kr, times: [] as number[] }]);
  for (const c of cells) for (let i = 0; i < 3; i++) c.kd.run(c.k);
  for (let i = 0; i < reps; i++) {
    for (const c of cells) {
      const t0 = performance.now();
      c.kd.run(c.k);
      c.times.push(performance.now() - t0);
    }
  }
  const out: { name: string; plainGbs: number; relaxedGbs: number; ratio: number }[] = [];
  console.log(`\nplain vs relaxed SIMD (same weights, interleaved; median weights-only GB/s, matmul: weight bytes once per call)`);
  console.log(`${'kernel'.padEnd(26)} ${pad('simd', 8)} ${pad('relaxed', 8)} ${pad('ratio', 6)}`);
  for (const kd of kinds) {
    const [p, r] = cells.filter((c) => c.kd === kd).map((c) => kd.bytes / median(c.times) / 1e6);
    const row = { name: kd.name, plainGbs: +p!.toFixed(2), relaxedGbs: +r!.toFixed(2), ratio: +(r! / p!).toFixed(3) };
    out.push(row);
    console.log(`${kd.name.padEnd(26)} ${pad(row.plainGbs.toFixed(2), 8)} ${pad(row.relaxedGbs.toFixed(2), 8)} ${pad(row.ratio.toFixed(3), 6)}`);
  }
  return out;
}
