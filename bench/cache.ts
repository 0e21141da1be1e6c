/**
 * Per-token cost of the sliding-window neuron cache (cache_step + cache_install)
 * for one OPT-6.7B-sized FFN layer: 16384 neurons, 16 KiB records (f16,
 * 2 parts x 8 KiB), window 4, ~3% active per token, capacity 20% of the layer.
 *
 *   node --import=tsx bench/cache.ts [--tokens 3000] [--active 0.03] [--keep 0.6] [--window 4] [--capacity 0.2] [--part 8192]
 *   FLASHLM_WASM=path/to/other.wasm node --import=tsx bench/cache.ts   (compare builds)
 *
 * Active sets: each token keeps each of the previous token's neurons with
 * probability `keep` and draws the rest from a skewed (Zipf-like) popularity,
 * so consecutive tokens overlap and a few neurons are hot, as in real OPT
 * activations. New records are staged contiguously (as the engine's staging
 * buffer would hold them after a read) and installed in one call.
 * Reports µs per token and layer for step and install, the new-record bytes
 * per token, and the I/O time those bytes would take at 1.2 GB/s (1 MiB
 * O_DIRECT reads on our machines, PAPER.md) and 2.25 GB/s (the paper's
 * throughput with row-column bundling).
 */

import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const N = 16384;
const partBytes = arg('part', 8192); // d = 4096 f16 values per part (a real OPT-6.7B up part with its bias slot: --part 8208)
const nParts = 2;
const rec = nParts * partBytes;
const tokens = arg('tokens', 3000);
const activeFrac = arg('active', 0.03);
const keep = arg('keep', 0.6);
const window = arg('window', 4);
const capacity = Math.round(N * arg('capacity', 0.2));
const nActive = Math.round(N * activeFrac);

const align = (p: number) => (p + 63) & ~63;
const bytes = capacity * rec + nActive * rec + N * 4 * 8 + (4 << 20);
const memory = createArena(bytes);
// FLASHLM_WASM=<path> benchmarks another build (e.g. to compare cache variants)
const wasm = process.env.FLASHLM_WASM ? new URL(process.env.FLASHLM_WASM, `file://${process.cwd()}/`) : undefined;
const k: Kernels = await loadKernels(memory, wasm);

let cur = align(k.heap_base());
const reserve = (n: number) => { const p = cur; cur = align(p + n); return p; };
const state = reserve(k.cache_state_bytes());
const slots = reserve(capacity * rec);
const slotNeuron = reserve(capacity * 4);
const neuronSlot = reserve(N * 4);
const mask = reserve(capacity * 4);
const active = reserve(N * 4);
const newOut = reserve(N * 4);
const ptrsOut = reserve(N * nParts * 4);
const src = reserve(N * nParts * 4);
const staging = reserve(nActive * rec);
new Uint8Array(memory.buffer, staging, nActive * rec).fill(0x3c);
k.cache_init(state, capacity, N, window, nParts, partBytes, slots, slotNeuron, neuronSlot, mask);

// deterministic active sets
let seed = 987654321;
const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
// popularity: neuron at rank r drawn with weight 1/(r+10)^0.9 (a few hot ones, a long tail)
const order = Array.from({ length: N }, (_, i) => i).sort(() => rand() - 0.5);
const cdf = new Float64Array(N);
let acc = 0;
for (let r = 0; r < N; r++) cdf[r] = acc += 1 / (r + 10) ** 0.9;
const draw = () => {
  const u = rand() * acc;
  let lo = 0, hi = N - 1;
  while (lo < hi) { const m = (lo + hi) >> 1; if (cdf[m]! < u) lo = m + 1; else hi = m; }
  return order[lo]!;
};
let prev: number[] = [];
const nextSet = (): number[] => {
  const s = new Set<number>();
  for (const n of prev) if (rand() < keep) s.add(n);
  while (s.size < nActive) s.add(draw());
  prev = [...s].sort((a, b) => a - b);
  return prev;
};

const activeView = new Int32Array(memory.buffer, active, N);
const srcView = new Uint32Array(memory.buffer, src, N * nParts);

let stepMs = 0, installMs = 0, placedSum = 0, overflowSum = 0, measured = 0;
const warm = Math.min(200, Math.floor(tokens / 5));
for (let t = 0; t < tokens; t++) {
  const set = nextSet();
  activeView.set(set);
  const t0 = performance.now();
  const placed = k.cache_step(state, active, set.length, newOut, ptrsOut);
  const t1 = performance.now();
  const first = k.cache_first_new(state);
  for (let j = 0; j < placed; j++) for (let p = 0; p < nParts; p++) srcView[j * nParts + p] = staging + j * rec + p * partBytes;
  const t2 = performance.now();
  k.cache_install(state, first, placed, src);
  const t3 = performance.now();
  if (t >= warm) {
    stepMs += t1 - t0;
    installMs += t3 - t2;
    placedSum += placed;
    overflowSum += k.cache_overflow(state);
    measured++;
  }
}

const us = (ms: number) => (ms * 1000) / measured;
const newPerTok = placedSum / measured;
const newBytes = newPerTok * rec;
const io12 = (newBytes / 1.2e9) * 1e6, io22 = (newBytes / 2.25e9) * 1e6;
const hits = k.cache_hits(state), misses = k.cache_misses(state);
const rows: [string, string][] = [
  ['layer', `${N} neurons, ${rec / 1024} KiB records (${nParts} x ${partBytes / 1024} KiB), window ${window}, capacity ${capacity} (${((capacity / N) * 100).toFixed(0)}%)`],
  ['active / token', `${nActive} (${(activeFrac * 100).toFixed(1)}%), keep ${keep}`],
  ['new (read) / token', `${newPerTok.toFixed(1)} neurons = ${(newBytes / 2 ** 20).toFixed(2)} MiB (${((newPerTok / N) * 100).toFixed(2)}% of the layer); hit rate ${((hits / (hits + misses)) * 100).toFixed(1)}%`],
  ['used slots', `${k.cache_used(state)}; window evictions ${k.cache_evictions(state)}, LRU ${k.cache_lru_evictions(state)}, overflow ${overflowSum}`],
  ['cache_step', `${us(stepMs).toFixed(1)} µs / token / layer (bookkeeping, plus record moves for holes no new neuron fills)`],
  ['cache_install', `${us(installMs).toFixed(1)} µs / token / layer (${(newBytes / 2 ** 20).toFixed(2)} MiB copied: ${((newBytes / (us(installMs) * 1e-6)) / 1e9).toFixed(1)} GB/s)`],
  ['total', `${us(stepMs + installMs).toFixed(1)} µs / token / layer`],
  ['I/O for the new bytes', `${io12.toFixed(0)} µs at 1.2 GB/s, ${io22.toFixed(0)} µs at 2.25 GB/s`],
  ['cache / I/O', `${((us(stepMs + installMs) / io12) * 100).toFixed(1)}% (1.2 GB/s), ${((us(stepMs + installMs) / io22) * 100).toFixed(1)}% (2.25 GB/s); step alone ${((us(stepMs) / io12) * 100).toFixed(2)}% / ${((us(stepMs) / io22) * 100).toFixed(2)}%`],
];
for (const [a, b] of rows) console.log(`${a.padEnd(22)} ${b}`);
console.log(JSON.stringify({
  neurons: N, recordBytes: rec, window, capacity, nActive, keep, tokens: measured,
  newPerToken: +newPerTok.toFixed(2), stepUs: +us(stepMs).toFixed(2), installUs: +us(installMs).toFixed(2),
  ioUsAt1_2GBs: +io12.toFixed(1), ioUsAt2_25GBs: +io22.toFixed(1),
}));
