/**
 * Streaming over a modelled CDN (issue 13): `npm run bench:flash -- --cdn`.
 *
 * One model behind nginx behind the modelled CDN of test/helpers/cdn-proxy.ts
 * (default 20 ms per request, 20 MB/s per connection, 200 MB/s link), hybrid
 * and window (k=5, the oracle's true active sets) with the HTTP source as it
 * was ("before": 8 connections, reads merged across a fixed 256 KiB gap) and
 * as it is ("after": the link model prices every gap, multi-range requests
 * where nginx serves them, N requests in flight for N in --inflight), and one
 * "after" row without multi-range. Prints ms/token, bytes per token (and per
 * byte the window's records needed), requests per token, mean request, the
 * link estimates, and whether the tokens equal dense.
 *
 * Then Node and Chromium side by side over HTTP/2 (nginx with TLS and
 * `http2`, a certificate made here and trusted by its SPKI hash, behind the
 * same modelled CDN in its own process): hybrid and window rows for Node
 * (undici, h2 streams over a pool) and for Debian's Chromium (the browser
 * build in a module worker, fetch HttpSource, see bench/browser-cdn.ts), and
 * the ratio Chromium / Node. A browser keeps one HTTP/2 connection per
 * origin and credentials mode, and the modelled CDN paces each connection:
 * Chromium runs with the source's two pools (the default) and with one
 * (`init.credentials` set), with the same CDN on --shards origins
 * (HttpSource `mirrors`, CORS), as many connections as Node's HTTP/2 pool
 * opens, and both clients over a TLS origin without HTTP/2 whose CORS
 * allows credentials (Chromium opens 6 HTTP/1.1 connections per origin and
 * pool there; Node 64). `--no-chromium` skips it;
 * `--h2-only` runs only it.
 *
 * The model: `--model synth` (default) is an OPT-1.3B-shaped sparse model
 * (flashlm synth: d 2048, ffn 8192, f16, 8 KiB records, ~3% active) cut to
 * --layers (default 4 of 24: per-token bytes, requests and I/O time scale
 * with the layers); `--model opt` is the opt-relu-6m fixture (f32).
 *
 *   npm run bench:flash -- --cdn [--model synth|opt] [--layers 4] [--tokens 8]
 *        [--stationary 2] [--inflight 4,8,16,32,64,128] [--rtt 20]
 *        [--conn-mbps 20] [--link-mbps 200] [--window 5] [--out path]
 *        [--no-chromium | --h2-only] [--shards 8] [--strategies hybrid,window]
 *        [--floor-rounds 15] [--floor-shapes 1x8192,4x294912,...]
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openModel, type OpenOptions, type Strategy } from '../src/node.js';
import { FileSource } from '../src/source/file-node.js';
import { NodeHttpSource, type NodeHttpSourceOptions } from '../src/source/http-node.js';
import type { StatsSummary } from '../src/flash/stats.js';
import { cdnProxyProcess } from '../test/helpers/cdn-proxy.js';
import { makeCert, startNginx } from '../test/helpers/nginx.js';
import { ISOLATION_HEADERS, launchChromium, readRoundsInChromium, runInChromium, writeSite, type Chromium } from './browser-cdn.js';
import { OPT_DIR, convertToBytes, optReference } from '../test/helpers/models.js';
import { arg, argv, intArg } from './args.js';

const MiB = 1024 * 1024;
const MODEL = arg('model') ?? 'synth';
const LAYERS = intArg('layers', 4, 1);
const TOKENS = intArg('tokens', 8, 1);
const STATIONARY = Math.min(TOKENS, intArg('stationary', 2, 1));
const WINDOW = intArg('window', 5, 1);
const RTT = Number(arg('rtt') ?? 20);
const CONN = Number(arg('conn-mbps') ?? 20);
const LINK = Number(arg('link-mbps') ?? 200);
const INFLIGHT = (arg('inflight') ?? '4,8,16,32,64,128').split(',').map(Number);
const HERE = dirname(fileURLToPath(import.meta.url));
const OUT = arg('out') ?? join(HERE, 'results', 'flash-cdn.json');
const H2_ONLY = argv.includes('--h2-only');
const CHROMIUM = !argv.includes('--no-chromium');
const SHARDS = intArg('shards', 8, 1);
const STRATEGIES = (arg('strategies') ?? 'hybrid,window').split(',');
for (const x of STRATEGIES) if (x !== 'hybrid' && x !== 'window') throw new Error(`--strategies: hybrid and/or window, not ${x}`);
const FLOOR_ROUNDS = intArg('floor-rounds', 15, 0);
const FLOOR_SHAPES = (arg('floor-shapes') ?? '1x8192,4x294912,9x131072,12x98304,24x49152').split(',').map((x): [number, number] => {
  const [n, bytes] = x.split('x').map(Number);
  if (!Number.isInteger(n) || !Number.isInteger(bytes) || n! < 1 || bytes! < 1) throw new Error(`--floor-shapes: not READSxBYTES: ${x}`);
  return [n!, bytes!];
});
if (H2_ONLY && !CHROMIUM) throw new Error('--h2-only and --no-chromium leave nothing to run');
if (MODEL !== 'synth' && MODEL !== 'opt') throw new Error('--model must be synth or opt');
for (const n of INFLIGHT) if (!Number.isInteger(n) || n < 1) throw new Error(`--inflight: not a positive integer: ${n}`);

interface Config {
  name: string;
  inFlight: number;
  options: NodeHttpSourceOptions;
  /** More openModel options (the memory cache tier). */
  open?: OpenOptions;
}

const BEFORE: Config = { name: 'before (fixed 256K gap)', inFlight: 8, options: { connections: 8, linkModel: false, multiRange: false } };

/** What every row measured: one strategy's run, averaged over its tokens. */
interface RunRow {
  strategy: Strategy;
  inFlight: number;
  tokens: number;
  summary: StatsSummary;
  msP50: number;
  neededBytes: number | null;
  multiRange: boolean;
  equalsDense: boolean;
  wallMs: number;
}

interface Row extends RunRow {
  config: string;
}

/** A row of the Node / Chromium comparison over HTTP/2. */
interface TlsRow extends RunRow {
  client: string;
  /** The Node row this one is compared with (itself for Node's). */
  versus: string;
  /** Connection pools per the source (Chromium: 2 per origin that answers both credentials modes alike). */
  pools: number;
  /** Model requests by protocol (Node: the pool's ALPN; Chromium: Resource Timing). */
  protocols: Record<string, number>;
  /** Chromium: the most requests on the wire at once. */
  maxConcurrent: number | null;
  /** Chromium, generated tokens after the first: mean ms a request waited in the browser, then was on the wire. */
  queueMs: number | null;
  wireMs: number | null;
  threads: number;
}

async function makeModel(dir: string): Promise<{ path: string; prompt: string; name: string }> {
  const path = join(dir, 'model.flm');
  if (MODEL === 'opt') {
    await writeFile(path, await convertToBytes(OPT_DIR, { dtype: 'f32', layout: 'bundled' }));
    return { path, prompt: optReference().ref.prompt, name: 'opt-relu-6m f32' };
  }
  const { runSynth } = await import('../src/cli/synth.js');
  await runSynth({ shape: 'opt-1.3b', output: path, dtype: 'f16', layout: 'bundled', seed: 1, layers: LAYERS, force: true });
  return { path, prompt: 'Once upon a time, in a small town by the sea,', name: `synthetic OPT-1.3B shape (flashlm synth), f16, ${LAYERS} of 24 layers` };
}

async function generate(input: string | import('../src/source/types.js').Source, opts: OpenOptions, prompt: string, tokens: number) {
  const model = await openModel(input, { contextLength: 256, ...opts });
  const ids: number[] = [];
  const t0 = performance.now();
  for await (const s of model.steps(prompt, { maxTokens: tokens + 1, temperature: 0 })) if (s.token >= 0) ids.push(s.token);
  const wallMs = performance.now() - t0;
  // The prompt's passes (one per prompt token) warm the window cache: only generated tokens are averaged.
  const all = model.stats.tokens;
  const measured = all.slice(all.length - tokens);
  const summary = model.stats.summary(measured);
  const f = model.header.ffn[0]!;
  const recordBytes = f.parts.length * f.partBytes;
  // The window's records that had to come from the source: lookups that missed the cache.
  const needed = opts.strategy === 'window' ? (measured.reduce((a, t) => a + (t.cacheLookups - t.cacheHits), 0) / measured.length) * recordBytes : null;
  const ms = measured.map((t) => t.ms).sort((a, b) => a - b);
  const threads = model.threading.threads;
  await model.close();
  return { ids, summary, neededBytes: needed, msP50: ms[ms.length >> 1] ?? 0, wallMs, threads };
}

async function main(): Promise<void> {
  const started = performance.now();
  const command = `node --import=tsx bench/flash.ts ${argv.join(' ')}`;
  console.log(`# flashlm bench:flash --cdn — ${new Date().toISOString()}`);
  console.log(`# command: ${command}`);
  console.log(`# load average at start: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const dir = await mkdtemp(join(tmpdir(), 'flashlm-bench-cdn-'));
  await chmod(dir, 0o755);
  const rows: Row[] = [];
  const tlsRows: TlsRow[] = [];
  const floorRows: FloorRow[] = [];
  let nginx: Awaited<ReturnType<typeof startNginx>> | undefined;
  let proxy: Awaited<ReturnType<typeof cdnProxyProcess>> | undefined;
  let tlsNginx: Awaited<ReturnType<typeof startNginx>> | undefined;
  let tlsProxy: Awaited<ReturnType<typeof cdnProxyProcess>> | undefined;
  let h1Nginx: Awaited<ReturnType<typeof startNginx>> | undefined;
  let h1Proxy: Awaited<ReturnType<typeof cdnProxyProcess>> | undefined;
  let chromium: Chromium | undefined;
  try {
    const m = await makeModel(dir);
    await chmod(m.path, 0o644);
    const probe = await openModel(m.path, { strategy: 'dense' });
    const h = probe.header;
    const f = h.ffn[0]!;
    const recordBytes = f.parts.length * f.partBytes;
    const ffnBytes = h.ffn.reduce((a, e) => a + h.sections.find((s) => s.name === e.section)!.length, 0);
    const fileBytes = probe.file.source.size;
    await probe.close();
    console.log(`# model: ${m.name}; d=${h.arch.dModel}, ffn=${h.arch.ffnDim}, ${h.arch.nLayers} layers, record ${recordBytes} B; file ${(fileBytes / MiB).toFixed(0)} MiB, FFN ${(ffnBytes / MiB).toFixed(0)} MiB`);
    console.log(`# CDN model: +${RTT} ms per request, ${CONN} MB/s per connection, ${LINK} MB/s link (a TCP proxy in its own process in front of nginx; HTTP/1.1)`);
    console.log(`# tokens: prompt ${JSON.stringify(m.prompt)}, then ${TOKENS} greedy tokens averaged (hybrid: ${STATIONARY}); window k=${WINDOW} with the oracle's true active sets`);

    const dense = await generate(await FileSource.open(m.path), { strategy: 'dense' }, m.prompt, TOKENS);
    nginx = await startNginx({ root: dir });
    proxy = await cdnProxyProcess(nginx.port, RTT, CONN, LINK);
    const url = `http://127.0.0.1:${proxy.port}/model.flm`;
    const configs: [Strategy, Config][] = H2_ONLY ? [] : [
      ['hybrid', BEFORE],
      ['hybrid', { name: 'after', inFlight: 64, options: { connections: 64 } }],
      ['window', BEFORE],
      ...INFLIGHT.map((n): [Strategy, Config] => ['window', { name: 'after', inFlight: n, options: { connections: n } }]),
      ['window', { name: 'after, no multi-range', inFlight: 64, options: { connections: 64, multiRange: false } }],
      // the in-memory tier keeps what the window dropped: a neuron active again after k tokens costs no request
      ['window', { name: 'after, memory cache 1G', inFlight: 64, options: { connections: 64 }, open: { memoryCache: '1G' } }],
    ];
    for (const [strategy, c] of configs.filter(([x]) => STRATEGIES.includes(x))) {
      const tokens = strategy === 'hybrid' ? STATIONARY : TOKENS;
      const src = await NodeHttpSource.open(url, c.options);
      const multiRange = await src.multiRange();
      const opts: OpenOptions = { strategy, ...(strategy === 'window' ? { sparsity: 'oracle' as const, window: WINDOW } : {}), ...c.open };
      const r = await generate(src, opts, m.prompt, tokens);
      const row: Row = {
        strategy,
        config: c.name,
        inFlight: c.inFlight,
        tokens,
        summary: r.summary,
        msP50: r.msP50,
        neededBytes: strategy === 'hybrid' ? ffnBytes : r.neededBytes,
        multiRange,
        equalsDense: r.ids.every((id, i) => dense.ids[i] === id),
        wallMs: r.wallMs,
      };
      rows.push(row);
      process.stderr.write(`  ${strategy} ${c.name} in-flight ${c.inFlight}: ${r.summary.msPerToken.toFixed(0)} ms/token (${(r.wallMs / 1000).toFixed(1)} s)\n`);
    }
    await proxy.close();
    proxy = undefined;
    await nginx.stop();
    nginx = undefined;

    if (CHROMIUM) {
      // The same model and CDN model over TLS + HTTP/2, for Node and for Chromium.
      const cert = makeCert(dir);
      await writeSite(dir);
      tlsNginx = await startNginx({ root: dir, tls: cert, headers: { ...ISOLATION_HEADERS, 'Cache-Control': 'no-store' }, cors: SHARDS > 1 });
      tlsProxy = await cdnProxyProcess(tlsNginx.port, RTT, CONN, LINK, SHARDS);
      const mirrors = tlsProxy.ports.slice(1).map((p) => `https://127.0.0.1:${p}/model.flm`);
      const origin = `https://127.0.0.1:${tlsProxy.port}`;
      // The same over TLS without HTTP/2 (the issue's HTTP/1.1 CDN): a browser opens 6 connections per origin and
      // credentials mode there; CORS with credentials lets the source use both pools from the page's other origin.
      h1Nginx = await startNginx({ root: dir, tls: cert, http2: false, headers: { 'Cache-Control': 'no-store' }, cors: 'credentials' });
      h1Proxy = await cdnProxyProcess(h1Nginx.port, RTT, CONN, LINK);
      const h1Url = `https://127.0.0.1:${h1Proxy.port}/model.flm`;
      chromium = await launchChromium(cert);
      const page = await chromium.page(origin);
      // credentials set: the source keeps its reads in one connection pool (the browser's default before pools)
      const onePool = { init: { cache: 'default', credentials: 'same-origin' } };
      const chromiumRuns: { client: string; versus: string; url: string; http?: Record<string, unknown> }[] = [
        { client: 'chromium', versus: 'node', url: `${origin}/model.flm` },
        { client: 'chromium, 1 pool', versus: 'node', url: `${origin}/model.flm`, http: onePool },
        ...(SHARDS > 1 ? [{ client: `chromium, ${SHARDS} origins`, versus: 'node', url: `${origin}/model.flm`, http: { mirrors: mirrors.slice(0, SHARDS - 1) } }] : []),
        { client: 'chromium, HTTP/1.1', versus: 'node, HTTP/1.1', url: h1Url },
        { client: 'chromium, h1, 1 pool', versus: 'node, HTTP/1.1', url: h1Url, http: onePool },
      ];
      for (const strategy of (['hybrid', 'window'] as const).filter((x) => STRATEGIES.includes(x))) {
        const tokens = strategy === 'hybrid' ? STATIONARY : TOKENS;
        const opts: OpenOptions = { strategy, ...(strategy === 'window' ? { sparsity: 'oracle' as const, window: WINDOW } : {}) };
        for (const [client, url, options] of [['node', `${origin}/model.flm`, {}], ['node, HTTP/1.1', h1Url, { connections: 64 }]] as const) {
          const src = await NodeHttpSource.open(url, { ca: cert.pem, ...options });
          const multiRange = await src.multiRange();
          const protocol = src.protocol;
          const inFlight = src.hints.parallel;
          const n = await generate(src, opts, m.prompt, tokens);
          tlsRows.push({ strategy, client, versus: client, pools: 1, inFlight, tokens, summary: n.summary, msP50: n.msP50, neededBytes: strategy === 'hybrid' ? ffnBytes : n.neededBytes, multiRange, protocols: { [protocol]: n.summary.requestsPerToken }, maxConcurrent: null, queueMs: null, wireMs: null, threads: n.threads, equalsDense: n.ids.every((id, i) => dense.ids[i] === id), wallMs: n.wallMs });
          process.stderr.write(`  ${strategy} ${client}: ${n.summary.msPerToken.toFixed(0)} ms/token (${(n.wallMs / 1000).toFixed(1)} s)\n`);
        }
        for (const c of chromiumRuns) {
          const r = await runInChromium(page, { url: c.url, prompt: m.prompt, tokens, strategy, cache: 'default', ...(strategy === 'window' ? { sparsity: 'oracle' as const, window: WINDOW } : {}), ...(c.http ? { http: c.http } : {}) });
          tlsRows.push({ strategy, client: c.client, versus: c.versus, pools: r.connectionPools, inFlight: r.inFlight, tokens, summary: r.summary, msP50: r.msP50, neededBytes: strategy === 'hybrid' ? ffnBytes : r.neededBytes, multiRange: r.multiRange, protocols: r.protocols, maxConcurrent: r.maxConcurrent, queueMs: r.queueMs, wireMs: r.wireMs, threads: r.threading.threads, equalsDense: r.ids.every((id, i) => dense.ids[i] === id), wallMs: r.wallMs });
          process.stderr.write(`  ${strategy} ${c.client}: ${r.summary.msPerToken.toFixed(0)} ms/token (${(r.wallMs / 1000).toFixed(1)} s)\n`);
        }
      }
      // The network's part alone: one layer's reads as a round of n reads at once, without the model.
      const spanMiB = Math.max(1, Math.floor(fileBytes / MiB) - 1);
      for (const [protocol, url, options] of FLOOR_ROUNDS ? ([['h2', `${origin}/model.flm`, {}], ['HTTP/1.1', h1Url, { connections: 64 }]] as const) : []) {
        const src = await NodeHttpSource.open(url, { ca: cert.pem, ...options });
        const node = await readRounds((at, into) => src.read(at, into), FLOOR_SHAPES, FLOOR_ROUNDS, spanMiB);
        await src.close();
        const c = await readRoundsInChromium(page, { url, shapes: FLOOR_SHAPES, rounds: FLOOR_ROUNDS, spanMiB });
        FLOOR_SHAPES.forEach(([n, bytes], i) => floorRows.push({ protocol, reads: n, bytes, nodeMs: node[i]!, chromiumMs: c.ms.source[i]!, fetchMs: c.ms.fetch[i]!, chromiumPools: c.connectionPools, chromiumInFlight: c.inFlight }));
        process.stderr.write(`  rounds of reads over ${protocol}: done\n`);
      }
    }

    if (rows.length) printRows(rows, ffnBytes);
    if (tlsRows.length) printTlsRows(tlsRows, ffnBytes, bestAfter(rows));
    if (floorRows.length) printFloorRows(floorRows);
    const find = (s: Strategy, name: string, n: number) => rows.find((r) => r.strategy === s && r.config === name && r.inFlight === n);
    const hb = find('hybrid', BEFORE.name, 8);
    const ha = find('hybrid', 'after', 64);
    const wb = find('window', BEFORE.name, 8);
    const best = rows.filter((r) => r.strategy === 'window' && r.config === 'after').sort((a, b) => a.summary.msPerToken - b.summary.msPerToken)[0];
    if (hb && wb) console.log(`\nbefore: window ${wb.summary.msPerToken.toFixed(0)} ms/token, hybrid/window ${(hb.summary.msPerToken / wb.summary.msPerToken).toFixed(1)}x, window read/need ${wb.neededBytes ? (wb.summary.bytesPerToken / wb.neededBytes).toFixed(2) : '-'}x`);
    if (ha && best) console.log(`after:  window ${best.summary.msPerToken.toFixed(0)} ms/token (in-flight ${best.inFlight}), hybrid/window ${(ha.summary.msPerToken / best.summary.msPerToken).toFixed(1)}x, window read/need ${best.neededBytes ? (best.summary.bytesPerToken / best.neededBytes).toFixed(2) : '-'}x`);
    const bad = [...rows, ...tlsRows].filter((r) => !r.equalsDense);
    console.log(bad.length ? `!! ${bad.length} rows did not generate the dense tokens` : `all ${rows.length + tlsRows.length} rows generated exactly the dense engine's tokens`);
    const totalS = (performance.now() - started) / 1000;
    console.log(`# load average at end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}; ${totalS.toFixed(0)} s in all`);
    await mkdir(dirname(OUT), { recursive: true });
    await writeFile(OUT, JSON.stringify({ bench: 'flash --cdn', date: new Date().toISOString(), command, model: m.name, layers: h.arch.nLayers, ffnBytes, recordBytes, cdn: { rttMs: RTT, connMBps: CONN, linkMBps: LINK }, rows, tlsRows, floorRows }, null, 1) + '\n');
    console.log(`wrote ${relative(process.cwd(), OUT)}`);
  } finally {
    await chromium?.close();
    await tlsProxy?.close();
    await tlsNginx?.stop();
    await h1Proxy?.close();
    await h1Nginx?.stop();
    await proxy?.close();
    await nginx?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A round of reads without the model (--floor-rounds): Node's and Chromium's median ms for the same reads. */
interface FloorRow {
  protocol: string;
  reads: number;
  bytes: number;
  nodeMs: number;
  /** Chromium through HttpSource.read, and through plain fetch sent the same way. */
  chromiumMs: number;
  fetchMs: number;
  chromiumPools: number;
  chromiumInFlight: number;
}

/** Median ms of `rounds` rounds of n reads of `bytes` at once, per shape (10 ms apart, as layers are). */
async function readRounds(read: (at: number, into: Uint8Array) => Promise<void>, shapes: [number, number][], rounds: number, spanMiB: number): Promise<number[]> {
  const out: number[] = [];
  for (const [n, bytes] of shapes) {
    const bufs = Array.from({ length: n }, () => new Uint8Array(bytes));
    const times: number[] = [];
    for (let k = 0; k < rounds; k++) {
      const t0 = performance.now();
      await Promise.all(bufs.map((b, i) => read(((k * 97 + i * 13) % spanMiB) * MiB, b)));
      times.push(performance.now() - t0);
      await new Promise((done) => setTimeout(done, 10));
    }
    out.push(times.sort((a, b) => a - b)[times.length >> 1]!);
  }
  return out;
}

type Col<R> = [string, number, (r: R) => string];

/** Prints rows as a fixed-width table: the first two columns left-aligned, the others right-aligned. */
function printTable<R>(cols: Col<R>[], rows: R[]): void {
  const line = (v: string[]) => v.map((x, i) => (i < 2 ? x.padEnd(cols[i]![1]) : x.padStart(cols[i]![1]))).join(' ');
  const head = line(cols.map((c) => c[0]));
  console.log(head);
  console.log('-'.repeat(head.length));
  for (const r of rows) console.log(line(cols.map((c) => c[2](r))));
}

/** The columns both tables have: requests in flight, time, and bytes read per token and per needed byte. */
function measuredCols<R extends RunRow>(ffnBytes: number): { head: Col<R>[]; bytes: Col<R>[] } {
  return {
    head: [
      ['in-flight', 9, (r) => String(r.inFlight)],
      ['multi', 5, (r) => (r.multiRange ? 'yes' : 'no')],
      ['ms/token', 9, (r) => r.summary.msPerToken.toFixed(0)],
      ['p50', 7, (r) => r.msP50.toFixed(0)],
      ['I/O ms', 7, (r) => r.summary.ioMsPerToken.toFixed(0)],
      ['read/token', 11, (r) => `${(r.summary.bytesPerToken / MiB).toFixed(1)} MiB`],
      ['FFN%', 6, (r) => ((100 * r.summary.bytesPerToken) / ffnBytes).toFixed(1)],
    ],
    bytes: [
      ['read/need', 9, (r) => (r.neededBytes ? (r.summary.bytesPerToken / r.neededBytes).toFixed(2) : '-')],
      ['req/token', 9, (r) => r.summary.requestsPerToken.toFixed(0)],
      ['mean req', 9, (r) => `${(r.summary.meanRequestBytes / 1024).toFixed(0)} KB`],
    ],
  };
}

function printRows(rows: Row[], ffnBytes: number): void {
  const m = measuredCols<Row>(ffnBytes);
  console.log('');
  printTable<Row>(
    [
      ['strategy', 9, (r) => r.strategy],
      ['config', 24, (r) => r.config],
      ...m.head,
      ['need%', 6, (r) => (r.neededBytes === null ? '-' : ((100 * r.neededBytes) / ffnBytes).toFixed(2))],
      ...m.bytes,
      ['rtt ms', 7, (r) => (r.summary.link ? r.summary.link.rttMs.toFixed(0) : '-')],
      ['conn MB/s', 9, (r) => (r.summary.link ? r.summary.link.connMBps.toFixed(0) : '-')],
      ['link MB/s', 9, (r) => (r.summary.link ? r.summary.link.linkMBps.toFixed(0) : '-')],
      ['req KB', 6, (r) => (r.summary.link ? (r.summary.link.requestBytes / 1024).toFixed(0) : '-')],
      ['tier hit%', 9, (r) => (r.summary.tierHitRate === null ? '-' : (100 * r.summary.tierHitRate).toFixed(1))],
      ['=dense', 6, (r) => (r.equalsDense ? 'yes' : 'NO')],
    ],
    rows,
  );
}

/** Node's fastest HTTP/1.1 "after" row per strategy (the main table). */
function bestAfter(rows: Row[]): Map<Strategy, Row> {
  const out = new Map<Strategy, Row>();
  for (const r of rows) if (r.config === 'after' && (!out.get(r.strategy) || r.summary.msPerToken < out.get(r.strategy)!.summary.msPerToken)) out.set(r.strategy, r);
  return out;
}

function printTlsRows(rows: TlsRow[], ffnBytes: number, best: Map<Strategy, Row>): void {
  console.log(`\nNode and Chromium over TLS, same modelled CDN: HTTP/2 (requests multiplexed as streams), and HTTP/1.1 where the client says so`);
  const m = measuredCols<TlsRow>(ffnBytes);
  printTable<TlsRow>(
    [
      ['strategy', 9, (r) => r.strategy],
      ['client', 20, (r) => r.client],
      ['pools', 5, (r) => String(r.pools)],
      ...m.head,
      ...m.bytes,
      ['compute', 7, (r) => (r.summary.msPerToken - r.summary.ioMsPerToken).toFixed(0)],
      ['rtt ms', 7, (r) => (r.summary.link ? r.summary.link.rttMs.toFixed(0) : '-')],
      ['link MB/s', 9, (r) => (r.summary.link ? r.summary.link.linkMBps.toFixed(0) : '-')],
      ['req KB', 6, (r) => (r.summary.link ? (r.summary.link.requestBytes / 1024).toFixed(0) : '-')],
      ['on wire', 7, (r) => (r.maxConcurrent === null ? '-' : String(r.maxConcurrent))],
      ['queue ms', 8, (r) => (r.queueMs === null ? '-' : r.queueMs.toFixed(1))],
      ['wire ms', 7, (r) => (r.wireMs === null ? '-' : r.wireMs.toFixed(1))],
      ['protocol', 8, (r) => Object.keys(r.protocols).join('+') || '-'],
      ['threads', 7, (r) => String(r.threads)],
      ['=dense', 6, (r) => (r.equalsDense ? 'yes' : 'NO')],
    ],
    rows,
  );
  for (const s of ['hybrid', 'window'] as const) {
    for (const c of rows.filter((r) => r.strategy === s && r.client.startsWith('chromium'))) {
      const n = rows.find((r) => r.strategy === s && r.client === c.versus);
      const h1 = best.get(s);
      if (n) console.log(`${c.client} / ${n.client}, ${s}: ${(c.summary.msPerToken / n.summary.msPerToken).toFixed(2)}x ms/token (${n.client} ${n.summary.msPerToken.toFixed(0)} ms), ${(c.summary.bytesPerToken / n.summary.bytesPerToken).toFixed(2)}x bytes/token${h1 ? `; ${(c.summary.msPerToken / h1.summary.msPerToken).toFixed(2)}x node's best HTTP/1.1 row (${h1.summary.msPerToken.toFixed(0)} ms, in-flight ${h1.inFlight})` : ''}`);
    }
  }
}

function printFloorRows(rows: FloorRow[]): void {
  console.log(`\nOne round of reads without the model (n range reads at once, median of ${FLOOR_ROUNDS} rounds): what the network costs each client per layer`);
  printTable<FloorRow>(
    [
      ['protocol', 8, (r) => r.protocol],
      ['reads', 12, (r) => `${r.reads} x ${(r.bytes / 1024).toFixed(0)} KB`],
      ['node ms', 8, (r) => r.nodeMs.toFixed(1)],
      ['chromium ms', 11, (r) => r.chromiumMs.toFixed(1)],
      ['plain fetch ms', 14, (r) => r.fetchMs.toFixed(1)],
      ['chromium / node', 15, (r) => `${(r.chromiumMs / r.nodeMs).toFixed(2)}x`],
      ['pools', 5, (r) => String(r.chromiumPools)],
    ],
    rows,
  );
}

await main();
