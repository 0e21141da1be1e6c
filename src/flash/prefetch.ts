/**
 * Reads for the next layer while this one computes (PAPER.md: reads hidden
 * behind compute; Deja Vu's asynchronous lookahead). While layer l runs, the
 * records layer l+1 is predicted to need (and its cache lacks) are read into
 * a staging area of their own, at lower priority than layer l's reads; when
 * layer l+1 runs, the neurons it selects among them are taken from there.
 * A prefetch the layer does not need never blocks it: it lands on its own
 * and is dropped, and no new prefetch starts until it has.
 */
import type { FlmFile } from '../format/reader.js';
import type { ReadHints } from '../source/types.js';
import type { Arena } from '../engine/arena.js';
import { RecordFetcher, type BatchSink } from './fetch.js';
import type { StreamLayer } from './layer.js';
import type { RunStats } from './stats.js';

/** The arena regions of a prefetch: its staging area and its part-pointer table (u32 [neurons][parts]). */
export interface PrefetchRegions {
  staging: number;
  bytes: number;
  src: number;
}

export class Prefetcher implements BatchSink<0> {
  /** The ids to read: the caller fills [0, count) before start(). */
  readonly ids: Int32Array;
  /** Most records one prefetch asks for (what its staging holds with alignment slack). */
  readonly maxRecords: number;
  private readonly fetcher: RecordFetcher<0>;
  private readonly parts: number;
  /** neuron -> 1 + its index among the requested ids, valid while stamp[neuron] === gen. */
  private readonly index: Int32Array;
  private readonly stamp: Uint32Array;
  private gen = 0;
  /** The requested ids [0, landedCount) have been read (one batch: a prefix of the list); their part pointers are at src + i * parts * 4. */
  private landedCount = 0;
  private readonly src: number;
  /** The layer of the prefetch held or in flight: -1 none, -2 dropped while in flight (busy until it lands). */
  private target = -1;
  private inFlight: Promise<void> | undefined;
  private failed = false;
  private startedAt = 0;
  private landedAt = 0;
  private blockedAtStart = 0;
  private blockedAtLand = 0;
  private readonly landed = (): void => {
    this.inFlight = undefined;
    this.landedAt = performance.now();
    this.blockedAtLand = this.stats?.blockedClock() ?? 0;
  };
  private readonly lost = (): void => {
    // A failed prefetch is only a missed chance: the layer reads its neurons itself (and meets the error there).
    this.failed = true;
    this.landed();
  };

  constructor(
    file: FlmFile,
    arena: Arena,
    r: PrefetchRegions,
    parts: number,
    recordBytes: number,
    hints: ReadHints,
    alignment: number,
    maxRegions: number,
    private readonly stats: RunStats | undefined,
    /** The layer reads, which go first: a prefetch read is issued only while they have none waiting. */
    main: RecordFetcher<unknown>,
    /** Prefetches are runs of consecutive neurons (no sparsity). */
    contiguous: boolean,
  ) {
    const n = file.header.arch.ffnDim;
    this.parts = parts;
    this.ids = new Int32Array(n);
    this.index = new Int32Array(n);
    this.stamp = new Uint32Array(n);
    this.src = r.src;
    // Scattered records may each take an alignment unit of slack; a contiguous run (the next layer's first records) none.
    this.maxRecords = Math.max(1, Math.floor(r.bytes / (recordBytes + (contiguous ? 0 : Math.max(1, alignment)))));
    this.fetcher = new RecordFetcher<0>(file, arena, r.staging, r.bytes, r.src, parts, hints, alignment, maxRegions, stats, true);
    const fetcher = this.fetcher;
    this.fetcher.priority = { canIssue: () => !main.issuing, drained: () => {} };
    main.priority = { canIssue: () => true, drained: () => fetcher.kick() };
  }

  /** Reads in flight or records not yet taken: no new prefetch until take() or drop(). */
  get busy(): boolean {
    return this.target !== -1;
  }

  /** Starts reading ids[0, count) (ascending) for layer `target`; the caller checked !busy. */
  start(target: number, layer: StreamLayer, count: number): void {
    count = Math.min(count, this.maxRecords);
    if (count <= 0) return;
    const gen = ++this.gen;
    for (let i = 0; i < count; i++) {
      const j = this.ids[i]!;
      this.stamp[j] = gen;
      this.index[j] = i + 1;
    }
    this.target = target;
    this.landedCount = 0;
    this.failed = false;
    this.startedAt = performance.now();
    this.blockedAtStart = this.stats?.blockedClock() ?? 0;
    this.inFlight = this.fetcher.fetch(layer, this.ids, 0, count, this, 0, false, true).then(this.landed, this.lost);
  }

  onBatch(_use: 0, _layer: StreamLayer, at: number, len: number): void {
    // One batch (fetch's `once`): the pointer table lists its records from the list's first.
    this.landedCount = at + len;
  }

  /** Whether the prefetch held (or in flight) is for layer `target`. */
  heldFor(target: number): boolean {
    return this.target === target;
  }

  /** Whether neuron j was requested by the prefetch held for layer `target`. */
  requestedFor(target: number, j: number): boolean {
    return this.target === target && this.stamp[j] === this.gen;
  }

  /** How many of ids[from, to) the prefetch for `target` requested. */
  countRequested(target: number, ids: Int32Array, from: number, to: number): number {
    if (this.target !== target) return 0;
    let c = 0;
    for (let i = from; i < to; i++) if (this.stamp[ids[i]!] === this.gen) c++;
    return c;
  }

  /**
   * The layer `target` runs and needs some of the prefetched neurons: waits
   * for the prefetch to land if it has not, and accounts its time (in flight
   * while the engine computed: hidden I/O; the wait: I/O). False when it
   * failed (the layer reads everything itself).
   */
  async take(target: number): Promise<boolean> {
    if (this.target !== target) return false;
    const needAt = performance.now();
    const blockedAtNeed = this.stats?.blockedClock() ?? 0;
    let waitMs = 0;
    if (this.inFlight) {
      this.fetcher.kick();
      this.stats?.blockStart();
      try {
        await this.inFlight;
      } finally {
        this.stats?.blockEnd();
      }
      waitMs = performance.now() - needAt;
    }
    // In flight until it landed or was needed, less the time the engine was waiting on other reads meanwhile.
    const early = this.landedAt <= needAt;
    const end = early ? this.landedAt : needAt;
    const blocked = (early ? this.blockedAtLand : blockedAtNeed) - this.blockedAtStart;
    this.stats?.prefetch(Math.max(0, end - this.startedAt - blocked), waitMs, 0, 0);
    return !this.failed;
  }

  /** Arena address of neuron j's part pointers (u32 [parts]) when it landed for the prefetch held; 0 otherwise. */
  ptrOf(j: number): number {
    if (this.target < 0 || this.stamp[j] !== this.gen) return 0;
    const i = this.index[j]! - 1;
    return i < this.landedCount ? this.src + i * this.parts * 4 : 0;
  }

  /** Copies neuron j's part pointers (when it landed for the prefetch held) to dst[at * parts ..]; false when it did not. */
  copyPtrs(j: number, dst: Uint32Array, at: number): boolean {
    if (this.target < 0 || this.stamp[j] !== this.gen) return false;
    const i = this.index[j]! - 1;
    if (i >= this.landedCount) return false;
    const parts = this.parts;
    const src = this.fetcher.srcView;
    for (let p = 0; p < parts; p++) dst[at * parts + p] = src[i * parts + p]!;
    return true;
  }

  /** The layer is done with the prefetch (`used` of its neurons): its staging is free again. Returns how many were read. */
  release(used: number): number {
    if (this.target === -1) return 0;
    const read = this.landedCount;
    this.stats?.prefetch(0, 0, read, used);
    this.target = -1;
    this.gen++;
    return read;
  }

  /**
   * Drops the prefetch held for a layer that did not need it: at once when
   * it has landed; one in flight stays busy until it lands (its staging is
   * being written), and is then dropped by the next call.
   */
  drop(): void {
    if (this.target === -1) return;
    if (this.inFlight) {
      if (this.target === -2) return;
      this.target = -2;
      this.inFlight.then(this.orphanLanded);
      return;
    }
    this.release(0);
  }

  private readonly orphanLanded = (): void => {
    if (this.target === -2) this.release(0);
  };
}
