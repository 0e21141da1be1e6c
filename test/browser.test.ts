/**
 * The browser demo (examples/browser/) in Debian's Chromium, against
 * `flashlm host` (in-process, so every request it answers is recorded):
 * - a person's run: fill the form, click Generate; the worker's text equals
 *   Node's greedy text, the page stays responsive, the panel and chart show
 *   non-zero per-token figures, and a screenshot is saved
 *   (test/artifacts/browser/finished.png);
 * - a second load of the same model sends no range request for chunks in
 *   OPFS (only the one-byte validator probe);
 * - the llama2.c-tokenizer fixture equals Node too;
 * - chat mode: two turns equal Node's model.chat, the second reusing the
 *   first's KV cache; a model without a chat template says so;
 * - a changed file (new ETag) discards the stale cache with a notice;
 * - a small cache bound holds (other models' caches are deleted first, then
 *   LRU chunks), and a full quota (set through the DevTools protocol)
 *   degrades to CDN-only with a notice, not a crash;
 * - the page loads no node_modules/undici file (the bundle is the graph).
 * Runs on the build in dist/ (scripts/test.sh builds first).
 */
import test from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { openModel, MemorySource } from '../src/node.js';
import { startStaticServer, type ServeRequest, type StaticServer } from '../src/cli/host.js';
import { launchBrowser, type Browser } from './helpers/browser.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK, convertToBytes, optChatBytes, optReference } from './helpers/models.js';
import { ROOT } from './helpers/processes.js';

const ARTIFACTS = join(ROOT, 'test/artifacts/browser');
const site = mkdtempSync(join(tmpdir(), 'flashlm-site-'));
const requests: ServeRequest[] = [];
let server: StaticServer;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];
const bytes: Record<string, Uint8Array> = {};
const suiteStart = performance.now();

const FIXTURES = {
  opt: { prompt: optReference().ref.prompt, n: 48 },
  stories: { prompt: 'Once upon a time', n: 64 },
} as const;
type Name = keyof typeof FIXTURES;

test.before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  // The site: the example, the build and the kernels by link, the models as files.
  for (const d of ['examples', 'dist', 'wasm']) symlinkSync(join(ROOT, d), join(site, d));
  mkdirSync(join(site, 'models'));
  bytes.opt = await convertToBytes(OPT_DIR);
  bytes.stories = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  bytes.optchat = await optChatBytes(); // for chat mode
  for (const [name, b] of Object.entries(bytes)) writeFileSync(join(site, 'models', `${name}.flm`), b);
  server = await startStaticServer(site, { port: 0, onRequest: (r) => requests.push(r) });
  browser = await launchBrowser();
  page = await browser.context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  page.setDefaultTimeout(60_000);
});

test.after.always(async () => {
  await browser?.close();
  await server?.close();
  rmSync(site, { recursive: true, force: true });
  const s = ((performance.now() - suiteStart) / 1000).toFixed(1);
  writeFileSync(join(ARTIFACTS, 'timing.txt'), `browser suite: ${s} s wall (fixtures, server, Chromium, all tests)\n`);
});

const greedyCache = new Map<string, Promise<string>>();
/** Node's greedy text for a fixture (dense, from memory). */
function nodeText(name: Name, n: number = FIXTURES[name].n): Promise<string> {
  const key = `${name}:${n}`;
  let p = greedyCache.get(key);
  if (!p) {
    p = (async () => {
      const m = await openModel(new MemorySource(bytes[name]!), { strategy: 'dense' });
      try {
        return await m.complete(FIXTURES[name].prompt, { maxTokens: n, temperature: 0 });
      } finally {
        await m.close();
      }
    })();
    greedyCache.set(key, p);
  }
  return p;
}

/** Fewer tokens where the cache is made to thrash or fail: every miss is a network read. */
const SHORT = 12;

interface PageRun {
  state: string;
  text: string;
  error?: string;
  notices: string[];
  tokens: { stats?: { bytesRead: number; requests: number; cacheHits: number; cacheLookups: number; ms: number } }[];
  ready?: { threading: { threads: number; fallbackReason: string | null } };
  messages: { role: string; content: string }[];
  done?: { tokens: number; timings?: { promptTokens: number; reusedTokens: number }; counters: { hitChunks: number; hitBytes: number; missChunks: number; networkReads: number; networkBytes: number; cachedBytes: number; enabled: boolean; evictedChunks: number; evictedModels: number } };
}

const pageUrl = (params: Record<string, string | number> = {}) => `${server.origin}/examples/browser/?${new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]))}`;

async function finished(): Promise<PageRun> {
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 60_000 });
  return page.evaluate(() => {
    const s = (window as unknown as { __flashlm: PageRun }).__flashlm;
    return { state: s.state, text: s.text, error: s.error, notices: s.notices, tokens: s.tokens, ready: s.ready, done: s.done, messages: s.messages };
  });
}

/** Loads the page for a model with autorun, returns the run and the range requests the server saw for it. */
async function autorun(name: string, fixture: Name, extra: Record<string, string | number> = {}) {
  const from = requests.length;
  await page.goto(pageUrl({ model: `/models/${name}.flm`, prompt: FIXTURES[fixture].prompt, n: FIXTURES[fixture].n, autorun: 1, ...extra }));
  const r = await finished();
  const ranges = requests.slice(from).filter((q) => q.path === `/models/${name}.flm` && q.range !== undefined);
  return { r, ranges };
}

test.serial('a person generates: the worker\'s text equals Node\'s greedy text, the page stays responsive, the panel shows figures', async (t) => {
  t.timeout(90_000);
  const want = await nodeText('opt');
  await page.goto(`${server.origin}/examples/browser/`);
  t.true(await page.evaluate(() => self.crossOriginIsolated), 'COOP/COEP make the page cross-origin isolated');
  // Watch the UI thread: a 10 ms heartbeat and long tasks while the model loads and generates.
  await page.evaluate(() => {
    const w = window as unknown as { __beat: { max: number; last: number; long: number } };
    w.__beat = { max: 0, last: performance.now(), long: 0 };
    setInterval(() => {
      const now = performance.now();
      w.__beat.max = Math.max(w.__beat.max, now - w.__beat.last);
      w.__beat.last = now;
    }, 10);
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) w.__beat.long = Math.max(w.__beat.long, e.duration);
    }).observe({ type: 'longtask' });
  });
  await page.fill('#url', '/models/opt.flm');
  await page.fill('#prompt', FIXTURES.opt.prompt);
  await page.fill('#tokens', String(FIXTURES.opt.n));
  await page.fill('#temp', '0');
  await page.selectOption('#strategy', 'window');
  const from = requests.length;
  await page.click('#go');
  // Progress is shown while loading, text streams in while generating.
  await page.waitForFunction(() => document.body.dataset.state === 'generating' || document.body.dataset.state === 'done');
  const r = await finished();
  t.is(r.state, 'done', r.error);
  t.is(r.text, want);
  t.is(await page.textContent('#text'), want, 'the text on the page');
  const beat = await page.evaluate(() => (window as unknown as { __beat: { max: number; long: number } }).__beat);
  t.log(`UI thread: longest heartbeat gap ${beat.max.toFixed(0)} ms, longest task ${beat.long.toFixed(0)} ms`);
  t.true(beat.max < 500, `the UI thread stalled for ${beat.max.toFixed(0)} ms`);

  // Per-token figures: non-zero bytes, requests, cache hits and times; the panel shows them.
  const stats = r.tokens.map((x) => x.stats!).filter(Boolean);
  t.is(r.tokens.length, r.done!.tokens);
  t.true(stats.some((s) => s.bytesRead > 0) && stats.some((s) => s.requests > 0) && stats.some((s) => s.cacheHits > 0));
  t.true(stats.every((s) => s.ms > 0));
  const panel = await page.$$eval('#panel td', (tds) => Object.fromEntries(tds.map((td) => [td.id, td.textContent ?? ''])));
  t.is(panel['f-tokens'], String(r.tokens.length));
  for (const id of ['f-ms', 'f-tps', 'f-bytes', 'f-req', 'f-hits', 'f-opfs', 'f-net', 'f-load']) {
    t.regex(panel[id]!, /[1-9]/, `${id} shows a non-zero figure: ${panel[id]}`);
  }
  t.is(await page.$eval('#bar-fill', (e) => (e as HTMLElement).style.width), '100%');
  // The chart has bars drawn.
  const inked = await page.$eval('#chart', (c) => {
    const cv = c as HTMLCanvasElement;
    const d = cv.getContext('2d')!.getImageData(0, 0, cv.width, cv.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3]! > 0 && d[i + 2]! > 150 && d[i]! < 100) n++;
    return n;
  });
  t.true(inked > 200, `chart bars: ${inked} px`);
  await page.screenshot({ path: join(ARTIFACTS, 'finished.png'), fullPage: true });

  const c = r.done!.counters;
  t.true(c.enabled && c.networkReads > 0 && c.cachedBytes > 0, 'first visit: from the network, into OPFS');
  const ranges = requests.slice(from).filter((q) => q.path === '/models/opt.flm' && q.status === 206);
  t.true(ranges.length > 1);
  // The graph the page loaded: the bundle, never a node_modules file or undici.
  const loaded = requests.map((q) => q.path);
  // the kernels from the package's wasm/: Chromium has relaxed SIMD, so flashlm(.mt).relaxed.wasm (src/kernels/load.ts kernelsUrl)
  t.true(loaded.includes('/dist/bundle/flashlm.js') && loaded.some((p) => /^\/wasm\/flashlm(\.mt)?(\.relaxed)?\.wasm$/.test(p)), loaded.join(' '));
  t.false(loaded.some((p) => /node_modules|undici/.test(p)), loaded.join(' '));
  t.deepEqual(pageErrors, []);
});

test.serial('the second load of the same model sends no range request for chunks already in OPFS', async (t) => {
  t.timeout(60_000);
  const { r, ranges } = await autorun('opt', 'opt');
  t.is(r.state, 'done', r.error);
  t.is(r.text, await nodeText('opt'));
  // Only HttpSource's one-byte probes go to the server: size + ETag, and the second connection pool's (credentials omitted).
  t.deepEqual(ranges.map((q) => q.range), ['bytes=0-0', 'bytes=0-0']);
  t.is(r.done!.counters.networkReads, 0);
  t.is(r.done!.counters.missChunks, 0);
  t.true(r.done!.counters.hitChunks > 0);
  t.deepEqual(pageErrors, []);
});

test.serial('the llama2.c-tokenizer fixture generates Node\'s greedy text too', async (t) => {
  t.timeout(60_000);
  const { r } = await autorun('stories', 'stories');
  t.is(r.state, 'done', r.error);
  t.is(r.text, await nodeText('stories'));
});

test.serial('chat mode: two turns equal Node\'s model.chat, the second reusing the first\'s KV cache; no template is a clear error', async (t) => {
  t.timeout(90_000);
  const node = await openModel(new MemorySource(bytes.optchat!), { strategy: 'dense' });
  const answer = async (messages: { role: 'user' | 'assistant'; content: string }[]) => {
    let text = '';
    for await (const p of node.chat(messages, { maxTokens: 16, temperature: 0 })) text += p;
    return text;
  };
  try {
    await page.goto(pageUrl({ model: '/models/optchat.flm', mode: 'chat', n: 16, temp: 0, strategy: 'window' }));
    t.is(await page.textContent('#go'), 'Send');
    const say = async (text: string) => {
      await page.fill('#prompt', text);
      await page.click('#go');
      return finished();
    };
    const first = await say('In the morning she');
    t.is(first.state, 'done', first.error);
    const want1 = await answer([{ role: 'user', content: 'In the morning she' }]);
    t.true(want1.length > 0);
    t.is(first.text, want1);
    const second = await say('Where did she go?');
    t.is(second.state, 'done', second.error);
    const history = [
      { role: 'user' as const, content: 'In the morning she' },
      { role: 'assistant' as const, content: want1 },
      { role: 'user' as const, content: 'Where did she go?' },
    ];
    t.is(second.text, await answer(history));
    t.deepEqual(second.messages, [...history, { role: 'assistant', content: second.text }]);
    t.true(second.done!.timings!.reusedTokens > 0, `the second turn reused ${second.done!.timings!.reusedTokens} of ${second.done!.timings!.promptTokens} prompt tokens`);
    t.deepEqual(await page.$$eval('#transcript .msg', (ms) => ms.map((m) => m.textContent)), second.messages.map((m) => m.content));
    await page.screenshot({ path: join(ARTIFACTS, 'chat.png'), fullPage: true });

    // A model without a chat template: the error names the way out; the message goes back into the box.
    await page.goto(pageUrl({ model: '/models/opt.flm', mode: 'chat', n: 4 }));
    const bad = await say('Hello');
    t.is(bad.state, 'error');
    t.regex(bad.error ?? '', /chat template/);
    t.deepEqual(bad.messages, []);
    t.is(await page.inputValue('#prompt'), 'Hello');
  } finally {
    await node.close();
  }
  t.deepEqual(pageErrors, []);
});

test.serial('kernel threads 1 and 2 in the worker (dense: batched prefill, split kernels) give Node\'s greedy text', async (t) => {
  t.timeout(90_000);
  for (const threads of [1, 2]) {
    const { r } = await autorun('opt', 'opt', { strategy: 'dense', threads });
    t.is(r.state, 'done', r.error);
    t.deepEqual(r.ready!.threading, { threads, fallbackReason: null }, 'the isolated page runs the threads it asks for');
    t.is(r.text, await nodeText('opt'), `${threads} thread(s)`);
    t.is(await page.textContent('#f-threads'), String(threads));
  }
  t.deepEqual(pageErrors, []);
});

test.serial('a changed file (new ETag) discards the stale OPFS copy with a notice', async (t) => {
  t.timeout(60_000);
  const file = join(site, 'models', 'swap.flm');
  writeFileSync(file, bytes.stories!);
  const first = await autorun('swap', 'stories');
  t.is(first.r.text, await nodeText('stories'));
  // Same URL, another model: its ETag (size + mtime) changes.
  copyFileSync(join(site, 'models', 'opt.flm'), file);
  const second = await autorun('swap', 'opt');
  t.is(second.r.state, 'done', second.r.error);
  t.regex(second.r.notices.join('\n'), /stale.*discarded/);
  t.is(await page.locator('#notices li').count(), 1, 'the notice is on the page');
  t.is(second.r.text, await nodeText('opt'));
  t.true(second.r.done!.counters.networkReads > 0, 'read again from the network');
});

test.serial('a small cache bound holds: other models go first, then least recently used chunks', async (t) => {
  t.timeout(60_000);
  const { r } = await autorun('opt', 'opt', { cacheMax: 1, n: SHORT });
  t.is(r.state, 'done', r.error);
  t.is(r.text, await nodeText('opt', SHORT));
  const c = r.done!.counters;
  t.true(c.cachedBytes <= 1 << 20, `cached ${c.cachedBytes} bytes`);
  t.true(c.evictedChunks > 0, 'LRU evictions');
  t.true(c.evictedModels > 0, 'the other models\' caches were deleted for room');
  const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage ?? 0);
  t.true(usage <= (1 << 20) + (256 << 10), `OPFS holds ${usage} bytes`);
});

test.serial('a full quota degrades to CDN-only with a notice, not a crash', async (t) => {
  t.timeout(60_000);
  await page.goto(`${server.origin}/examples/browser/`);
  await page.click('#clear');
  await page.waitForFunction(() => document.getElementById('status')!.textContent!.includes('cleared'));
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.origin, quotaSize: 4 << 20 });
  try {
    const { r } = await autorun('opt', 'opt', { n: SHORT });
    t.is(r.state, 'done', r.error);
    t.is(r.text, await nodeText('opt', SHORT));
    t.log(`quota 4 MiB: ${r.done!.counters.networkReads} network reads, ${(r.done!.counters.networkBytes / 2 ** 20).toFixed(1)} MiB; cached ${(r.done!.counters.cachedBytes / 2 ** 20).toFixed(1)} MiB`);
    t.regex(r.notices.join('\n'), /quota is full.*network only/);
    t.true(r.done!.counters.networkReads > 0);
    t.true(await page.locator('#notices li').count() >= 1);
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.origin });
    await cdp.detach();
  }
  const s = ((performance.now() - suiteStart) / 1000).toFixed(1);
  t.log(`browser suite so far: ${s} s`);
});
