/**
 * `flashlm serve MODEL`: the OpenAI-compatible API, spawned as a user runs
 * it and driven by clients nobody here wrote — the official `openai` npm
 * package (completions and chat, streaming and not, an abort, error
 * statuses) and `curl -N` — plus raw HTTP for what clients hide: bad JSON,
 * wrong field types, a wrong key, an oversized body, a too-long prompt, CORS,
 * a busy port. Greedy text through the server equals `flashlm run`'s. The
 * bounded queue and disconnects run in-process on a model whose generation
 * the test holds, so the timing is deterministic.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { openCheckpoint } from '../src/convert/index.js';
import { writeFlm } from '../src/format/writer.js';
import { FileSink } from '../src/source/file-node.js';
import { openModel, type Model } from '../src/node.js';
import { startApiServer, type ApiServer } from '../src/cli/serve.js';
import { OPT_DIR, optReference } from './helpers/models.js';
import { ROOT, startService, type Service } from './helpers/processes.js';

const BIN = ROOT + 'bin/flashlm.js';
const KEY = 'test-key-0123456789';
const ZEPHYR = fileURLToPath(new URL('./fixtures/chat/zephyr.jinja', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'flashlm-api-'));
const MODEL = join(dir, 'opt-chat.flm');
let srv: Service;
let client: OpenAI;

test.before(async () => {
  // The OPT fixture with a chat template in its tokenizer_config.json, as Hugging Face chat models ship it.
  const src = join(dir, 'opt-src');
  cpSync(OPT_DIR, src, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(src, 'tokenizer_config.json'), 'utf8'));
  cfg.chat_template = readFileSync(ZEPHYR, 'utf8');
  writeFileSync(join(src, 'tokenizer_config.json'), JSON.stringify(cfg));
  const ckpt = await openCheckpoint(src);
  const sink = await FileSink.create(MODEL);
  await writeFlm(ckpt, sink, { dtype: 'f32', layout: 'bundled' });
  await ckpt.close();
  srv = await startService(process.execPath, [BIN, 'serve', MODEL, '--port', '0', '--api-key', KEY, '--context', '128', '--max-body', '4096', '--log'], /serving .* at (http:\/\/127\.0\.0\.1:\d+)\/v1/);
  client = new OpenAI({ apiKey: KEY, baseURL: srv.url + '/v1', maxRetries: 0 });
});
test.after.always(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(srv.url + path, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers } });

test.serial('GET /v1/models through the openai client lists the one model', async (t) => {
  const list = await client.models.list();
  t.deepEqual(list.data.map((m) => m.id), ['opt-chat']);
  t.is(list.data[0]!.object, 'model');
});

test.serial('completions, greedy: the same text as `flashlm run`, streaming or not; usage and timings', async (t) => {
  const { ref } = optReference();
  const run = await promisify(execFile)(process.execPath, [BIN, 'run', MODEL, '-p', ref.prompt, '-n', String(ref.n), '--temp', '0']);
  t.is(run.stdout, ref.text + '\n');
  const r = await client.completions.create({ model: 'opt-chat', prompt: ref.prompt, max_tokens: ref.n, temperature: 0 });
  t.is(r.object, 'text_completion');
  t.is(r.choices[0]!.text, ref.text);
  t.is(r.choices[0]!.finish_reason, 'length');
  t.is(r.usage!.completion_tokens, ref.n);
  t.is(r.usage!.prompt_tokens, ref.prompt_ids.length);
  t.is(r.usage!.total_tokens, ref.prompt_ids.length + ref.n);
  const timings = (r as unknown as { timings: Record<string, number> }).timings;
  t.is(timings.predicted_n, ref.n);
  t.true(timings.prompt_n + timings.cache_n === ref.prompt_ids.length);
  // Streaming: the chunks concatenate to the same text; include_usage adds a last chunk with no choices.
  const stream = await client.completions.create({ model: 'opt-chat', prompt: ref.prompt, max_tokens: ref.n, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let chunks = 0;
  let usage: OpenAI.CompletionUsage | undefined | null;
  let finish: string | null = null;
  for await (const c of stream) {
    chunks++;
    if (c.choices[0]) {
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
    if (c.usage) usage = c.usage;
  }
  t.is(text, ref.text);
  t.true(chunks > 3);
  t.is(finish, 'length');
  t.is(usage?.completion_tokens, ref.n);
  // The same prompt again: the KV cache holds it (all but its last token are reused).
  const again = await client.completions.create({ model: 'opt-chat', prompt: ref.prompt, max_tokens: 4, temperature: 0 });
  t.is(again.choices[0]!.text, ref.text.slice(0, again.choices[0]!.text.length));
  t.is(again.usage!.prompt_tokens_details?.cached_tokens, ref.prompt_ids.length - 1);
});

test.serial('completions: stop strings and sampling fields (seeded: the same text twice; top_k 1 is greedy)', async (t) => {
  const { ref } = optReference();
  const stop = ref.text.slice(10, 14);
  const r = await client.completions.create({ model: 'x', prompt: ref.prompt, max_tokens: ref.n, temperature: 0, stop });
  t.is(r.choices[0]!.text, ref.text.slice(0, ref.text.indexOf(stop)));
  t.is(r.choices[0]!.finish_reason, 'stop');
  const extra = { top_k: 1, min_p: 0.05, repeat_penalty: 1 } as Record<string, number>;
  const k1 = await client.completions.create({ model: 'x', prompt: ref.prompt, max_tokens: ref.n, temperature: 0.9, seed: 5, ...extra });
  t.is(k1.choices[0]!.text, ref.text);
  const body = { model: 'x', prompt: ref.prompt, max_tokens: 16, temperature: 1, top_p: 0.9, seed: 42, presence_penalty: 0.5, frequency_penalty: 0.5, top_k: 40 };
  const a = await client.completions.create(body);
  const b = await client.completions.create(body);
  t.is(a.choices[0]!.text, b.choices[0]!.text);
});

test.serial('chat completions, streaming and not: the same answer; role first, then content deltas, finish_reason, usage', async (t) => {
  const messages = [{ role: 'system' as const, content: 'You are terse.' }, { role: 'user' as const, content: 'In the morning she' }];
  const r = await client.chat.completions.create({ model: 'opt-chat', messages, max_tokens: 20, temperature: 0 });
  t.is(r.object, 'chat.completion');
  t.is(r.choices[0]!.message.role, 'assistant');
  const answer = r.choices[0]!.message.content!;
  t.true(answer.length > 0);
  const stream = await client.chat.completions.create({ model: 'opt-chat', messages, max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let role: string | undefined;
  let usage: OpenAI.CompletionUsage | undefined | null;
  for await (const c of stream) {
    t.is(c.object, 'chat.completion.chunk');
    role ??= c.choices[0]?.delta.role;
    text += c.choices[0]?.delta.content ?? '';
    if (c.usage) usage = c.usage;
  }
  t.is(role, 'assistant');
  t.is(text, answer);
  t.is(usage!.prompt_tokens, r.usage!.prompt_tokens);
  // The next turn reuses the conversation so far from the KV cache.
  const next = await client.chat.completions.create({ model: 'opt-chat', messages: [...messages, { role: 'assistant', content: answer }, { role: 'user', content: 'and then?' }], max_tokens: 8, temperature: 0 });
  t.true(next.usage!.prompt_tokens_details!.cached_tokens! >= r.usage!.prompt_tokens);
});

test.serial('errors: OpenAI-shaped, with the right status, through the openai client and raw HTTP', async (t) => {
  const bad = await t.throwsAsync(client.completions.create({ model: 'x', prompt: 'Hi', temperature: 5 }), { instanceOf: OpenAI.BadRequestError });
  t.is((bad as InstanceType<typeof OpenAI.APIError>).status, 400);
  t.regex(bad!.message, /temperature/);
  const wrong = new OpenAI({ apiKey: 'not-the-key', baseURL: srv.url + '/v1', maxRetries: 0 });
  await t.throwsAsync(wrong.models.list(), { instanceOf: OpenAI.AuthenticationError });
  const none = await fetch(srv.url + '/v1/models');
  t.is(none.status, 401);
  t.is(((await none.json()) as { error: { code: string } }).error.code, 'invalid_api_key');

  let r = await post('/v1/completions', '{"prompt": "Hi", ');
  t.is(r.status, 400);
  const e = ((await r.json()) as { error: { type: string; code: string; message: string } }).error;
  t.is(e.type, 'invalid_request_error');
  t.is(e.code, 'invalid_json');
  for (const [body, param] of [
    [{ prompt: 3 }, 'prompt'],
    [{ prompt: 'x', max_tokens: 'ten' }, 'max_tokens'],
    [{ prompt: 'x', stop: [1] }, 'stop'],
    [{ prompt: 'x', top_k: -1 }, 'top_k'],
    [{ prompt: 'x', stream: 'yes' }, 'stream'],
    [{ messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    [{ messages: 'hi' }, 'messages'],
  ] as const) {
    const path = 'messages' in body ? '/v1/chat/completions' : '/v1/completions';
    r = await post(path, JSON.stringify(body));
    t.is(r.status, 400, JSON.stringify(body));
    t.is(((await r.json()) as { error: { param: string } }).error.param, param);
  }
  r = await post('/v1/completions', JSON.stringify({ prompt: 'word '.repeat(200) }));
  t.is(r.status, 400);
  t.is(((await r.json()) as { error: { code: string } }).error.code, 'context_length_exceeded');
  r = await post('/v1/completions', JSON.stringify({ prompt: 'x'.repeat(5000) }));
  t.is(r.status, 413);
  t.is(((await r.json()) as { error: { code: string } }).error.code, 'request_too_large');
  // a chunked body (no Content-Length) over the bound is cut off too
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(srv.url + '/v1/completions', { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'transfer-encoding': 'chunked' } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.on('error', reject);
    for (let i = 0; i < 10; i++) req.write('x'.repeat(1000));
    req.end();
  });
  t.is(status, 413);
  r = await fetch(srv.url + '/v1/nothing', { headers: { authorization: `Bearer ${KEY}` } });
  t.is(r.status, 404);
  r = await fetch(srv.url + '/v1/completions', { headers: { authorization: `Bearer ${KEY}` } });
  t.is(r.status, 405);
  // CORS: a preflight names the methods and allows the Authorization header
  r = await fetch(srv.url + '/v1/chat/completions', { method: 'OPTIONS', headers: { origin: 'http://example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' } });
  t.is(r.status, 204);
  t.is(r.headers.get('access-control-allow-origin'), '*');
  t.regex(r.headers.get('access-control-allow-headers')!, /authorization/);
});

test.serial('curl -N streams server-sent events, ending with data: [DONE]', async (t) => {
  const { ref } = optReference();
  const out = await new Promise<string>((resolve, reject) => {
    const c = spawn('curl', ['-sN', srv.url + '/v1/completions', '-H', `Authorization: Bearer ${KEY}`, '-H', 'Content-Type: application/json', '-d', JSON.stringify({ prompt: ref.prompt, max_tokens: 12, temperature: 0, stream: true })]);
    let s = '';
    c.stdout.on('data', (d: Buffer) => (s += d.toString()));
    c.on('error', reject);
    c.on('close', () => resolve(s));
  });
  const events = out.split('\n\n').filter(Boolean);
  t.is(events.at(-1), 'data: [DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.replace(/^data: /, '')) as { choices: { text: string; finish_reason: string | null }[] });
  t.is(chunks.map((c) => c.choices[0]!.text).join(''), ref.text.slice(0, chunks.map((c) => c.choices[0]!.text).join('').length));
  t.is(chunks.at(-1)!.choices[0]!.finish_reason, 'length');
});

test.serial('a busy port is a one-line error', async (t) => {
  const port = new URL(srv.url).port;
  const r = await promisify(execFile)(process.execPath, [BIN, 'serve', MODEL, '--port', port]).catch((e: { code: number; stderr: string }) => e);
  t.is((r as { code: number }).code, 1);
  t.regex((r as { stderr: string }).stderr, /^flashlm: .*EADDRINUSE.*\n$/m);
  t.false((r as { stderr: string }).stderr.includes('    at '));
});

// ------------------------------------------------------------- in-process: queue and disconnects

/** The model, with each generation held at its start until the test lets it go. */
function held(model: Model): { model: Model; release(): void; started: Promise<void>[] } {
  const gates: (() => void)[] = [];
  const started: Promise<void>[] = [];
  const starts: (() => void)[] = [];
  for (let i = 0; i < 8; i++) started.push(new Promise((r) => starts.push(r)));
  let calls = 0;
  const wrapped = new Proxy(model, {
    get(target, prop, receiver) {
      if (prop === 'steps' || prop === 'chatSteps') {
        return (...args: unknown[]) => {
          const inner = (Reflect.get(target, prop, target) as (...a: unknown[]) => AsyncGenerator).apply(target, args);
          const me = calls++;
          return (async function* () {
            starts[me]!();
            await new Promise<void>((r) => gates.push(r));
            yield* inner;
          })();
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { model: wrapped, started, release: () => gates.shift()?.() };
}

async function withServer(f: (s: ApiServer, h: ReturnType<typeof held>, model: Model) => Promise<void>, queue = 1): Promise<void> {
  const model = await openModel(MODEL);
  const h = held(model);
  const s = await startApiServer(h.model, { port: 0, queue });
  try {
    await f(s, h, model);
  } finally {
    await s.close();
    await model.close();
  }
}

const completion = (s: ApiServer, body: object, signal?: AbortSignal) =>
  fetch(s.origin + '/v1/completions', { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' }, signal });

test('bounded queue: one runs, one waits, the next gets 429 with Retry-After; then both finish', async (t) => {
  await withServer(async (s, h) => {
    const first = completion(s, { prompt: 'Hello', max_tokens: 3, temperature: 0 });
    await h.started[0];
    const second = completion(s, { prompt: 'Hello', max_tokens: 3, temperature: 0 });
    await new Promise((r) => setTimeout(r, 100));
    const third = await completion(s, { prompt: 'Hello', max_tokens: 3 });
    t.is(third.status, 429);
    t.truthy(Number(third.headers.get('retry-after')) >= 1);
    t.is(((await third.json()) as { error: { type: string } }).error.type, 'rate_limit_error');
    h.release();
    t.is((await first).status, 200);
    await h.started[1];
    h.release();
    const r2 = await second;
    t.is(r2.status, 200);
    t.is(((await r2.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens, 3);
  });
});

test('disconnects: a queued request leaves the queue; a running one stops its generation', async (t) => {
  await withServer(async (s, h, model) => {
    const ctl1 = new AbortController();
    const first = completion(s, { prompt: 'Hello', max_tokens: 100, temperature: 0, stream: true }, ctl1.signal);
    await h.started[0];
    const ctl2 = new AbortController();
    const second = completion(s, { prompt: 'Hello', max_tokens: 3 }, ctl2.signal).catch((e: Error) => e);
    await new Promise((r) => setTimeout(r, 100));
    ctl2.abort();
    t.true((await second) instanceof Error);
    await new Promise((r) => setTimeout(r, 100));
    // the queue is free again: a new request waits instead of getting 429
    const health = await fetch(s.origin + '/health');
    t.is(((await health.json()) as { queued: number }).queued, 0);
    // the running one: read a little of the stream, then hang up
    h.release();
    const res = await first;
    const reader = res.body!.getReader();
    await reader.read();
    ctl1.abort();
    for (let i = 0; i < 100 && model.timings?.finishReason === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    t.is(model.timings!.finishReason, 'abort');
    t.true(model.timings!.tokens < 100);
    const after = completion(s, { prompt: 'Hello', max_tokens: 2, temperature: 0 });
    await h.started[1];
    h.release();
    t.is((await after).status, 200);
  });
});

test('the openai client aborts a stream: the server stops that generation and serves the next request', async (t) => {
  await withServer(async (s, h, model) => {
    const c = new OpenAI({ apiKey: 'none', baseURL: s.origin + '/v1', maxRetries: 0 });
    const ctl = new AbortController();
    const stream = await c.chat.completions.create(
      { model: 'opt-chat', messages: [{ role: 'user', content: 'Tell me a long story' }], max_tokens: 100, temperature: 0, stream: true },
      { signal: ctl.signal },
    );
    await h.started[0];
    // The first chunk (the role) comes before any token; then the client hangs up
    // (the openai Stream ends quietly on its own abort).
    let chunks = 0;
    try {
      for await (const chunk of stream) {
        chunks++;
        t.is(chunk.choices[0]!.delta.role, 'assistant');
        ctl.abort();
      }
    } catch (e) {
      t.is((e as Error).name, 'AbortError');
    }
    t.is(chunks, 1);
    // Let the generation go once the server has seen the hang-up (its connection closed).
    const connections = () => new Promise<number>((r) => s.server.getConnections((_, n) => r(n)));
    for (let i = 0; i < 200 && (await connections()) > 0; i++) await new Promise((r) => setTimeout(r, 10));
    h.release();
    for (let i = 0; i < 100 && model.timings?.finishReason === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    t.is(model.timings!.finishReason, 'abort');
    t.is(model.timings!.tokens, 0);
    const next = c.completions.create({ model: 'x', prompt: 'Hello', max_tokens: 3, temperature: 0 });
    await h.started[1];
    h.release();
    t.is((await next).usage!.completion_tokens, 3);
  });
});
