/**
 * The in-memory cache tier (issue 13): every byte equals the inner source's
 * (random overlapping, partial, adjacent reads; chunk borders; the file's
 * end; readRanges), only the missing bytes are read from the inner source
 * and never rounded out to chunks, a read held in memory makes no inner
 * request, the LRU bound holds, the tier counters are exact and compose
 * over another tier (OPFS), and a model over HTTP with `memoryCache` gives
 * the dense engine's tokens and serves a repeated generation from memory.
 */
import test from 'ava';
import { MemoryCachedSource } from '../src/source/memory-cache.js';
import { MemorySource } from '../src/source/memory.js';
import { OpfsCachedSource } from '../src/source/opfs.js';
import type { Source, TierCounters } from '../src/source/types.js';
import { ArgumentError, SourceError } from '../src/errors.js';
import { openModel, MemoryCachedSource as Exported, type OpenOptions } from '../src/node.js';
import { rng } from '../src/util/random.js';
import { CountingSource, readAt } from './helpers/counting-source.js';
import { MemDir } from './helpers/mem-opfs.js';
import { OPT_DIR, convertToBytes, optReference } from './helpers/models.js';
import { servedDir } from './helpers/served-dir.js';
import type { TokenStats } from '../src/flash/stats.js';

function randomBytes(n: number, seed = 1): Uint8Array {
  const r = rng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

const C = 4096;


/** A random read: anywhere, near a chunk border, at the file's end, or next to the previous one. */
function randomRange(r: () => number, size: number, prev: [number, number]): [number, number] {
  const kind = r();
  const len = 1 + Math.floor(r() * (r() < 0.2 ? 5 * C : 600));
  let o: number;
  if (kind < 0.25) o = Math.floor(r() * size);
  else if (kind < 0.5) o = Math.max(0, Math.floor(r() * (size / C)) * C - Math.floor(r() * 300));
  else if (kind < 0.65) o = size - len;
  else if (kind < 0.85) o = prev[0] + prev[1]; // adjacent
  else o = prev[0] + Math.floor(r() * prev[1]); // overlapping
  o = Math.max(0, Math.min(o, size - 1));
  return [o, Math.min(len, size - o)];
}

test('random reads are byte-exact; only missing bytes are read, never outside the request; counters exact (no eviction)', async (t) => {
  const bytes = randomBytes(40 * C + 321, 7);
  for (const readThroughBytes of [0, 4096]) {
    const net = new CountingSource(bytes);
    const mc = new MemoryCachedSource(net, { maxBytes: 1 << 30, chunkBytes: C, readThroughBytes });
    const held = new Uint8Array(bytes.byteLength); // bytes ever read: the cache holds them all
    const r = rng(11 + readThroughBytes);
    let prev: [number, number] = [0, 100];
    for (let step = 0; step < 600; step++) {
      const [o, n] = randomRange(r, bytes.byteLength, prev);
      prev = [o, n];
      const readsBefore = net.reads.length;
      const netBefore = net.readBytes;
      const hitBefore = mc.tier.hitBytes;
      let unseen = 0;
      for (let i = o; i < o + n; i++) unseen += held[i] ? 0 : 1;
      // readInto at an offset inside a larger buffer, or read.
      let got: Uint8Array;
      if (step % 2) {
        const buf = new Uint8Array(n + 37).fill(0xee);
        await mc.readInto(o, buf, 17, n);
        t.true(buf.subarray(0, 17).every((x) => x === 0xee) && buf.subarray(17 + n).every((x) => x === 0xee), 'nothing written outside [at, at + length)');
        got = buf.subarray(17, 17 + n);
      } else got = await readAt(mc, o, n);
      if (!bytesEqual(got, bytes.subarray(o, o + n))) return t.fail(`step ${step}: read [${o}, +${n}) differs`);
      const newReads = net.reads.slice(readsBefore);
      t.true(newReads.every(([a, len]) => a >= o && a + len <= o + n), 'inner reads stay inside the request (no rounding out)');
      const netBytes = net.readBytes - netBefore;
      t.is(mc.tier.hitBytes - hitBefore + netBytes, n, 'hit bytes + inner bytes = the request');
      if (readThroughBytes === 0) t.is(netBytes, unseen, 'exactly the bytes never read before come from the inner source');
      else t.true(netBytes >= unseen);
      if (unseen === 0 && readThroughBytes === 0) t.is(newReads.length, 0, 'a read held in memory makes no inner read');
      held.fill(1, o, o + n);
    }
    t.is(mc.tier.networkBytes, net.readBytes);
    t.is(mc.counters.innerBytes, net.readBytes);
    t.is(mc.counters.innerReads, net.reads.length);
    t.true(mc.counters.hitReads > 0);
    t.is(mc.cachedBytes, held.reduce((s, x) => s + x, 0), 'the cache holds exactly the bytes read');
  }
});

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

test('under a tight bound: byte-exact, never above maxBytes, concurrent reads included', async (t) => {
  const bytes = randomBytes(30 * C + 5, 3);
  for (const maxBytes of [1, C - 1, 3 * C, 10 * C + 17]) {
    const net = new CountingSource(bytes);
    const mc = new MemoryCachedSource(net, { maxBytes, chunkBytes: C });
    const r = rng(maxBytes);
    let prev: [number, number] = [0, 10];
    for (let round = 0; round < 60; round++) {
      const batch: [number, number][] = [];
      for (let k = 0; k < 5; k++) batch.push((prev = randomRange(r, bytes.byteLength, prev)));
      const got = await Promise.all(batch.map(([o, n]) => readAt(mc, o, n)));
      for (let k = 0; k < batch.length; k++) {
        const [o, n] = batch[k]!;
        if (!bytesEqual(got[k]!, bytes.subarray(o, o + n))) return t.fail(`maxBytes ${maxBytes}: [${o}, +${n}) differs`);
      }
      t.true(mc.cachedBytes <= maxBytes, `${mc.cachedBytes} cached > ${maxBytes}`);
    }
    t.true(mc.counters.evictedChunks > 0);
  }
});

test('misses read exactly what is missing: partial chunks, merged pieces, read-through of small cached gaps', async (t) => {
  const bytes = randomBytes(8 * C, 5);
  const net = new CountingSource(bytes);
  const mc = new MemoryCachedSource(net, { maxBytes: 1 << 20, chunkBytes: C, readThroughBytes: 0 });
  await readAt(mc, 100, 100);
  await readAt(mc, 300, 100);
  t.deepEqual(net.reads, [[100, 100], [300, 100]], 'sparse reads are not rounded out to chunks');
  t.deepEqual(await readAt(mc, 150, 200), bytes.subarray(150, 350));
  t.deepEqual(net.reads.slice(2), [[200, 100]], 'only the hole between two cached pieces');
  t.is(mc.cachedBytes, 300);
  t.is(mc.cachedChunks, 1);
  // Across a chunk border: the two chunks' missing parts are one inner read.
  await readAt(mc, C - 50, 100);
  t.deepEqual(net.reads.slice(3), [[C - 50, 100]]);
  t.deepEqual(await readAt(mc, 120, 250), bytes.subarray(120, 370));
  t.is(net.reads.length, 4, 'held: no inner read');
  t.is(mc.counters.hitReads, 1);

  // With read-through, missing runs less than readThroughBytes apart are one request.
  const net2 = new CountingSource(bytes);
  const rt = new MemoryCachedSource(net2, { maxBytes: 1 << 20, chunkBytes: C, readThroughBytes: 1024 });
  for (const o of [0, 200, 400]) await readAt(rt, o, 100);
  t.deepEqual(await readAt(rt, 0, 3000), bytes.subarray(0, 3000));
  t.deepEqual(net2.reads.slice(3), [[100, 2900]], 'one read through the cached pieces');
  t.is(rt.tier.hitBytes, 100, 'the bytes read again do not count as hits');
  await readAt(rt, 4500, 1100);
  t.deepEqual(await readAt(rt, 4000, 3000), bytes.subarray(4000, 7000));
  t.deepEqual(net2.reads.slice(5), [[4000, 500], [5600, 1400]], 'cached gaps of readThroughBytes or more are not read again');
});

test('LRU: the least recently used chunk goes first; a hit refreshes a chunk', async (t) => {
  const bytes = randomBytes(8 * C, 9);
  const net = new CountingSource(bytes);
  const mc = new MemoryCachedSource(net, { maxBytes: 3 * C, chunkBytes: C });
  for (const c of [0, 1, 2]) await readAt(mc, c * C, C);
  t.is(mc.cachedBytes, 3 * C);
  await readAt(mc, 10, 20); // chunk 0 is now the most recent
  t.is(net.reads.length, 3);
  await readAt(mc, 3 * C, C); // evicts chunk 1
  t.is(mc.cachedBytes, 3 * C);
  t.is(mc.counters.evictedChunks, 1);
  await readAt(mc, 0, C);
  await readAt(mc, 2 * C, C);
  t.is(net.reads.length, 4, 'chunks 0 and 2 stayed');
  t.deepEqual(await readAt(mc, C, C), bytes.subarray(C, 2 * C));
  t.deepEqual(net.reads.slice(4), [[C, C]], 'chunk 1 was evicted');
  t.true(mc.cachedBytes <= 3 * C);
});

test('readRanges: byte-exact, missing parts only in one inner readRanges call, held ranges cost none; absent when the inner source has none', async (t) => {
  const bytes = randomBytes(50 * C + 77, 13);
  const net = new CountingSource(bytes, { ranges: true });
  const mc = new MemoryCachedSource(net, { maxBytes: 1 << 30, chunkBytes: C, readThroughBytes: 0 });
  t.truthy(mc.readRanges);
  t.true(await mc.multiRange!());
  const held = new Uint8Array(bytes.byteLength);
  const r = rng(5);
  for (let step = 0; step < 200; step++) {
    // Ascending, disjoint ranges (touching sometimes), at scattered places in the buffer.
    const count = 1 + Math.floor(r() * 6);
    const offsets: number[] = [];
    const lengths: number[] = [];
    const ats: number[] = [];
    let o = Math.floor(r() * 20 * C);
    let at = 0;
    for (let k = 0; k < count && o < bytes.byteLength; k++) {
      const n = Math.min(1 + Math.floor(r() * 3000), bytes.byteLength - o);
      offsets.push(o);
      lengths.push(n);
      at += Math.floor(r() * 50);
      ats.push(at);
      at += n;
      o += n + (r() < 0.3 ? 0 : Math.floor(r() * 3 * C));
    }
    const into = new Uint8Array(at + 10);
    const from = offsets.length > 1 && r() < 0.3 ? 1 : 0;
    const callsBefore = net.rangeCalls.length;
    const readsBefore = net.reads.length;
    let unseen = 0;
    for (let k = from; k < offsets.length; k++) for (let i = offsets[k]!; i < offsets[k]! + lengths[k]!; i++) unseen += held[i] ? 0 : 1;
    await mc.readRanges!(offsets, lengths, ats, from, offsets.length, into);
    for (let k = from; k < offsets.length; k++) {
      if (!bytesEqual(into.subarray(ats[k]!, ats[k]! + lengths[k]!), bytes.subarray(offsets[k]!, offsets[k]! + lengths[k]!))) return t.fail(`step ${step}: range ${k} differs`);
      held.fill(1, offsets[k]!, offsets[k]! + lengths[k]!);
    }
    const calls = net.rangeCalls.slice(callsBefore);
    const reads = net.reads.slice(readsBefore);
    const innerBytes = calls.flat().reduce((s, [, n]) => s + n, 0) + reads.reduce((s, [, n]) => s + n, 0);
    t.is(innerBytes, unseen, 'exactly the bytes never read before');
    t.true(calls.length + reads.length <= 1, 'at most one inner call');
    if (unseen === 0) t.is(calls.length + reads.length, 0);
  }
  t.is(mc.tier.networkBytes, mc.counters.innerBytes);

  const plain = new MemoryCachedSource(new CountingSource(bytes), { maxBytes: 1 << 20 });
  t.is(plain.readRanges, undefined);
  t.is(plain.multiRange, undefined);
});

test('tier counters compose over another tier: memory hits and OPFS hits both count, the network is OPFS\'s', async (t) => {
  const bytes = randomBytes(16 * C, 21);
  const net = new CountingSource(bytes);
  const opfs = await OpfsCachedSource.open(net, { root: new MemDir(), chunkBytes: C });
  t.true(opfs.enabled);
  const mc = new MemoryCachedSource(opfs, { maxBytes: 1 << 20, chunkBytes: C });
  const snap = (x: TierCounters) => [x.hitBytes, x.networkBytes];
  t.deepEqual(snap(mc.tier), [0, 0]);
  t.deepEqual(await readAt(mc, 100, 5000), bytes.subarray(100, 5100));
  t.deepEqual(snap(mc.tier), [0, 2 * C], 'a miss in both: OPFS fetched two whole chunks');
  t.deepEqual(await readAt(mc, 200, 1000), bytes.subarray(200, 1200));
  t.deepEqual(snap(mc.tier), [1000, 2 * C], 'served from memory');
  mc.clear();
  t.deepEqual(await readAt(mc, 0, 3000), bytes.subarray(0, 3000));
  t.deepEqual(snap(mc.tier), [4000, 2 * C], 'served from OPFS (memory was cleared)');
  t.is(mc.counters.hitBytes, 1000);
  t.is(net.reads.length, 1);
  await mc.close();
  t.true(net.closed, 'close closes the inner tiers');
  t.is(mc.cachedBytes, 0);
});

test('failures: an inner error reaches the caller and caches nothing; out-of-range reads are the inner source\'s errors; direct sources and bad options are refused', async (t) => {
  const bytes = randomBytes(4 * C, 2);
  const net = new CountingSource(bytes);
  const mc = new MemoryCachedSource(net, { maxBytes: 1 << 20, chunkBytes: C });
  net.failNext = true;
  await t.throwsAsync(readAt(mc, 10, 100), { instanceOf: SourceError, message: /network down/ });
  t.is(mc.cachedBytes, 0);
  t.deepEqual(await readAt(mc, 10, 100), bytes.subarray(10, 110));
  t.deepEqual(await readAt(mc, 4 * C - 7, 7), bytes.subarray(4 * C - 7), 'the last bytes');
  await t.throwsAsync(readAt(mc, 4 * C - 7, 8), { instanceOf: SourceError, message: /outside/ });
  await t.throwsAsync(mc.readInto(0, new Uint8Array(10), 5, 6), { instanceOf: RangeError });
  t.notThrows(() => new MemoryCachedSource(net, { maxBytes: 0 }));
  t.is(MemoryCachedSource.wrap(net, { maxBytes: 0 }), net);
  t.true(MemoryCachedSource.wrap(net, { maxBytes: 10 }) instanceof MemoryCachedSource);
  t.is(Exported, MemoryCachedSource, 'exported from the entry');
  const direct = new CountingSource(bytes, { alignment: 4096 });
  t.throws(() => new MemoryCachedSource(direct, { maxBytes: 1 << 20 }), { instanceOf: SourceError, message: /direct/ });
  t.throws(() => new MemoryCachedSource(net, { maxBytes: -1 }), { instanceOf: RangeError });
  for (const memoryCache of ['lots', '-5M', -1, Number.NaN]) {
    await t.throwsAsync(openModel(new MemorySource(bytes), { memoryCache }), { instanceOf: ArgumentError, message: /memory size|memoryCache must be/ }, String(memoryCache));
  }
  const d = new CountingSource(bytes, { alignment: 4096 });
  await t.throwsAsync(openModel(d, { memoryCache: '1M' }), { instanceOf: SourceError, message: /direct/ });
  t.true(d.closed, 'the source is closed when it cannot be wrapped');
});

// ---------------------------------------------------------------- end to end, over HTTP

const served = servedDir('flashlm-memcache-');
const { ref } = optReference();

async function generations(input: string | Source, opts: OpenOptions, n: number, times: number) {
  const model = await openModel(input, { contextLength: 64, ...opts });
  const runs: { ids: number[]; stats: TokenStats[] }[] = [];
  try {
    for (let k = 0; k < times; k++) {
      const ids: number[] = [];
      const stats: TokenStats[] = [];
      for await (const s of model.steps(ref.prompt, { maxTokens: n })) {
        if (s.token >= 0) ids.push(s.token);
        if (s.stats) stats.push(s.stats);
      }
      runs.push({ ids, stats });
    }
    return { runs, summary: model.stats.summary(), source: model.file.source };
  } finally {
    await model.close();
  }
}

test('a model over HTTP with memoryCache: the dense tokens, and a repeated generation served from memory', async (t) => {
  const N = 8;
  const bytes = await convertToBytes(OPT_DIR, { layout: 'bundled' });
  const { url } = served.place('opt.flm', bytes);
  const dense = await generations(new MemorySource(bytes), { strategy: 'dense' }, N, 1);
  t.is(dense.runs[0]!.ids.length, N);
  const opts: OpenOptions = { strategy: 'window', sparsity: 'oracle' };

  const cached = await generations(url, { ...opts, memoryCache: '64M' }, N, 2);
  t.true(cached.source instanceof MemoryCachedSource);
  for (const run of cached.runs) t.deepEqual(run.ids, dense.runs[0]!.ids);
  const sum = (s: TokenStats[], k: 'tierHitBytes' | 'tierNetworkBytes') => s.reduce((a, x) => a + x[k], 0);
  // The oracle reads past the tier: the first generation's neurons come from the network.
  t.true(sum(cached.runs[0]!.stats, 'tierNetworkBytes') > 0, 'the first generation reads from the network');
  const second = cached.runs[1]!.stats;
  t.true(second.length > 0);
  t.true(sum(second, 'tierHitBytes') > 0, 'the second generation is served from memory');
  t.is(sum(second, 'tierNetworkBytes'), 0, 'the cache holds the whole file: nothing from the network');
  t.true(cached.summary.tierHitRate !== null && cached.summary.tierHitRate > 0);

  const plain = await generations(url, opts, N, 1);
  t.deepEqual(plain.runs[0]!.ids, dense.runs[0]!.ids);
  t.true(plain.runs[0]!.stats.every((s) => s.tierHitBytes === 0 && s.tierNetworkBytes === 0), 'no tier without memoryCache');
  t.is(plain.summary.tierHitRate, null);
});

test('CLI: --memory-cache puts the tier in front of a URL (stats say so); a bad size is a one-line error', async (t) => {
  const { execFile } = await import('node:child_process');
  const { join } = await import('node:path');
  const run = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(process.execPath, ['bin/flashlm.js', ...args], { cwd: join(import.meta.dirname, '..') }, (e, stdout, stderr) => resolve({ code: e ? Number(e.code ?? 1) : 0, stdout, stderr })),
    );
  const { url } = served.place('cli.flm', await convertToBytes(OPT_DIR, { layout: 'bundled' }));
  const base = ['run', url, '-p', ref.prompt, '-n', '4', '--strategy', 'window', '--sparsity', 'oracle'];
  const ok = await run([...base, '--memory-cache', '64M', '--stats', 'json']);
  t.is(ok.code, 0, ok.stderr);
  t.true(ok.stdout.length > 0);
  const json = JSON.parse(ok.stderr.trim().split('\n').pop()!) as { tierHitRate: number | null };
  t.true(json.tierHitRate !== null && json.tierHitRate >= 0 && json.tierHitRate <= 1, JSON.stringify(json.tierHitRate));
  const table = await run([...base, '--memory-cache', '64M', '--stats', 'table']);
  t.regex(table.stderr, /bytes served by cache tiers/);
  const plain = await run([...base, '--stats', 'json']);
  t.is((JSON.parse(plain.stderr.trim().split('\n').pop()!) as { tierHitRate: number | null }).tierHitRate, null);
  const bad = await run([...base, '--memory-cache', 'lots']);
  t.not(bad.code, 0);
  t.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  t.notRegex(bad.stderr, /\n\s+at /);
});
