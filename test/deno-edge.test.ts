/**
 * Deno and the edge handler, run by the `deno` binary of the npm package
 * `deno`, against models served over HTTP by `flashlm host` (the CLI,
 * spawned as a user would): the same .flm gives the same text as Node.
 * - examples/deno/generate.ts from a local path and from an http://127.0.0.1
 *   URL, greedy and seeded sampling, prints exactly Node's text;
 * - examples/edge/handler.ts under Deno.serve streams Node's greedy text as a
 *   chunked Response (GET and POST), survives a cancelled stream, and stays
 *   inside a 128 MB budget;
 * - `deno check` accepts the examples.
 * These run the build in dist/ (Deno imports the package by name through its
 * `deno` export condition): scripts/test.sh builds first.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openModel, MemorySource } from '../src/node.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK, convertToBytes, optChatBytes, optReference } from './helpers/models.js';
import { checkOpenAiApi } from './helpers/openai-api.js';
import { ROOT, findDeno, run, startService, type Service } from './helpers/processes.js';

const deno = findDeno();
const DENO_ENV = { DENO_NO_UPDATE_CHECK: '1', DENO_NO_PROMPT: '1' };
const dir = mkdtempSync(join(tmpdir(), 'flashlm-deno-'));
chmodSync(dir, 0o755);
let cdn: Service;
const bytes: Record<string, Uint8Array> = {};

const FIXTURES = {
  stories: { prompt: 'Once upon a time', n: 64 },
  opt: { prompt: optReference().ref.prompt, n: 40 },
} as const;
type Name = keyof typeof FIXTURES;

test.before(async () => {
  bytes.stories = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  bytes.opt = await convertToBytes(OPT_DIR);
  bytes.optchat = await optChatBytes(); // for the handler's /v1 API
  for (const [name, b] of Object.entries(bytes)) writeFileSync(join(dir, `${name}.flm`), b);
  cdn = await startService(process.execPath, [ROOT + 'bin/flashlm.js', 'host', dir, '--port', '0'], /serving .* at (http:\/\/127\.0\.0\.1:\d+)\//);
});
test.after.always(async () => {
  await cdn?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const path = (name: Name) => join(dir, `${name}.flm`);
const url = (name: Name) => `${cdn.url}/${name}.flm`;

/** Node's text for a fixture (dense, from memory): the reference every runtime must match. */
async function nodeText(name: Name, sampling: { temperature?: number; seed?: number } = {}): Promise<string> {
  const m = await openModel(new MemorySource(bytes[name]!), { strategy: 'dense' });
  try {
    return await m.complete(FIXTURES[name].prompt, { maxTokens: FIXTURES[name].n, temperature: 0, ...sampling });
  } finally {
    await m.close();
  }
}

async function denoGenerate(model: string, name: Name, extra: string[] = []) {
  const r = await run(deno, ['run', '-A', 'examples/deno/generate.ts', model, '-p', FIXTURES[name].prompt, '-n', String(FIXTURES[name].n), ...extra], { env: DENO_ENV });
  if (r.code !== 0) throw new Error(`deno exited ${r.code}: ${r.stderr}`);
  return r;
}

for (const name of ['stories', 'opt'] as const) {
  test(`deno: ${name} greedy text equals Node's, from a local path and from an http://127.0.0.1 URL`, async (t) => {
    const want = await nodeText(name);
    t.true(want.length > 20);
    const local = await denoGenerate(path(name), name);
    t.is(local.stdout, want, 'local path');
    const remote = await denoGenerate(url(name), name, ['--strategy', 'window']);
    t.is(remote.stdout, want, 'http URL, window strategy');
    t.is(local.stderr, '', 'nothing but the text');
    t.log(`${name}: deno ${local.ms.toFixed(0)} ms (path), ${remote.ms.toFixed(0)} ms (URL)`);
  });
}

test('deno: kernel threads 1 and 2 (dense: batched prefill, split kernels) print Node\'s greedy text', async (t) => {
  const want = await nodeText('opt');
  for (const threads of [1, 2]) {
    const r = await denoGenerate(path('opt'), 'opt', ['--threads', String(threads), '--stats']);
    t.is(r.stdout, want, `${threads} thread(s)`);
    const stats = JSON.parse(r.stderr.trim().split('\n').pop()!) as { threads: number; timings: { promptTokens: number } };
    t.is(stats.threads, threads, 'Deno runs the threads it asks for');
    t.true(stats.timings.promptTokens > 1);
  }
});

test('deno: seeded sampling (--temp 0.8 --seed 7) equals Node\'s', async (t) => {
  const want = await nodeText('stories', { temperature: 0.8, seed: 7 });
  const got = await denoGenerate(path('stories'), 'stories', ['--temp', '0.8', '--seed', '7']);
  t.is(got.stdout, want);
  t.not(want, await nodeText('stories'), 'sampling changed the text');
});

test('deno: a missing file is a clear error, exit code 1', async (t) => {
  const r = await run(deno, ['run', '-A', 'examples/deno/generate.ts', join(dir, 'nope.flm'), '-n', '4'], { env: DENO_ENV });
  t.is(r.code, 1);
  t.regex(r.stderr, /nope\.flm: cannot open/);
  t.is(r.stdout, '');
});

/** Reads a streamed body, keeping the chunks as they arrive. */
async function readStream(res: Response): Promise<{ text: string; chunks: number; firstMs: number; totalMs: number }> {
  const t0 = performance.now();
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  let chunks = 0;
  let firstMs = -1;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (firstMs < 0) firstMs = performance.now() - t0;
    chunks++;
    text += dec.decode(value, { stream: true });
  }
  return { text: text + dec.decode(), chunks, firstMs, totalMs: performance.now() - t0 };
}

test('edge: the fetch handler under Deno.serve streams Node\'s greedy text within a 128 MB budget', async (t) => {
  const want = await nodeText('opt');
  const baseline = await run(deno, ['eval', 'console.log(/VmHWM:\\s+(\\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))[1])'], { env: DENO_ENV });
  const edge = await startService(deno, ['run', '-A', '--v8-flags=--expose-gc', 'examples/edge/serve.ts', '--port', '0'], /listening on (http:\/\/127\.0\.0\.1:\d+)\//, {
    env: { ...DENO_ENV, FLASHLM_MODEL_URL: url('opt') },
  });
  try {
    const { prompt, n } = FIXTURES.opt;
    const res = await fetch(`${edge.url}/?prompt=${encodeURIComponent(prompt)}&n=${n}`);
    t.is(res.status, 200);
    t.regex(res.headers.get('content-type') ?? '', /^text\/plain/);
    const got = await readStream(res);
    t.is(got.text, want, 'GET');
    t.true(got.chunks > 1, `streamed in ${got.chunks} chunks`);

    const post = await fetch(edge.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, maxTokens: n, temperature: 0 }) });
    t.is((await readStream(post)).text, want, 'POST');

    // A client that goes away mid-stream releases the model for the next request.
    const ctl = new AbortController();
    const long = await fetch(`${edge.url}/?prompt=${encodeURIComponent(prompt)}&n=400`, { signal: ctl.signal });
    const reader = long.body!.getReader();
    await reader.read();
    ctl.abort();
    await reader.cancel().catch(() => {});
    const again = await fetch(`${edge.url}/?prompt=${encodeURIComponent(prompt)}&n=${n}`, { signal: AbortSignal.timeout(30_000) });
    t.is((await readStream(again)).text, want, 'after a cancelled stream');

    t.is((await fetch(`${edge.url}/?n=100000`)).status, 400);
    t.is((await fetch(edge.url, { method: 'PUT' })).status, 405);

    const mem = (await (await fetch(`${edge.url}/_memory`)).json()) as { heapTotal: number; external: number; peakRss: number | null; arenaBytes: number };
    const MB = 1 << 20;
    const isolate = mem.heapTotal + mem.external + mem.arenaBytes;
    const base = Number(baseline.stdout.trim()) * 1024;
    t.log(`edge: first chunk after ${got.firstMs.toFixed(0)} ms, ${got.chunks} chunks in ${got.totalMs.toFixed(0)} ms; JS heap ${(mem.heapTotal / MB).toFixed(1)} MB + external ${(mem.external / MB).toFixed(1)} MB + arena ${(mem.arenaBytes / MB).toFixed(1)} MB = ${(isolate / MB).toFixed(1)} MB; process peak RSS ${((mem.peakRss ?? 0) / MB).toFixed(1)} MB (an idle deno: ${(base / MB).toFixed(1)} MB)`);
    // Measured after a full GC (the server runs with --expose-gc), so the figure is what is live, whatever the
    // test files running beside this one do to GC timing.
    // Edge platforms count the isolate's memory (JS heap + ArrayBuffers, the arena among them) against the
    // 128 MB limit. Process RSS also holds Deno's compiled code and caches and moves with machine load (147 MB
    // over idle once on a busy 2-core box), so it is reported above, not asserted.
    t.true(isolate <= 128 * MB, 'heap + buffers + arena fit 128 MB');
    t.true(mem.arenaBytes <= 64 * MB, 'the arena stays within the handler budget');
  } finally {
    await edge.stop();
  }
});

test.serial('edge: the handler speaks the OpenAI API (/v1, the openai client): Node\'s greedy text and chat answer, streaming and not', async (t) => {
  const edge = await startService(deno, ['run', '-A', 'examples/edge/serve.ts', '--port', '0'], /listening on (http:\/\/127\.0\.0\.1:\d+)\//, {
    env: { ...DENO_ENV, FLASHLM_MODEL_URL: `${cdn.url}/optchat.flm` },
  });
  try {
    await checkOpenAiApi(t, edge.url, bytes.optchat!, 'optchat', FIXTURES.opt.prompt, FIXTURES.opt.n);
  } finally {
    await edge.stop();
  }
});

test('deno check: the Deno and edge examples type-check under Deno', async (t) => {
  const r = await run(deno, ['check', 'examples/deno/generate.ts', 'examples/edge/handler.ts', 'examples/edge/serve.ts'], { env: DENO_ENV });
  t.is(r.code, 0, r.stderr);
});
