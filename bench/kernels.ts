/**
 * Dense matvec throughput: matvec_f32 / matvec_f16 / matvec_i8 (WASM SIMD) and a
 * plain JS Float32Array loop, at 4096x4096 by default.
 *
 *   node --import=tsx bench/kernels.ts [--rows 4096] [--cols 4096] [--reps 15]
 *
 * Each kernel gets its own weight matrix (so none is served from another's
 * cache), is warmed up, then all kernels run round-robin `reps` times (so
 * background load hits them alike); we report the median (and best) time.
 * GFLOP/s = 2*rows*cols / time; GB/s counts weight bytes only (4, 2, 1 per
 * weight; the int8 row scales and x are negligible). Prints a table, then one
 * line of JSON.
 */

import { createArena, loadKernels } from '../src/kernels/load.js';
import { encodeF16, encodeI8Row } from '../src/kernels/quant.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

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
const bytesNeeded = n * (4 + 2 + 2 + 1) + rows * 4 * 4 + cols * 16 + (1 << 20);
const memory = createArena(bytesNeeded + 65536 * 4);
const k = await loadKernels(memory);
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
const cases: Case[] = [
  { name: 'matvec_f32', bytesPerWeight: 4, run: () => k.matvec_f32(OUT, W32, X, 0, rows, cols), times: [] },
  { name: 'matvec_f16', bytesPerWeight: 2, run: () => k.matvec_f16(OUT, W16, X, 0, rows, cols), times: [] },
  { name: 'matvec_f16_ftz', bytesPerWeight: 2, run: () => k.matvec_f16(OUT, W16ftz, X, 0, rows, cols), times: [] },
  { name: 'matvec_i8', bytesPerWeight: 1, run: () => k.matvec_i8(OUT, W8, S8, X, 0, rows, cols, SCRATCH), times: [] },
  { name: 'js_f32_loop', bytesPerWeight: 4, run: jsMatvec, times: [] },
];

// sanity: the three kernels agree with the JS loop (guards against benchmarking a broken build)
jsMatvec();
for (const c of cases.slice(0, 4)) {
  c.run();
  const got = new Float32Array(memory.buffer, OUT, rows);
  let err = 0, mag = 0;
  for (let r = 0; r < rows; r++) { err = Math.max(err, Math.abs(got[r]! - outJs[r]!)); mag = Math.max(mag, Math.abs(outJs[r]!)); }
  if (!(err <= 0.02 * mag)) throw new Error(`${c.name} disagrees with the JS loop: max err ${err} vs max |out| ${mag}`);
}

for (const c of cases) for (let i = 0; i < 3; i++) c.run(); // warm-up (tier-up to optimized code)
for (let i = 0; i < reps; i++) {
  for (const c of cases) {
    const t0 = performance.now();
    c.run();
    c.times.push(performance.now() - t0);
  }
}

const median = (a: number[]) => { const s = [...a].sort((p, q) => p - q); const m = s.length >> 1; return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2; };
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

const pad = (s: string | number, w: number) => String(s).padStart(w);
console.log(`matvec ${rows}x${cols}, median of ${reps} (best in brackets), weights-only GB/s`);
console.log(`${'kernel'.padEnd(12)} ${pad('ms', 16)} ${pad('GFLOP/s', 9)} ${pad('GB/s', 16)}`);
for (const r of results) {
  console.log(`${r.name.padEnd(12)} ${pad(`${r.ms.toFixed(2)} [${r.bestMs.toFixed(2)}]`, 16)} ${pad(r.gflops.toFixed(2), 9)} ${pad(`${r.gbs.toFixed(2)} [${r.bestGbs.toFixed(2)}]`, 16)}`);
}
console.log(`GB/s ratio f16/f32 = ${ratio('matvec_f16')} (subnormal-free halves: ${ratio('matvec_f16_ftz')}), int8/f32 = ${ratio('matvec_i8')}; wasm f32 / JS loop = ${(by.matvec_f32!.gflops / by.js_f32_loop!.gflops).toFixed(1)}x`);
console.log(`f16 test matrix: ${subnormals} subnormal halves (${((100 * subnormals) / n).toFixed(2)}%); sparse subnormals cost x86 FP assists, see matvec_f16_ftz`);
const targets = {
  f32_gflops_ge_9: by.matvec_f32!.gflops >= 9,
  f16_gbs_ge_f32: ratio('matvec_f16') >= 1,
  i8_gbs_ge_f32: ratio('matvec_i8') >= 1,
};
console.log(`targets: ${Object.entries(targets).map(([k, v]) => `${k} ${v ? 'met' : 'NOT met'}`).join(', ')}`);
console.log(JSON.stringify({
  bench: 'kernels', rows, cols, reps, node: process.version,
  results,
  ratios: { f16_f32_gbs: ratio('matvec_f16'), f16ftz_f32_gbs: ratio('matvec_f16_ftz'), i8_f32_gbs: ratio('matvec_i8'), wasm_js_f32: +(by.matvec_f32!.gflops / by.js_f32_loop!.gflops).toFixed(2) },
  f16Subnormals: subnormals,
  targets,
}));
