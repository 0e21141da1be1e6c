import type { LinkEstimator } from './link.js';

/**
 * The flash tier: anything that can read `into.byteLength` bytes at a 64-bit
 * file offset (JS numbers are exact to 2^53, so offsets are never 32-bit).
 */
export interface Source {
  /** For messages: a path or URL. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Changes when the underlying file changes (ETag, mtime+size, ...). */
  readonly identity: string;
  /**
   * Reads must start and end on multiples of this and land in buffers whose
   * address is a multiple of it (O_DIRECT: 4096). 1 or absent: any.
   * A read may run past the end of the file only when it is aligned; the
   * bytes past the end are then left untouched.
   */
  readonly alignment?: number;
  /** How the read planner should shape requests for this source (measured defaults per kind). */
  readonly hints?: ReadHints;
  /** Fill `into` entirely with the bytes at [offset, offset + into.byteLength); throws SourceError otherwise. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /**
   * Optional: the same as `read(offset, into.subarray(at, at + length))`
   * without making that view (the streaming hot path uses it when present,
   * `read` otherwise). A wrapper or subclass that changes `read` must change
   * or drop this too.
   */
  readInto?(offset: number, into: Uint8Array, at: number, length: number): Promise<void>;
  /**
   * Optional (remote sources): reads ranges `from..to` of these arrays in
   * one request where the server answers multi-range requests (range i:
   * file [offsets[i], +lengths[i]) into `into` at `ats[i]`; ascending and
   * disjoint), else one request per range. The arrays are read before the
   * promise settles and may be reused after.
   */
  readRanges?(offsets: ArrayLike<number>, lengths: ArrayLike<number>, ats: ArrayLike<number>, from: number, to: number, into: Uint8Array): Promise<void>;
  /** Optional: whether readRanges sends multi-range requests (probed once, on first call). */
  multiRange?(): Promise<boolean>;
  /** Optional (remote sources): the link model estimated from completed requests (planner costs, stats). */
  readonly link?: LinkEstimator;
  /** Optional (cache tiers such as OPFS): cumulative bytes served locally and bytes fetched from the wrapped source (run stats report the hit share per token). */
  readonly tier?: TierCounters;
  close(): Promise<void>;
}

/** Cumulative counters of a cache tier (OpfsCounters has them). */
export interface TierCounters {
  readonly hitBytes: number;
  readonly networkBytes: number;
}

export interface ReadHints {
  /** Two wanted ranges closer than this are read as one (the gap is read and discarded). */
  mergeGap: number;
  /** Longer reads are split into pieces of at most this many bytes. */
  maxRead: number;
  /** Reads in flight at once. */
  parallel: number;
}

/** A destination for the .flm writer: positioned writes, then the final size. */
export interface Sink {
  write(offset: number, bytes: Uint8Array): Promise<void>;
  /** All writes are done; the file is `size` bytes (gaps read as zeros). */
  finish(size: number): Promise<void>;
}
