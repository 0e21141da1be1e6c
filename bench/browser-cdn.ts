/**
 * Running a model in Debian's Chromium over HTTP/2 (issue 13), shared by the
 * CDN benchmark (bench/flash-cdn.ts) and test/cdn-browser.test.ts.
 *
 * `writeSite(dir)` puts next to the model a page, a module worker and the
 * browser build bundled from src/ (esbuild: no dist/ build needed) with the
 * kernels where the bundle looks for them (dist/bundle/ -> ../../wasm/).
 * `launchChromium(cert)` starts Chromium trusting the test certificate by its
 * public-key hash (--ignore-certificate-errors-spki-list: no CA install,
 * never a downloaded browser). `runInChromium` opens the model in the worker
 * with the fetch HttpSource, generates greedily and returns the token ids,
 * the stats of the generated tokens and the protocols the fetches used
 * (Resource Timing `nextHopProtocol`).
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import type { StatsSummary } from '../src/flash/stats.js';
import type { Strategy } from '../src/node.js';
import type { Cert } from '../test/helpers/nginx.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** COOP/COEP: the page is cross-origin isolated (SharedArrayBuffer: kernel threads), as examples/browser is. */
export const ISOLATION_HEADERS = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Cross-Origin-Resource-Policy': 'same-origin' };

const WORKER = `// flashlm CDN run (bench/browser-cdn.ts): the engine in a module worker, as in examples/browser.
import { openModel, HttpSource } from './dist/bundle/flashlm.js';
// Every range request is a resource entry: room for all of them (the default buffer holds 250).
performance.setResourceTimingBufferSize(1 << 20);
self.onmessage = async ({ data: r }) => {
  try {
    self.postMessage(await (r.shapes ? rounds(r) : generate(r)));
  } catch (e) {
    self.postMessage({ ok: false, error: String(e && e.stack ? e.stack : e) });
  }
};

// The network's part alone (no model): per shape [n, bytes], rounds of n range reads at once, alternating HttpSource.read
// with plain fetch sent as the source sends it (Range, If-Range, the same cache mode, credentials alternating over its
// pools, body as one arrayBuffer); ms per round for each.
async function rounds(r) {
  const src = await HttpSource.open(r.url, { init: { cache: 'default' } });
  const etag = await fetch(r.url, { cache: 'default', headers: { range: 'bytes=0-0' } }).then(async (res) => (await res.arrayBuffer(), res.headers.get('etag')));
  const other = new URL(r.url).origin === self.location.origin ? 'omit' : 'include';
  let turn = 0;
  const viaFetch = async (at, into) => {
    const credentials = src.connectionPools > 1 && turn++ % 2 ? other : 'same-origin';
    const res = await fetch(r.url, { cache: 'default', credentials, headers: { range: 'bytes=' + at + '-' + (at + into.length - 1), 'if-range': etag } });
    if (res.status !== 206) throw new Error('fetch answered ' + res.status);
    into.set(new Uint8Array(await res.arrayBuffer()));
  };
  const reads = { source: (at, into) => src.read(at, into), fetch: viaFetch };
  const ms = { source: [], fetch: [] };
  for (const [n, bytes] of r.shapes) {
    const bufs = Array.from({ length: n }, () => new Uint8Array(bytes));
    const times = { source: [], fetch: [] };
    for (let k = 0; k < r.rounds; k++) {
      for (const way of ['source', 'fetch']) {
        const t0 = performance.now();
        await Promise.all(bufs.map((b, i) => reads[way](((k * 97 + i * 13) % r.spanMiB) * 1048576, b)));
        times[way].push(performance.now() - t0);
        await new Promise((done) => setTimeout(done, 10));
      }
    }
    for (const way of ['source', 'fetch']) ms[way].push(times[way].sort((a, b) => a - b)[times[way].length >> 1]);
  }
  await src.close();
  return { ok: true, ms, connectionPools: src.connectionPools, inFlight: src.hints.parallel };
}

async function generate(r) {
  performance.clearResourceTimings();
  const src = await HttpSource.open(r.url, { init: { cache: r.cache ?? 'no-store' }, ...(r.connections ? { connections: r.connections } : {}), ...(r.http ?? {}) });
  const multiRange = await src.multiRange();
  const inFlight = src.hints.parallel;
  const connectionPools = src.connectionPools;
  const model = await openModel(src, { contextLength: r.contextLength, strategy: r.strategy, ...(r.sparsity ? { sparsity: r.sparsity } : {}), ...(r.window ? { window: r.window } : {}), ...(r.threads ? { threads: r.threads } : {}) });
  const ids = [];
  const t0 = performance.now();
  let genStart = Infinity; // after the prompt and the first token: request timings are of the tokens after it
  for await (const s of model.steps(r.prompt, { maxTokens: r.tokens + 1, temperature: 0 })) {
    if (s.token < 0) continue;
    ids.push(s.token);
    if (ids.length === 1) genStart = performance.now();
  }
  const wallMs = performance.now() - t0;
  // The prompt's passes warm the window cache: only generated tokens are averaged (as bench/flash-cdn.ts does in Node).
  const all = model.stats.tokens;
  const measured = all.slice(all.length - r.tokens);
  const summary = model.stats.summary(measured);
  const f = model.header.ffn[0];
  const recordBytes = f.parts.length * f.partBytes;
  const neededBytes = r.strategy === 'window' ? (measured.reduce((a, t) => a + (t.cacheLookups - t.cacheHits), 0) / measured.length) * recordBytes : null;
  const ms = measured.map((t) => t.ms).sort((a, b) => a - b);
  const threading = model.threading;
  await model.close();
  const protocols = {};
  let requests = 0;
  let failed = 0;
  let queueMs = 0, wireMs = 0, timed = 0;
  // The most requests on the wire at once: sent (requestStart, after any queueing in the browser) to last byte.
  const edges = [];
  const names = new Set([r.url, ...(r.http?.mirrors ?? [])]);
  for (const e of performance.getEntriesByType('resource')) {
    if (!names.has(e.name)) continue;
    // a request that failed (the open's probe of the other credentials mode, refused by CORS) has no protocol
    if (!e.nextHopProtocol) {
      failed++;
      continue;
    }
    requests++;
    protocols[e.nextHopProtocol] = (protocols[e.nextHopProtocol] ?? 0) + 1;
    if (e.requestStart > 0) edges.push([e.requestStart, 1], [e.responseEnd, -1]);
    if (e.requestStart > 0 && e.startTime >= genStart) {
      queueMs += e.requestStart - e.startTime;
      wireMs += e.responseEnd - e.requestStart;
      timed++;
    }
  }
  edges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let live = 0;
  let maxConcurrent = 0;
  for (const [, d] of edges) maxConcurrent = Math.max(maxConcurrent, (live += d));
  return { ok: true, ids, summary: JSON.parse(JSON.stringify(summary)), neededBytes, msP50: ms[ms.length >> 1] ?? 0, wallMs, multiRange, inFlight, connectionPools, protocols, requests, failed, queueMs: timed ? queueMs / timed : null, wireMs: timed ? wireMs / timed : null, maxConcurrent, threading, isolated: self.crossOriginIsolated };
}
`;

/** Writes the page, the worker, the bundle (from src/browser.ts) and the kernels into `dir` (served at its root). */
export async function writeSite(dir: string): Promise<void> {
  const { build } = await import('esbuild');
  await mkdir(join(dir, 'dist', 'bundle'), { recursive: true });
  await mkdir(join(dir, 'wasm'), { recursive: true });
  await build({ entryPoints: [join(ROOT, 'src/browser.ts')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', outfile: join(dir, 'dist/bundle/flashlm.js'), logLevel: 'warning' });
  for (const f of ['flashlm.wasm', 'flashlm.mt.wasm', 'flashlm.relaxed.wasm', 'flashlm.mt.relaxed.wasm']) await copyFile(join(ROOT, 'wasm', f), join(dir, 'wasm', f));
  await writeFile(join(dir, 'cdn-run.html'), '<!doctype html><meta charset="utf-8"><title>flashlm over a CDN</title><p>flashlm CDN run: the engine runs in cdn-worker.js</p>\n');
  await writeFile(join(dir, 'cdn-worker.js'), WORKER);
}

export interface ChromiumRun {
  ids: number[];
  /** Stats of the generated tokens (the prompt's passes left out). */
  summary: StatsSummary;
  /** window: the records that missed the cache, bytes per token. */
  neededBytes: number | null;
  msP50: number;
  wallMs: number;
  multiRange: boolean;
  /** The source's requests in flight at most (hints.parallel). */
  inFlight: number;
  /** HttpSource.connectionPools: the origins' connection pools its reads go round. */
  connectionPools: number;
  /** Requests for the model by protocol (Resource Timing nextHopProtocol), e.g. { h2: 812 }. */
  protocols: Record<string, number>;
  requests: number;
  /** Model requests that failed (no protocol): the source's probes of the second credentials pool that CORS refused. */
  failed: number;
  /** Generated tokens after the first: mean ms a model request waited in the browser before it went out (Resource Timing startTime..requestStart), and was then on the wire (..responseEnd); null without timings. */
  queueMs: number | null;
  wireMs: number | null;
  /** The most requests on the wire at once (Resource Timing requestStart..responseEnd). */
  maxConcurrent: number;
  threading: { threads: number; fallbackReason: string | null };
  isolated: boolean;
}

export interface RunRequest {
  /** The model's absolute URL (same origin as the page). */
  url: string;
  prompt: string;
  tokens: number;
  strategy: Strategy;
  sparsity?: 'oracle';
  window?: number;
  contextLength?: number;
  /** HttpSource `connections` (requests in flight); default: the source's own. */
  connections?: number;
  threads?: number;
  /**
   * fetch's cache mode (default 'no-store': nothing from the HTTP cache).
   * Chromium skips its CORS-preflight cache for 'no-store' requests, so
   * cross-origin mirrors want 'default' and a server that says no-store.
   */
  cache?: RequestCache;
  /** More HttpSource options (JSON-able), e.g. { multiRange: false } or { mirrors: [url on another origin, ...] }. */
  http?: Record<string, unknown>;
}

export interface Chromium {
  readonly browser: Browser;
  /** A page at `origin`/cdn-run.html (served from the site writeSite made). */
  page(origin: string): Promise<Page>;
  close(): Promise<void>;
}

/** Debian's Chromium trusting `cert` (by its SPKI hash), QUIC off: HTTP/2 over TLS, as a CDN serves it. */
export async function launchChromium(cert: Cert): Promise<Chromium> {
  const { chromium } = await import('playwright-core');
  const { CHROMIUM_ARGS, findChromium } = await import('../test/helpers/browser.js');
  const browser = await chromium.launch({ executablePath: findChromium(), headless: true, args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${cert.spki}`], timeout: 30_000 });
  return {
    browser,
    async page(origin: string) {
      const page = await browser.newPage();
      page.setDefaultTimeout(0);
      await page.goto(`${origin}/cdn-run.html`);
      return page;
    },
    close: () => Promise.race([browser.close().catch(() => {}), new Promise<void>((r) => setTimeout(r, 10_000))]),
  };
}

/** Rounds of `n` range reads of `bytes` at once (bench/flash-cdn.ts --floor): what the network costs a client per round, with no model. */
export interface RoundsRequest {
  url: string;
  /** [reads at once, bytes each] per row. */
  shapes: [number, number][];
  rounds: number;
  /** Reads start at whole MiB below this. */
  spanMiB: number;
}

/** Median ms per round for each shape: through HttpSource.read, and through plain fetch sent the same way (no flashlm code). */
export interface RoundsResult {
  ms: { source: number[]; fetch: number[] };
  connectionPools: number;
  inFlight: number;
}

/** Runs a message in a new module worker of `page` and returns its answer (throws the worker's error). */
async function inWorker(page: Page, req: object): Promise<Record<string, unknown>> {
  const r = await page.evaluate(
    (req) =>
      new Promise<{ ok: boolean; error?: string } & Record<string, unknown>>((resolve) => {
        const w = new Worker('cdn-worker.js', { type: 'module' });
        w.onmessage = (e) => {
          w.terminate();
          resolve(e.data);
        };
        w.onerror = (e) => {
          w.terminate();
          resolve({ ok: false, error: `worker error: ${e.message}` });
        };
        w.postMessage(req);
      }),
    req,
  );
  if (!r.ok) throw new Error(`Chromium run failed: ${r.error}`);
  return r;
}

export async function readRoundsInChromium(page: Page, req: RoundsRequest): Promise<RoundsResult> {
  return (await inWorker(page, req)) as unknown as RoundsResult;
}

/** Opens the model in a new module worker of `page`, generates, and returns what it measured (throws the worker's error). */
export async function runInChromium(page: Page, req: RunRequest): Promise<ChromiumRun> {
  return (await inWorker(page, { contextLength: 256, ...req })) as unknown as ChromiumRun;
}
