/**
 * The OPFS cache tier's policy, in Node against an in-memory OPFS (the real
 * one is exercised in Chromium by test/browser.test.ts): a second open reads
 * nothing from the network, concurrent reads fetch a chunk once, the bound
 * holds with LRU eviction (and other models' caches go first), a stale copy
 * is discarded, a full quota or a locked model degrades to the network with
 * a notice and never a wrong byte, and model output through the tier equals
 * the direct read.
 */
import test from 'ava';
import fc from 'fast-check';
import { OpfsCachedSource, cacheKey } from '../src/source/opfs.js';
import { MemorySource } from '../src/source/memory.js';
import type { Source } from '../src/source/types.js';
import { openModel } from '../src/index.js';
import { CountingSource, readAt } from './helpers/counting-source.js';
import { MemDir, MemStorage } from './helpers/mem-opfs.js';
import { STORIES_BIN, STORIES_TOK, convertToBytes } from './helpers/models.js';

function randomBytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const C = 4096;


test('a second open serves every chunk already read from OPFS, byte-exact', async (t) => {
  const bytes = randomBytes(10 * C + 123);
  const root = new MemDir();
  const ranges: [number, number][] = [[0, 100], [C - 10, 30], [3 * C + 5, 2 * C], [10 * C, 123], [7 * C, C]];
  const net1 = new CountingSource(bytes);
  const a = await OpfsCachedSource.open(net1, { root, chunkBytes: C });
  t.true(a.enabled);
  for (const [o, n] of ranges) t.deepEqual(await readAt(a, o, n), bytes.subarray(o, o + n));
  t.true(net1.reads.length > 0);
  t.true(net1.reads.every(([o, n]) => o % C === 0 && (n % C === 0 || o + n === bytes.byteLength)), 'misses are read in whole chunks');
  await a.close();
  t.true(net1.closed);

  const net2 = new CountingSource(bytes);
  const b = await OpfsCachedSource.open(net2, { root, chunkBytes: C });
  for (const [o, n] of ranges) t.deepEqual(await readAt(b, o, n), bytes.subarray(o, o + n));
  t.deepEqual(net2.reads, [], 'nothing from the network the second time');
  t.is(b.counters.missChunks, 0);
  t.true(b.counters.hitChunks >= ranges.length);
  // A range that was never read still comes from the network.
  t.deepEqual(await readAt(b, 6 * C + 7, 10), bytes.subarray(6 * C + 7, 6 * C + 17));
  t.is(net2.reads.length, 1);
  await b.close();
});

test('concurrent reads of the same chunks fetch each chunk once', async (t) => {
  const bytes = randomBytes(8 * C, 7);
  const net = new CountingSource(bytes);
  const src = await OpfsCachedSource.open(net, { root: new MemDir(), chunkBytes: C });
  const ranges: [number, number][] = [[0, 2 * C], [C + 1, 2 * C], [2 * C + 9, 100], [0, 8 * C]];
  const outs = await Promise.all(ranges.map(([o, n]) => readAt(src, o, n)));
  ranges.forEach(([o, n], i) => t.deepEqual(outs[i], bytes.subarray(o, o + n)));
  const fetched = net.reads.reduce((s, [, n]) => s + n, 0);
  t.is(fetched, bytes.byteLength, 'every byte once');
  t.true(src.counters.sharedChunks > 0);
  t.is(src.cachedChunks, 8);
  await src.close();
});

test('bounded: the cache never exceeds maxBytes, evicts least recently used chunks, and stays exact (property)', async (t) => {
  const bytes = randomBytes(24 * C + 77, 3);
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 6 }),
      fc.array(fc.tuple(fc.integer({ min: 0, max: bytes.byteLength - 1 }), fc.integer({ min: 1, max: 3 * C })), { minLength: 1, maxLength: 25 }),
      async (slots, reads) => {
        const root = new MemDir();
        const maxBytes = slots * C;
        for (let round = 0; round < 2; round++) {
          const src = await OpfsCachedSource.open(new CountingSource(bytes), { root, chunkBytes: C, maxBytes });
          for (const [o, n0] of reads) {
            const n = Math.min(n0, bytes.byteLength - o);
            const got = await readAt(src, o, n);
            if (!Buffer.from(got).equals(Buffer.from(bytes.subarray(o, o + n)))) return false;
            if (src.cachedBytes > maxBytes) return false;
          }
          await src.close();
          const dir = (await (await root.getDirectoryHandle('flashlm-cache')).getDirectoryHandle(await cacheKey('https://cdn.example/model.flm'))) as MemDir;
          const data = dir.entries.get('data') as unknown as { bytes: Uint8Array };
          if (data.bytes.byteLength > maxBytes) return false;
        }
        return true;
      },
    ),
    { numRuns: 60 },
  );
  // And the LRU order is the one evicted: read 0,1,2 with room for 2, then 1 is still cached, 0 is not.
  const net = new CountingSource(bytes);
  const src = await OpfsCachedSource.open(net, { root: new MemDir(), chunkBytes: C, maxBytes: 2 * C });
  await readAt(src, 0, 1);
  await readAt(src, C, 1);
  await readAt(src, 0, 1); // 0 is now the most recent
  await readAt(src, 2 * C, 1); // evicts 1
  net.reads = [];
  await readAt(src, 0, 1);
  t.deepEqual(net.reads, []);
  await readAt(src, C, 1);
  t.deepEqual(net.reads, [[C, C]]);
  t.true(src.counters.evictedChunks >= 1);
  await src.close();
});

test('a stale copy (ETag changed) is discarded with a notice; the new bytes are served', async (t) => {
  const root = new MemDir();
  const v1 = randomBytes(6 * C, 11);
  const a = await OpfsCachedSource.open(new CountingSource(v1, { identity: 'http:etag:"v1"' }), { root, chunkBytes: C });
  await readAt(a, 0, 6 * C);
  await a.close();
  const v2 = randomBytes(6 * C, 12);
  const notices: string[] = [];
  const net = new CountingSource(v2, { identity: 'http:etag:"v2"' });
  const b = await OpfsCachedSource.open(net, { root, chunkBytes: C, onNotice: (m) => notices.push(m) });
  t.true(b.enabled);
  t.is(b.cachedChunks, 0);
  t.regex(notices.join('\n'), /stale.*discarded/);
  t.deepEqual(await readAt(b, 0, 6 * C), v2);
  t.is(net.reads.length, 1);
  await b.close();
  // The new version is what is cached now.
  const c = await OpfsCachedSource.open(new CountingSource(v2, { identity: 'http:etag:"v2"' }), { root, chunkBytes: C });
  t.is(c.cachedChunks, 6);
  await c.close();
});

test('a full quota degrades to the network with a notice, never an error or a wrong byte', async (t) => {
  const storage = new MemStorage(3 * C + 1024); // room for the small files and 3 chunks
  const root = new MemDir(storage);
  const bytes = randomBytes(12 * C, 5);
  const notices: string[] = [];
  const net = new CountingSource(bytes);
  const src = await OpfsCachedSource.open(net, { root, chunkBytes: C, onNotice: (m) => notices.push(m) });
  for (let i = 0; i < 12; i++) t.deepEqual(await readAt(src, i * C + 1, C - 2), bytes.subarray(i * C + 1, (i + 1) * C - 1));
  t.regex(notices.join('\n'), /quota is full.*network only/);
  t.is(notices.length, 1, 'one notice, not one per read');
  t.true(src.cachedChunks >= 1 && src.cachedChunks <= 3);
  t.true(storage.used <= storage.quota);
  // Chunks stored before the quota ran out are still served locally; the rest comes from the network.
  net.reads = [];
  t.deepEqual(await readAt(src, 0, 12 * C), bytes);
  t.true(net.reads.length >= 1);
  t.true(src.counters.hitChunks >= 1);
  await src.close();
});

test('write and read failures turn the cache off; reads go on from the network', async (t) => {
  const storage = new MemStorage();
  const root = new MemDir(storage);
  const bytes = randomBytes(4 * C, 9);
  const a = await OpfsCachedSource.open(new CountingSource(bytes), { root, chunkBytes: C });
  await readAt(a, 0, 2 * C);
  storage.failing.add('read');
  const notices: string[] = [];
  (a as unknown as { onNotice: (m: string) => void }).onNotice = (m) => notices.push(m);
  t.deepEqual(await readAt(a, 0, 4 * C), bytes);
  t.false(a.enabled);
  t.regex(a.notices.join('\n'), /read failed/);
  await a.close();
  storage.failing.clear();
  storage.failing.add('write');
  const b = await OpfsCachedSource.open(new CountingSource(bytes), { root, chunkBytes: C });
  t.deepEqual(await readAt(b, 2 * C, 2 * C), bytes.subarray(2 * C));
  t.false(b.enabled);
  await b.close();
});

test('a model open elsewhere is not touched: the second opener reads from the network', async (t) => {
  const root = new MemDir();
  const bytes = randomBytes(4 * C, 2);
  const a = await OpfsCachedSource.open(new CountingSource(bytes), { root, chunkBytes: C });
  const b = await OpfsCachedSource.open(new CountingSource(bytes), { root, chunkBytes: C, lockRetries: 1 });
  t.true(a.enabled);
  t.false(b.enabled);
  t.regex(b.notices.join('\n'), /in use by another tab/);
  t.deepEqual(await readAt(b, 0, 4 * C), bytes);
  await b.close();
  await a.close();
});

test('room for a new model is made by deleting the least recently used other model first', async (t) => {
  const root = new MemDir();
  const old = randomBytes(4 * C, 21);
  const newer = randomBytes(4 * C, 22);
  const fresh = randomBytes(4 * C, 23);
  const o = { root, chunkBytes: C, maxBytes: 8 * C };
  for (const [name, b] of [['https://cdn/old.flm', old], ['https://cdn/newer.flm', newer]] as const) {
    const s = await OpfsCachedSource.open(new CountingSource(b, { identity: 'http:etag:"1"', name }), o);
    await readAt(s, 0, 4 * C);
    await s.close();
    await new Promise((r) => setTimeout(r, 5)); // distinct lastUsed
  }
  const s = await OpfsCachedSource.open(new CountingSource(fresh, { identity: 'http:etag:"1"', name: 'https://cdn/fresh.flm' }), o);
  t.deepEqual(await readAt(s, 0, 4 * C), fresh);
  t.is(s.counters.evictedModels, 1);
  t.is(s.counters.evictedChunks, 0);
  await s.close();
  const top = (await root.getDirectoryHandle('flashlm-cache')) as MemDir;
  t.false(top.entries.has(await cacheKey('https://cdn/old.flm')), 'the oldest model went');
  t.true(top.entries.has(await cacheKey('https://cdn/newer.flm')));
  t.true(top.bytes() <= 8 * C + 4096, `cache holds ${top.bytes()} bytes`);
});

test('a source without a validator is not cached', async (t) => {
  const src = await OpfsCachedSource.open(new CountingSource(randomBytes(C), { identity: 'http:4096:unvalidated' }), { root: new MemDir(), chunkBytes: C });
  t.false(src.enabled);
  t.regex(src.notices[0]!, /no ETag or Last-Modified/);
  await src.close();
});

test('a model generates the same tokens through the cache tier, cold and warm', async (t) => {
  const bytes = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  const rates: (number | null)[] = [];
  const greedy = async (source: Source) => {
    // batchSize 1: the prompt runs token by token, so its (cold) reads count in the run stats
    const m = await openModel(source, { strategy: 'window', sparsity: 'oracle', contextLength: 64, batchSize: 1 });
    const text = await m.complete('Once upon a time', { maxTokens: 24 });
    rates.push(m.stats.summary().tierHitRate);
    await m.close();
    return text;
  };
  const want = await greedy(new MemorySource(bytes));
  const root = new MemDir();
  const cold = new CountingSource(bytes);
  t.is(await greedy(await OpfsCachedSource.open(cold, { root, chunkBytes: 4096 })), want);
  const warm = new CountingSource(bytes);
  t.is(await greedy(await OpfsCachedSource.open(warm, { root, chunkBytes: 4096 })), want);
  t.true(cold.reads.length > 0);
  t.deepEqual(warm.reads, []);
  // Run stats count the tier: no tier -> null; warm -> every byte served by OPFS; a tier far smaller
  // than the model (64 KiB for 1 MB) evicts, so its tokens fetch from the network too.
  t.is(rates[0], null);
  t.is(rates[2], 1);
  t.is(await greedy(await OpfsCachedSource.open(new CountingSource(bytes), { root: new MemDir(), chunkBytes: 4096, maxBytes: 65536 })), want);
  t.true(rates[3]! > 0 && rates[3]! < 1, `small tier ${rates[3]}`);
});
