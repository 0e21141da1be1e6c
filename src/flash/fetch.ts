/**
 * Reading neuron records from flash into the staging area (PAPER.md
 * "Reading throughput"): the planner's coalesced reads, at most `parallel`
 * in flight, every record verified against its block hash, the part
 * pointers of each batch listed for the kernels. Also the gate-mode reads
 * (resident gate rows, and records whose hash covers a gate part that was
 * not read). The hot path allocates nothing but the source's promises.
 */
import xxhash from 'xxhash-wasm';
import { IntegrityError } from '../errors.js';
import type { FlmFile } from '../format/reader.js';
import type { ReadHints } from '../source/types.js';
import type { Arena } from '../engine/arena.js';
import type { StreamLayer } from './layer.js';
import { ReadPlanner, costRequests, type LinkCosts } from './planner.js';
import { ROUND_REQUEST_BYTES, RoundTuner } from '../source/link.js';
import type { RunStats } from './stats.js';

/** Receives each batch of verified records fetch() read: `at` is the batch's first index relative to `start`. */
export interface BatchSink<U> {
  onBatch(use: U, layer: StreamLayer, at: number, len: number, src: number): void;
}

/** Scheduling between two fetchers on one source: a background one issues reads only while the other has none waiting to go out. */
export interface ReadPriority {
  /** May this fetcher issue a read now? */
  canIssue(): boolean;
  /** Told when this fetcher has issued every read of its batch (a lower-priority fetcher may go). */
  drained(): void;
}

export class RecordFetcher<U> {
  /** Part pointers of the current batch's records (u32 [len][parts]). */
  readonly srcView: Uint32Array;
  /** Optional scheduling (prefetch.ts): set once, before the first fetch. */
  priority?: ReadPriority;
  private readonly planner: ReadPlanner;
  private readonly parallel: number;
  /** The whole arena as bytes: reads land in it at staging offsets, without a view per read. */
  private mem: Uint8Array;
  /** The staging area as bytes (multi-range reads take staging-relative offsets). */
  private stagingView: Uint8Array;
  /** Remote sources: the link as the planner prices it, refreshed before every plan. */
  private readonly costs: LinkCosts | undefined;
  private hash64?: Awaited<ReturnType<typeof xxhash>>['create64'];
  // Reads of the current plan (readPlanned), at most `parallel` in flight.
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
  /** Whether the source sends multi-range requests (undefined until asked; false for good once it says no). */
  private multi: boolean | undefined;
  private readonly readFail = (e: unknown): void => {
    this.inFlight--;
    this.fail(e);
    this.pump();
  };

  constructor(
    private readonly file: FlmFile,
    private readonly arena: Arena,
    /** Staging area and its size; `src`: the pointer table (u32 [neurons][nParts]). */
    private readonly staging: number,
    private readonly stagingBytes: number,
    private readonly src: number,
    /** Parts per streamed record (gate mode: up and down; the gate part is resident). */
    private readonly parts: number,
    hints: ReadHints,
    alignment: number,
    maxRegions: number,
    private readonly stats: RunStats | undefined,
    /** A background fetcher (prefetch): its reads count as bytes and requests, their time is accounted by its owner. */
    private readonly background = false,
  ) {
    const n = file.header.arch.ffnDim;
    this.srcView = new Uint32Array(arena.memory.buffer, src, n * file.header.ffn[0]!.parts.length);
    this.mem = new Uint8Array(arena.memory.buffer);
    this.stagingView = this.mem.subarray(staging, staging + stagingBytes);
    this.parallel = Math.max(1, hints.parallel);
    this.planner = new ReadPlanner(hints, alignment, stagingBytes, n, maxRegions);
    const link = file.source.link;
    // Multi-range stays off until the source's probe says yes (first fetch).
    this.costs = link ? { rttMs: link.rttMs, connMBps: link.connMBps, linkMBps: link.linkMBps, inFlight: this.parallel, multiRange: false } : undefined;
    this.multi = file.source.readRanges && file.source.multiRange ? undefined : false;
  }

  /** True while reads of the current batch wait to be issued (a background fetcher must not go before them). */
  get issuing(): boolean {
    return this.resolveBatch !== undefined && this.nextRead < this.planner.requestCount && !this.readFailed;
  }

  /** Issues what the priority held back (the higher-priority fetcher has drained). */
  kick(): void {
    if (this.resolveBatch) this.pump();
  }

  /**
   * Reads the records of `ids[start..end)` into staging, batch by batch (as
   * many as the staging area holds), verifies them and hands each batch to
   * `sink.onBatch(use, ...)` with the part pointers of its records in `src`.
   * `blocking`: the caller waits on these reads (their time is I/O it did
   * not hide); false when it computes while they are in flight. `once`:
   * only the first batch (a prefetch: staging holds its records until used).
   * Resolves to how many of the ids were read.
   */
  async fetch(layer: StreamLayer, ids: Int32Array, start: number, end: number, sink: BatchSink<U>, use: U, blocking = true, once = false): Promise<number> {
    const { f, section, regions } = layer;
    const stats = this.stats;
    stats?.neuronsRead(end - start);
    const bundled = f.layout === 'bundled';
    const parts = this.parts;
    const first = f.parts.length - parts; // 1 in gate mode: part 0 (gate) is resident
    const memory = this.arena.memory;
    const plan = this.planner;
    const costs = this.costs;
    const source = this.file.source;
    if (costs && this.multi !== false) this.multi = costs.multiRange = await source.multiRange!();
    let done = start;
    while (done < end) {
      // The least request size (fewer requests than fill the link): a round of the layer's own reads (not a prefetch)
      // tries one and reports its time; the window's installs count too (the compute beside them is a few ms of a round
      // trip's wait).
      let choice = -1;
      let tuned = false;
      let planned = 0;
      if (costs) {
        const link = source.link!;
        costs.rttMs = link.rttMs;
        costs.connMBps = link.connMBps;
        costs.linkMBps = link.linkMBps;
        // The round's size before it is planned: its records' bytes (staging may take fewer, gaps and alignment add some).
        for (let r = 0; r < regions.length; r++) planned += (end - done) * regions[r]!.bytes;
        // (Only multi-range plans group ranges into requests; others send one request per read. costRequests without
        // the round's bytes is the full count, whatever the last round's requestBytes.)
        tuned = costs.multiRange && RoundTuner.tunes(planned, costRequests(costs));
        choice = !tuned ? 0 : this.background ? link.rounds.best(planned) : link.rounds.next(planned);
        costs.requestBytes = ROUND_REQUEST_BYTES[choice];
        plan.setLink(costs);
      }
      plan.plan(ids, done, end, regions);
      const t0 = performance.now();
      if (blocking) stats?.blockStart();
      try {
        await this.readPlanned();
      } finally {
        if (blocking) stats?.blockEnd();
      }
      const t1 = performance.now();
      stats?.io(plan.readBytes, plan.requestCount, this.background ? 0 : t1 - t0, true);
      if (costs) {
        const link = source.link!;
        if (tuned && !this.background) link.rounds.done(choice, planned, plan.readBytes, t1 - t0);
        stats?.link(link.rttMs, link.connMBps, link.linkMBps, tuned ? ROUND_REQUEST_BYTES[link.rounds.best(planned)]! : 0);
      }
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
      sink.onBatch(use, layer, done - start, plan.count, this.src);
      done += plan.count;
      if (once) break;
    }
    return done - start;
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
    const priority = this.priority;
    while (!this.readFailed && this.inFlight < this.parallel && this.nextRead < plan.requestCount && (!priority || priority.canIssue())) {
      const k = this.nextRead++;
      const i = plan.reqFirst[k]!;
      const to = plan.reqFirst[k + 1]!;
      const at = this.staging + plan.readStaging[i]!;
      const len = plan.readLength[i]!;
      this.inFlight++;
      try {
        const read =
          to - i > 1
            ? src.readRanges!(plan.readOffset, plan.readLength, plan.readStaging, i, to, this.stagingView)
            : src.readInto
              ? src.readInto(plan.readOffset[i]!, this.mem, at, len)
              : src.read(plan.readOffset[i]!, this.arena.u8(at, len));
        read.then(this.readDone, this.readFail);
      } catch (e) {
        // a source that throws instead of rejecting
        this.inFlight--;
        this.fail(e);
      }
    }
    if (priority && (this.readFailed || this.nextRead >= plan.requestCount)) priority.drained();
    if (this.inFlight === 0 && (this.readFailed || this.nextRead >= plan.requestCount)) {
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

  /** `mem`, made again if the memory grew since (its old buffer is then detached; fixed arenas never grow). */
  arenaBytes(): Uint8Array {
    if (this.mem.byteLength === 0) {
      this.mem = new Uint8Array(this.arena.memory.buffer);
      this.stagingView = this.mem.subarray(this.staging, this.staging + this.stagingBytes);
    }
    return this.mem;
  }

  /**
   * Gate mode, first use of a layer: reads its gate parts into the arena
   * (bundled files: whole records through staging, as the block hashes cover
   * records; split files: the gate region only), verified.
   */
  async loadGate(layer: StreamLayer): Promise<void> {
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
    this.stats?.io(bytes, requests, performance.now() - t0, false);
  }

  /** Gate mode, bundled files: a record's block hash over its resident gate part and the up/down bytes read (at `rec`). */
  private verifyWithGate(layer: StreamLayer, neuron: number, rec: number): void {
    const { f, section } = layer;
    const gate = this.arena.u8(layer.gate!.ptr + neuron * f.partBytes, f.partBytes);
    const upDown = this.arena.u8(rec, this.parts * f.partBytes);
    const got = this.hash64!().update(gate).update(upDown).digest();
    const want = this.file.blockHashes[section.firstBlock + neuron]!;
    if (got !== want) throw new IntegrityError(`${this.file.source.name}: ${section.name} record ${neuron}: hash does not match (gate resident, up/down read)`);
  }
}
