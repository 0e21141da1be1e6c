/**
 * `flashlm host DIR` (the static range server; `serve` is the API), spawned as a user runs it: single ranges answer 206
 * with Content-Range (416 when unsatisfiable, 200 for several), a strong
 * ETag drives If-Range and If-None-Match, every answer carries COOP/COEP
 * (and CORP/CORS for other origins), types suit the browser (application/
 * wasm), nothing outside DIR is reachable, and flashlm's own HTTP sources
 * (fetch and undici) read a model through it exactly.
 */
import test from 'ava';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HttpSource, NodeHttpSource, openModel, MemorySource } from '../src/node.js';
import { parseRange } from '../src/cli/host.js';
import { STORIES_BIN, STORIES_TOK, convertToBytes } from './helpers/models.js';
import { ROOT, startService, type Service } from './helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'flashlm-serve-'));
const outside = mkdtempSync(join(tmpdir(), 'flashlm-outside-'));
chmodSync(dir, 0o755);
const blob = new Uint8Array(100_000).map((_, i) => (i * 31 + 7) & 0xff);
let srv: Service;

test.before(async () => {
  writeFileSync(join(dir, 'blob.bin'), blob);
  mkdirSync(join(dir, 'app'));
  writeFileSync(join(dir, 'app', 'index.html'), '<!doctype html><title>x</title>');
  writeFileSync(join(dir, 'k.wasm'), new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  writeFileSync(join(outside, 'secret.txt'), 'secret');
  srv = await startService(process.execPath, [ROOT + 'bin/flashlm.js', 'host', dir, '--port', '0'], /serving .* at (http:\/\/127\.0\.0\.1:\d+)\//);
});
test.after.always(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

const get = (path: string, headers: Record<string, string> = {}, method = 'GET') => fetch(`${srv.url}${path}`, { headers, method });

test('Range: 206 with Content-Range and the exact bytes; suffix and open ranges; 416; several ranges get 200', async (t) => {
  let r = await get('/blob.bin', { range: 'bytes=10-19' });
  t.is(r.status, 206);
  t.is(r.headers.get('content-range'), `bytes 10-19/${blob.length}`);
  t.is(r.headers.get('content-length'), '10');
  t.deepEqual(new Uint8Array(await r.arrayBuffer()), blob.subarray(10, 20));
  r = await get('/blob.bin', { range: 'bytes=-5' });
  t.deepEqual(new Uint8Array(await r.arrayBuffer()), blob.subarray(blob.length - 5));
  r = await get('/blob.bin', { range: 'bytes=99990-' });
  t.is(r.headers.get('content-range'), `bytes 99990-99999/${blob.length}`);
  await r.arrayBuffer();
  r = await get('/blob.bin', { range: 'bytes=200000-200010' });
  t.is(r.status, 416);
  t.is(r.headers.get('content-range'), `bytes */${blob.length}`);
  r = await get('/blob.bin', { range: 'bytes=0-1,5-6' });
  t.is(r.status, 200);
  t.is((await r.arrayBuffer()).byteLength, blob.length);
  r = await get('/blob.bin');
  t.is(r.status, 200);
  t.is(r.headers.get('accept-ranges'), 'bytes');
  t.deepEqual(new Uint8Array(await r.arrayBuffer()), blob);
  t.deepEqual(parseRange('bytes=5-2', 10), undefined);
  t.deepEqual(parseRange('bytes=-0', 10), 'unsatisfiable');
  t.deepEqual(parseRange('bytes=3-100', 10), [3, 9]);
});

test('ETag: strong, If-Range serves a range only for the current version, If-None-Match answers 304, a change changes it', async (t) => {
  const first = await get('/blob.bin', { range: 'bytes=0-0' });
  await first.arrayBuffer();
  const etag = first.headers.get('etag')!;
  t.regex(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
  t.truthy(first.headers.get('last-modified'));
  let r = await get('/blob.bin', { range: 'bytes=0-3', 'if-range': etag });
  t.is(r.status, 206);
  await r.arrayBuffer();
  r = await get('/blob.bin', { range: 'bytes=0-3', 'if-range': '"stale"' });
  t.is(r.status, 200, 'a stale validator gets the whole file');
  await r.arrayBuffer();
  r = await get('/blob.bin', { 'if-none-match': etag });
  t.is(r.status, 304);
  // A new version (new mtime) gets a new ETag.
  const later = new Date(Date.now() + 5000);
  utimesSync(join(dir, 'blob.bin'), later, later);
  r = await get('/blob.bin', { range: 'bytes=0-0' });
  await r.arrayBuffer();
  t.not(r.headers.get('etag'), etag);
});

test('every answer carries COOP/COEP (cross-origin isolation), CORP and CORS; preflights pass', async (t) => {
  for (const [path, status] of [['/blob.bin', 200], ['/app/', 200], ['/missing', 404]] as const) {
    const r = await get(path);
    await r.arrayBuffer();
    t.is(r.status, status, path);
    t.is(r.headers.get('cross-origin-opener-policy'), 'same-origin', path);
    t.is(r.headers.get('cross-origin-embedder-policy'), 'require-corp', path);
    t.is(r.headers.get('cross-origin-resource-policy'), 'cross-origin', path);
    t.is(r.headers.get('access-control-allow-origin'), '*', path);
    t.regex(r.headers.get('access-control-expose-headers') ?? '', /Content-Range.*ETag/, path);
  }
  const pre = await get('/blob.bin', { origin: 'http://elsewhere.test', 'access-control-request-method': 'GET', 'access-control-request-headers': 'range, if-range' }, 'OPTIONS');
  t.is(pre.status, 204);
  t.regex(pre.headers.get('access-control-allow-headers') ?? '', /if-range/i);
});

test('types, folders, HEAD, methods, and nothing outside DIR', async (t) => {
  let r = await get('/k.wasm');
  t.is(r.headers.get('content-type'), 'application/wasm');
  await r.arrayBuffer();
  r = await get('/app/');
  t.regex(r.headers.get('content-type') ?? '', /text\/html/);
  t.regex(await r.text(), /<title>x/);
  r = await fetch(`${srv.url}/app`, { redirect: 'manual' });
  t.is(r.status, 301);
  t.is(r.headers.get('location'), '/app/');
  r = await get('/blob.bin', {}, 'HEAD');
  t.is(r.status, 200);
  t.is(r.headers.get('content-length'), String(blob.length));
  t.is((await r.arrayBuffer()).byteLength, 0);
  t.is((await get('/blob.bin', {}, 'DELETE')).status, 405);
  const name = outside.split('/').pop()!;
  for (const p of [`/../${name}/secret.txt`, `/%2e%2e/${name}/secret.txt`, `/..%2f${name}%2fsecret.txt`]) {
    const x = await get(p);
    t.true(x.status === 403 || x.status === 404, `${p}: ${x.status}`);
    t.false((await x.text()).includes('secret'));
  }
});

test('flashlm\'s HTTP sources (fetch and undici) read a model through it: same text as from memory', async (t) => {
  const bytes = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  writeFileSync(join(dir, 'stories.flm'), bytes);
  const texts: string[] = [];
  for (const source of [new MemorySource(bytes), await HttpSource.open(`${srv.url}/stories.flm`), await NodeHttpSource.open(`${srv.url}/stories.flm`)]) {
    const m = await openModel(source, { strategy: 'window', sparsity: 'oracle' });
    texts.push(await m.complete('Once upon a time', { maxTokens: 32 }));
    if (!(source instanceof MemorySource)) t.true(source.identity.includes('etag:'), source.identity);
    await m.close();
  }
  t.is(texts[1], texts[0]);
  t.is(texts[2], texts[0]);
});
