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
import { exactZeros, gatedActArgs, runFfnBatch, runFfnPtrs, type ActArgs, type FfnProvider } from '../engine/ffn.js';
import { placeTensor } from '../engine/tensor.js';
import type { RecordRegion } from './planner.js';
import type { Oracle } from './oracle.js';
import type { RunStats } from './stats.js';
import type { StreamLayer } from './layer.js';
import { NeuronSelector, type Sparsity } from './select.js';
import { RecordFetcher, type BatchSink } from './fetch.js';
import { Prefetcher } from './prefetch.js';

export type { Sparsity } from './select.js';

const noop = (): void => {};

/**
 * The share of prefetched neurons a layer should use: below it, that layer's
 * prefetch margin (in logit units) rises — by MARGIN_STEP and more the
 * further below (fewer, surer reads) — above it, falls by MARGIN_STEP. A
 * wasted read costs disk time the layer's own reads need.
 */
const PREFETCH_USE = 0.6;
const MARGIN_STEP = 0.25;

export interface StreamingConfig {
  selection: Sparsity;
  /** Sliding window of k tokens over a per-layer cache; null = no cache (read every token). */
  window: number | null;
  /** Cache slots per layer (window mode). */
  capacity: number;
  stagingBytes: number;
  /** Staging of the next layer's reads (prefetch.ts); 0: no prefetch. */
  prefetchBytes?: number;
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
  /** Window: install a batch of a compacted list into the cache's new slots (restIdx maps it to cache_step's new list). */
  InstallAt,
  /** A prompt block: run each token's FFN over its own neurons among the batch. */
  Block,
}

/** Tokens one pass of a prompt block covers: one bit each in a neuron's u32 mask. */
const BLOCK_TOKENS = 32;

/**
 * The streaming FFN's part of the arena: selection lists, activations,
 * predictor buffers, per-layer cache state and maps, resident gate rows (gate
 * sparsity), staging. The planner sizes it with a CountingAllocator (capacity
 * and staging 0: it adds those itself) and the constructor places it, through
 * this one function.
 */
export function layoutStreaming(al: Allocator, file: FlmFile, k: Kernels, window: number | null, sparsity: Sparsity, capacity: number, stagingBytes: number, alignment: number, prefetchBytes = 0) {
  const h = file.header;
  const { ffnDim: n, dModel: d } = h.arch;
  const nParts = h.ffn[0]!.parts.length;
  const gated = sparsity === 'gate';
  const cacheParts = gated ? 2 : nParts;
  const maxRank = Math.max(0, ...(h.predictors ?? []).map((p) => p.rank), ...(h.lookahead ?? []).map((p) => p.rank));
  return {
    active: al.alloc('active neurons', n * 4),
    newList: al.alloc('new neurons', n * 4),
    ptrs: al.alloc('record pointers', n * nParts * 4),
    // Window mode: the new neurons' slot pointers, computed apart from the cached ones (after their reads land).
    newPtrs: window === null ? 0 : al.alloc('new record pointers', n * nParts * 4),
    src: al.alloc('staging pointers', n * nParts * 4),
    h: al.alloc('activations', n * 4),
    tmpOut: al.alloc('ffn partial', d * 4),
    rankBuf: al.alloc('predictor rank', Math.max(1, maxRank) * 4),
    logits: al.alloc('predictor logits', n * 4),
    i8scratch: al.alloc('int8 scratch', Math.max(16, k.matvec_i8_scratch_bytes(Math.max(d, maxRank)))),
    actList: gated ? al.alloc('gate activations', n * 4) : 0,
    actList2: gated ? al.alloc('gate activations 2', n * 4) : 0,
    // Prompt blocks without sparsity: one batch's partial FFN output for every token of the block.
    blockPartial: sparsity === 'off' ? al.alloc('block ffn partial', BLOCK_TOKENS * d * 4) : 0,
    // Page-aligned staging: O_DIRECT reads land straight in the arena.
    staging: stagingBytes ? al.alloc('staging', stagingBytes, Math.max(64, alignment)) : 0,
    // The next layer's reads (prefetch.ts): their own staging and pointer table.
    pfStaging: prefetchBytes ? al.alloc('prefetch staging', prefetchBytes, Math.max(64, alignment)) : 0,
    pfSrc: prefetchBytes ? al.alloc('prefetch pointers', n * nParts * 4) : 0,
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

/** Arena bytes of a prefetch area of `bytes` besides its staging: the pointer table, and alignment slack. */
export function prefetchOverheadBytes(file: FlmFile, alignment: number): number {
  return file.header.arch.ffnDim * file.header.ffn[0]!.parts.length * 4 + 2 * Math.max(64, alignment);
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
  /** Window mode: the part pointers of this token's newly placed neurons, and a mark per neuron for them. */
  private readonly newPtrs: number;
  private readonly newPtrView: Uint32Array;
  private readonly isNew: Uint8Array;
  private readonly h: number;
  /** Without sparsity (hybrid, naive) on exact-zero activations: the computed activations, to count the true active set (RunStats). */
  private readonly hView: Float32Array | undefined;
  private readonly tmpOut: number;
  /** Parts per streamed/cached record (gate mode: up and down only). */
  private readonly cacheParts: number;
  private readonly gated: boolean;
  /** gate mode: the gate activations of the selected neurons, in list order (two lists for the degraded path). */
  private readonly actList: number;
  private readonly actList2: number;
  private readonly actList2View: Float32Array;
  /** The gated activation as kernel arguments (arch.gatedAct). */
  private readonly act: ActArgs;
  // State of the layer being run (one run at a time: the model runs one token, one layer at a time).
  private curX = 0;
  private curOut = 0;
  private wrote = false;
  private firstNew = 0;
  // Window run state shared by run() and its async tail.
  private placed = 0;
  private overflow = 0;
  private count = 0;
  // Prompt block state (runBlock): which of the block's tokens selected each neuron (bit t), their inputs
  // and outputs, and which outputs hold a partial sum.
  private readonly blockMask: Uint32Array;
  private blockT = 0;
  private blockX = 0;
  private blockLdx = 0;
  private blockOut = 0;
  private blockLdo = 0;
  private blockWrote = 0;
  /** Gate mode: the block tokens' gate activations, token t's at [t * n + neuron] (runBlock's `h`). */
  private blockActs: Float32Array = new Float32Array(0);
  /** The neuron ids being read for a block, and where fetch() started in them (it counts batches from there). */
  private blockIds: Int32Array = new Int32Array(0);
  private blockFrom = 0;
  /** The fetcher's pointer list (arena address): free between fetches, the compaction target for cached neurons. */
  private readonly blockSrc: number;
  /** runBlock's activation rows and batch scratch, and (no sparsity) the block's partial outputs. */
  private blockH = 0;
  private blockScratch = 0;
  private readonly blockPartial: number;
  /** Part pointers of one run of contiguous records (made once). */
  private readonly runParts: number[];
  /** The next layer's reads, when prefetching (see prefetch.ts). */
  private readonly pf: Prefetcher | undefined;
  /** Compacted neuron lists of a window token's reads: what the prefetch did not ask for, what it failed to bring; with their index in cache_step's new list. */
  private readonly restIds: Int32Array;
  private readonly restIdx: Int32Array;
  private readonly leftIds: Int32Array;
  private readonly leftIdx: Int32Array;
  /** restIdx or leftIdx: the map of the InstallAt fetch in progress. */
  private installIdx: Int32Array;
  /** The last lookahead prediction (layer laTarget, laCount neurons, marked laGen in laStamp), for its recall. */
  private readonly laList: Int32Array;
  private readonly laStamp: Uint32Array;
  private laGen = 0;
  private laTarget = -1;
  private laCount = 0;
  /** Per layer: how far over its threshold a lookahead logit must be to be prefetched, steered towards PREFETCH_USE. */
  private readonly pfMargin: Float64Array;

  constructor(
    file: FlmFile,
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
    // relu-family gates have exact zeros: without calibrated thresholds, gate mode keeps exactly the nonzero ones (threshold 0)
    if (this.gated && (h.arch.activation !== 'swiglu' || (!h.gate && !exactZeros(h.arch)))) {
      throw new ArgumentError('gate sparsity needs a gated (SwiGLU) model with gate thresholds: run `flashlm calibrate` on it first');
    }
    this.act = gatedActArgs(h.arch);
    if (cfg.selection === 'predictor' && !h.predictors) {
      throw new ArgumentError('this .flm has no predictors: run `flashlm calibrate` first, or use --sparsity oracle|off');
    }
    if (cfg.selection === 'oracle' && !cfg.oracle) throw new Error('internal: oracle selection without an oracle');
    const prefetchBytes = cfg.selection === 'gate' ? 0 : (cfg.prefetchBytes ?? 0);
    const L = layoutStreaming(arena, file, k, cfg.window, cfg.selection, cfg.capacity, cfg.stagingBytes, cfg.alignment, prefetchBytes);
    const buf = arena.memory.buffer;
    this.newList = L.newList;
    this.newView = new Int32Array(buf, this.newList, n);
    this.ptrs = L.ptrs;
    this.ptrView = new Uint32Array(buf, this.ptrs, n * nParts);
    this.newPtrs = L.newPtrs;
    this.newPtrView = L.newPtrs ? new Uint32Array(buf, L.newPtrs, n * nParts) : new Uint32Array(0);
    this.isNew = new Uint8Array(cfg.window === null ? 0 : n);
    this.h = L.h;
    this.hView = cfg.selection === 'off' && cfg.stats && !cfg.oracle && exactZeros(h.arch) ? arena.f32(L.h, n) : undefined;
    this.tmpOut = L.tmpOut;
    this.actList = L.actList;
    this.actList2 = L.actList2;
    this.actList2View = this.gated ? arena.f32(this.actList2, n) : new Float32Array(0);
    this.selector = new NeuronSelector(file, k, arena, L, cfg.selection, cfg.oracle, cfg.stats);
    this.blockMask = new Uint32Array(n);
    this.blockSrc = L.src;
    this.blockPartial = L.blockPartial;
    this.runParts = new Array<number>(this.cacheParts).fill(0);
    this.restIds = new Int32Array(n);
    this.restIdx = new Int32Array(n);
    this.leftIds = new Int32Array(n);
    this.leftIdx = new Int32Array(n);
    this.installIdx = this.restIdx;
    this.laList = new Int32Array(n);
    this.laStamp = new Uint32Array(n);
    this.pfMargin = new Float64Array(h.arch.nLayers);
    const ahead = new Map((h.lookahead ?? []).map((e) => [e.layer, e]));

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
      if (this.gated) layer.gate = { ptr: at.gateRows, loaded: false, threshold: h.gate?.thresholds[f.layer] ?? 0 };
      const p = h.predictors?.[f.layer];
      if (p) layer.pred = { a: place(p.a), b: place(p.b), bias: place(p.bias), threshold: p.threshold, rank: p.rank };
      const la = ahead.get(f.layer);
      if (la) layer.ahead = { a: place(la.a), b: place(la.b), bias: place(la.bias), threshold: la.threshold, rank: la.rank };
      if (at.cache) {
        const c = at.cache;
        layer.state = c.state;
        layer.neuronSlot = new Int32Array(buf, c.neuronSlot, n);
        k.cache_init(c.state, cfg.capacity, n, cfg.window!, this.cacheParts, f.partBytes, c.slots, c.slotNeuron, c.neuronSlot, c.mask);
      }
      return layer;
    });
    const maxRegions = Math.max(1, ...this.layers.map((l) => l.regions.length));
    this.fetcher = new RecordFetcher<Use>(file, arena, L.staging, cfg.stagingBytes, L.src, this.cacheParts, cfg.hints, cfg.alignment, maxRegions, cfg.stats);
    // Prefetch needs something that names the next layer's neurons early: all of them (no sparsity), or a predictor.
    const canPredict = cfg.selection === 'off' || this.layers.some((l) => l.pred || l.ahead);
    const recordBytes = this.cacheParts * h.ffn[0]!.partBytes;
    this.pf = prefetchBytes && canPredict
      ? new Prefetcher(file, arena, { staging: L.pfStaging, bytes: prefetchBytes, src: L.pfSrc }, this.cacheParts, recordBytes, cfg.hints, cfg.alignment, maxRegions, cfg.stats, this.fetcher, cfg.selection === 'off')
      : undefined;
  }

  /** A fetched batch (fetch.ts): compute it from staging, or install it into the cache. */
  onBatch(use: Use, layer: StreamLayer, at: number, len: number, src: number): void {
    if (use === Use.Compute) this.compute(layer, src, len, this.h + at * 4, this.actList + at * 4);
    else if (use === Use.ComputeRest) this.compute(layer, src, len, 0, this.actList2 + at * 4);
    else if (use === Use.InstallAt) {
      const t = performance.now();
      const idx = this.installIdx;
      const bytes = this.cacheParts * 4;
      for (let i = 0; i < len; i++) this.k.cache_install(layer.state, this.firstNew + idx[at + i]!, 1, src + i * bytes);
      this.cfg.stats?.unpack(performance.now() - t);
    }
    else if (use === Use.Block) {
      if (this.cfg.selection === 'off') this.computeBlockDense(layer, len);
      else this.computeBlock(layer, this.blockIds, this.blockFrom + at, len, this.fetcher.srcView, this.ptrView, this.ptrs);
    }
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
      const gatedFfn = f.dtype === 'f32' ? this.k.ffn_gated_f32_ptrs : f.dtype === 'f16' ? this.k.ffn_gated_f16_ptrs : f.dtype === 'q8' ? this.k.ffn_gated_q8_ptrs : f.dtype === 'q4' ? this.k.ffn_gated_q4_ptrs : this.k.ffn_gated_i8_ptrs;
      gatedFfn(dst, this.curX, this.d, ptrs, n, acts, hOut, this.act.afn, this.act.athr);
    } else runFfnPtrs(this.k, f, dst, this.curX, ptrs, n, hOut, this.act);
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
    // A paged oracle (no copy of the FFN) reads the layer from the source first.
    const oracle = this.cfg.oracle;
    if (oracle && !oracle.ready(layerIndex, this.arena.memory, x)) return oracle.prepare(layerIndex, this.arena.memory, x).then(() => this.run(layerIndex, x, out));
    const count = this.selector.select(layer, x);
    this.curX = x;
    this.curOut = out;
    this.wrote = false;
    if (this.laTarget === layerIndex) this.lookaheadHits(layerIndex, count);
    const pf = this.pf;

    if (this.cfg.window === null) {
      // No reuse: every selected neuron is read this token, computed from staging (count > 0 writes `out`).
      if (pf && pf.countRequested(layerIndex, this.selector.activeView, 0, count)) return this.runPrefetched(layer, layerIndex, x, count);
      this.dropPrefetch(layerIndex);
      this.startPrefetch(layerIndex, x);
      if (count) {
        const read = this.fetcher.fetch(layer, this.selector.activeView, 0, count, this, Use.Compute);
        return this.hView ? read.then(() => this.countActive(count)) : read.then(noop);
      }
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
    if (placed || overflow) return this.runWindowReads(layer, layerIndex, x);
    this.dropPrefetch(layerIndex);
    this.startPrefetch(layerIndex, x);
    this.compute(layer, this.ptrs, count, this.h, this.actList);
    this.finish();
  }

  /**
   * No cache, some selected neurons prefetched: those are computed from the
   * prefetch's staging (once landed), the rest read as usual; activations
   * stay in list order for countActive (the rest first, then the prefetched).
   */
  private async runPrefetched(layer: StreamLayer, layerIndex: number, x: number, count: number): Promise<void> {
    const pf = this.pf!;
    const ok = await pf.take(layerIndex);
    const av = this.selector.activeView;
    const pv = this.ptrView;
    const rest = this.restIds;
    let m = 0;
    let r = 0;
    for (let i = 0; i < count; i++) {
      const j = av[i]!;
      if (ok && pf.copyPtrs(j, pv, m)) m++;
      else rest[r++] = j;
    }
    this.compute(layer, this.ptrs, m, this.h + r * 4, this.actList);
    this.steer(layerIndex, pf.release(m), m);
    this.startPrefetch(layerIndex, x);
    if (r) await this.fetcher.fetch(layer, rest, 0, r, this, Use.Compute);
    if (this.hView) this.countActive(count);
    this.finish();
  }

  /**
   * Starts reading layer l+1's likely neurons (prefetch.ts) from layer l's
   * FFN input x: all of them without sparsity (in order, as many as the
   * prefetch staging holds), else the lookahead set less what l+1's cache holds.
   */
  private startPrefetch(l: number, x: number): void {
    const pf = this.pf;
    if (!pf || pf.busy || l + 1 >= this.layers.length) return;
    const next = this.layers[l + 1]!;
    const ids = pf.ids;
    let c = 0;
    if (this.cfg.selection === 'off') {
      c = Math.min(ids.length, pf.maxRecords);
      for (let i = 0; i < c; i++) ids[i] = i;
    } else {
      const la = this.laList;
      const p = this.selector.lookahead(next, x, la);
      if (p < 0) return;
      const gen = ++this.laGen;
      const stamp = this.laStamp;
      for (let i = 0; i < p; i++) stamp[la[i]!] = gen;
      this.laTarget = l + 1;
      this.laCount = p;
      const slot = next.neuronSlot;
      for (let i = 0; i < p; i++) {
        const j = la[i]!;
        if (!slot || slot[j]! < 0) ids[c++] = j;
      }
      // Only the confident ones: what the cache lacks is where the lookahead's false positives gather.
      c = Math.min(pf.maxRecords, this.selector.confident(next, ids, c, this.pfMargin[l + 1]!));
    }
    if (c) pf.start(l + 1, next, c);
  }

  /** The layer needs none of what was prefetched for it (a miss for its margin), or it was for another layer: dropped. */
  private dropPrefetch(layerIndex: number): void {
    const pf = this.pf;
    if (!pf) return;
    if (pf.heldFor(layerIndex)) this.steer(layerIndex, 1, 0);
    pf.drop();
  }

  /** After a layer took its prefetch: `used` of `read` records; moves the layer's margin towards PREFETCH_USE. */
  private steer(layerIndex: number, read: number, used: number): void {
    if (!read || this.cfg.selection === 'off') return;
    const m = this.pfMargin;
    const rate = used / read;
    // Up faster the further below the target (weak predictors waste disk time), down by a step.
    m[layerIndex] = rate < PREFETCH_USE ? m[layerIndex]! + MARGIN_STEP * (1 + 8 * (PREFETCH_USE - rate)) : Math.max(0, m[layerIndex]! - MARGIN_STEP);
  }

  /** Recall and precision of the lookahead made for this layer, against the neurons it selected (the active list). */
  private lookaheadHits(layerIndex: number, count: number): void {
    const av = this.selector.activeView;
    const stamp = this.laStamp;
    const gen = this.laGen;
    let hits = 0;
    for (let i = 0; i < count; i++) if (stamp[av[i]!] === gen) hits++;
    this.cfg.stats?.lookahead(layerIndex, hits, this.laCount, count);
    this.laTarget = -1;
  }

  /**
   * Window mode, the rest of run() when neurons must be read (PAPER.md:
   * reads hidden behind compute): the new neurons' reads go out first, the
   * cached ones are computed while they are in flight, then the new ones
   * once installed; what the cache cannot hold streams from staging last.
   */
  private async runWindowReads(layer: StreamLayer, layerIndex: number, x: number): Promise<void> {
    const { count, placed, overflow } = this;
    const pf = this.pf;
    const fresh = this.newView;
    // Placed neurons the prefetch asked for come from it (below); the others are read now.
    const want = pf && placed + overflow ? pf.countRequested(layerIndex, fresh, 0, placed + overflow) : 0;
    let installing: Promise<number> | undefined;
    if (want) {
      let r = 0;
      for (let i = 0; i < placed; i++) {
        const j = fresh[i]!;
        if (pf!.requestedFor(layerIndex, j)) continue;
        this.restIds[r] = j;
        this.restIdx[r++] = i;
      }
      this.installIdx = this.restIdx;
      if (r) installing = this.fetcher.fetch(layer, this.restIds, 0, r, this, Use.InstallAt, false);
    } else {
      this.dropPrefetch(layerIndex);
      this.startPrefetch(layerIndex, x);
      if (placed) installing = this.fetcher.fetch(layer, fresh, 0, placed, this, Use.Install, false);
    }
    // Split the active list: hits compacted in place, placed new neurons to newPtrs (ptr 0: overflow, not cached).
    const pv = this.ptrView;
    const nv = this.newPtrView;
    const parts = this.cacheParts;
    const acts = this.gated ? this.selector.actListView : undefined;
    const acts2 = this.actList2View;
    const isNew = this.isNew;
    for (let i = 0; i < placed; i++) isNew[fresh[i]!] = 1;
    const av = this.selector.activeView;
    let hits = 0;
    let news = 0;
    for (let i = 0; i < count; i++) {
      if (pv[i * parts] === 0) continue;
      if (isNew[av[i]!]) {
        for (let p = 0; p < parts; p++) nv[news * parts + p] = pv[i * parts + p]!;
        if (acts) acts2[news] = acts[i]!;
        news++;
      } else {
        for (let p = 0; p < parts; p++) pv[hits * parts + p] = pv[i * parts + p]!;
        if (acts) acts[hits] = acts[i]!;
        hits++;
      }
    }
    for (let i = 0; i < placed; i++) isNew[fresh[i]!] = 0;
    const stats = this.cfg.stats;
    const t0 = performance.now();
    this.compute(layer, this.ptrs, hits, this.h, this.actList);
    if (installing) stats?.hidden(performance.now() - t0);
    let left = 0;
    let overflowLeft = overflow;
    if (want) {
      // The prefetched records go into their slots (those it failed to bring are read after the rest).
      const ok = await pf!.take(layerIndex);
      const t1 = performance.now();
      let used = 0;
      for (let i = 0; i < placed; i++) {
        const j = fresh[i]!;
        if (!pf!.requestedFor(layerIndex, j)) continue;
        const p = ok ? pf!.ptrOf(j) : 0;
        if (p) {
          this.k.cache_install(layer.state, this.firstNew + i, 1, p);
          used++;
        } else {
          this.leftIds[left] = j;
          this.leftIdx[left++] = i;
        }
      }
      stats?.unpack(performance.now() - t1);
      // Neurons the cache could not hold (overflow) that the prefetch brought: computed from its staging now
      // (the hits are done with the pointer list); the rest of the overflow stays in fresh for the reads below.
      if (overflow && ok) {
        let m = 0;
        let r = 0;
        for (let i = placed; i < placed + overflow; i++) {
          const j = fresh[i]!;
          if (pf!.copyPtrs(j, pv, m)) m++;
          else fresh[placed + r++] = j;
        }
        this.compute(layer, this.ptrs, m, 0, this.actList2);
        used += m;
        overflowLeft = r;
      }
      this.steer(layerIndex, pf!.release(used), used);
      this.startPrefetch(layerIndex, x);
    }
    if (installing) {
      stats?.blockStart();
      try {
        await installing;
      } finally {
        stats?.blockEnd();
      }
    }
    if (left) {
      this.installIdx = this.leftIdx;
      await this.fetcher.fetch(layer, this.leftIds, 0, left, this, Use.InstallAt);
    }
    this.compute(layer, this.newPtrs, news, 0, this.actList2);
    if (overflowLeft) {
      // Degraded token: the active set outgrew the cache; stream the rest (fresh[placed, placed + overflowLeft)).
      if (this.gated) {
        const all = this.selector.logitsView;
        for (let i = 0; i < overflowLeft; i++) acts2[i] = all[fresh[placed + i]!]!;
      }
      await this.fetcher.fetch(layer, fresh, placed, placed + overflowLeft, this, Use.ComputeRest);
    }
    this.finish();
  }

  /**
   * A prompt block (PAPER.md's reads, batched over tokens): every token of
   * the block selects its neurons as it would alone; the union of their
   * records is read once, and each token's FFN runs over its own neurons
   * among them. Prompt tokens share most neurons, so a block of 32 reads far
   * less than 32 tokens one by one; without sparsity (hybrid) it reads each
   * layer once per block instead of once per token. In window mode the block
   * is one step of the window: the union goes through the cache like one
   * token's active set (hits cost nothing, misses are installed, what does
   * not fit is computed from staging), so decoding starts with it cached.
   */
  async runBlock(layerIndex: number, x: number, ldx: number, T: number, out: number, ldo: number, h: number, scratch: number): Promise<void> {
    // Prompt blocks do not prefetch; a prefetch left over from an interrupted token is dropped.
    this.pf?.drop();
    this.laTarget = -1;
    this.blockH = h;
    this.blockScratch = scratch;
    for (let t0 = 0; t0 < T; t0 += BLOCK_TOKENS) {
      await this.runBlockPass(layerIndex, x + t0 * ldx, ldx, Math.min(BLOCK_TOKENS, T - t0), out + t0 * ldo, ldo, h);
    }
  }

  /** runBlock for at most BLOCK_TOKENS tokens. */
  private async runBlockPass(layerIndex: number, x: number, ldx: number, T: number, out: number, ldo: number, h: number): Promise<void> {
    const layer = this.layers[layerIndex]!;
    if (layer.gate && !layer.gate.loaded) await this.fetcher.loadGate(layer);
    const n = this.blockMask.length;
    const mask = this.blockMask;
    mask.fill(0);
    if (this.gated && (this.blockActs.byteOffset !== h || this.blockActs.length < T * n || this.blockActs.buffer !== this.arena.memory.buffer)) this.blockActs = this.arena.f32(h, T * n);
    const oracle = this.cfg.oracle;
    const av = this.selector.activeView;
    for (let t = 0; t < T; t++) {
      const xt = x + t * ldx;
      if (oracle && !oracle.ready(layerIndex, this.arena.memory, xt)) await oracle.prepare(layerIndex, this.arena.memory, xt);
      const count = this.selector.select(layer, xt);
      const bit = 1 << t;
      for (let i = 0; i < count; i++) mask[av[i]!]! |= bit;
      if (this.gated) {
        const list = this.selector.actListView;
        const acts = this.blockActs;
        for (let i = 0; i < count; i++) acts[t * n + av[i]!] = list[i]!;
      }
    }
    this.blockT = T;
    this.blockX = x;
    this.blockLdx = ldx;
    this.blockOut = out;
    this.blockLdo = ldo;
    this.blockWrote = 0;
    // The union, ascending, in the active list (the selections are done with it).
    let u = 0;
    for (let j = 0; j < n; j++) if (mask[j] !== 0) av[u++] = j;
    if (this.cfg.window === null) {
      this.blockIds = av;
      this.blockFrom = 0;
      if (u) await this.fetcher.fetch(layer, av, 0, u, this, Use.Block);
    } else if (u) {
      const k = this.k;
      const stats = this.cfg.stats;
      const t0 = performance.now();
      const lruBefore = k.cache_lru_evictions(layer.state);
      const placed = k.cache_step(layer.state, av.byteOffset, u, this.newList, this.ptrs);
      const overflow = k.cache_overflow(layer.state);
      this.firstNew = k.cache_first_new(layer.state);
      stats?.unpack(performance.now() - t0);
      stats?.cache(u - placed - overflow, u, k.cache_lru_evictions(layer.state) - lruBefore, overflow);
      if (placed) await this.fetcher.fetch(layer, this.newView, 0, placed, this, Use.Install);
      // Every cached neuron of the union now has its slot's part pointers (0: overflow, not cached).
      this.computeBlock(layer, av, 0, u, this.ptrView, this.fetcher.srcView, this.blockSrc);
      if (overflow) {
        this.blockIds = this.newView;
        this.blockFrom = placed;
        await this.fetcher.fetch(layer, this.newView, placed, placed + overflow, this, Use.Block);
      }
    }
    // Tokens that selected no neuron output zeros.
    for (let t = 0; t < T; t++) if ((this.blockWrote & (1 << t)) === 0) this.fetcher.arenaBytes().fill(0, out + t * ldo, out + t * ldo + this.d * 4);
  }

  /**
   * Use.Block without sparsity: every token of the block needs every record,
   * so each run of records lying at a fixed stride in staging goes through
   * the batched FFN kernels (each weight read once for the whole block) and
   * is added to the block's outputs.
   */
  private computeBlockDense(layer: StreamLayer, len: number): void {
    const f = layer.f;
    const src = this.fetcher.srcView;
    const parts = this.cacheParts;
    const stride = f.layout === 'bundled' ? f.stride : f.partBytes;
    const T = this.blockT;
    const d4 = this.d * 4;
    const rp = this.runParts;
    for (let i0 = 0; i0 < len; ) {
      let i1 = i0 + 1;
      for (; i1 < len; i1++) {
        let next = true;
        for (let p = 0; p < parts; p++) if (src[i1 * parts + p] !== src[i0 * parts + p]! + (i1 - i0) * stride) next = false;
        if (!next) break;
      }
      for (let p = 0; p < parts; p++) rp[p] = src[i0 * parts + p]!;
      // Every token got every earlier run: the first run writes the outputs, later ones add to them.
      const first = this.blockWrote === 0;
      const dst = first ? this.blockOut : this.blockPartial;
      const ldo = first ? this.blockLdo : d4;
      runFfnBatch(this.k, f, dst, ldo, this.blockX, this.blockLdx, T, i1 - i0, rp, stride, this.blockH, this.blockScratch, this.act);
      if (!first) for (let t = 0; t < T; t++) this.k.add(this.blockOut + t * this.blockLdo, this.blockOut + t * this.blockLdo, this.blockPartial + t * d4, this.d);
      this.blockWrote = -1; // every token's bit
      i0 = i1;
    }
  }

  /**
   * Runs each block token's FFN over its own neurons among ids[from, from +
   * len), whose part pointers are `src` (u32 [len][parts]; a 0 pointer: not
   * here), compacting them per token into `dst` at arena address `dstAt`.
   */
  private computeBlock(layer: StreamLayer, ids: Int32Array, from: number, len: number, src: Uint32Array, dst: Uint32Array, dstAt: number): void {
    const parts = this.cacheParts;
    const mask = this.blockMask;
    const n = mask.length;
    const acts = this.gated ? this.selector.actListView : undefined;
    for (let t = 0; t < this.blockT; t++) {
      const bit = 1 << t;
      let m = 0;
      for (let i = 0; i < len; i++) {
        const j = ids[from + i]!;
        if ((mask[j]! & bit) === 0 || src[i * parts] === 0) continue;
        for (let p = 0; p < parts; p++) dst[m * parts + p] = src[i * parts + p]!;
        if (acts) acts[m] = this.blockActs[t * n + j]!;
        m++;
      }
      if (!m) continue;
      this.curX = this.blockX + t * this.blockLdx;
      this.curOut = this.blockOut + t * this.blockLdo;
      this.wrote = (this.blockWrote & bit) !== 0;
      this.compute(layer, dstAt, m, 0, this.actList);
      this.blockWrote |= bit;
    }
  }

  /** Every neuron was computed (no sparsity): the nonzero activations are the true active set. */
  private countActive(count: number): void {
    const v = this.hView!;
    let active = 0;
    for (let i = 0; i < count; i++) if (v[i] !== 0) active++;
    this.cfg.stats!.trueActive(active);
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
