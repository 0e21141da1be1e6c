/**
 * The streaming FFN (PAPER.md): per layer and token, choose the neurons
 * (predictor, oracle or all), keep the recently used ones in a sliding-window
 * cache in the arena, read only the missing bundles from the source in large
 * coalesced reads, verify them, and run the FFN kernel over the neurons' records.
 */
import xxhash from 'xxhash-wasm';
import { ArgumentError, IntegrityError } from '../errors.js';
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { Kernels } from '../kernels/types.js';
import type { ReadHints } from '../source/types.js';
import { CountingAllocator, type Allocator, type Arena } from '../engine/arena.js';
import { runFfnPtrs, type FfnProvider } from '../engine/ffn.js';
import { matvec, placeTensor, type Tensor } from '../engine/tensor.js';
import { ReadPlanner, type RecordRegion } from './planner.js';
import type { Oracle } from './oracle.js';
import type { RunStats } from './stats.js';

/**
 * Which neurons a token needs: the trained predictor, the true set (oracle),
 * all of them, or (gated FFNs) those whose |silu(gate·x)| passes the file's
 * per-layer gate threshold, with the gate rows resident. On a gated FFN the
 * predictor predicts that set instead ("predicted gates"): whole records
 * (gate, up, down) are read for the predicted neurons only, the others'
 * contributions are dropped.
 */
export type Sparsity = 'predictor' | 'oracle' | 'off' | 'gate';

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
  /** gate mode: the layer's gate parts, resident (loaded on first use), and its threshold */
  gate?: { ptr: number; loaded: boolean; threshold: number };
}

const CACHE_MAP_BYTES_PER_SLOT = 8; // slotNeuron i32 + mask u32

/** What stream() does with each batch of records it read (a constant instead of a callback: no closure per call). */
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
  /** Parts per streamed/cached record (gate mode: up and down only). */
  private readonly cacheParts: number;
  private readonly gated: boolean;
  /** gate mode: the gate activations of the selected neurons, in list order (two lists for the degraded path). */
  private readonly actList: number;
  private readonly actList2: number;
  private hash64?: Awaited<ReturnType<typeof xxhash>>['create64'];
  /** Views and planner made once (the hot path allocates none). */
  private readonly actListView: Float32Array;
  private readonly actList2View: Float32Array;
  /** The whole arena as bytes: reads land in it at staging offsets, without a view per read. */
  private mem: Uint8Array;
  private readonly planner: ReadPlanner;
  /** The FFN input of the current layer as a view, made once per input slot. */
  private xPtr = -1;
  private xView: Float32Array;
  // State of the layer being run (one run at a time: the model runs one token, one layer at a time).
  private curLayer!: Layer;
  private curX = 0;
  private curOut = 0;
  private wrote = false;
  private firstNew = 0;
  // Reads of the current plan (readPlanned), at most `parallel` in flight.
  private readonly parallel: number;
  private nextRead = 0;
  private inFlight = 0;
  private readFailed = false;
  private readError: unknown;
  private resolveBatch?: () => void;
  private rejectBatch?: (e: unknown) => void;
  private readonly batchExecutor = (resolve: () => void, reject: (e: unknown) => void): void => {
    this.resolveBatch = resolve;
    this.rejectBatch = reject;
  };
  private readonly readDone = (): void => {
    this.inFlight--;
    this.pump();
  };
  private readonly readFail = (e: unknown): void => {
    this.inFlight--;
    this.fail(e);
    this.pump();
  };
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
    this.n = n;
    this.d = d;
    this.nParts = h.ffn[0]!.parts.length;
    this.gated = cfg.selection === 'gate';
    this.cacheParts = this.gated ? 2 : this.nParts;
    if (this.gated && (h.arch.activation !== 'swiglu' || !h.gate)) {
      throw new ArgumentError('gate sparsity needs a gated (SwiGLU) model with gate thresholds: run `flashlm calibrate` on it first');
    }
    if (cfg.selection === 'predictor' && !h.predictors) {
      throw new ArgumentError('this .flm has no predictors: run `flashlm calibrate` first, or use --sparsity oracle|off');
    }
    if (cfg.selection === 'oracle' && !cfg.oracle) throw new Error('internal: oracle selection without an oracle');
    const L = layoutStreaming(arena, file, k, cfg.window, cfg.selection, cfg.capacity, cfg.stagingBytes, cfg.alignment);
    const buf = arena.memory.buffer;
    this.active = L.active;
    this.activeView = new Int32Array(buf, this.active, n);
    this.newList = L.newList;
    this.newView = new Int32Array(buf, this.newList, n);
    this.ptrs = L.ptrs;
    this.ptrView = new Uint32Array(buf, this.ptrs, n * this.nParts);
    this.src = L.src;
    this.srcView = new Uint32Array(buf, this.src, n * this.nParts);
    this.h = L.h;
    this.tmpOut = L.tmpOut;
    this.rankBuf = L.rankBuf;
    this.logits = L.logits;
    this.logitsView = arena.f32(this.logits, n);
    this.i8scratch = L.i8scratch;
    this.actList = L.actList;
    this.actList2 = L.actList2;
    this.actListView = this.gated ? arena.f32(this.actList, n) : new Float32Array(0);
    this.actList2View = this.gated ? arena.f32(this.actList2, n) : new Float32Array(0);
    this.mem = new Uint8Array(buf);
    this.xView = new Float32Array(0);
    this.parallel = Math.max(1, cfg.hints.parallel);
    this.stagingBytes = cfg.stagingBytes;
    this.staging = L.staging;

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
      const layer: Layer = { f, section, regions, state: 0 };
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
    this.planner = new ReadPlanner(cfg.hints, cfg.alignment, cfg.stagingBytes, n, Math.max(1, ...this.layers.map((l) => l.regions.length)));
  }

  /** The `d` floats at arena offset `x` (a view made once per input slot; the transformer uses one or two). */
  private xFloats(x: number): Float32Array {
    if (x !== this.xPtr || this.xView.buffer !== this.arena.memory.buffer) {
      this.xView = this.arena.f32(x, this.d);
      this.xPtr = x;
    }
    return this.xView;
  }

  /** Fills the active list for a layer; returns its length. */
  private select(layer: Layer, x: number): number {
    const av = this.activeView;
    let count = 0;
    if (this.cfg.selection === 'off') {
      for (let j = 0; j < this.n; j++) av[j] = j;
      count = this.n;
    } else if (this.gated) {
      // Gate activations of every neuron from the resident gate rows; keep those over the threshold.
      const f = layer.f;
      const g = layer.gate!;
      const act = f.dtype === 'f32' ? this.k.gate_act_f32 : f.dtype === 'f16' ? this.k.gate_act_f16 : f.dtype === 'q8' ? this.k.gate_act_q8 : this.k.gate_act_i8;
      act(this.logits, x, this.d, this.n, g.ptr, f.partBytes);
      const lv = this.logitsView;
      const list = this.actListView;
      for (let j = 0; j < this.n; j++) {
        const v = lv[j]!;
        if (Math.abs(v) > g.threshold) {
          list[count] = v;
          av[count++] = j;
        }
      }
    } else if (this.cfg.selection === 'oracle') {
      const h = this.cfg.oracle!.activations(layer.f.layer, this.xFloats(x));
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

  /**
   * Predictor confusion counts against the oracle's true active set (gated
   * FFNs: the neurons whose |silu(gate·x)| passes the file's gate threshold,
   * what a predicted-gate predictor was trained on; not measured without one).
   */
  private measurePredictor(layer: Layer, x: number, count: number): void {
    const oracle = this.cfg.oracle!;
    const xs = this.xFloats(x);
    const av = this.activeView;
    let tp = 0;
    let truth = 0;
    if (this.file.header.arch.activation === 'swiglu') {
      // active: |silu(gate·x)| over the layer's gate threshold
      const gate = this.file.header.gate;
      if (!gate) return;
      const t = gate.thresholds[layer.f.layer]!;
      const h = oracle.gateActivations(layer.f.layer, xs);
      for (let j = 0; j < this.n; j++) if (Math.abs(h[j]!) > t) truth++;
      for (let i = 0; i < count; i++) if (Math.abs(h[av[i]!]!) > t) tp++;
    } else {
      // active: a nonzero ReLU output
      const h = oracle.activations(layer.f.layer, xs);
      for (let j = 0; j < this.n; j++) if (h[j] !== 0) truth++;
      for (let i = 0; i < count; i++) if (h[av[i]!] !== 0) tp++;
    }
    this.cfg.stats!.predictor(tp, count - tp, truth - tp);
  }

  /**
   * Reads the records of `ids[start..end)` into staging, batch by batch (as
   * many as the staging area holds), verifies them and hands each batch to
   * `use` (the batch's first index relative to `start`, its length, and the
   * part pointers of its records in `this.src`).
   */
  private async stream(layer: Layer, ids: Int32Array, start: number, end: number, use: Use): Promise<void> {
    const { f, section, regions } = layer;
    const stats = this.cfg.stats;
    const bundled = f.layout === 'bundled';
    const parts = this.cacheParts;
    const first = this.nParts - parts; // 1 in gate mode: part 0 (gate) is resident
    const memory = this.arena.memory;
    const plan = this.planner;
    for (let done = start; done < end; ) {
      plan.plan(ids, done, end, regions);
      const t0 = performance.now();
      await this.readPlanned();
      const t1 = performance.now();
      stats?.io(plan.readBytes, plan.readCount, t1 - t0, true);
      const ptrs = this.srcView;
      const recordAt = plan.recordAt;
      for (let j = 0; j < plan.count; j++) {
        const neuron = ids[done + j]!;
        if (bundled) {
          const rec = this.staging + recordAt[j]!;
          if (first) this.verifyWithGate(layer, neuron, rec);
          else this.file.verifyArena(memory, section, neuron, rec, f.stride);
          for (let p = 0; p < parts; p++) ptrs[j * parts + p] = rec + p * f.partBytes;
        } else {
          for (let p = 0; p < parts; p++) {
            const at = this.staging + recordAt[j * parts + p]!;
            this.file.verifyArena(memory, section, (p + first) * f.neurons + neuron, at, f.partBytes);
            ptrs[j * parts + p] = at;
          }
        }
      }
      stats?.unpack(performance.now() - t1);
      const at = done - start;
      const len = plan.count;
      if (use === Use.Compute) this.compute(this.src, len, this.h + at * 4, this.actList + at * 4);
      else if (use === Use.ComputeRest) this.compute(this.src, len, 0, this.actList2 + at * 4);
      else {
        const t = performance.now();
        this.k.cache_install(layer.state, this.firstNew + at, len, this.src);
        stats?.unpack(performance.now() - t);
      }
      done += len;
    }
  }

  /**
   * Issues the planner's reads into staging, at most `parallel` in flight,
   * driven by two callbacks made once (no closure or async frame per read:
   * a read costs the source's promise and its `then`). Rejects with the first
   * failure once the reads in flight have settled, so none lands in staging
   * after the caller moved on.
   */
  private readPlanned(): Promise<void> | undefined {
    if (this.planner.readCount === 0) return undefined;
    this.arenaBytes();
    this.nextRead = 0;
    this.inFlight = 0;
    this.readFailed = false;
    this.readError = undefined;
    const batch = new Promise<void>(this.batchExecutor);
    this.pump();
    return batch;
  }

  /** Starts reads up to the parallel limit; settles the batch when all are done. */
  private pump(): void {
    const plan = this.planner;
    const src = this.file.source;
    while (!this.readFailed && this.inFlight < this.parallel && this.nextRead < plan.readCount) {
      const i = this.nextRead++;
      const at = this.staging + plan.readStaging[i]!;
      const len = plan.readLength[i]!;
      this.inFlight++;
      try {
        const read = src.readInto ? src.readInto(plan.readOffset[i]!, this.mem, at, len) : src.read(plan.readOffset[i]!, this.arena.u8(at, len));
        read.then(this.readDone, this.readFail);
      } catch (e) {
        // a source that throws instead of rejecting
        this.inFlight--;
        this.fail(e);
      }
    }
    if (this.inFlight === 0 && (this.readFailed || this.nextRead >= plan.readCount)) {
      const resolve = this.resolveBatch;
      const reject = this.rejectBatch;
      this.resolveBatch = this.rejectBatch = undefined;
      if (this.readFailed) {
        const e = this.readError;
        this.readError = undefined;
        reject?.(e);
      } else resolve?.();
    }
  }

  private fail(e: unknown): void {
    if (this.readFailed) return;
    this.readFailed = true;
    this.readError = e;
  }

  /** Runs the FFN over `n` records listed at `ptrs` into the current layer's output (adding to what is there). `acts`: gate mode, their gate activations. */
  private compute(ptrs: number, n: number, hOut: number, acts: number): void {
    if (!n) return;
    const f = this.curLayer.f;
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
    if (layer.gate && !layer.gate.loaded) return this.loadGate(layer).then(() => this.run(layerIndex, x, out));
    const count = this.select(layer, x);
    this.curLayer = layer;
    this.curX = x;
    this.curOut = out;
    this.wrote = false;

    if (this.cfg.window === null) {
      // No reuse: every selected neuron is read this token, computed from staging (count > 0 writes `out`).
      if (count) return this.stream(layer, this.activeView, 0, count, Use.Compute);
      this.finish();
      return;
    }
    const k = this.k;
    const stats = this.cfg.stats;
    const t0 = performance.now();
    const lruBefore = k.cache_lru_evictions(layer.state);
    const placed = k.cache_step(layer.state, this.active, count, this.newList, this.ptrs);
    const overflow = k.cache_overflow(layer.state);
    this.firstNew = k.cache_first_new(layer.state);
    stats?.unpack(performance.now() - t0);
    stats?.cache(count - placed - overflow, count, k.cache_lru_evictions(layer.state) - lruBefore, overflow);
    this.count = count;
    this.placed = placed;
    this.overflow = overflow;
    if (placed || overflow) return this.runWindowReads(layer);
    this.compute(this.ptrs, count, this.h, this.actList);
    this.finish();
  }

  /** Window mode, the rest of run() when neurons must be read: install the new ones, compute, and stream what the cache cannot hold. */
  private async runWindowReads(layer: Layer): Promise<void> {
    const { count, placed, overflow } = this;
    if (placed) await this.stream(layer, this.newView, 0, placed, Use.Install);
    if (!overflow) this.compute(this.ptrs, count, this.h, this.actList);
    else {
      // Degraded token: the active set outgrew the cache. Compute the cached ones, then stream the rest.
      const pv = this.ptrView;
      const parts = this.cacheParts;
      const acts = this.gated ? this.actListView : undefined;
      let m = 0;
      for (let i = 0; i < count; i++) {
        if (pv[i * parts] === 0) continue;
        for (let p = 0; p < parts; p++) pv[m * parts + p] = pv[i * parts + p]!;
        if (acts) acts[m] = acts[i]!;
        m++;
      }
      this.compute(this.ptrs, m, this.h, this.actList);
      const rest = this.newView; // the uncached neurons: rest[placed, placed + overflow)
      if (this.gated) {
        const all = this.logitsView;
        const acts2 = this.actList2View;
        for (let i = 0; i < overflow; i++) acts2[i] = all[rest[placed + i]!]!;
      }
      await this.stream(layer, rest, placed, placed + overflow, Use.ComputeRest);
    }
    this.finish();
  }

  /** A layer that computed nothing (no neuron selected) outputs zeros. */
  private finish(): void {
    if (!this.wrote) this.arenaBytes().fill(0, this.curOut, this.curOut + this.d * 4);
  }

  /** `mem`, made again if the memory grew since (its old buffer is then detached; fixed arenas never grow). */
  private arenaBytes(): Uint8Array {
    if (this.mem.byteLength === 0) this.mem = new Uint8Array(this.arena.memory.buffer);
    return this.mem;
  }

  /**
   * Gate mode, first use of a layer: reads its gate parts into the arena
   * (bundled files: whole records through staging, as the block hashes cover
   * records; split files: the gate region only), verified.
   */
  private async loadGate(layer: Layer): Promise<void> {
    const { f, section } = layer;
    const g = layer.gate!;
    const t0 = performance.now();
    this.hash64 ??= (await xxhash()).create64;
    const block = section.blockBytes;
    const bundled = f.layout === 'bundled';
    const blocks = f.neurons; // bundled: one block per record; split: the gate region's blocks come first
    const perRead = Math.max(1, Math.floor(this.stagingBytes / block));
    let bytes = 0;
    let requests = 0;
    for (let b = 0; b < blocks; b += perRead) {
      const count = Math.min(perRead, blocks - b);
      const buf = this.arena.u8(this.staging, count * block);
      await this.file.readSection(section, buf, b);
      bytes += buf.byteLength;
      requests++;
      for (let i = 0; i < count; i++) {
        const src = this.staging + i * block + (bundled ? f.partOffsets[0]! : 0);
        this.arena.u8(g.ptr + (b + i) * f.partBytes, f.partBytes).set(this.arena.u8(src, f.partBytes));
      }
    }
    g.loaded = true;
    this.cfg.stats?.io(bytes, requests, performance.now() - t0, false);
  }

  /** Gate mode, bundled files: a record's block hash over its resident gate part and the up/down bytes read (at `rec`). */
  private verifyWithGate(layer: Layer, neuron: number, rec: number): void {
    const { f, section } = layer;
    const gate = this.arena.u8(layer.gate!.ptr + neuron * f.partBytes, f.partBytes);
    const upDown = this.arena.u8(rec, this.cacheParts * f.partBytes);
    const got = this.hash64!().update(gate).update(upDown).digest();
    const want = this.file.blockHashes[section.firstBlock + neuron]!;
    if (got !== want) throw new IntegrityError(`${this.file.source.name}: ${section.name} record ${neuron}: hash does not match (gate resident, up/down read)`);
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

