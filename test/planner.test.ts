import test from 'ava';
import fc from 'fast-check';
import { planReads, runBounded, type RecordRegion } from '../src/flash/planner.js';

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
