import test from 'ava';
import fc from 'fast-check';
import { MIN_SPLIT_READ, ReadPlanner, planReads, runBounded, type ReadPlan, type RecordRegion } from '../src/flash/planner.js';

const hints = (mergeGap: number, maxRead = 1 << 20, parallel = 4) => ({ mergeGap, maxRead, parallel });
const bundled: RecordRegion[] = [{ offset: 8192, stride: 100, bytes: 100 }];

test('adjacent records merge into one read', (t) => {
  const p = planReads([3, 4, 5], 3, bundled, hints(0), 1, 1 << 20);
  t.deepEqual(p.reads, [{ offset: 8192 + 300, length: 300, staging: 0 }]);
  t.deepEqual([...p.recordAt], [0, 100, 200]);
  t.is(p.readBytes, 300);
});

test('gaps up to mergeGap are read through; larger gaps split the read', (t) => {
  const filled = planReads([0, 2], 2, bundled, hints(100), 1, 1 << 20);
  t.deepEqual(filled.reads, [{ offset: 8192, length: 300, staging: 0 }]);
  t.deepEqual([...filled.recordAt], [0, 200]);
  const apart = planReads([0, 2], 2, bundled, hints(99), 1, 1 << 20);
  t.is(apart.reads.length, 2);
  t.deepEqual([...apart.recordAt], [0, 100]);
  t.is(apart.readBytes, 200);
});

test('aligned sources get aligned reads, staging and merged neighbours', (t) => {
  const p = planReads([0, 120, 125], 3, bundled, hints(0), 4096, 1 << 20);
  for (const r of p.reads) {
    t.is(r.offset % 4096, 0);
    t.is(r.length % 4096, 0);
    t.is(r.staging % 4096, 0);
  }
  // neuron 0 is in page [8192, 12288); 120 (20192..20292) and 125 (20692..20792) share page [16384, 20480)
  t.deepEqual(p.reads.map((r) => [r.offset, r.length, r.staging]), [[8192, 4096, 0], [16384, 8192, 4096]]);
  t.deepEqual([...p.recordAt], [0, 4096 + 20192 - 16384, 4096 + 20692 - 16384]);
  // pages that touch after alignment become one read
  t.is(planReads([0, 41], 2, bundled, hints(0), 4096, 1 << 20).reads.length, 1);
});

test('long runs are split into reads of at most maxRead, contiguous in staging', (t) => {
  const ids = Array.from({ length: 50 }, (_, i) => i);
  const p = planReads(ids, 50, bundled, hints(0, 1024), 1, 1 << 20);
  t.true(p.reads.every((r) => r.length <= 1024));
  t.is(p.reads.reduce((s, r) => s + r.length, 0), 5000);
  p.reads.forEach((r, i) => i > 0 && t.is(r.staging, p.reads[i - 1]!.staging + p.reads[i - 1]!.length));
});

test('few long ranges are cut so that about `parallel` reads are in flight, never below 64 KiB', (t) => {
  const big: RecordRegion[] = [{ offset: 0, stride: 2048, bytes: 2048 }];
  const all = Array.from({ length: 1024 }, (_, i) => i); // one 2 MiB range
  const p = planReads(all, all.length, big, hints(0, 4 << 20, 8), 4096, 8 << 20);
  t.is(p.reads.length, 8);
  t.true(p.reads.every((r) => r.length === 256 << 10));
  const small = planReads(all.slice(0, 100), 100, big, hints(0, 4 << 20, 8), 1, 8 << 20); // 200 KiB
  t.deepEqual(small.reads.map((r) => r.length), [65536, 65536, 65536, 8192]);
});

test('split layouts plan each part region separately', (t) => {
  const regions: RecordRegion[] = [
    { offset: 4096, stride: 64, bytes: 64 },
    { offset: 4096 + 64 * 1000, stride: 64, bytes: 64 },
  ];
  const p = planReads([7, 8], 2, regions, hints(0), 1, 1 << 20);
  t.deepEqual(p.reads, [
    { offset: 4096 + 7 * 64, length: 128, staging: 0 },
    { offset: 4096 + 64 * 1000 + 7 * 64, length: 128, staging: 128 },
  ]);
  t.deepEqual([...p.recordAt], [0, 128, 64, 192]);
});

test('a small staging area gets the longest prefix that fits', (t) => {
  const ids = [0, 10, 20, 30, 40];
  const p = planReads(ids, 5, bundled, hints(0), 1, 250);
  t.is(p.count, 2);
  t.true(p.stagingBytes <= 250);
  t.throws(() => planReads(ids, 5, bundled, hints(0), 1, 50), { instanceOf: RangeError });
});

test('offsets beyond 4 GiB stay exact', (t) => {
  const far: RecordRegion[] = [{ offset: 6 * 2 ** 30 + 4096, stride: 32768, bytes: 32768 }];
  const p = planReads([100000, 100001], 2, far, hints(0), 4096, 1 << 20);
  t.is(p.reads[0]!.offset, 6 * 2 ** 30 + 4096 + 100000 * 32768);
  t.is(p.reads[0]!.length, 65536);
});

test('property: every wanted record is read intact to where the plan says', (t) => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.nat(400), { minLength: 1, maxLength: 60 }),
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 1, max: 300 }),
      fc.constantFrom(1, 16, 512, 4096),
      fc.nat(2000),
      fc.integer({ min: 1, max: 20000 }),
      fc.integer({ min: 2000, max: 400000 }),
      (idList, nRegions, recBytes, align, gap, maxRead, stagingLimit) => {
        const ids = idList.sort((a, b) => a - b);
        const bundledStride = recBytes * nRegions;
        const split = nRegions > 1 && ids[0]! % 2 === 0;
        const regions: RecordRegion[] = Array.from({ length: nRegions }, (_, r) =>
          split ? { offset: 4096 + r * 401 * recBytes, stride: recBytes, bytes: recBytes } : { offset: 4096 + r * recBytes, stride: bundledStride, bytes: recBytes },
        );
        let plan;
        try {
          plan = planReads(ids, ids.length, regions, hints(gap, maxRead), align, stagingLimit);
        } catch (e) {
          return e instanceof RangeError; // one record does not fit the staging area
        }
        const fileByte = (o: number) => (o * 2654435761) >>> 24;
        const staging = new Int16Array(plan.stagingBytes).fill(-1);
        for (const r of plan.reads) {
          if (r.offset % align || r.length % align || r.staging % align) return false;
          if (r.length > Math.max(align, Math.floor(maxRead / align) * align)) return false;
          for (let i = 0; i < r.length; i++) {
            if (staging[r.staging + i] !== -1) return false; // reads never overlap in staging
            staging[r.staging + i] = fileByte(r.offset + i);
          }
        }
        if (plan.stagingBytes > stagingLimit || plan.count < 1) return false;
        for (let j = 0; j < plan.count; j++) {
          for (let r = 0; r < nRegions; r++) {
            const at = plan.recordAt[j * nRegions + r]!;
            const src = regions[r]!.offset + ids[j]! * regions[r]!.stride;
            for (let b = 0; b < recBytes; b++) if (staging[at + b] !== fileByte(src + b)) return false;
          }
        }
        return true;
      },
    ),
    { numRuns: 400 },
  );
  t.pass();
});

/** The planner as it was before ReadPlanner (objects per range, read and plan): the reference for its outputs. */
function referencePlan(ids: ArrayLike<number>, n: number, regions: readonly RecordRegion[], hints: { mergeGap: number; maxRead: number; parallel: number }, alignment: number, stagingBytes: number): ReadPlan {
  const floorTo = (v: number, a: number) => Math.floor(v / a) * a;
  const ceilTo = (v: number, a: number) => Math.ceil(v / a) * a;
  interface Range { start: number; end: number; first: number; last: number }
  const mergedRanges = (count: number, region: RecordRegion, mergeGap: number, align: number): Range[] => {
    const ranges: Range[] = [];
    for (let j = 0; j < count; j++) {
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
  };
  const align = Math.max(1, alignment);
  const maxRead = Math.max(align, floorTo(hints.maxRead, align));
  const plan = (count: number): ReadPlan => {
    const reads: ReadPlan['reads'] = [];
    const ranges = regions.map((region) => mergedRanges(count, region, hints.mergeGap, align));
    const total = ranges.reduce((sum, rs) => sum + rs.reduce((a, r) => a + r.end - r.start, 0), 0);
    const piece = Math.max(align, Math.min(maxRead, Math.max(ceilTo(MIN_SPLIT_READ, align), ceilTo(Math.ceil(total / Math.max(1, hints.parallel)), align))));
    const recordAt = new Float64Array(count * regions.length);
    let staging = 0;
    let readBytes = 0;
    regions.forEach((region, r) => {
      for (const rg of ranges[r]!) {
        staging = ceilTo(staging, align);
        for (let at = rg.start; at < rg.end; at += piece) reads.push({ offset: at, length: Math.min(piece, rg.end - at), staging: staging + (at - rg.start) });
        for (let j = rg.first; j < rg.last; j++) recordAt[j * regions.length + r] = staging + (region.offset + ids[j]! * region.stride - rg.start);
        staging += rg.end - rg.start;
        readBytes += rg.end - rg.start;
      }
    });
    return { reads, stagingBytes: staging, readBytes, recordAt, count };
  };
  const all = plan(n);
  if (all.stagingBytes <= stagingBytes) return all;
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

test('property: one reused ReadPlanner plans exactly what the object-per-range planner did, for any slice of the list', (t) => {
  const cases = fc.record({
    idList: fc.uniqueArray(fc.nat(3000), { minLength: 1, maxLength: 120 }),
    nRegions: fc.integer({ min: 1, max: 3 }),
    recBytes: fc.integer({ min: 1, max: 5000 }),
    split: fc.boolean(),
    align: fc.constantFrom(1, 16, 512, 4096),
    gap: fc.oneof(fc.constant(0), fc.nat(20000)),
    maxRead: fc.integer({ min: 1, max: 1 << 21 }),
    parallel: fc.integer({ min: 1, max: 16 }),
    stagingLimit: fc.integer({ min: 1000, max: 4 << 20 }),
    from: fc.nat(),
    far: fc.boolean(),
  });
  // One planner per geometry, reused across every case (as StreamingFfn does): buffers from earlier plans must not leak in.
  const planners = new Map<string, ReadPlanner>();
  fc.assert(
    fc.property(cases, (c) => {
      const ids = Int32Array.from(c.idList.sort((a, b) => a - b));
      const base = c.far ? 5 * 2 ** 32 + 4096 : 4096;
      const regions: RecordRegion[] = Array.from({ length: c.nRegions }, (_, r) =>
        c.split ? { offset: base + r * 3001 * c.recBytes, stride: c.recBytes, bytes: c.recBytes } : { offset: base + r * c.recBytes, stride: c.recBytes * c.nRegions, bytes: c.recBytes },
      );
      const hints = { mergeGap: c.gap, maxRead: c.maxRead, parallel: c.parallel };
      const start = c.from % ids.length;
      const key = JSON.stringify([hints, c.align, c.stagingLimit]);
      let planner = planners.get(key);
      if (!planner) planners.set(key, (planner = new ReadPlanner(hints, c.align, c.stagingLimit, 3000, 3)));
      const list = ids.subarray(start);
      let want: ReadPlan | RangeError;
      try {
        want = referencePlan(list, list.length, regions, hints, c.align, c.stagingLimit);
      } catch (e) {
        want = e as RangeError;
      }
      if (want instanceof RangeError) {
        t.throws(() => planner.plan(ids, start, ids.length, regions), { instanceOf: RangeError, message: want.message });
        t.throws(() => planReads(list, list.length, regions, hints, c.align, c.stagingLimit), { instanceOf: RangeError, message: want.message });
        return;
      }
      const p = planner.plan(ids, start, ids.length, regions);
      const reads = Array.from({ length: p.readCount }, (_, i) => ({ offset: p.readOffset[i]!, length: p.readLength[i]!, staging: p.readStaging[i]! }));
      t.deepEqual(
        { reads, stagingBytes: p.stagingBytes, readBytes: p.readBytes, count: p.count, recordAt: [...p.recordAt.subarray(0, p.count * c.nRegions)] },
        { reads: want.reads, stagingBytes: want.stagingBytes, readBytes: want.readBytes, count: want.count, recordAt: [...want.recordAt] },
      );
      const fresh = planReads(list, list.length, regions, hints, c.align, c.stagingLimit);
      t.deepEqual({ ...fresh, recordAt: [...fresh.recordAt] }, { ...want, recordAt: [...want.recordAt] });
    }),
    { numRuns: 500 },
  );
});

test('ReadPlanner: buffers sized at construction are never replaced by plans that fit', (t) => {
  const regions: RecordRegion[] = [{ offset: 0, stride: 3 * 700, bytes: 700 }, { offset: 700, stride: 3 * 700, bytes: 700 }];
  const planner = new ReadPlanner({ mergeGap: 0, maxRead: 4096, parallel: 8 }, 1, 64 << 10, 1000, 2);
  const buffers = [planner.readOffset, planner.readLength, planner.readStaging, planner.recordAt];
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let round = 0; round < 300; round++) {
    const ids = Int32Array.from(Array.from({ length: 1000 }, (_, i) => i).filter(() => rand() < 0.05 + 0.9 * (round % 2)));
    for (let done = 0; done < ids.length; done += planner.count) planner.plan(ids, done, ids.length, regions);
  }
  t.true(buffers.every((b, i) => b === [planner.readOffset, planner.readLength, planner.readStaging, planner.recordAt][i]));
});

test('runBounded keeps at most `parallel` tasks in flight and propagates failures', async (t) => {
  let inFlight = 0;
  let peak = 0;
  const tasks = Array.from({ length: 20 }, () => async () => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setTimeout(r, 2));
    inFlight--;
  });
  await runBounded(tasks, 3);
  t.is(peak, 3);
  await t.throwsAsync(runBounded([async () => Promise.reject(new Error('boom'))], 2), { message: 'boom' });
});
