/**
 * The streaming FFN (PAPER.md): per layer and token, choose the neurons
 * (select.ts), keep the recently used ones in a sliding-window cache in the
 * arena (the cache kernels), read only the missing records from the source
 * (fetch.ts), and run the FFN kernel over the neurons' records. This file
 * sequences those and lays out their part of the arena.
 */
import { ArgumentError } from '../errors.js';
import type { FlmFile } from '../format/reader.js';
import type { Kernels } from '../kernels/types.js';
import type { ReadHints } from '../source/types.js';
import { CountingAllocator, type Allocator, type Arena } from '../engine/arena.js';
import { runFfnPtrs, type FfnProvider } from '../engine/ffn.js';
import { placeTensor } from '../engine/tensor.js';
import type { RecordRegion } from './planner.js';
import type { Oracle } from './oracle.js';
import type { RunStats } from './stats.js';
import type { StreamLayer } from './layer.js';
import { NeuronSelector, type Sparsity } from './select.js';
import { RecordFetcher, type BatchSink } from './fetch.js';

export type { Sparsity } from './select.js';

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

const CACHE_MAP_BYTES_PER_SLOT = 8; // slotNeuron i32 + mask u32

/** What a fetched batch of records is for (a constant instead of a callback: no closure per call). */
const enum Use {
  /** No cache: run the FFN over the batch straight from staging. */
  Compute,
  /** Window: install the batch into the cache's new slots. */
  Install,
  /** Window, degraded token: run the FFN over the uncached rest from staging. */
  ComputeRest,
}

/**
 * The streaming FFN's part of the arena: selection lists, activations,
 * predictor buffers, per-layer cache state and maps, resident gate rows (gate
 * sparsity), staging. The planner sizes it with a CountingAllocator (capacity
 * and staging 0: it adds those itself) and the constructor places it, through
 * this one function.
 */
export function layoutStreaming(al: Allocator, file: FlmFile, k: Kernels, window: number | null, sparsity: Sparsity, capacity: number, stagingBytes: number, alignment: number) {
  const h = file.header;
  const { ffnDim: n, dModel: d } = h.arch;
  const nParts = h.ffn[0]!.parts.length;
  const gated = sparsity === 'gate';
  const cacheParts = gated ? 2 : nParts;
  const maxRank = Math.max(0, ...(h.predictors ?? []).map((p) => p.rank));
  return {
    active: al.alloc('active neurons', n * 4),
    newList: al.alloc('new neurons', n * 4),
    ptrs: al.alloc('record pointers', n * nParts * 4),
    src: al.alloc('staging pointers', n * nParts * 4),
    h: al.alloc('activations', n * 4),
    tmpOut: al.alloc('ffn partial', d * 4),
    rankBuf: al.alloc('predictor rank', Math.max(1, maxRank) * 4),
    logits: al.alloc('predictor logits', n * 4),
    i8scratch: al.alloc('int8 scratch', Math.max(16, k.matvec_i8_scratch_bytes(Math.max(d, maxRank)))),
    actList: gated ? al.alloc('gate activations', n * 4) : 0,
    actList2: gated ? al.alloc('gate activations 2', n * 4) : 0,
    // Page-aligned staging: O_DIRECT reads land straight in the arena.
    staging: stagingBytes ? al.alloc('staging', stagingBytes, Math.max(64, alignment)) : 0,
    layers: h.ffn.map((f) => {
      const recordBytes = cacheParts * f.partBytes;
      return {
        gateRows: gated ? al.alloc(`gate rows ${f.layer}`, n * f.partBytes) : 0,
        cache: window === null ? undefined : {
          state: al.alloc(`cache ${f.layer} state`, k.cache_state_bytes()),
          slots: al.alloc(`cache ${f.layer} slots`, capacity * recordBytes),
          slotNeuron: al.alloc(`cache ${f.layer} slot map`, capacity * 4),
          neuronSlot: al.alloc(`cache ${f.layer} neuron map`, n * 4),
          mask: al.alloc(`cache ${f.layer} masks`, capacity * 4),
        },
      };
    }),
  };
}

/** Arena bytes the streaming FFN needs besides staging and cache slots (layoutStreaming with neither). */
export function streamingFixedBytes(file: FlmFile, k: Kernels, window: number | null, sparsity: Sparsity): number {
  const c = new CountingAllocator();
  layoutStreaming(c, file, k, window, sparsity, 0, 0, 1);
  return c.bytes;
}

/** Parts a neuron's streamed record has: all of them, or up and down when the gate rows are resident. */
export function streamedParts(file: FlmFile, sparsity?: Sparsity): number {
  return sparsity === 'gate' ? 2 : file.header.ffn[0]!.parts.length;
}

/** Bytes of one cache slot (record plus its map entries). */
export function slotBytes(file: FlmFile, sparsity?: Sparsity): number {
  const f = file.header.ffn[0]!;
  return streamedParts(file, sparsity) * f.partBytes + CACHE_MAP_BYTES_PER_SLOT;
}

export class StreamingFfn implements FfnProvider, BatchSink<Use> {
  private readonly layers: StreamLayer[];
  private readonly d: number;
  private readonly selector: NeuronSelector;
  private readonly fetcher: RecordFetcher<Use>;
  private readonly newList: number;
  private readonly newView: Int32Array;
  /** Window mode: part pointers of every active neuron's cache slot (u32 [count][parts]). */
  private readonly ptrs: number;
  private readonly ptrView: Uint32Array;
  private readonly h: number;
  private readonly tmpOut: number;
  /** Parts per streamed/cached record (gate mode: up and down only). */
  private readonly cacheParts: number;
  private readonly gated: boolean;
  /** gate mode: the gate activations of the selected neurons, in list order (two lists for the degraded path). */
  private readonly actList: number;
  private readonly actList2: number;
  private readonly actList2View: Float32Array;
  // State of the layer being run (one run at a time: the model runs one token, one layer at a time).
  private curX = 0;
  private curOut = 0;
  private wrote = false;
  private firstNew = 0;
  // Window run state shared by run() and its async tail.
  private placed = 0;
  private overflow = 0;
  private count = 0;

  constructor(
    private readonly file: FlmFile,
    private readonly k: Kernels,
    private readonly arena: Arena,
    sectionPtrs: ReadonlyMap<string, number>,
    private readonly cfg: StreamingConfig,
  ) {
    const h = file.header;
    const { ffnDim: n, dModel: d } = h.arch;
    this.d = d;
    const nParts = h.ffn[0]!.parts.length;
    this.gated = cfg.selection === 'gate';
    this.cacheParts = this.gated ? 2 : nParts;
    if (this.gated && (h.arch.activation !== 'swiglu' || !h.gate)) {
      throw new ArgumentError('gate sparsity needs a gated (SwiGLU) model with gate thresholds: run `flashlm calibrate` on it first');
    }
    if (cfg.selection === 'predictor' && !h.predictors) {
      throw new ArgumentError('this .flm has no predictors: run `flashlm calibrate` first, or use --sparsity oracle|off');
    }
    if (cfg.selection === 'oracle' && !cfg.oracle) throw new Error('internal: oracle selection without an oracle');
    const L = layoutStreaming(arena, file, k, cfg.window, cfg.selection, cfg.capacity, cfg.stagingBytes, cfg.alignment);
    const buf = arena.memory.buffer;
    this.newList = L.newList;
    this.newView = new Int32Array(buf, this.newList, n);
    this.ptrs = L.ptrs;
    this.ptrView = new Uint32Array(buf, this.ptrs, n * nParts);
    this.h = L.h;
    this.tmpOut = L.tmpOut;
    this.actList = L.actList;
    this.actList2 = L.actList2;
    this.actList2View = this.gated ? arena.f32(this.actList2, n) : new Float32Array(0);
    this.selector = new NeuronSelector(file, k, arena, L, cfg.selection, cfg.oracle, cfg.stats);

    const tensors = new Map(h.tensors.map((t) => [t.name, t]));
    const place = (name: string) => placeTensor(file, arena, sectionPtrs, tensors.get(name)!);
    this.layers = h.ffn.map((f, i) => {
      const section = file.section(f.section);
      // Gate mode reads only the up and down parts: part 0 (gate) is resident.
      const first = this.gated ? 1 : 0;
      const regions: RecordRegion[] =
        f.layout === 'bundled'
          ? [{ offset: section.offset + first * f.partBytes, stride: f.stride, bytes: f.stride - first * f.partBytes }]
          : f.partOffsets.slice(first).map((o) => ({ offset: section.offset + o, stride: f.partBytes, bytes: f.partBytes }));
      const layer: StreamLayer = { f, section, regions, state: 0 };
      const at = L.layers[i]!;
      if (this.gated) layer.gate = { ptr: at.gateRows, loaded: false, threshold: h.gate!.thresholds[f.layer]! };
      const p = h.predictors?.[f.layer];
      if (p) layer.pred = { a: place(p.a), b: place(p.b), bias: place(p.bias), threshold: p.threshold, rank: p.rank };
      if (at.cache) {
        const c = at.cache;
        layer.state = c.state;
        k.cache_init(c.state, cfg.capacity, n, cfg.window!, this.cacheParts, f.partBytes, c.slots, c.slotNeuron, c.neuronSlot, c.mask);
      }
      return layer;
    });
    const maxRegions = Math.max(1, ...this.layers.map((l) => l.regions.length));
    this.fetcher = new RecordFetcher<Use>(file, arena, L.staging, cfg.stagingBytes, L.src, this.cacheParts, cfg.hints, cfg.alignment, maxRegions, cfg.stats);
  }

  /** A fetched batch (fetch.ts): compute it from staging, or install it into the cache. */
  onBatch(use: Use, layer: StreamLayer, at: number, len: number, src: number): void {
    if (use === Use.Compute) this.compute(layer, src, len, this.h + at * 4, this.actList + at * 4);
    else if (use === Use.ComputeRest) this.compute(layer, src, len, 0, this.actList2 + at * 4);
    else {
      const t = performance.now();
      this.k.cache_install(layer.state, this.firstNew + at, len, src);
      this.cfg.stats?.unpack(performance.now() - t);
    }
  }

  /** Runs the FFN over `n` records listed at `ptrs` into the current layer's output (adding to what is there). `acts`: gate mode, their gate activations. */
  private compute(layer: StreamLayer, ptrs: number, n: number, hOut: number, acts: number): void {
    if (!n) return;
    const f = layer.f;
    const out = this.curOut;
    const dst = this.wrote ? this.tmpOut : out;
    if (this.gated) {
      const gatedFfn = f.dtype === 'f32' ? this.k.ffn_gated_f32_ptrs : f.dtype === 'f16' ? this.k.ffn_gated_f16_ptrs : f.dtype === 'q8' ? this.k.ffn_gated_q8_ptrs : this.k.ffn_gated_i8_ptrs;
      gatedFfn(dst, this.curX, this.d, ptrs, n, acts, hOut);
    } else runFfnPtrs(this.k, f, dst, this.curX, ptrs, n, hOut);
    if (this.wrote) this.k.add(out, out, this.tmpOut, this.d);
    this.wrote = true;
  }

  /**
   * Runs the layer's FFN; synchronous (no promise) when every selected
   * neuron is already in the cache, a promise when it reads.
   */
  run(layerIndex: number, x: number, out: number): Promise<void> | void {
    const layer = this.layers[layerIndex]!;
    if (layer.gate && !layer.gate.loaded) return this.fetcher.loadGate(layer).then(() => this.run(layerIndex, x, out));
    const count = this.selector.select(layer, x);
    this.curX = x;
    this.curOut = out;
    this.wrote = false;

    if (this.cfg.window === null) {
      // No reuse: every selected neuron is read this token, computed from staging (count > 0 writes `out`).
      if (count) return this.fetcher.fetch(layer, this.selector.activeView, 0, count, this, Use.Compute);
      this.finish();
      return;
    }
    const k = this.k;
    const stats = this.cfg.stats;
    const t0 = performance.now();
    const lruBefore = k.cache_lru_evictions(layer.state);
    const placed = k.cache_step(layer.state, this.selector.activeView.byteOffset, count, this.newList, this.ptrs);
    const overflow = k.cache_overflow(layer.state);
    this.firstNew = k.cache_first_new(layer.state);
    stats?.unpack(performance.now() - t0);
    stats?.cache(count - placed - overflow, count, k.cache_lru_evictions(layer.state) - lruBefore, overflow);
    this.count = count;
    this.placed = placed;
    this.overflow = overflow;
    if (placed || overflow) return this.runWindowReads(layer);
    this.compute(layer, this.ptrs, count, this.h, this.actList);
    this.finish();
  }

  /** Window mode, the rest of run() when neurons must be read: install the new ones, compute, and stream what the cache cannot hold. */
  private async runWindowReads(layer: StreamLayer): Promise<void> {
    const { count, placed, overflow } = this;
    if (placed) await this.fetcher.fetch(layer, this.newView, 0, placed, this, Use.Install);
    if (!overflow) this.compute(layer, this.ptrs, count, this.h, this.actList);
    else {
      // Degraded token: the active set outgrew the cache. Compute the cached ones, then stream the rest.
      const pv = this.ptrView;
      const parts = this.cacheParts;
      const acts = this.gated ? this.selector.actListView : undefined;
      let m = 0;
      for (let i = 0; i < count; i++) {
        if (pv[i * parts] === 0) continue;
        for (let p = 0; p < parts; p++) pv[m * parts + p] = pv[i * parts + p]!;
        if (acts) acts[m] = acts[i]!;
        m++;
      }
      this.compute(layer, this.ptrs, m, this.h, this.actList);
      const rest = this.newView; // the uncached neurons: rest[placed, placed + overflow)
      if (this.gated) {
        const all = this.selector.logitsView;
        const acts2 = this.actList2View;
        for (let i = 0; i < overflow; i++) acts2[i] = all[rest[placed + i]!]!;
      }
      await this.fetcher.fetch(layer, rest, placed, placed + overflow, this, Use.ComputeRest);
    }
    this.finish();
  }

  /** A layer that computed nothing (no neuron selected) outputs zeros. */
  private finish(): void {
    if (!this.wrote) this.fetcher.arenaBytes().fill(0, this.curOut, this.curOut + this.d * 4);
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
