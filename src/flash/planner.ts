/**
 * The read planner: turns "these neurons of this layer" into few, large,
 * aligned reads (PAPER.md "Reading": larger chunks and merged near reads beat
 * many small ones), laid out in a staging area, and tells where each wanted
 * record landed.
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
}

export const DEFAULT_HINTS: ReadHints = { mergeGap: 0, maxRead: 1 << 20, parallel: 8 };

const floorTo = (n: number, a: number) => Math.floor(n / a) * a;
const ceilTo = (n: number, a: number) => Math.ceil(n / a) * a;

interface Range {
  start: number;
  end: number;
  /** index of the first and one-past-last wanted record inside */
  first: number;
  last: number;
}

/**
 * Plans reads for the records `ids[0..n)` (ascending, distinct) in every
 * region, so that everything fits `stagingBytes`; when it does not, the plan
 * covers the longest prefix of `ids` that fits (`count`) and the caller plans
 * the rest after consuming it.
 */
export function planReads(
  ids: ArrayLike<number>,
  n: number,
  regions: readonly RecordRegion[],
  hints: ReadHints,
  alignment: number,
  stagingBytes: number,
): ReadPlan {
  const align = Math.max(1, alignment);
  const maxRead = Math.max(align, floorTo(hints.maxRead, align));
  const plan = (count: number) => planPrefix(ids, count, regions, hints.mergeGap, align, maxRead, hints.parallel);
  const all = plan(n);
  if (all.stagingBytes <= stagingBytes) return all;
  // Staging use grows with the prefix length: binary-search the longest prefix that fits.
  let lo = 1;
  let hi = n - 1;
  if (plan(1).stagingBytes > stagingBytes) throw new RangeError(`staging area of ${stagingBytes} bytes cannot hold one record (${plan(1).stagingBytes} bytes needed)`);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (plan(mid).stagingBytes <= stagingBytes) lo = mid;
    else hi = mid - 1;
  }
  return plan(lo);
}

/** Reads are not split below this to fill the parallel slots: smaller requests cost more than they overlap. */
export const MIN_SPLIT_READ = 64 << 10;

function planPrefix(ids: ArrayLike<number>, n: number, regions: readonly RecordRegion[], mergeGap: number, align: number, maxRead: number, parallel: number): ReadPlan {
  const reads: ReadOp[] = [];
  const ranges = regions.map((region) => mergedRanges(ids, n, region, mergeGap, align));
  // A few long ranges would leave connections idle: cut pieces so that about `parallel` reads are in flight.
  const total = ranges.reduce((sum, rs) => sum + rs.reduce((a, r) => a + r.end - r.start, 0), 0);
  const piece = Math.max(align, Math.min(maxRead, Math.max(ceilTo(MIN_SPLIT_READ, align), ceilTo(Math.ceil(total / Math.max(1, parallel)), align))));
  const recordAt = new Float64Array(n * regions.length);
  let staging = 0;
  let readBytes = 0;
  regions.forEach((region, r) => {
    const aligned = ranges[r]!;
    // each range occupies contiguous staging; split into reads of at most `piece`
    for (const rg of aligned) {
      staging = ceilTo(staging, align);
      for (let at = rg.start; at < rg.end; at += piece) {
        const length = Math.min(piece, rg.end - at);
        reads.push({ offset: at, length, staging: staging + (at - rg.start) });
      }
      for (let j = rg.first; j < rg.last; j++) {
        recordAt[j * regions.length + r] = staging + (region.offset + ids[j]! * region.stride - rg.start);
      }
      staging += rg.end - rg.start;
      readBytes += rg.end - rg.start;
    }
  });
  return { reads, stagingBytes: staging, readBytes, recordAt, count: n };
}

/** One region's wanted records as ranges: merged across gaps up to mergeGap, then aligned outward (touching ranges joined). */
function mergedRanges(ids: ArrayLike<number>, n: number, region: RecordRegion, mergeGap: number, align: number): Range[] {
  const ranges: Range[] = [];
  for (let j = 0; j < n; j++) {
    const start = region.offset + ids[j]! * region.stride;
    const end = start + region.bytes;
    const cur = ranges[ranges.length - 1];
    if (cur && start - cur.end <= mergeGap) {
      cur.end = end;
      cur.last = j + 1;
    } else ranges.push({ start, end, first: j, last: j + 1 });
  }
  const aligned: Range[] = [];
  for (const rg of ranges) {
    const start = floorTo(rg.start, align);
    const end = ceilTo(rg.end, align);
    const cur = aligned[aligned.length - 1];
    if (cur && start <= cur.end) {
      cur.end = Math.max(cur.end, end);
      cur.last = rg.last;
    } else aligned.push({ start, end, first: rg.first, last: rg.last });
  }
  return aligned;
}

export { runBounded } from '../util/bounded.js';
