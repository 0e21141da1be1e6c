/**
 * Chromium over HTTP/2 behind the modelled CDN (issue 13): nginx with TLS and
 * `http2` (a certificate made by the test, trusted by Chromium through its
 * SPKI hash: no CA install, Debian's Chromium), the TCP proxy of
 * test/helpers/cdn-proxy.ts in front (round trip per request, pacing, a
 * connection limit). A cross-origin-isolated page (COOP/COEP) runs the
 * browser build (bundled from src/ by esbuild) in a module worker with the
 * fetch HttpSource:
 * - window and hybrid with the oracle's true active sets generate exactly
 *   the dense engine's tokens (Node, from memory);
 * - every model request went over HTTP/2: Resource Timing says h2 in the
 *   page, nginx's log says HTTP/2.0;
 * - two connection pools: reads alternate between the two credentials modes
 *   a browser keeps connections apart by, so a same-origin model gets 2
 *   HTTP/2 connections (nginx's log shows both);
 * - one range per request (multi-range off): more requests on the wire at
 *   once than HTTP/1.1's 6 per origin, over at most 2 connections;
 * - mirrors (the same CDN on 3 more origins, CORS without credentials):
 *   reads go round the 4 origins, one HTTP/2 connection per cross-origin
 *   mirror (its CORS refuses credentials: one pool), two for the page's own
 *   origin, and the tokens still equal dense;
 * - an origin without HTTP/2 whose CORS refuses credentials: the source sees
 *   http/1.1 and keeps 6 requests in flight, the connections a browser opens
 *   there; one whose CORS allows credentials: 12, over 12 connections.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { openModel, MemorySource } from '../src/node.js';
import { launchChromium, runInChromium, writeSite, ISOLATION_HEADERS, type Chromium } from '../bench/browser-cdn.js';
import { cdnProxy, type CdnProxy } from './helpers/cdn-proxy.js';
import { makeCert, startNginx, type Nginx } from './helpers/nginx.js';
import { OPT_DIR, convertToBytes, optReference } from './helpers/models.js';

const N = 8;
const { ref } = optReference();
const dir = mkdtempSync(join(tmpdir(), 'flashlm-cdn-browser-'));
chmodSync(dir, 0o755);
let nginx: Nginx;
let h1: Nginx;
let h1c: Nginx;
let cdn: CdnProxy;
let chromium: Chromium;
let page: Page;
let origin: string;
let dense: number[];

test.before(async () => {
  const bytes = await convertToBytes(OPT_DIR, { layout: 'bundled' });
  writeFileSync(join(dir, 'opt.flm'), bytes);
  await writeSite(dir);
  const m = await openModel(new MemorySource(bytes), { strategy: 'dense', contextLength: 64 });
  dense = [];
  for await (const s of m.steps(ref.prompt, { maxTokens: N + 1, temperature: 0 })) if (s.token >= 0) dense.push(s.token);
  await m.close();
  const cert = makeCert(dir);
  nginx = await startNginx({ root: dir, tls: cert, headers: { ...ISOLATION_HEADERS, 'Cache-Control': 'no-store' }, accessLog: true, cors: true });
  h1 = await startNginx({ root: dir, tls: cert, http2: false, headers: { 'Cache-Control': 'no-store' }, cors: true });
  h1c = await startNginx({ root: dir, tls: cert, http2: false, headers: { 'Cache-Control': 'no-store' }, cors: 'credentials', accessLog: true });
  // 3 ms per request, 50 MB/s per connection, 200 MB/s link; at most 8 connections (a browser on h2 needs one per origin and credentials mode); 4 origins.
  cdn = await cdnProxy(nginx.port, 3, 50, 200, { maxConnections: 8, listeners: 4 });
  origin = `https://127.0.0.1:${cdn.port}`;
  chromium = await launchChromium(cert);
  page = await chromium.page(origin);
});

test.after.always(async () => {
  await chromium?.close();
  await cdn?.close();
  await nginx?.stop();
  await h1?.stop();
  await h1c?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const modelLog = async () => (await nginx.accessLog()).filter((l) => l.split(' ')[2] === '/opt.flm');

for (const strategy of ['window', 'hybrid'] as const) {
  test.serial(`${strategy} (oracle) in Chromium over HTTP/2 behind the modelled CDN equals dense; every request is h2`, async (t) => {
    t.timeout(120_000);
    const logged = (await modelLog()).length;
    const r = await runInChromium(page, { url: `${origin}/opt.flm`, prompt: ref.prompt, tokens: N, strategy, sparsity: 'oracle', contextLength: 64 });
    t.deepEqual(r.ids.slice(0, N), dense.slice(0, N), `${strategy} in Chromium`);
    t.true(r.isolated, 'COOP/COEP: the worker is cross-origin isolated');
    t.true(r.requests > 1);
    t.deepEqual(Object.keys(r.protocols), ['h2'], JSON.stringify(r.protocols));
    t.is(r.inFlight, 64, 'the source saw HTTP/2 (Resource Timing) and keeps 64 requests in flight, not 8');
    const log = (await modelLog()).slice(logged);
    t.true(log.length >= r.requests, `nginx logged ${log.length} model requests, the page ${r.requests}`);
    t.deepEqual([...new Set(log.map((l) => l.split(' ')[0]))], ['HTTP/2.0']);
    t.is(r.connectionPools, 2, 'same origin: reads alternate over both credentials modes');
    const conns = new Set(log.filter((l) => l.split(' ')[4] === 'GET').map((l) => l.split(' ')[5]));
    t.is(conns.size, 2, `model reads over nginx connections ${[...conns].join(', ')}`);
    t.true(r.summary.link !== null && r.summary.link!.rttMs > 0, 'link estimates in the browser stats');
    t.is(cdn.refused, 0);
    t.log(`${strategy}: ${r.requests} requests (${r.multiRange ? 'multi-range' : 'single ranges'}), at most ${r.maxConcurrent} at once, ${r.threading.threads} thread(s); ${r.summary.msPerToken.toFixed(0)} ms/token`);
  });
}

test.serial('one range per request: more than 6 requests on the wire at once over at most 2 connections (HTTP/2 multiplexing)', async (t) => {
  t.timeout(120_000);
  const before = cdn.connections;
  const r = await runInChromium(page, { url: `${origin}/opt.flm`, prompt: ref.prompt, tokens: 4, strategy: 'window', sparsity: 'oracle', contextLength: 64, connections: 32, http: { multiRange: false } });
  t.deepEqual(r.ids.slice(0, 4), dense.slice(0, 4));
  t.false(r.multiRange);
  t.is(r.inFlight, 32);
  t.deepEqual(Object.keys(r.protocols), ['h2']);
  t.true(r.maxConcurrent > 6, `at most ${r.maxConcurrent} requests at once (HTTP/1.1 allows 6 per origin)`);
  t.true(cdn.connections - before <= 2, `${cdn.connections - before} new connections`);
  t.true(cdn.maxOpen <= 2, `${cdn.maxOpen} connections open at once`);
  t.log(`${r.requests} requests, at most ${r.maxConcurrent} at once, over ${cdn.maxOpen} connection(s)`);
});

test.serial('mirrors: reads go round 4 origins of the CDN (CORS), one HTTP/2 connection per mirror and two for the own origin; the tokens equal dense', async (t) => {
  t.timeout(120_000);
  const mirrors = cdn.ports.slice(1).map((p) => `https://127.0.0.1:${p}/opt.flm`);
  const logged = (await modelLog()).length;
  const r = await runInChromium(page, { url: `${origin}/opt.flm`, prompt: ref.prompt, tokens: N, strategy: 'window', sparsity: 'oracle', contextLength: 64, cache: 'default', http: { mirrors, multiRange: false } });
  t.deepEqual(r.ids.slice(0, N), dense.slice(0, N));
  t.deepEqual(Object.keys(r.protocols), ['h2'], JSON.stringify(r.protocols));
  t.is(r.inFlight, 64, 'HTTP/2 detected: 64 in flight by default');
  t.is(r.connectionPools, 5, 'two pools for the same origin; the mirrors allow no credentials: one each');
  t.is(r.failed, mirrors.length, "each mirror's probe with credentials, refused by its CORS");
  t.is(cdn.refused, 0);
  const log = (await modelLog()).slice(logged);
  // A refused probe's connection (it got its byte; CORS then failed it) carries nothing more: connections with reads are counted.
  const perConnection = new Map<string, number>();
  for (const l of log.filter((l) => l.split(' ')[1] === '206')) perConnection.set(l.split(' ')[5]!, (perConnection.get(l.split(' ')[5]!) ?? 0) + 1);
  const readers = new Set([...perConnection].filter(([, n]) => n > 1).map(([c]) => c));
  t.is(readers.size, 5, `reads over nginx connections ${[...readers].join(', ')} (one per pool)`);
  const preflights = log.filter((l) => l.split(' ')[4] === 'OPTIONS').length;
  t.deepEqual([...new Set(log.map((l) => l.split(' ')[0]))], ['HTTP/2.0']);
  // The preflight cache holds (default cache mode; the server says no-store): a few per origin, not one per read.
  t.true(preflights >= mirrors.length && preflights <= 4 * mirrors.length, `${preflights} CORS preflights for ${r.requests} requests`);
  t.log(`${r.requests} requests over ${readers.size} connections (${cdn.maxOpen} open at most), at most ${r.maxConcurrent} at once; ${preflights} CORS preflights`);
});

test.serial('an HTTP/1.1-only origin without credentialed CORS: the source sees http/1.1 and keeps 6 requests in flight (the connections a browser opens per origin and pool); the tokens equal dense', async (t) => {
  t.timeout(120_000);
  const r = await runInChromium(page, { url: h1.url('/opt.flm'), prompt: ref.prompt, tokens: N, strategy: 'window', sparsity: 'oracle', contextLength: 64, cache: 'default' });
  t.deepEqual(r.ids.slice(0, N), dense.slice(0, N));
  t.deepEqual(Object.keys(r.protocols), ['http/1.1'], JSON.stringify(r.protocols));
  t.is(r.connectionPools, 1, 'Access-Control-Allow-Origin: * refuses credentialed reads: one pool');
  t.is(r.failed, 1, 'the probe with credentials, refused by CORS');
  t.is(r.inFlight, 6);
  t.true(r.maxConcurrent <= 6, `at most ${r.maxConcurrent} requests at once`);
});

test.serial('an HTTP/1.1-only origin whose CORS allows credentials: both pools, 12 requests in flight over up to 12 connections; the tokens equal dense', async (t) => {
  t.timeout(120_000);
  const r = await runInChromium(page, { url: h1c.url('/opt.flm'), prompt: ref.prompt, tokens: N, strategy: 'window', sparsity: 'oracle', contextLength: 64, cache: 'default', http: { multiRange: false } });
  t.deepEqual(r.ids.slice(0, N), dense.slice(0, N));
  t.deepEqual(Object.keys(r.protocols), ['http/1.1'], JSON.stringify(r.protocols));
  t.is(r.connectionPools, 2);
  t.is(r.inFlight, 12);
  t.true(r.maxConcurrent > 6 && r.maxConcurrent <= 12, `at most ${r.maxConcurrent} requests at once`);
  const conns = new Set((await h1c.accessLog()).filter((l) => l.split(' ')[2] === '/opt.flm' && l.split(' ')[4] === 'GET').map((l) => l.split(' ')[5]));
  t.true(conns.size > 6 && conns.size <= 12, `${conns.size} connections`);
  t.log(`${r.requests} requests, at most ${r.maxConcurrent} at once over ${conns.size} connections`);
});
