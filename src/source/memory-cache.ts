/**
 * The in-memory cache tier: source -> JS heap -> arena. Wraps another Source
 * (an HttpSource, usually; or an OpfsCachedSource) and keeps the bytes it
 * read in memory, so a later read of them costs no request. An HTTP source
 * has no OS page cache and the wasm arena stops at 4 GiB (wasm32): on a
 * machine with more RAM this is the page cache of CDN streaming. Neurons the
 * arena's window cache evicted, and the gap bytes the read planner reads
 * through when it merges two nearby ranges into one request, are served from
 * here the next time they are wanted.
 *
 * Policy:
 * - Everything read from `inner` is kept: the whole request, read-through
 *   gaps included. Nothing is read that was not asked for: misses are not
 *   rounded out to whole chunks (over a CDN that would multiply the bytes of
 *   sparse 8 KiB records).
 * - Bookkeeping is per chunk (default 64 KiB, `chunkBytes`): a chunk holds
 *   the pieces of it that were read, as disjoint sorted byte spans (a new
 *   piece that overlaps or touches others is merged with them into one).
 * - A read copies the spans it finds and asks `inner` only for the missing
 *   runs: one inner read per contiguous missing run, in parallel (several
 *   runs of one readRanges call go in one inner readRanges call). Missing
 *   runs less than `readThroughBytes` apart (default 4 KiB) are read as one
 *   span through the cached bytes between them (fewer requests for a few
 *   bytes; the cached bytes are the same bytes). A read found entirely in
 *   memory makes no inner request.
 * - Bounded: at most `maxBytes` of cached bytes (the small per-chunk
 *   bookkeeping aside), least recently used chunks evicted first. This
 *   memory is JS heap outside the arena: it is not part of the `memory`
 *   budget (OpenOptions.memoryCache adds it on top).
 * - Exact: `inner`'s identity is fixed for its life (HttpRangeSource pins
 *   its validator and sends If-Range; a changed file fails the read), so a
 *   cached byte is never stale; no other invalidation is done.
 * - Concurrent reads of the same missing bytes both go to `inner` (not
 *   deduplicated in flight); both then store the same bytes.
 * - The oracle (sparsity 'oracle', measurePredictor) reads the file past this
 *   tier: its dense reads would fill it and count as the strategy's hits.
 * - Alignment: a source whose reads must be aligned (a file opened with
 *   O_DIRECT, alignment 4096) is refused with a SourceError: direct I/O
 *   bypasses the page cache on purpose, and a local file without it already
 *   has the OS page cache.
 *
 * `tier` (the run stats' "bytes served by cache tiers"): hitBytes = bytes
 * this tier copied from memory, plus inner.tier.hitBytes when `inner` is a
 * cache tier itself (memory over OPFS: both count as hits); networkBytes =
 * inner.tier.networkBytes when `inner` is a tier, else the bytes this tier
 * read from `inner`.
 *
 * Platform-neutral (no `node:` import).
 */
import { SourceError } from '../errors.js';
import type { LinkEstimator } from './link.js';
import type { Source, TierCounters } from './types.js';
import { WrappingSource } from './wrapping.js';

export interface MemoryCacheOptions {
  /** Most cached bytes kept (outside the arena budget). 0: nothing is kept. */
  maxBytes: number;
  /** Bookkeeping and eviction granularity. Default 64 KiB. */
  chunkBytes?: number;
  /** Missing runs closer than this are read as one span (the cached bytes between are read again). Default 4 KiB; 0: never. */
  readThroughBytes?: number;
}

export interface MemoryCacheCounters {
  /** Bytes copied from memory into the reads' buffers. */
  hitBytes: number;
  /** Reads (read, readInto, readRanges calls) served entirely from memory. */
  hitReads: number;
  /** Reads that needed `inner`; the inner reads made (one per readRanges call), and the bytes they brought. */
  missReads: number;
  innerReads: number;
  innerBytes: number;
  /** Chunks evicted to stay under maxBytes. */
  evictedChunks: number;
}

const DEFAULT_CHUNK = 64 * 1024;
const DEFAULT_READ_THROUGH = 4096;

/** One chunk's cached pieces: disjoint, sorted, not touching (absolute file offsets). */
interface Chunk {
  from: number[];
  bytes: Uint8Array[];
  size: number;
}

/**
 * A Source that answers from memory what it has read before and from `inner`
 * otherwise. See the file comment for the policy.
 */
export class MemoryCachedSource extends WrappingSource implements Source {
  readonly counters: MemoryCacheCounters = { hitBytes: 0, hitReads: 0, missReads: 0, innerReads: 0, innerBytes: 0, evictedChunks: 0 };
  readonly chunkBytes: number;
  readonly maxBytes: number;
  readonly readThroughBytes: number;
  /** Present when `inner` has it: the ranges go through the cache, the missing ones in one inner readRanges call. */
  readonly readRanges?: (offsets: ArrayLike<number>, lengths: ArrayLike<number>, ats: ArrayLike<number>, from: number, to: number, into: Uint8Array) => Promise<void>;
  /** Present when `inner` has it (passed through). */
  readonly multiRange?: () => Promise<boolean>;

  /** chunk index -> its pieces, least recently used first. */
  private readonly chunks = new Map<number, Chunk>();
  private total = 0;
  private closed = false;
  private readonly tierView: TierCounters;

  constructor(inner: Source, options: MemoryCacheOptions) {
    super(inner);
    const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK;
    const maxBytes = options.maxBytes;
    const readThrough = options.readThroughBytes ?? DEFAULT_READ_THROUGH;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw new RangeError(`chunkBytes must be an integer >= 1, got ${chunkBytes}`);
    if (!(maxBytes >= 0) || !Number.isFinite(maxBytes)) throw new RangeError(`maxBytes must be a finite number >= 0, got ${maxBytes}`);
    if (!Number.isSafeInteger(readThrough) || readThrough < 0) throw new RangeError(`readThroughBytes must be an integer >= 0, got ${readThrough}`);
    if ((inner.alignment ?? 1) > 1) {
      throw new SourceError(`${inner.name}: a memory cache cannot wrap a direct (O_DIRECT) source: direct reads bypass the page cache on purpose; open it without direct to have the page cache`);
    }
    this.chunkBytes = chunkBytes;
    this.maxBytes = Math.floor(maxBytes);
    this.readThroughBytes = readThrough;
    if (inner.readRanges) this.readRanges = (o, l, a, f, t, i) => this.cachedRanges(o, l, a, f, t, i);
    if (inner.multiRange) this.multiRange = () => inner.multiRange!();
    const self = this;
    this.tierView = {
      get hitBytes() {
        return self.counters.hitBytes + (self.inner.tier?.hitBytes ?? 0);
      },
      get networkBytes() {
        const t = self.inner.tier;
        return t ? t.networkBytes : self.counters.innerBytes;
      },
    };
  }

  /** `new MemoryCachedSource(inner, options)`; `inner` itself when maxBytes is 0. */
  static wrap(inner: Source, options: MemoryCacheOptions): Source {
    return options.maxBytes > 0 ? new MemoryCachedSource(inner, options) : inner;
  }

  get link(): LinkEstimator | undefined {
    return this.inner.link;
  }
  /** Bytes served from memory (and from the inner tier, if any) against bytes fetched from the network: see the file comment. */
  get tier(): TierCounters {
    return this.tierView;
  }

  /** Bytes now cached, and the chunks holding them. */
  get cachedBytes(): number {
    return this.total;
  }
  get cachedChunks(): number {
    return this.chunks.size;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.readInto(offset, into, 0, into.byteLength);
  }

  async readInto(offset: number, into: Uint8Array, at: number, length: number): Promise<void> {
    if (!(at >= 0 && length >= 0 && at + length <= into.byteLength)) throw new RangeError(`readInto: [${at}, +${length}) is outside the ${into.byteLength}-byte buffer`);
    if (this.closed || length === 0 || !Number.isSafeInteger(offset) || offset < 0 || offset + length > this.inner.size) {
      // Nothing to cache, or a bad read: the inner source does it (and reports the error).
      return this.innerRead(offset, into, at, length);
    }
    const missing: number[] = [];
    this.lookup(offset, offset + length, into, at - offset, missing);
    this.readThrough(missing);
    const innerBytes = spanBytes(missing, 0, missing.length);
    this.counters.hitBytes += length - innerBytes;
    if (missing.length === 0) {
      this.counters.hitReads++;
      return;
    }
    this.counters.missReads++;
    const reads: Promise<void>[] = [];
    for (let i = 0; i < missing.length; i += 2) {
      const lo = missing[i]!;
      const hi = missing[i + 1]!;
      const dst = at + (lo - offset);
      reads.push(this.innerRead(lo, into, dst, hi - lo).then(() => this.store(lo, hi, into, dst - lo)));
    }
    await settleAll(reads);
  }

  private cachedRanges(offsets: ArrayLike<number>, lengths: ArrayLike<number>, ats: ArrayLike<number>, from: number, to: number, into: Uint8Array): Promise<void> {
    const size = this.inner.size;
    let ok = !this.closed;
    for (let i = from; ok && i < to; i++) {
      const o = offsets[i]!;
      const n = lengths[i]!;
      const a = ats[i]!;
      ok = Number.isSafeInteger(o) && o >= 0 && n > 0 && o + n <= size && a >= 0 && a + n <= into.byteLength;
    }
    if (!ok) return this.inner.readRanges!(offsets, lengths, ats, from, to, into);
    const missing: number[] = [];
    const dst: number[] = [];
    let wanted = 0;
    for (let i = from; i < to; i++) {
      const o = offsets[i]!;
      const n = lengths[i]!;
      const delta = ats[i]! - o;
      wanted += n;
      const start = missing.length;
      this.lookup(o, o + n, into, delta, missing);
      this.readThrough(missing, start);
      for (let k = start; k < missing.length; k += 2) dst.push(missing[k]! + delta);
    }
    const innerBytes = spanBytes(missing, 0, missing.length);
    this.counters.hitBytes += wanted - innerBytes;
    if (missing.length === 0) {
      this.counters.hitReads++;
      return Promise.resolve();
    }
    this.counters.missReads++;
    const runs = missing.length / 2;
    const store = () => {
      for (let k = 0; k < runs; k++) this.store(missing[2 * k]!, missing[2 * k + 1]!, into, dst[k]! - missing[2 * k]!);
    };
    if (runs === 1) return this.innerRead(missing[0]!, into, dst[0]!, missing[1]! - missing[0]!).then(store);
    const offs: number[] = [];
    const lens: number[] = [];
    for (let k = 0; k < runs; k++) {
      offs.push(missing[2 * k]!);
      lens.push(missing[2 * k + 1]! - missing[2 * k]!);
    }
    this.counters.innerReads++;
    this.counters.innerBytes += innerBytes;
    return this.inner.readRanges!(offs, lens, dst, 0, runs, into).then(store);
  }

  /** Reads from `inner` into `into` at `at`, counted. */
  private innerRead(offset: number, into: Uint8Array, at: number, length: number): Promise<void> {
    if (length > 0) {
      this.counters.innerReads++;
      this.counters.innerBytes += length;
    }
    const inner = this.inner;
    return inner.readInto ? inner.readInto(offset, into, at, length) : inner.read(offset, into.subarray(at, at + length));
  }

  /**
   * Copies the cached parts of file [lo, hi) into `into` at (file offset +
   * delta) and appends the missing runs to `missing` as [lo, hi) pairs
   * (adjacent runs joined).
   */
  private lookup(lo: number, hi: number, into: Uint8Array, delta: number, missing: number[]): void {
    const C = this.chunkBytes;
    const chunks = this.chunks;
    const base = missing.length;
    const miss = (a: number, b: number) => {
      const n = missing.length;
      if (n > base && missing[n - 1] === a) missing[n - 1] = b;
      else missing.push(a, b);
    };
    for (let c = Math.floor(lo / C), last = Math.floor((hi - 1) / C); c <= last; c++) {
      const start = Math.max(lo, c * C);
      const end = Math.min(hi, (c + 1) * C);
      const chunk = chunks.get(c);
      if (!chunk) {
        miss(start, end);
        continue;
      }
      chunks.delete(c); // most recently used now
      chunks.set(c, chunk);
      let pos = start;
      const from = chunk.from;
      for (let p = 0; p < from.length && pos < end; p++) {
        const pFrom = from[p]!;
        const bytes = chunk.bytes[p]!;
        const pTo = pFrom + bytes.byteLength;
        if (pTo <= pos) continue;
        if (pFrom >= end) break;
        if (pFrom > pos) miss(pos, pFrom);
        const a = Math.max(pos, pFrom);
        const b = Math.min(end, pTo);
        into.set(bytes.subarray(a - pFrom, b - pFrom), a + delta);
        pos = b;
      }
      if (pos < end) miss(pos, end);
    }
  }

  /** Joins missing runs (from index `start` on) less than readThroughBytes apart. */
  private readThrough(missing: number[], start = 0): void {
    const gap = this.readThroughBytes;
    if (gap <= 0 || missing.length - start <= 2) return;
    let w = start + 2;
    for (let r = start + 2; r < missing.length; r += 2) {
      if (missing[r]! - missing[w - 1]! < gap) missing[w - 1] = missing[r + 1]!;
      else {
        missing[w] = missing[r]!;
        missing[w + 1] = missing[r + 1]!;
        w += 2;
      }
    }
    missing.length = w;
  }

  /** Keeps file [lo, hi), whose bytes are in `src` at (file offset + delta), then evicts down to maxBytes. */
  private store(lo: number, hi: number, src: Uint8Array, delta: number): void {
    if (this.closed || this.maxBytes <= 0) return;
    const C = this.chunkBytes;
    for (let c = Math.floor(lo / C), last = Math.floor((hi - 1) / C); c <= last; c++) {
      this.storePiece(c, Math.max(lo, c * C), Math.min(hi, (c + 1) * C), src, delta);
    }
    const chunks = this.chunks;
    while (this.total > this.maxBytes) {
      const oldest = chunks.keys().next();
      if (oldest.done) break;
      this.total -= chunks.get(oldest.value)!.size;
      chunks.delete(oldest.value);
      this.counters.evictedChunks++;
    }
  }

  private storePiece(c: number, lo: number, hi: number, src: Uint8Array, delta: number): void {
    let chunk = this.chunks.get(c);
    if (chunk) this.chunks.delete(c);
    else chunk = { from: [], bytes: [], size: 0 };
    this.chunks.set(c, chunk); // most recently used
    const { from, bytes } = chunk;
    // Pieces [i, j) overlap or touch [lo, hi): they and the new bytes become one piece.
    let i = 0;
    while (i < from.length && from[i]! + bytes[i]!.byteLength < lo) i++;
    let j = i;
    while (j < from.length && from[j]! <= hi) j++;
    if (j - i === 1 && from[i]! <= lo && from[i]! + bytes[i]!.byteLength >= hi) return; // already held
    const mLo = j > i ? Math.min(lo, from[i]!) : lo;
    const mHi = j > i ? Math.max(hi, from[j - 1]! + bytes[j - 1]!.byteLength) : hi;
    const merged = new Uint8Array(mHi - mLo);
    let removed = 0;
    for (let k = i; k < j; k++) {
      merged.set(bytes[k]!, from[k]! - mLo);
      removed += bytes[k]!.byteLength;
    }
    merged.set(src.subarray(lo + delta, hi + delta), lo - mLo);
    from.splice(i, j - i, mLo);
    bytes.splice(i, j - i, merged);
    chunk.size += merged.byteLength - removed;
    this.total += merged.byteLength - removed;
  }

  /** Drops every cached byte (the source stays open). */
  clear(): void {
    this.chunks.clear();
    this.total = 0;
  }

  /** Closes `inner` and drops the cache. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clear();
    await this.inner.close();
  }
}

function spanBytes(spans: number[], from: number, to: number): number {
  let n = 0;
  for (let i = from; i < to; i += 2) n += spans[i + 1]! - spans[i]!;
  return n;
}

/** Waits for every promise (none may still write into the caller's buffer), then rejects with the first failure. */
async function settleAll(ps: Promise<void>[]): Promise<void> {
  if (ps.length === 1) return ps[0];
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}
