/**
 * `flashlm serve MODEL`: an OpenAI-compatible HTTP API over one model —
 * GET /v1/models, POST /v1/completions, POST /v1/chat/completions, each
 * streaming (server-sent events: `data: {json}` chunks, then `data: [DONE]`)
 * or not. The static range server that used to be `serve` is `flashlm host`.
 *
 * Built on Node's own `http` module: the API is four routes over one model,
 * and what matters here — a bounded body read, server-sent events written as
 * tokens come, a disconnect noticed at once to stop the generation, a queue
 * in front of the one model — is a few lines on `http` itself, each one
 * visible; a framework would add a dependency for routing we do not need and
 * put its own body parser and error pages between us and those behaviours.
 *
 * - One model, one generation at a time; requests wait in a bounded queue
 *   (`--queue`, default 16), and beyond it get 429 with Retry-After.
 * - A client that disconnects (or whose request is still queued) stops its
 *   generation: the AbortSignal reaches the model between tokens.
 * - Errors are OpenAI-shaped (`{ error: { message, type, param, code } }`):
 *   400 bad JSON or field types, 400 `context_length_exceeded`, 401 a wrong
 *   or missing key, 404, 405, 413 a body over `--max-body`, 429, 500.
 * - `--api-key K`: `Authorization: Bearer K` is required, compared in
 *   constant time (crypto.timingSafeEqual over SHA-256 digests).
 * - CORS: any origin, the Authorization header allowed, preflights answered.
 * - Per request: `usage` (with `prompt_tokens_details.cached_tokens`: the
 *   prompt tokens the KV cache already held) and `timings` (llama-server's
 *   names: prompt_n, prompt_ms, predicted_n, predicted_ms, cache_n, ...,
 *   plus queue_ms and bytes/requests read from flash) in the response, in the
 *   last chunk when streaming; `x-flashlm-queue-ms` as a header.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { basename } from 'node:path';
import { type Model, AbortedError, ArgumentError } from '../node.js';
import { openModelCli, type ModelFlags } from './options.js';
import { describeModel } from './run.js';
import { CHAT_TEMPLATE_HINT } from '../chat.js';
import { ApiError, CORS_HEADERS as CORS, Completion, errorBody, jobSteps, parseJob, parseJson, round, toApiError } from '../api/openai.js';
import { untilStopped } from './terminal.js';
export { ApiError } from '../api/openai.js';

export interface ApiServerOptions {
  port?: number;
  host?: string;
  /** Required bearer token; none when undefined. */
  apiKey?: string;
  /** The id /v1/models lists. */
  modelName?: string;
  /** Requests that may wait while one runs; more get 429. Default 16. */
  queue?: number;
  /** Largest request body, bytes. Default 1 MiB. */
  maxBody?: number;
  /** Called once per answered request. */
  onRequest?: (r: { method: string; path: string; status: number; ms: number; finish?: string }) => void;
}

export interface ApiServer {
  readonly server: Server;
  readonly port: number;
  readonly origin: string;
  close(): Promise<void>;
}


function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...CORS, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), ...headers });
  res.end(text);
}

/** Reads the body up to `max` bytes; past that, a 413 (the rest is not read). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const tooLarge = () => new ApiError(413, `request body is larger than ${max} bytes`, 'invalid_request_error', null, 'request_too_large', { connection: 'close' });
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.off('data', onData);
        req.pause();
        reject(tooLarge());
        return;
      }
      chunks.push(c);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

// ------------------------------------------------------------------ the queue

/** One model, one generation at a time; at most `limit` waiting. */
class ModelQueue {
  private running = false;
  private readonly waiting: { go: () => void; signal: AbortSignal; fail: (e: unknown) => void }[] = [];
  /** Recent request durations, for Retry-After. */
  private lastMs = 1000;

  constructor(private readonly limit: number) {}

  async run<T>(signal: AbortSignal, job: () => Promise<T>): Promise<T> {
    if (this.running) {
      if (this.waiting.length >= this.limit) {
        const secs = Math.max(1, Math.ceil(((this.waiting.length + 1) * this.lastMs) / 1000));
        throw new ApiError(429, `the server is busy: ${this.waiting.length} requests are waiting; retry later`, 'rate_limit_error', null, 'queue_full', { 'retry-after': String(secs) });
      }
      await new Promise<void>((go, fail) => {
        const entry = { go, signal, fail };
        this.waiting.push(entry);
        signal.addEventListener('abort', () => {
          const i = this.waiting.indexOf(entry);
          if (i >= 0) {
            this.waiting.splice(i, 1);
            fail(new AbortedError('request cancelled while queued'));
          }
        }, { once: true });
      });
    }
    this.running = true;
    const t0 = performance.now();
    try {
      return await job();
    } finally {
      this.lastMs = 0.5 * this.lastMs + 0.5 * (performance.now() - t0);
      const next = this.waiting.shift();
      if (next) next.go();
      else this.running = false;
    }
  }

  get depth(): number {
    return this.waiting.length;
  }
}

// ------------------------------------------------------------------ handlers

const turn = () => new Promise<void>((r) => setImmediate(r));


export function startApiServer(model: Model, o: ApiServerOptions = {}): Promise<ApiServer> {
  const name = o.modelName ?? 'flashlm';
  const maxBody = o.maxBody ?? 1 << 20;
  const queue = new ModelQueue(o.queue ?? 16);
  const keyDigest = o.apiKey === undefined ? undefined : createHash('sha256').update(o.apiKey).digest();
  const created = Math.floor(Date.now() / 1000);
  /** Every in-flight request's controller, aborted when the server closes. */
  const inflight = new Set<AbortController>();

  const authorized = (req: IncomingMessage): boolean => {
    if (!keyDigest) return true;
    const h = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(h);
    const given = createHash('sha256').update(m ? m[1]!.trim() : '').digest();
    return timingSafeEqual(given, keyDigest) && m !== null;
  };

  async function handle(req: IncomingMessage, res: ServerResponse, ctl: AbortController, started: () => void): Promise<number> {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '') || '/';
    if (method === 'OPTIONS') {
      res.writeHead(204, {
        ...CORS,
        'access-control-allow-methods': 'GET, POST, OPTIONS',
        'access-control-allow-headers': req.headers['access-control-request-headers'] ?? 'authorization, content-type',
        'access-control-max-age': '600',
      });
      res.end();
      return 204;
    }
    const routes: Record<string, string> = { '/v1/models': 'GET', '/v1/completions': 'POST', '/v1/chat/completions': 'POST', '/health': 'GET' };
    const allowed = routes[path] ?? (path.startsWith('/v1/models/') ? 'GET' : undefined);
    if (!allowed) throw new ApiError(404, `no route ${method} ${path}; this server answers /v1/models, /v1/completions and /v1/chat/completions`, 'invalid_request_error', null, 'not_found');
    if (method !== allowed && !(allowed === 'GET' && method === 'HEAD')) throw new ApiError(405, `${path} takes ${allowed}`, 'invalid_request_error', null, 'method_not_allowed', { allow: allowed });
    if (path === '/health') {
      sendJson(res, 200, { status: 'ok', queued: queue.depth });
      return 200;
    }
    if (!authorized(req)) throw new ApiError(401, 'invalid or missing API key: send "Authorization: Bearer <key>"', 'invalid_request_error', null, 'invalid_api_key', { 'www-authenticate': 'Bearer' });
    const entry = { id: name, object: 'model', created, owned_by: 'flashlm', context_length: model.contextLength };
    if (path === '/v1/models') {
      sendJson(res, 200, { object: 'list', data: [entry] });
      return 200;
    }
    if (path.startsWith('/v1/models/')) {
      if (decodeURIComponent(path.slice('/v1/models/'.length)) !== name) throw new ApiError(404, `model '${path.slice(11)}' does not exist`, 'invalid_request_error', 'model', 'model_not_found');
      sendJson(res, 200, entry);
      return 200;
    }

    const job = parseJob(model, path === '/v1/chat/completions' ? 'chat' : 'completion', parseJson((await readBody(req, maxBody)).toString('utf8')), 'start the server with --chat-template FILE');
    const tq = performance.now();
    return queue.run(ctl.signal, async () => {
      const queueMs = performance.now() - tq;
      if (ctl.signal.aborted) throw new AbortedError('client gone');
      started();
      const c = new Completion(model, job, name, queueMs);
      const steps = jobSteps(model, job, ctl.signal);
      if (!job.options.stream) {
        let text = '';
        for await (const s of steps) {
          text += s.text;
          await turn();
        }
        sendJson(res, 200, c.response(text), { 'x-flashlm-queue-ms': String(round(queueMs)) });
        return 200;
      }
      res.writeHead(200, { ...CORS, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no', 'x-flashlm-queue-ms': String(round(queueMs)) });
      try {
        res.write(c.start());
        for await (const s of steps) {
          if (s.text) res.write(c.piece(s.text));
          await turn();
        }
        res.end(c.end());
      } catch (e) {
        if (!(e instanceof AbortedError)) res.write(`data: ${JSON.stringify(errorBody(toApiError(e)))}\n\n`);
        res.end();
      }
      return 200;
    });
  }

  const server = createServer((req, res) => {
    const t0 = performance.now();
    const ctl = new AbortController();
    inflight.add(ctl);
    // The client went away before we finished: stop its generation (or take it out of the queue).
    res.once('close', () => {
      inflight.delete(ctl);
      if (!res.writableFinished) ctl.abort(new Error('client disconnected'));
    });
    let generated = false;
    const done = (status: number) =>
      o.onRequest?.({ method: req.method ?? '', path: req.url ?? '', status, ms: performance.now() - t0, finish: generated ? model.timings?.finishReason : undefined });
    handle(req, res, ctl, () => (generated = true)).then(done, (e: unknown) => {
      const err = toApiError(e);
      if (res.headersSent) res.destroy();
      else if (!res.destroyed) sendJson(res, err.status, errorBody(err), err.headers);
      if (err.headers['connection'] === 'close') res.once('finish', () => req.socket.destroySoon?.());
      done(err.status);
    });
  });
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 8080, o.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      const port = (server.address() as { port: number }).port;
      const host = o.host ?? '127.0.0.1';
      resolve({
        server,
        port,
        origin: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
        close: () =>
          new Promise<void>((r) => {
            for (const c of inflight) c.abort(new Error('server closing'));
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}

export interface ServeFlags extends ModelFlags {
  port: number;
  host: string;
  apiKey?: string;
  modelName?: string;
  queue: number;
  maxBody: number;
  log?: boolean;
}

/** `flashlm serve MODEL`: runs until SIGINT/SIGTERM. */
export async function runApiServer(modelPath: string, flags: ServeFlags): Promise<void> {
  const model = await openModelCli(modelPath, flags);
  let s: ApiServer;
  try {
    process.stderr.write(describeModel(model));
    if (!model.chatTemplate) process.stderr.write(`note: the model has no chat template: /v1/chat/completions answers 400 (${CHAT_TEMPLATE_HINT})\n`);
    s = await startApiServer(model, {
      port: flags.port,
      host: flags.host,
      apiKey: flags.apiKey ?? (process.env['FLASHLM_API_KEY'] || undefined),
      modelName: flags.modelName ?? basename(modelPath.replace(/[?#].*$/, '')).replace(/\.flm$/, ''),
      queue: flags.queue,
      maxBody: flags.maxBody,
      onRequest: flags.log ? (r) => process.stderr.write(`${r.status} ${r.method} ${r.path} ${r.ms.toFixed(0)} ms${r.finish ? ` finish=${r.finish}` : ''}\n`) : undefined,
    });
  } catch (e) {
    await model.close();
    const code = (e as { code?: unknown }).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new ArgumentError(`cannot listen on ${flags.host}:${flags.port} (${code}${code === 'EADDRINUSE' ? ': the port is in use; choose another with --port' : ''})`, { cause: e });
    }
    throw e;
  }
  process.stdout.write(`serving ${modelPath} at ${s.origin}/v1 (OpenAI-compatible: /v1/models, /v1/completions, /v1/chat/completions)\n`);
  await untilStopped(() => s.close());
  await model.close();
}
