/**
 * The streaming FFN (PAPER.md): per layer and token, choose the neurons
 * (predictor, oracle or all), keep the recently used ones in a sliding-window
 * cache in the arena, read only the missing bundles from the source in large
 * coalesced reads, verify them, and run the FFN kernel over the neurons' records.
 */
import { BudgetError } from '../errors.js';
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { Kernels } from '../kernels/types.js';
import type { ReadHints } from '../source/types.js';
import type { Arena } from '../engine/arena.js';
import { runFfnPtrs, type FfnProvider } from '../engine/ffn.js';
import { matvec, placeTensor, type Tensor } from '../engine/tensor.js';
import { planReads, runBounded, type RecordRegion } from './planner.js';
import type { Oracle } from './oracle.js';
import type { RunStats } from './stats.js';

/** Which neurons a token needs: the trained predictor, the true set (oracle), or all of them. */
export type Sparsity = 'predictor' | 'oracle' | 'off';

export interface StreamingConfig {
  selection: Sparsity;
  /** Sliding window of k tokens over a per-layer cache; null = no cache (read every token). */
  window: number | null;
  /** Cache slots per layer (window mode). */
  capacity: number;
  stagingBytes: number;
  hints: ReadHints;
  alignment: number;
  /** True activations: required for 'oracle', optional for measuring the predictor. */
  oracle?: Oracle;
  stats?: RunStats;
}

interface Layer {
  f: FfnEntry;
  section: SectionEntry;
  regions: RecordRegion[];
  /** window mode */
  state: number;
  pred?: { a: Tensor; b: Tensor; bias: Tensor; threshold: number; rank: number };
}

const CACHE_MAP_BYTES_PER_SLOT = 8; // slotNeuron i32 + mask u32

/** Arena bytes the streaming FFN needs besides staging and cache slots. */
export function streamingFixedBytes(file: FlmFile, k: Kernels, window: number | null): number {
  const { ffnDim: n, dModel: d, nLayers } = file.header.arch;
  const nParts = file.header.ffn[0]!.parts.length;
  const maxRank = Math.max(0, ...(file.header.predictors ?? []).map((p) => p.rank));
  const lists = n * 4 * 2 + n * nParts * 4 * 2 + n * 4 + d * 4 + maxRank * 4 + n * 4;
  const cache = window === null ? 0 : nLayers * (k.cache_state_bytes() + n * 4 + 64 * 4);
  return lists + cache + 16 * 64 + k.matvec_i8_scratch_bytes(Math.max(d, maxRank));
}

/** Bytes of one cache slot (record plus its map entries). */
export function slotBytes(file: FlmFile): number {
  const f = file.header.ffn[0]!;
  return f.parts.length * f.partBytes + CACHE_MAP_BYTES_PER_SLOT;
}

export class StreamingFfn implements FfnProvider {
  private readonly layers: Layer[];
  private readonly n: number;
  private readonly nParts: number;
  private readonly d: number;
  private readonly active: number;
  private readonly activeView: Int32Array;
  private readonly newList: number;
  private readonly newView: Int32Array;
  private readonly ptrs: number;
  private readonly ptrView: Uint32Array;
  private readonly src: number;
  private readonly srcView: Uint32Array;
  private readonly h: number;
  private readonly tmpOut: number;
  private readonly rankBuf: number;
  private readonly logits: number;
  private readonly logitsView: Float32Array;
  private readonly i8scratch: number;
  private readonly staging: number;
  private readonly stagingBytes: number;

  constructor(
    private readonly file: FlmFile,
    private readonly k: Kernels,
    private readonly arena: Arena,
    sectionPtrs: ReadonlyMap<string, number>,
    private readonly cfg: StreamingConfig,
  ) {
    const h = file.header;
    const { ffnDim: n, dModel: d } = h.arch;
    this.n = n;
    this.d = d;
    this.nParts = h.ffn[0]!.parts.length;
    if (cfg.selection === 'predictor' && !h.predictors) {
      throw new BudgetError('this .flm has no predictors: run `flashlm calibrate` first, or use --sparsity oracle|off');
    }
    if (cfg.selection === 'oracle' && !cfg.oracle) throw new Error('internal: oracle selection without an oracle');
    const maxRank = Math.max(0, ...(h.predictors ?? []).map((p) => p.rank));
    this.active = arena.alloc('active neurons', n * 4);
    this.activeView = new Int32Array(arena.memory.buffer, this.active, n);
    this.newList = arena.alloc('new neurons', n * 4);
    this.newView = new Int32Array(arena.memory.buffer, this.newList, n);
    this.ptrs = arena.alloc('record pointers', n * this.nParts * 4);
    this.ptrView = new Uint32Array(arena.memory.buffer, this.ptrs, n * this.nParts);
    this.src = arena.alloc('staging pointers', n * this.nParts * 4);
    this.srcView = new Uint32Array(arena.memory.buffer, this.src, n * this.nParts);
    this.h = arena.alloc('activations', n * 4);
    this.tmpOut = arena.alloc('ffn partial', d * 4);
    this.rankBuf = arena.alloc('predictor rank', Math.max(1, maxRank) * 4);
    this.logits = arena.alloc('predictor logits', n * 4);
    this.logitsView = arena.f32(this.logits, n);
    this.i8scratch = arena.alloc('int8 scratch', Math.max(16, k.matvec_i8_scratch_bytes(Math.max(d, maxRank))));
    // Page-aligned staging: O_DIRECT reads land straight in the arena.
    this.stagingBytes = cfg.stagingBytes;
    this.staging = arena.alloc('staging', cfg.stagingBytes, Math.max(64, cfg.alignment));

    const tensors = new Map(h.tensors.map((t) => [t.name, t]));
    const place = (name: string) => placeTensor(file, arena, sectionPtrs, tensors.get(name)!);
    this.layers = h.ffn.map((f) => {
      const section = file.section(f.section);
      const regions: RecordRegion[] =
        f.layout === 'bundled'
          ? [{ offset: section.offset, stride: f.stride, bytes: f.stride }]
          : f.partOffsets.map((o) => ({ offset: section.offset + o, stride: f.partBytes, bytes: f.partBytes }));
      const layer: Layer = { f, section, regions, state: 0 };
      const p = h.predictors?.[f.layer];
      if (p) layer.pred = { a: place(p.a), b: place(p.b), bias: place(p.bias), threshold: p.threshold, rank: p.rank };
      if (cfg.window !== null) {
        const cap = cfg.capacity;
        const recordBytes = this.nParts * f.partBytes;
        layer.state = arena.alloc(`cache ${f.layer} state`, k.cache_state_bytes());
        const slots = arena.alloc(`cache ${f.layer} slots`, cap * recordBytes);
        const slotNeuron = arena.alloc(`cache ${f.layer} slot map`, cap * 4);
        const neuronSlot = arena.alloc(`cache ${f.layer} neuron map`, n * 4);
        const mask = arena.alloc(`cache ${f.layer} masks`, cap * 4);
        k.cache_init(layer.state, cap, n, cfg.window, this.nParts, f.partBytes, slots, slotNeuron, neuronSlot, mask);
      }
      return layer;
    });
  }

  /** Fills the active list for a layer; returns its length. */
  private select(layer: Layer, x: number): number {
    const av = this.activeView;
    let count = 0;
    if (this.cfg.selection === 'off') {
      for (let j = 0; j < this.n; j++) av[j] = j;
      count = this.n;
    } else if (this.cfg.selection === 'oracle') {
      const h = this.cfg.oracle!.activations(layer.f.layer, this.arena.f32(x, this.d));
      for (let j = 0; j < this.n; j++) if (h[j] !== 0) av[count++] = j;
    } else {
      const p = layer.pred!;
      matvec(this.k, this.rankBuf, p.a, x, 0, this.i8scratch);
      matvec(this.k, this.logits, p.b, this.rankBuf, p.bias.ptr, this.i8scratch);
      const lv = this.logitsView;
      for (let j = 0; j < this.n; j++) if (lv[j]! > p.threshold) av[count++] = j;
      if (this.cfg.oracle && this.cfg.stats) this.measurePredictor(layer, x, count);
    }
    return count;
  }

  /** Predictor confusion counts against the oracle's true active set. */
  private measurePredictor(layer: Layer, x: number, count: number): void {
    const h = this.cfg.oracle!.activations(layer.f.layer, this.arena.f32(x, this.d));
    const av = this.activeView;
    let tp = 0;
    let truth = 0;
    for (let j = 0; j < this.n; j++) if (h[j] !== 0) truth++;
    for (let i = 0; i < count; i++) if (h[av[i]!] !== 0) tp++;
    this.cfg.stats!.predictor(tp, count - tp, truth - tp);
  }

  /**
   * Reads the records of `ids[0..count)` into staging, batch by batch, verifies
   * them and hands each batch (ids offset, length, part-pointer list) to `use`.
   */
  private async stream(layer: Layer, ids: Int32Array, count: number, use: (first: number, len: number, ptrs: Uint32Array) => void): Promise<void> {
    const { f, section, regions } = layer;
    const src = this.file.source;
    const stats = this.cfg.stats;
    const bundled = f.layout === 'bundled';
    for (let done = 0; done < count; ) {
      const list = ids.subarray(done, count);
      const plan = planReads(list, count - done, regions, this.cfg.hints, this.cfg.alignment, this.stagingBytes);
      const t0 = performance.now();
      await runBounded(
        plan.reads.map((r) => () => src.read(r.offset, this.arena.u8(this.staging + r.staging, r.length))),
        this.cfg.hints.parallel,
      );
      const t1 = performance.now();
      stats?.io(plan.readBytes, plan.reads.length, t1 - t0, true);
      const ptrs = this.srcView;
      for (let j = 0; j < plan.count; j++) {
        const neuron = list[j]!;
        if (bundled) {
          const rec = this.staging + plan.recordAt[j]!;
          this.file.verify(section, neuron, this.arena.u8(rec, f.stride));
          for (let p = 0; p < this.nParts; p++) ptrs[j * this.nParts + p] = rec + p * f.partBytes;
        } else {
          for (let p = 0; p < this.nParts; p++) {
            const at = this.staging + plan.recordAt[j * this.nParts + p]!;
            this.file.verify(section, p * f.neurons + neuron, this.arena.u8(at, f.partBytes));
            ptrs[j * this.nParts + p] = at;
          }
        }
      }
      stats?.unpack(performance.now() - t1);
      use(done, plan.count, ptrs);
      done += plan.count;
    }
  }

  async run(layerIndex: number, x: number, out: number): Promise<void> {
    const layer = this.layers[layerIndex]!;
    const count = this.select(layer, x);
    const stats = this.cfg.stats;
    let wrote = false;
    const compute = (ptrs: number, n: number, hOut: number) => {
      if (!n) return;
      runFfnPtrs(this.k, layer.f, wrote ? this.tmpOut : out, x, ptrs, n, hOut);
      if (wrote) this.k.add(out, out, this.tmpOut, this.d);
      wrote = true;
    };

    if (this.cfg.window === null) {
      // No reuse: every selected neuron is read this token, computed from staging.
      await this.stream(layer, this.activeView, count, (first, len) => compute(this.src, len, this.h + first * 4));
    } else {
      const k = this.k;
      const t0 = performance.now();
      const placed = k.cache_step(layer.state, this.active, count, this.newList, this.ptrs);
      const overflow = k.cache_overflow(layer.state);
      const firstNew = k.cache_first_new(layer.state);
      stats?.unpack(performance.now() - t0);
      stats?.cache(count - placed - overflow, count);
      await this.stream(layer, this.newView, placed, (first, len) => {
        const t = performance.now();
        k.cache_install(layer.state, firstNew + first, len, this.src);
        stats?.unpack(performance.now() - t);
      });
      if (!overflow) compute(this.ptrs, count, this.h);
      else {
        // Degraded token: the active set outgrew the cache. Compute the cached ones, then stream the rest.
        const pv = this.ptrView;
        let m = 0;
        for (let i = 0; i < count; i++) {
          if (pv[i * this.nParts] === 0) continue;
          for (let p = 0; p < this.nParts; p++) pv[m * this.nParts + p] = pv[i * this.nParts + p]!;
          m++;
        }
        compute(this.ptrs, m, this.h);
        const rest = this.newView.subarray(placed, placed + overflow);
        await this.stream(layer, rest, overflow, (_first, len) => compute(this.src, len, 0));
      }
    }
    if (!wrote) this.arena.f32(out, this.d).fill(0);
  }

  /** Cumulative cache counters over all layers (window mode). */
  cacheCounters(): { hits: number; misses: number; evictions: number; lruEvictions: number; overflows: number; used: number[] } | undefined {
    if (this.cfg.window === null) return undefined;
    const k = this.k;
    const sum = (f: (s: number) => number) => this.layers.reduce((a, l) => a + f(l.state), 0);
    return {
      hits: sum((s) => k.cache_hits(s)),
      misses: sum((s) => k.cache_misses(s)),
      evictions: sum((s) => k.cache_evictions(s)),
      lruEvictions: sum((s) => k.cache_lru_evictions(s)),
      overflows: sum((s) => k.cache_overflows(s)),
      used: this.layers.map((l) => k.cache_used(l.state)),
    };
  }
}

