/**
 * The sliding-window neuron cache (assembly/cache.ts) against its TypeScript
 * model (test/helpers/window-model.ts), token by token over long random
 * sequences; and the scattered-record FFN kernels (ffn_*_ptrs) against the
 * contiguous ones, bit for bit.
 *
 * FLASHLM_WASM=<path> runs the suite against another build (used to check that
 * deliberately broken builds fail it).
 */

import test from 'ava';
import fc from 'fast-check';
import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import {
  Arena, rng, normalish, uniform, buildRecords, firstBitMismatch, type Dtype, type FfnLayout, type FfnRecords,
} from './helpers/kernel-reference.js';
import { WindowModel, trailingZeros } from './helpers/window-model.js';

const WASM = process.env.FLASHLM_WASM ? new URL(process.env.FLASHLM_WASM, `file://${process.cwd()}/`) : undefined;

const EXTRA = [
  'cache_state_bytes', 'cache_init', 'cache_step', 'cache_install', 'cache_first_new', 'cache_overflow', 'cache_used',
  'cache_hits', 'cache_misses', 'cache_evictions', 'cache_lru_evictions', 'cache_overflows',
  'ffn_relu_f32_ptrs', 'ffn_relu_f16_ptrs', 'ffn_relu_i8_ptrs', 'ffn_swiglu_f32_ptrs', 'ffn_swiglu_f16_ptrs', 'ffn_swiglu_i8_ptrs',
] as const;

/** loadKernels (it passes every export through); fails early if this file's kernels are missing. */
async function kernels(memory: WebAssembly.Memory): Promise<Kernels> {
  const k = await loadKernels(memory, WASM);
  const missing = EXTRA.filter((n) => typeof (k as unknown as Record<string, unknown>)[n] !== 'function');
  if (missing.length) throw new Error(`kernels module lacks ${missing.join(', ')}`);
  return k;
}

let k: Kernels;
let A: Arena;

test.before(async () => {
  k = await kernels(createArena(96 << 20));
  A = new Arena(k);
});

class Fail extends Error {}
function check(cond: boolean, msg: () => string): void {
  if (!cond) throw new Fail(msg());
}

// ---------------------------------------------------------------- cache harness

interface CacheCfg {
  neurons: number;
  capacity: number;
  window: number;
  nParts: number;
  partBytes: number;
  /** staging like a split file (each part in its own array) instead of bundled records */
  split: boolean;
  tokens: number;
  seed: number;
}

const CANARY = 0xa5;
const SENTINEL = 0xeeeeeeee;

/** Deterministic record bytes of (neuron, part): a tag then hash bytes. */
function partBytesOf(n: number, p: number, pb: number): Uint8Array {
  const b = new Uint8Array(pb);
  let h = (Math.imul(n + 1, 0x9e3779b1) ^ Math.imul(p + 7, 0x85ebca6b)) >>> 0;
  for (let j = 0; j < pb; j++) {
    h = (Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    b[j] = h >>> 24;
  }
  new DataView(b.buffer).setUint32(0, n * 8 + p + 1, true);
  return b;
}

/** One cache in the arena, driven like the streaming engine drives it, checked after every token. */
class CacheRun {
  readonly rec: number;
  readonly state: number;
  readonly slots: number;
  readonly slotNeuron: number;
  readonly neuronSlot: number;
  readonly mask: number;
  readonly active: number;
  readonly newOut: number;
  readonly ptrsOut: number;
  readonly src: number;
  /** staging "file": bundled records, or one array per part */
  readonly file: number[];
  readonly records: Uint8Array[];
  private readonly guards: [number, number][] = [];
  readonly model: WindowModel;
  /** token of each neuron's latest activity, and whether it overflowed then */
  readonly lastActive = new Map<number, number>();
  readonly overflowedAt = new Map<number, number>();
  /** latest token that had LRU evictions */
  lastLru = -1;
  t = 0;

  constructor(readonly cfg: CacheCfg) {
    const { neurons: N, capacity: C, nParts: P, partBytes: pb } = cfg;
    this.rec = P * pb;
    A.reset();
    const alloc = (bytes: number, misalign = 0) => {
      const p = A.alloc(bytes, misalign);
      this.guards.push([p + bytes, 16]);
      return p;
    };
    this.state = alloc(k.cache_state_bytes());
    this.slots = alloc(C * this.rec);
    this.slotNeuron = alloc(C * 4);
    this.neuronSlot = alloc(N * 4);
    this.mask = alloc(C * 4);
    this.active = alloc(N * 4);
    this.newOut = alloc(N * 4);
    this.ptrsOut = alloc(N * P * 4);
    this.src = alloc(N * P * 4);
    this.records = Array.from({ length: N }, (_, n) => {
      const r = new Uint8Array(this.rec);
      for (let p = 0; p < P; p++) r.set(partBytesOf(n, p, pb), p * pb);
      return r;
    });
    const u8 = A.u8;
    if (cfg.split) {
      this.file = Array.from({ length: P }, (_, p) => {
        const base = alloc(N * pb);
        for (let n = 0; n < N; n++) u8.set(this.records[n]!.subarray(p * pb, (p + 1) * pb), base + n * pb);
        return base;
      });
    } else {
      const base = alloc(N * this.rec);
      for (let n = 0; n < N; n++) u8.set(this.records[n]!, base + n * this.rec);
      this.file = [base];
    }
    // garbage everywhere the cache owns, canaries after every block
    const r = rng(cfg.seed ^ 0x5bd1e995);
    for (const [p, len] of [[this.slots, C * this.rec], [this.slotNeuron, C * 4], [this.neuronSlot, N * 4], [this.mask, C * 4], [this.state, k.cache_state_bytes()]] as const) {
      for (let i = 0; i < len; i++) u8[p + i] = (r() * 256) | 0;
    }
    for (const [p, len] of this.guards) u8.fill(CANARY, p, p + len);
    k.cache_init(this.state, C, N, cfg.window, P, pb, this.slots, this.slotNeuron, this.neuronSlot, this.mask);
    this.model = new WindowModel(C, cfg.window);
    this.checkState('after init');
  }

  partAddr(n: number, p: number): number {
    return this.cfg.split ? this.file[p]! + n * this.cfg.partBytes : this.file[0]! + n * this.rec + p * this.cfg.partBytes;
  }

  step(active: number[], r: () => number): void {
    const { nParts: P, partBytes: pb, window: W } = this.cfg;
    const t = this.t;
    const dv = new DataView(k.memory.buffer);
    active.forEach((id, i) => dv.setInt32(this.active + 4 * i, id, true));
    // sentinels: nothing past nActive (or past new) may be written
    new Uint32Array(k.memory.buffer, this.newOut, this.cfg.neurons).fill(SENTINEL);
    new Uint32Array(k.memory.buffer, this.ptrsOut, this.cfg.neurons * P).fill(SENTINEL);

    const placed = k.cache_step(this.state, this.active, active.length, this.newOut, this.ptrsOut);
    const want = this.model.step(active);
    const what = () => `token ${t} active=[${active.join(',')}]`;

    check(placed === want.placed, () => `${what()}: placed ${placed}, model ${want.placed}`);
    check(k.cache_overflow(this.state) === want.overflow, () => `${what()}: overflow ${k.cache_overflow(this.state)}, model ${want.overflow}`);
    check(k.cache_first_new(this.state) === 0, () => `${what()}: cache_first_new ${k.cache_first_new(this.state)}, want 0 (an index into newOut)`);
    const nNew = want.newList.length;
    const newOut = Array.from(new Int32Array(k.memory.buffer, this.newOut, this.cfg.neurons));
    check(newOut.slice(0, nNew).join() === want.newList.join(), () => `${what()}: newOut [${newOut.slice(0, nNew)}], model [${want.newList}]`);
    check(newOut.slice(nNew).every((v) => v >>> 0 === SENTINEL), () => `${what()}: newOut written past the new neurons`);

    // stage and install the placed records, in random chunks (the engine installs batch by batch);
    // `first` counts in newOut
    const srcView = new Uint32Array(k.memory.buffer, this.src, this.cfg.neurons * P);
    for (let j = 0; j < nNew; j++) for (let p = 0; p < P; p++) srcView[j * P + p] = this.partAddr(want.newList[j]!, p);
    for (let done = 0; done < placed; ) {
      const len = Math.min(placed - done, 1 + Math.floor(r() * 6));
      k.cache_install(this.state, done, len, this.src + done * P * 4);
      done += len;
    }
    if (r() < 0.2) k.cache_install(this.state, 0, 0, this.src); // count 0 is a no-op
    // overflow entries are not cached: installing them must write nothing
    if (want.overflow > 0 && r() < 0.5) k.cache_install(this.state, placed, want.overflow, this.src + placed * P * 4);

    // window-semantics bookkeeping (independent of the model)
    const overflowIds = new Set(want.newList.slice(placed));
    for (const id of active) {
      this.lastActive.set(id, t);
      if (overflowIds.has(id)) this.overflowedAt.set(id, t);
    }
    if (want.lruEvictions > 0) this.lastLru = t;

    // ptrsOut: slot part addresses of each active neuron, 0 for overflow
    const ptrs = new Uint32Array(k.memory.buffer, this.ptrsOut, this.cfg.neurons * P);
    const ns = new Int32Array(k.memory.buffer, this.neuronSlot, this.cfg.neurons);
    const where = this.model.slots();
    active.forEach((id, i) => {
      for (let p = 0; p < P; p++) {
        const got = ptrs[i * P + p]!;
        const s = where.get(id) ?? -1;
        const exp = overflowIds.has(id) ? 0 : this.slots + s * this.rec + p * pb;
        check(overflowIds.has(id) || s >= 0, () => `${what()}: active neuron ${id} is neither cached nor overflow in the model`);
        check(got === exp, () => `${what()}: ptrsOut[${i}][${p}] (neuron ${id}) = ${got}, want ${exp} (slot ${ns[id]})`);
      }
    });
    check(ptrs.subarray(active.length * P).every((v) => v === SENTINEL), () => `${what()}: ptrsOut written past nActive`);

    this.checkState(what());

    // window semantics: cached => active within the window; active within the window => cached unless LRU/overflow
    const cached = this.model.cached();
    for (const n of cached) {
      const age = t - this.lastActive.get(n)!;
      check(age < Math.max(W, 1), () => `${what()}: neuron ${n} last active ${age} tokens ago is still cached (window ${W})`);
    }
    if (W > 0) {
      for (const [n, last] of this.lastActive) {
        if (t - last >= W || cached.has(n)) continue;
        const excused = this.overflowedAt.get(n) === last || this.lastLru > last;
        check(excused, () => `${what()}: neuron ${n} active at ${last} was dropped before ${last + W} without LRU pressure`);
      }
    }
    this.t++;
  }

  /** Everything observable about the cache equals the model, and the slots hold the right bytes. */
  checkState(what: string): void {
    const { neurons: N, capacity: C } = this.cfg;
    const m = this.model;
    const used = k.cache_used(this.state);
    check(used === m.used, () => `${what}: used ${used}, model ${m.used}`);
    check(used <= C, () => `${what}: used ${used} > capacity ${C}`);
    const sn = Array.from(new Int32Array(k.memory.buffer, this.slotNeuron, C)).slice(0, used);
    check(sn.join() === m.slotNeuron.join(), () => `${what}: slots [${sn}], model [${m.slotNeuron}]`);
    const mk = Array.from(new Uint32Array(k.memory.buffer, this.mask, C)).slice(0, used);
    check(mk.join() === m.mask.join(), () => `${what}: masks [${mk}], model [${m.mask}]`);
    const ns = new Int32Array(k.memory.buffer, this.neuronSlot, N);
    const where = m.slots();
    for (let n = 0; n < N; n++) {
      const s = where.get(n) ?? -1;
      check(ns[n] === s, () => `${what}: neuronSlot[${n}] = ${ns[n]}, want ${s}`);
      if (s >= 0) check(sn[ns[n]!] === n, () => `${what}: slotNeuron[neuronSlot[${n}]] != ${n}`);
    }
    const u8 = A.u8;
    for (let s = 0; s < used; s++) {
      const n = sn[s]!;
      const got = Buffer.from(u8.buffer, this.slots + s * this.rec, this.rec);
      const want = this.records[n]!;
      if (got.equals(want)) continue;
      const bad = want.findIndex((b, i) => got[i] !== b);
      check(false, () => `${what}: slot ${s} (neuron ${n}) byte ${bad} is ${got[bad]}, want ${want[bad]}: record lost or mixed up`);
    }
    for (const [p, len] of this.guards) {
      check(u8.subarray(p, p + len).every((b) => b === CANARY), () => `${what}: write past a buffer at ${p}`);
    }
    const c = m.counters;
    const got = {
      hits: k.cache_hits(this.state), misses: k.cache_misses(this.state), evictions: k.cache_evictions(this.state),
      lruEvictions: k.cache_lru_evictions(this.state), overflows: k.cache_overflows(this.state),
    };
    check(JSON.stringify(got) === JSON.stringify(c), () => `${what}: counters ${JSON.stringify(got)}, model ${JSON.stringify(c)}`);
  }
}

/**
 * Active sets with realistic structure: part of the previous set carries over,
 * a few hot neurons recur, the rest is random; sizes from 0 to beyond capacity.
 */
function activeSets(cfg: CacheCfg, r: () => number): () => number[] {
  const N = cfg.neurons;
  const hot = Array.from({ length: Math.max(1, Math.floor(N / 10)) }, () => Math.floor(r() * N));
  const keep = r() * 0.95;
  const typical = Math.max(1, Math.round(Math.min(N, cfg.capacity + 1) * (0.1 + r() * 0.6)));
  let prev: number[] = [];
  return () => {
    const u = r();
    const size = u < 0.08 ? 0 : u < 0.2 ? Math.floor(r() * (N + 1)) : u < 0.3 ? Math.min(N, cfg.capacity + 1 + Math.floor(r() * 8)) : Math.min(N, Math.floor(typical * (0.5 + r())));
    const set = new Set<number>();
    for (const n of prev) if (set.size < size && r() < keep) set.add(n);
    for (const n of hot) if (set.size < size && r() < 0.5) set.add(n);
    while (set.size < size) set.add(Math.floor(r() * N));
    prev = [...set].sort((a, b) => a - b);
    return prev;
  };
}

function runCache(cfg: CacheCfg): void {
  const run = new CacheRun(cfg);
  const r = rng(cfg.seed);
  const next = activeSets(cfg, r);
  for (let t = 0; t < cfg.tokens; t++) run.step(next(), r);
}

const cacheCfg = fc.record({
  neurons: fc.integer({ min: 1, max: 300 }),
  capacity: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 1, max: 320 })),
  window: fc.oneof(fc.integer({ min: 0, max: 6 }), fc.constantFrom(31, 32)),
  nParts: fc.constantFrom(2, 3),
  partBytes: fc.constantFrom(16, 32, 48, 80),
  split: fc.boolean(),
  tokens: fc.integer({ min: 1, max: 150 }),
  seed: fc.integer(),
});

test('cache: matches the model token by token over random sequences (maps, masks, records, pointers, counters, window semantics)', (t) => {
  fc.assert(fc.property(cacheCfg, (cfg) => { runCache(cfg); }), { numRuns: 250, seed: 20251123 });
  t.pass();
});

test('cache: heavy LRU pressure and overflow with small capacities', (t) => {
  const cfg = fc.record({
    neurons: fc.integer({ min: 20, max: 300 }),
    capacity: fc.integer({ min: 1, max: 24 }),
    window: fc.integer({ min: 2, max: 6 }),
    nParts: fc.constantFrom(2, 3),
    partBytes: fc.constantFrom(16, 32),
    split: fc.boolean(),
    tokens: fc.integer({ min: 50, max: 200 }),
    seed: fc.integer(),
  });
  let lru = 0, overflow = 0;
  fc.assert(fc.property(cfg, (c) => {
    const run = new CacheRun(c);
    const r = rng(c.seed);
    const next = activeSets(c, r);
    for (let i = 0; i < c.tokens; i++) run.step(next(), r);
    lru += run.model.counters.lruEvictions;
    overflow += run.model.counters.overflows;
  }), { numRuns: 80, seed: 7 });
  t.true(lru > 1000 && overflow > 1000, `the runs exercised LRU eviction (${lru}) and overflow (${overflow})`);
});

test('cache: worked example of the eviction order (independent of the model)', (t) => {
  const run = new CacheRun({ neurons: 16, capacity: 4, window: 3, nParts: 2, partBytes: 16, split: false, tokens: 0, seed: 1 });
  const r = rng(3);
  const slots = () => Array.from(new Int32Array(k.memory.buffer, run.slotNeuron, k.cache_used(run.state)));
  const masks = () => Array.from(new Uint32Array(k.memory.buffer, run.mask, k.cache_used(run.state)));
  run.step([1, 2], r);
  run.step([3], r);
  run.step([4], r);
  t.deepEqual(slots(), [1, 2, 3, 4]);
  t.deepEqual(masks(), [0b100, 0b100, 0b010, 0b001]);
  // 1 and 2 fall out of the window (3 tokens); 5 and 6 take their slots (no record moves)
  run.step([5, 6], r);
  t.deepEqual(slots(), [5, 6, 3, 4]);
  t.is(k.cache_evictions(run.state), 2);
  // 3 falls out, 7 takes its slot; 4 is a hit
  run.step([4, 7], r);
  t.deepEqual(slots(), [5, 6, 7, 4]);
  t.deepEqual(masks(), [0b010, 0b010, 0b001, 0b101]);
  // full: 8 and 9 need 2 slots. Candidates (none active now): 5, 6 (last active 2 tokens ago, ctz 2),
  // 7, 4 (1 token ago, ctz 1): the oldest, 5 and 6, are the LRU victims
  run.step([8, 9], r);
  t.deepEqual(slots(), [8, 9, 7, 4]);
  t.is(k.cache_lru_evictions(run.state), 2);
  // [8, 9, 10, 11, 12]: 8, 9 are hits; 3 new need room: only 7 and 4 (not active now) can go,
  // 10 and 11 take their slots, 12 overflows
  run.step([8, 9, 10, 11, 12], r);
  t.deepEqual(slots(), [8, 9, 10, 11]);
  t.is(k.cache_overflow(run.state), 1);
  t.deepEqual(Array.from(new Int32Array(k.memory.buffer, run.newOut, 3)), [10, 11, 12]);
  t.is(new Uint32Array(k.memory.buffer, run.ptrsOut, 10)[8], 0, 'overflow neuron 12 gets null part pointers');
  t.is(k.cache_hits(run.state), 3);
  t.is(k.cache_misses(run.state), 11);
  t.is(k.cache_overflows(run.state), 1);
  t.is(typeof k.cache_hits(run.state), 'number');
  // shrinking: 10 stays active, then two empty tokens; 8, 9, 11 fall out and 10 moves into slot 0
  run.step([10], r);
  run.step([], r);
  t.deepEqual(slots(), [8, 9, 10, 11]);
  run.step([], r);
  t.deepEqual(slots(), [10]);
  t.deepEqual(masks(), [0b100]);
  t.is(k.cache_evictions(run.state), 6);
});

test('cache: window 0 means no reuse; window 1 reuses only the previous token', (t) => {
  const r = rng(5);
  const w0 = new CacheRun({ neurons: 10, capacity: 10, window: 0, nParts: 2, partBytes: 16, split: false, tokens: 0, seed: 2 });
  w0.step([1, 2, 3], r);
  w0.step([2, 3, 4], r);
  t.is(k.cache_hits(w0.state), 0);
  t.is(k.cache_misses(w0.state), 6);
  t.is(k.cache_evictions(w0.state), 3);
  t.is(k.cache_used(w0.state), 3);
  const w1 = new CacheRun({ neurons: 10, capacity: 10, window: 1, nParts: 2, partBytes: 16, split: true, tokens: 0, seed: 2 });
  w1.step([1, 2, 3], r);
  w1.step([2, 3, 4], r);
  w1.step([1, 4], r);
  t.is(k.cache_hits(w1.state), 3); // 2, 3 then 4
  t.is(k.cache_misses(w1.state), 5); // 1 2 3, 4, 1
  t.deepEqual(Array.from(new Int32Array(k.memory.buffer, w1.slotNeuron, k.cache_used(w1.state))).sort(), [1, 4]);
});

test('cache: capacity 0 overflows everything; re-init resets state and counters', (t) => {
  const r = rng(9);
  const run = new CacheRun({ neurons: 8, capacity: 0, window: 4, nParts: 3, partBytes: 16, split: false, tokens: 0, seed: 4 });
  run.step([0, 5, 7], r);
  t.is(k.cache_overflow(run.state), 3);
  t.is(k.cache_used(run.state), 0);
  const again = new CacheRun({ neurons: 8, capacity: 3, window: 4, nParts: 3, partBytes: 16, split: false, tokens: 0, seed: 4 });
  again.step([1, 2], r);
  t.is(k.cache_used(again.state), 2);
  t.is(k.cache_overflows(again.state), 0);
  t.true(k.cache_state_bytes() >= 104 && k.cache_state_bytes() % 16 === 0);
});

test('window model: trailingZeros', (t) => {
  t.is(trailingZeros(1), 0);
  t.is(trailingZeros(0b1000), 3);
  t.is(trailingZeros(0x80000000), 31);
  t.is(trailingZeros(0), 32);
});

// ---------------------------------------------------------------- ffn_*_ptrs vs the contiguous kernels

type FfnFn = (out: number, x: number, d: number, n: number, ...rest: number[]) => void;
const kname = (dtype: Dtype) => (dtype === 'int8' ? 'i8' : dtype);

interface PtrCase { L: FfnLayout; R: FfnRecords; x: Float32Array }

function makeCase(L: FfnLayout, seed: number, tweak?: (R: FfnRecords) => void, bias?: Float32Array): PtrCase {
  const r = rng(seed);
  const nParts = L.kind === 'relu' ? 2 : 3;
  const parts = Array.from({ length: nParts }, () => normalish(r, L.n * L.d, 0.3));
  const b = L.hasBias ? bias ?? uniform(r, L.n, -0.5, 0.2) : null;
  const R = buildRecords(L, parts, b, r);
  tweak?.(R);
  return { L, R, x: normalish(r, L.d) };
}

/** Contiguous kernel over records laid out at base (partOff/stride of R). */
function runContig(c: PtrCase, base: number, X: number, withH: boolean): { out: Float32Array; h: Float32Array | null } {
  const { L, R } = c;
  const O = A.out(L.d), H = withH ? A.out(L.n) : 0;
  const p = R.partOff.map((o) => base + o);
  const fn = (k as unknown as Record<string, FfnFn>)[`ffn_${L.kind}_${kname(L.dtype)}`]!;
  if (L.kind === 'relu') fn(O, X, L.d, L.n, p[0]!, p[1]!, R.stride, L.hasBias ? 1 : 0, H);
  else fn(O, X, L.d, L.n, p[0]!, p[1]!, p[2]!, R.stride, H);
  return { out: A.f32(O, L.d), h: withH ? A.f32(H, L.n) : null };
}

/** Pointer kernel over a u32 [n][nParts] table. */
function runPtrs(c: PtrCase, table: Uint32Array, X: number, withH: boolean): { out: Float32Array; h: Float32Array | null } {
  const { L } = c;
  const T = A.putBytes(table, 0);
  const O = A.out(L.d), H = withH ? A.out(L.n) : 0;
  const fn = (k as unknown as Record<string, FfnFn>)[`ffn_${L.kind}_${kname(L.dtype)}_ptrs`]!;
  if (L.kind === 'relu') fn(O, X, L.d, T, L.n, L.hasBias ? 1 : 0, H);
  else fn(O, X, L.d, T, L.n, H);
  return { out: A.f32(O, L.d), h: withH ? A.f32(H, L.n) : null };
}

/** Record bytes of neuron i, part p in R. */
const partOf = (R: FfnRecords, i: number, p: number) => R.bytes.subarray(R.partOff[p]! + i * R.stride, R.partOff[p]! + i * R.stride + R.partBytes);

/** R with its neurons reordered: neuron j of the result is neuron order[j] of R (same layout kind). */
function permuted(c: PtrCase, order: number[]): FfnRecords {
  const { R } = c;
  const nParts = R.partOff.length;
  const bytes = new Uint8Array(R.bytes.length);
  order.forEach((src, j) => {
    for (let p = 0; p < nParts; p++) bytes.set(partOf(R, src, p), R.partOff[p]! + j * R.stride);
  });
  return { ...R, bytes };
}

function shuffle(n: number, r: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function same(t: import('ava').ExecutionContext, got: { out: Float32Array; h: Float32Array | null }, want: { out: Float32Array; h: Float32Array | null }, what: string): void {
  const mo = firstBitMismatch(got.out, want.out);
  t.is(mo, null, `${what} out: ${JSON.stringify(mo)}`);
  if (got.h && want.h) {
    const mh = firstBitMismatch(got.h, want.h);
    t.is(mh, null, `${what} hOut: ${JSON.stringify(mh)}`);
  }
}

/**
 * For one case: (1) pointers into the contiguous records, same order; (2) the
 * records copied into shuffled cache slots, pointers listing them in neuron order;
 * (3) every part in its own scattered (and misaligned) spot, like split staging;
 * (4) a shuffled order, contiguous over records permuted into that order vs
 * pointers into the original records in that order; (5) hOut = 0.
 */
function checkPtrs(t: import('ava').ExecutionContext, c: PtrCase, seed: number): void {
  A.reset();
  const { L, R } = c;
  const r = rng(seed);
  const nParts = R.partOff.length;
  const rec = nParts * R.partBytes;
  const what = `ffn_${L.kind}_${kname(L.dtype)}_ptrs d=${L.d} n=${L.n} bias=${L.hasBias} ${L.bundled ? 'bundled' : 'split'}`;
  const base = A.putBytes(R.bytes, 0);
  const X = A.putF32(c.x, 0);
  const ref = runContig(c, base, X, true);
  const table = (f: (i: number, p: number) => number) => Uint32Array.from({ length: L.n * nParts }, (_, q) => f(Math.floor(q / nParts), q % nParts));

  // (1) same records, same order
  same(t, runPtrs(c, table((i, p) => base + R.partOff[p]! + i * R.stride), X, true), ref, `${what} [in place]`);

  // (2) cache slots in shuffled order
  const perm = shuffle(L.n, r);
  const slots = A.alloc(L.n * rec);
  const u8 = A.u8;
  for (let i = 0; i < L.n; i++) for (let p = 0; p < nParts; p++) u8.set(partOf(R, i, p), slots + perm[i]! * rec + p * R.partBytes);
  same(t, runPtrs(c, table((i, p) => slots + perm[i]! * rec + p * R.partBytes), X, true), ref, `${what} [shuffled slots]`);

  // (3) every part scattered (allocation order shuffled, misaligned by 0/4/8 bytes)
  const addr = new Map<number, number>();
  for (const q of shuffle(L.n * nParts, r)) {
    const i = Math.floor(q / nParts), p = q % nParts;
    addr.set(q, A.putBytes(partOf(R, i, p), 4 * Math.floor(r() * 3)));
  }
  same(t, runPtrs(c, table((i, p) => addr.get(i * nParts + p)!), X, true), ref, `${what} [scattered parts]`);

  // (4) shuffled order: contiguous over permuted records vs pointers into the original ones
  const order = shuffle(L.n, r);
  const P = permuted(c, order);
  const pbase = A.putBytes(P.bytes, 0);
  const refPerm = runContig({ ...c, R: P }, pbase, X, true);
  same(t, runPtrs(c, table((j, p) => base + R.partOff[p]! + order[j]! * R.stride), X, true), refPerm, `${what} [permuted order]`);

  // (5) no hOut
  same(t, runPtrs(c, table((i, p) => slots + perm[i]! * rec + p * R.partBytes), X, false), { out: ref.out, h: null }, `${what} [no hOut]`);
}

for (const dtype of ['f32', 'f16', 'int8'] as Dtype[]) {
  test(`ffn_relu_${kname(dtype)}_ptrs equals ffn_relu_${kname(dtype)} bit for bit (bias/no bias, bundled/split, every block class)`, (t) => {
    let seed = 1000;
    // n covers 8-blocks, a 4-group and single rows, one and several batches of 64
    for (const [d, n] of [[8, 1], [8, 4], [13, 7], [64, 70], [129, 33], [260, 131], [40, 203], [3, 12]] as const) {
      for (const bundled of [true, false]) {
        for (const hasBias of [false, true]) checkPtrs(t, makeCase({ dtype, kind: 'relu', d, n, hasBias, bundled }, seed++), seed);
      }
    }
  });
  test(`ffn_swiglu_${kname(dtype)}_ptrs equals ffn_swiglu_${kname(dtype)} bit for bit`, (t) => {
    let seed = 2000;
    for (const [d, n] of [[8, 1], [8, 4], [13, 7], [64, 70], [129, 33], [260, 131], [40, 203]] as const) {
      for (const bundled of [true, false]) checkPtrs(t, makeCase({ dtype, kind: 'swiglu', d, n, hasBias: false, bundled }, seed++), seed);
    }
  });
}

test('ffn_*_ptrs: f16 inf weights (exact-decode blocks) and large coefficients stay bit-exact', (t) => {
  const d = 40, n = 45;
  const bias = new Float32Array(n).map((_, i) => (i % 9 === 0 ? 5e4 : i % 5 === 0 ? -1e9 : 0.1));
  for (const [kind, row] of [['relu', 3], ['relu', 41], ['swiglu', 17], ['swiglu', 44]] as const) {
    const L: FfnLayout = { dtype: 'f16', kind, d, n, hasBias: kind === 'relu', bundled: true };
    const c = makeCase(L, 77 + row, (R) => {
      // +inf in an up (relu) / gate (swiglu) row: that row's 8-row block takes the exact decode
      const dv = new DataView(R.bytes.buffer);
      dv.setUint16(R.partOff[0]! + row * R.stride + 2 * 5, 0x7c00, true);
    }, bias);
    checkPtrs(t, c, row);
  }
});

test('ffn_relu_*_ptrs: a zero activation skips its down row (NaN there does not leak)', (t) => {
  for (const dtype of ['f32', 'f16', 'int8'] as Dtype[]) {
    const d = 16, n = 9;
    const L: FfnLayout = { dtype, kind: 'relu', d, n, hasBias: true, bundled: true };
    const bias = new Float32Array(n).fill(0.3);
    bias[4] = -1e9; // h_4 = 0 exactly
    const c = makeCase(L, 31, (R) => {
      const dv = new DataView(R.bytes.buffer);
      const at = R.partOff[1]! + 4 * R.stride;
      if (dtype === 'f32') dv.setFloat32(at, NaN, true);
      else if (dtype === 'f16') dv.setUint16(at, 0x7e00, true);
      else dv.setFloat32(at + d, NaN, true); // int8: the row scale
    }, bias);
    A.reset();
    const { R } = c;
    const base = A.putBytes(R.bytes, 0);
    const X = A.putF32(c.x, 0);
    const tbl = Uint32Array.from({ length: n * 2 }, (_, q) => base + R.partOff[q % 2]! + Math.floor(q / 2) * R.stride);
    const got = runPtrs(c, tbl, X, true);
    t.is(got.h![4], 0);
    t.true(got.out.every((v) => Number.isFinite(v)), `${dtype}: out finite`);
    same(t, got, runContig(c, base, X, true), `${dtype} skip`);
  }
});

test('ffn_*_ptrs: int8 with d > 32768 (unquantized-x path) and n = 0', (t) => {
  for (const kind of ['relu', 'swiglu'] as const) {
    const L: FfnLayout = { dtype: 'int8', kind, d: 32776, n: 13, hasBias: kind === 'relu', bundled: kind === 'relu' };
    checkPtrs(t, makeCase(L, 5), 6);
  }
  A.reset();
  const O = A.out(10);
  k.ffn_relu_f32_ptrs(O, A.putF32(new Float32Array(10)), 10, 0, 0, 0, 0);
  t.deepEqual(A.f32(O, 10), new Float32Array(10));
  k.ffn_swiglu_i8_ptrs(O, A.putF32(new Float32Array(10)), 10, 0, 0, 0);
  t.deepEqual(A.f32(O, 10), new Float32Array(10));
});

test('cache + ffn_ptrs: computing over the cache slots equals the contiguous kernel over the active records', (t) => {
  // the engine's sparse path end to end: step the cache, install from a split file, run the kernel on ptrsOut
  for (const dtype of ['f32', 'f16', 'int8'] as Dtype[]) {
    A.reset();
    const N = 120, d = 24;
    const L: FfnLayout = { dtype, kind: 'swiglu', d, n: N, hasBias: false, bundled: false };
    const c = makeCase(L, 900);
    const { R } = c;
    const nParts = 3, pb = R.partBytes, rec = nParts * pb;
    const file = A.putBytes(R.bytes, 0);
    const X = A.putF32(c.x, 0);
    const cap = 40;
    const state = A.alloc(k.cache_state_bytes()), slots = A.alloc(cap * rec), sn = A.alloc(cap * 4), ns = A.alloc(N * 4), mk = A.alloc(cap * 4);
    const act = A.alloc(N * 4), nw = A.alloc(N * 4), ptrs = A.alloc(N * nParts * 4), src = A.alloc(N * nParts * 4);
    k.cache_init(state, cap, N, 3, nParts, pb, slots, sn, ns, mk);
    const r = rng(41);
    let prev: number[] = [];
    for (let tok = 0; tok < 30; tok++) {
      const s = new Set<number>(prev.filter(() => r() < 0.6));
      while (s.size < 25) s.add(Math.floor(r() * N));
      const active = [...s].sort((a, b) => a - b);
      prev = active;
      new Int32Array(k.memory.buffer, act, N).set(active);
      const placed = k.cache_step(state, act, active.length, nw, ptrs);
      t.is(k.cache_overflow(state), 0);
      const first = k.cache_first_new(state);
      const newIds = new Int32Array(k.memory.buffer, nw, placed);
      const sv = new Uint32Array(k.memory.buffer, src, placed * nParts);
      for (let j = 0; j < placed; j++) for (let p = 0; p < nParts; p++) sv[j * nParts + p] = file + R.partOff[p]! + newIds[j]! * R.stride;
      k.cache_install(state, first, placed, src);
      const O = A.out(d), H = A.out(active.length);
      k[`ffn_swiglu_${kname(dtype)}_ptrs` as 'ffn_swiglu_f32_ptrs'](O, X, d, ptrs, active.length, H);
      // reference: the active records gathered contiguously (bundled), same order
      const P = permuted(c, active.concat(Array(N - active.length).fill(0)));
      const gathered = A.putBytes(P.bytes, 0);
      const O2 = A.out(d), H2 = A.out(active.length);
      k[`ffn_swiglu_${kname(dtype)}` as 'ffn_swiglu_f32'](O2, X, d, active.length, gathered + R.partOff[0]!, gathered + R.partOff[1]!, gathered + R.partOff[2]!, R.stride, H2);
      same(t, { out: A.f32(O, d), h: A.f32(H, active.length) }, { out: A.f32(O2, d), h: A.f32(H2, active.length) }, `${dtype} token ${tok}`);
    }
  }
});
