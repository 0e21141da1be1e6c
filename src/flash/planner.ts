/**
 * The read planner: turns "these neurons of this layer" into few, large,
 * aligned reads (PAPER.md "Reading": larger chunks and merged near reads beat
 * many small ones), laid out in a staging area, and tells where each wanted
 * record landed.
 *
 * ReadPlanner is the hot-path form: its plan lives in typed arrays sized at
 * construction and reused by every call, so planning a token allocates
 * nothing. planReads() is the same algorithm returning plain objects.
 *
 * Local sources merge across a fixed gap (their hints). Remote sources give
 * the planner a link model (setLink: round trip, per-request and total
 * bandwidth, requests in flight, multi-range support) and it prices each
 * gap: reading through it costs its bytes, a separate request costs a round
 * trip shared by the requests in flight. Where the server answers
 * multi-range requests, a gap costs only a part header, so nothing is read
 * through: the ranges are grouped into about as many requests as fill the
 * link.
 */
import type { ReadHints } from '../source/types.js';

/** Records of one kind laid out at `offset + i * stride` in the file, `bytes` long each. */
export interface RecordRegion {
  offset: number;
  stride: number;
  bytes: number;
}

export interface ReadOp {
  /** Absolute file offset and length (aligned when the source needs it). */
  offset: number;
  length: number;
  /** Where the bytes go, relative to the staging area. */
  staging: number;
}

export interface ReadPlan {
  reads: ReadOp[];
  /** Staging bytes the plan uses. */
  stagingBytes: number;
  /** Bytes read from the source (>= wanted bytes: gaps and alignment). */
  readBytes: number;
  /**
   * For wanted record j (in the order given) and region r: its staging offset
   * at `recordAt[j * regions + r]`.
   */
  recordAt: Float64Array;
  /** Number of wanted records covered by this plan (a prefix of the list). */
  count: number;
  /** With a link: request k sends reads `requests[k] .. requests[k + 1]` (the last up to the end); without, one request per read. */
  requests?: number[];
}

export const DEFAULT_HINTS: ReadHints = { mergeGap: 0, maxRead: 1 << 20, parallel: 8 };

/** The link as the planner prices it (LinkEstimator's numbers; MB/s = 1e3 bytes per ms). */
export interface LinkCosts {
  rttMs: number;
  connMBps: number;
  linkMBps: number;
  /** Requests in flight at most. */
  inFlight: number;
  /** The source sends several ranges in one request (readRanges). */
  multiRange: boolean;
  /** The least bytes a request should carry (link.ts RoundTuner): fewer requests than fill the link; 0 (default): that count. */
  requestBytes?: number;
}

/** Ranges per multi-range request at most: keeps the Range header near 3 KB (servers cap request headers at 4-8 KB). */
export const MAX_RANGES_PER_REQUEST = 128;
/** What one more part of a multi-range answer costs: its boundary and headers (~90 bytes at nginx), so smaller gaps are read through. */
export const PART_OVERHEAD_BYTES = 128;

/** The gap (bytes) up to which reading through is cheaper than another request on this link. */
export function costGap(c: LinkCosts): number {
  if (c.multiRange) return PART_OVERHEAD_BYTES;
  const p = Math.max(1, c.inFlight);
  // A byte costs 1/(the rate all requests together get); a request, its round trip shared by those in flight.
  const bytesPerMs = 1e3 * Math.max(1e-3, Math.min(p * c.connMBps, c.linkMBps));
  return Math.max(0, Math.floor((c.rttMs / p) * bytesPerMs));
}

/**
 * Requests a multi-range plan of `bytes` aims for: enough that their per-request rates fill the link (twice over), at
 * most those in flight; fewer where each would carry less than `requestBytes` (the client's cost per request makes
 * fewer, larger requests end sooner).
 */
export function costRequests(c: LinkCosts, bytes = Infinity): number {
  const fill = Math.min(Math.max(1, c.inFlight), Math.max(4, Math.ceil((2 * c.linkMBps) / Math.max(1e-3, c.connMBps))));
  return leastRequests(fill, bytes, c.requestBytes ?? 0);
}

/** `fill` requests for `bytes`, or fewer where each would carry less than `requestBytes` (0: `fill`). */
function leastRequests(fill: number, bytes: number, requestBytes: number): number {
  return requestBytes ? Math.max(1, Math.min(fill, Math.ceil(bytes / requestBytes))) : fill;
}

/** Reads are not split below this to fill the parallel slots: smaller requests cost more than they overlap. */
export const MIN_SPLIT_READ = 64 << 10;

const floorTo = (n: number, a: number) => Math.floor(n / a) * a;
const ceilTo = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * Plans reads for records, reusing its buffers: after `plan()`, the reads are
 * `readOffset/readLength/readStaging[0..readCount)` and record j's staging
 * offset in region r is `recordAt[j * regions.length + r]` (valid until the
 * next call). Sized for `maxRecords` records of at most `maxRegions` regions
 * and a staging area of `stagingBytes`; a larger request grows the buffers.
 */
export class ReadPlanner {
  readOffset: Float64Array;
  readLength: Float64Array;
  readStaging: Float64Array;
  recordAt: Float64Array;
  readCount = 0;
  /**
   * Requests: request k sends reads `reqFirst[k] .. reqFirst[k + 1]` (one
   * multi-range request when there are several; only with a multi-range link).
   */
  reqFirst: Uint32Array;
  requestCount = 0;
  /** Staging bytes the plan uses. */
  stagingBytes = 0;
  /** Bytes read from the source (>= wanted bytes: gaps and alignment). */
  readBytes = 0;
  /** Number of wanted records covered by the plan (a prefix of those asked for). */
  count = 0;

  private readonly align: number;
  private readonly maxRead: number;
  private mergeGap: number;
  private readonly fixedGap: number;
  private parallel: number;
  private readonly fixedParallel: number;
  /** Multi-range: the least bytes a request carries (fewer requests than `parallel`); 0: `parallel` requests. */
  private requestBytes = 0;
  /** The current plan's requests in flight: `parallel`, or fewer for `requestBytes`. */
  private roundParallel = 1;
  /** Multi-range grouping: on, bytes per request, and the state of the request being filled. */
  private multi = false;
  private groupTarget = 0;
  private groupBytes = 0;
  /** Range bytes of the plan given to requests so far. */
  private grouped = 0;
  private groupEnd = 0;
  /** Range bytes of the last measured prefix. */
  private total = 0;

  constructor(
    hints: ReadHints,
    alignment: number,
    private readonly stagingLimit: number,
    maxRecords: number,
    maxRegions: number,
  ) {
    this.align = Math.max(1, alignment);
    this.maxRead = Math.max(this.align, floorTo(hints.maxRead, this.align));
    this.mergeGap = this.fixedGap = hints.mergeGap;
    this.parallel = this.fixedParallel = hints.parallel;
    this.recordAt = new Float64Array(Math.max(1, maxRecords * maxRegions));
    // A plan that fits has at most one range per record and region, each cut into pieces of at least minPiece
    // over at most stagingLimit bytes in all: that many reads never need more room.
    const minPiece = Math.max(this.align, Math.min(this.maxRead, ceilTo(MIN_SPLIT_READ, this.align)));
    const reads = maxRecords * maxRegions + Math.floor(Math.min(stagingLimit, 2 ** 40) / minPiece) + 1;
    this.readOffset = new Float64Array(reads);
    this.readLength = new Float64Array(reads);
    this.readStaging = new Float64Array(reads);
    this.reqFirst = new Uint32Array(reads + 1);
  }

  /**
   * Prices the next plans with this link model (undefined: back to the fixed
   * hints). Cheap: call it before every plan as the estimates move.
   */
  setLink(c: LinkCosts | undefined): void {
    if (!c) {
      this.mergeGap = this.fixedGap;
      this.parallel = this.fixedParallel;
      this.multi = false;
      return;
    }
    this.mergeGap = costGap(c);
    this.multi = c.multiRange;
    this.parallel = c.multiRange ? costRequests(c) : Math.max(1, c.inFlight);
    this.requestBytes = c.multiRange ? (c.requestBytes ?? 0) : 0;
  }

  /** Bytes read through between records in the current plan's pricing (the fixed mergeGap without a link). */
  get gap(): number {
    return this.mergeGap;
  }

  /**
   * Plans reads for the records `ids[start..end)` (ascending, distinct) in
   * every region, so that everything fits the staging area; when it does not,
   * the plan covers the longest prefix that fits (`count`) and the caller
   * plans the rest after consuming it.
   */
  plan(ids: ArrayLike<number>, start: number, end: number, regions: readonly RecordRegion[]): this {
    const n = end - start;
    if (n * regions.length > this.recordAt.length) this.recordAt = new Float64Array(n * regions.length);
    let count = n;
    if (this.measure(ids, start, n, regions) > this.stagingLimit) {
      // Staging use grows with the prefix length: binary-search the longest prefix that fits.
      const one = this.measure(ids, start, 1, regions);
      if (one > this.stagingLimit) throw new RangeError(`staging area of ${this.stagingLimit} bytes cannot hold one record (${one} bytes needed)`);
      let lo = 1;
      let hi = n - 1;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if (this.measure(ids, start, mid, regions) <= this.stagingLimit) lo = mid;
        else hi = mid - 1;
      }
      count = lo;
      this.measure(ids, start, count, regions);
    }
    // A few long ranges would leave connections idle: cut pieces so that about `parallel` reads are in flight.
    const align = this.align;
    this.roundParallel = leastRequests(this.parallel, this.total, this.requestBytes);
    const share = ceilTo(Math.ceil(this.total / Math.max(1, this.roundParallel)), align);
    const piece = Math.max(align, Math.min(this.maxRead, Math.max(ceilTo(MIN_SPLIT_READ, align), share)));
    // Multi-range: ranges are grouped into requests of about an equal share each (cut() sets each one's).
    this.groupTarget = 0;
    this.grouped = 0;
    this.groupBytes = 0;
    this.groupEnd = 0;
    this.requestCount = 0;
    this.stagingBytes = this.walk(ids, start, count, regions, piece);
    this.reqFirst[this.requestCount] = this.readCount;
    this.readBytes = this.total;
    this.count = count;
    return this;
  }

  /** Staging bytes the records `ids[start..start+m)` need (and `total`, their range bytes). */
  private measure(ids: ArrayLike<number>, start: number, m: number, regions: readonly RecordRegion[]): number {
    return this.walk(ids, start, m, regions, 0);
  }

  /**
   * One pass over the records per region: merges them across gaps up to
   * mergeGap, aligns the merged ranges outward (ranges that then touch are
   * joined) and lays them out in staging. With `piece` > 0 it also writes the
   * reads (each range cut into pieces) and the records' staging offsets.
   */
  private walk(ids: ArrayLike<number>, start: number, m: number, regions: readonly RecordRegion[], piece: number): number {
    const align = this.align;
    const gap = this.mergeGap;
    const nRegions = regions.length;
    let staging = 0;
    let total = 0;
    this.readCount = 0;
    for (let r = 0; r < nRegions; r++) {
      const region = regions[r]!;
      const offset = region.offset;
      const stride = region.stride;
      const bytes = region.bytes;
      let open = false;
      let mergedEnd = 0; // end of the current merged (unaligned) range
      let rangeStart = 0; // the current aligned range
      let rangeEnd = 0;
      let base = 0; // its staging offset
      for (let j = 0; j < m; j++) {
        const s = offset + ids[start + j]! * stride;
        const e = s + bytes;
        // Same merged range when the gap is small enough to read through; else a new merged range,
        // which still joins the current aligned range when the aligned ranges touch.
        if (!(open && s - mergedEnd <= gap)) {
          const alignedStart = floorTo(s, align);
          if (!open || alignedStart > rangeEnd) {
            if (open) {
              if (piece) this.cut(rangeStart, rangeEnd, base, piece);
              staging = base + (rangeEnd - rangeStart);
              total += rangeEnd - rangeStart;
            }
            base = ceilTo(staging, align);
            rangeStart = alignedStart;
            rangeEnd = alignedStart;
            open = true;
          }
        }
        mergedEnd = e;
        const alignedEnd = ceilTo(e, align);
        if (alignedEnd > rangeEnd) rangeEnd = alignedEnd;
        if (piece) this.recordAt[j * nRegions + r] = base + (s - rangeStart);
      }
      if (open) {
        if (piece) this.cut(rangeStart, rangeEnd, base, piece);
        staging = base + (rangeEnd - rangeStart);
        total += rangeEnd - rangeStart;
      }
    }
    this.total = total;
    return staging;
  }

  /** Appends the reads of range [start, end) placed at staging `base`, at most `piece` bytes each. */
  private cut(start: number, end: number, base: number, piece: number): void {
    for (let at = start; at < end; at += piece) {
      const i = this.readCount;
      if (i === this.readOffset.length) this.growReads();
      const len = Math.min(piece, end - at);
      this.readOffset[i] = at;
      this.readLength[i] = len;
      this.readStaging[i] = base + (at - start);
      this.readCount = i + 1;
      // A new request unless this range joins the multi-range request being filled (ascending, short of its share, under
      // the part cap). Each request's share is what is left over the requests left, and it takes ranges until it holds
      // it: the last ranges never spill into one request more than the link has in flight (a second round trip).
      const k = this.requestCount;
      if (!this.multi || k === 0 || this.groupBytes >= this.groupTarget || i - this.reqFirst[k - 1]! >= MAX_RANGES_PER_REQUEST || at < this.groupEnd) {
        this.reqFirst[k] = i;
        this.requestCount = k + 1;
        this.groupBytes = 0;
        this.groupTarget = Math.min(this.maxRead, Math.ceil((this.total - this.grouped) / Math.max(1, this.roundParallel - k)));
      }
      this.groupBytes += len;
      this.grouped += len;
      this.groupEnd = at + len;
    }
  }

  private growReads(): void {
    const grow = (a: Float64Array) => {
      const b = new Float64Array(2 * a.length);
      b.set(a);
      return b;
    };
    this.readOffset = grow(this.readOffset);
    this.readLength = grow(this.readLength);
    this.readStaging = grow(this.readStaging);
    const q = new Uint32Array(2 * this.reqFirst.length);
    q.set(this.reqFirst);
    this.reqFirst = q;
  }
}

/**
 * Plans reads for the records `ids[0..n)` (ascending, distinct) in every
 * region, so that everything fits `stagingBytes`; when it does not, the plan
 * covers the longest prefix of `ids` that fits (`count`) and the caller plans
 * the rest after consuming it. (A fresh ReadPlanner's plan, as objects.)
 */
export function planReads(
  ids: ArrayLike<number>,
  n: number,
  regions: readonly RecordRegion[],
  hints: ReadHints,
  alignment: number,
  stagingBytes: number,
  link?: LinkCosts,
): ReadPlan {
  const planner = new ReadPlanner(hints, alignment, stagingBytes, n, regions.length);
  planner.setLink(link);
  const p = planner.plan(ids, 0, n, regions);
  const reads: ReadOp[] = [];
  for (let i = 0; i < p.readCount; i++) reads.push({ offset: p.readOffset[i]!, length: p.readLength[i]!, staging: p.readStaging[i]! });
  const plan: ReadPlan = { reads, stagingBytes: p.stagingBytes, readBytes: p.readBytes, recordAt: p.recordAt.slice(0, p.count * regions.length), count: p.count };
  if (link) plan.requests = Array.from(p.reqFirst.subarray(0, p.requestCount));
  return plan;
}

export { runBounded } from '../util/bounded.js';
