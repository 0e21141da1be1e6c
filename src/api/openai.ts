/**
 * The OpenAI API's request and response shapes, shared by `flashlm serve`
 * (Node's http) and the portable fetch handler below (edge functions, Deno,
 * workers): field checks with OpenAI-shaped errors, usage, llama-server-style
 * timings, and `openAiFetch`, which answers /v1/models, /v1/completions and
 * /v1/chat/completions (streaming as server-sent events, or not) with web
 * Request and Response. Platform-neutral: no `node:` imports.
 */
import { AbortedError, FlashlmError } from '../errors.js';
import type { ChatMessage } from '../chat.js';
import type { GenerateOptions, Model, Step } from '../model.js';

/** An error answered as OpenAI answers it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function errorBody(e: ApiError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

// ------------------------------------------------------------------ request fields

export type Body = Record<string, unknown>;

export function field<T>(body: Body, name: string, check: (v: unknown) => v is T, expected: string): T | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (!check(v)) throw new ApiError(400, `'${name}' must be ${expected}; got ${JSON.stringify(v)?.slice(0, 60)}`, 'invalid_request_error', name, 'invalid_type');
  return v;
}
export const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
export const isInt = (v: unknown): v is number => Number.isInteger(v);
export const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
export const isStr = (v: unknown): v is string => typeof v === 'string';
export const inRange = (lo: number, hi: number) => (v: unknown): v is number => isNum(v) && v >= lo && v <= hi;

/** The sampling and stopping fields both endpoints take, as GenerateOptions. */
export function generationFields(body: Body, contextLength: number): GenerateOptions & { stream: boolean; includeUsage: boolean } {
  const n = field(body, 'n', isInt, 'an integer');
  if (n !== undefined && n !== 1) throw new ApiError(400, "only 'n': 1 is supported", 'invalid_request_error', 'n', 'unsupported_value');
  const maxTokens = field(body, 'max_completion_tokens', (v): v is number => isInt(v) && v >= 0, 'a non-negative integer') ??
    field(body, 'max_tokens', (v): v is number => isInt(v) && v >= 0, 'a non-negative integer');
  const stop = field(body, 'stop', (v): v is string | string[] => isStr(v) || (Array.isArray(v) && v.length <= 16 && v.every(isStr)), 'a string or an array of at most 16 strings');
  const streamOptions = field(body, 'stream_options', (v): v is Body => typeof v === 'object' && !Array.isArray(v), 'an object');
  const includeUsage = streamOptions ? field(streamOptions, 'include_usage', isBool, 'a boolean') : undefined;
  return {
    maxTokens: maxTokens ?? contextLength,
    temperature: field(body, 'temperature', inRange(0, 2), 'a number in [0, 2]') ?? 1,
    topP: field(body, 'top_p', inRange(0, 1), 'a number in [0, 1]') ?? 1,
    topK: field(body, 'top_k', (v): v is number => isInt(v) && v >= 0, 'a non-negative integer'),
    minP: field(body, 'min_p', inRange(0, 1), 'a number in [0, 1]'),
    seed: field(body, 'seed', isInt, 'an integer'),
    presencePenalty: field(body, 'presence_penalty', inRange(-2, 2), 'a number in [-2, 2]'),
    frequencyPenalty: field(body, 'frequency_penalty', inRange(-2, 2), 'a number in [-2, 2]'),
    repeatPenalty: field(body, 'repeat_penalty', (v): v is number => isNum(v) && v > 0, 'a positive number'),
    repeatLastN: field(body, 'repeat_last_n', (v): v is number => isInt(v) && v >= 0, 'a non-negative integer'),
    stop: typeof stop === 'string' ? [stop] : stop,
    stream: field(body, 'stream', isBool, 'a boolean') ?? false,
    includeUsage: includeUsage ?? false,
  };
}

export function parseJson(text: string): Body {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ApiError(400, `the body is not valid JSON: ${(e as Error).message}`, 'invalid_request_error', null, 'invalid_json');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'the body must be a JSON object', 'invalid_request_error', null, 'invalid_json');
  return v as Body;
}

/** Chat messages: content a string or an array of text parts (OpenAI's content parts). */
export function parseMessages(body: Body): ChatMessage[] {
  const raw = body['messages'];
  if (!Array.isArray(raw) || raw.length === 0) throw new ApiError(400, "'messages' must be a non-empty array", 'invalid_request_error', 'messages', 'invalid_type');
  return raw.map((m: unknown, i) => {
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw new ApiError(400, `'${param}' must be an object`, 'invalid_request_error', param, 'invalid_type');
    const { role, content } = m as Body;
    if (!isStr(role)) throw new ApiError(400, `'${param}.role' must be a string`, 'invalid_request_error', `${param}.role`, 'invalid_type');
    let text: string;
    if (isStr(content)) text = content;
    else if (content === null || content === undefined) text = '';
    else if (Array.isArray(content) && content.every((p) => typeof p === 'object' && p !== null && (p as Body)['type'] === 'text' && isStr((p as Body)['text']))) {
      text = content.map((p) => (p as { text: string }).text).join('');
    } else throw new ApiError(400, `'${param}.content' must be a string or an array of text parts`, 'invalid_request_error', `${param}.content`, 'invalid_type');
    return { role, content: text };
  });
}

/** OpenAI's finish reasons: the context filling up is 'length' too. */
export const finishReason = (m: Model) => (m.timings?.finishReason === 'stop' ? 'stop' : 'length');

export function timingsOf(m: Model, queueMs: number, io: { bytes: number; requests: number }) {
  const t = m.timings!;
  const computed = t.promptTokens - t.reusedTokens;
  return {
    prompt_n: computed,
    prompt_ms: round(t.promptMs),
    prompt_per_second: t.promptMs > 0 ? round((1000 * computed) / t.promptMs) : null,
    predicted_n: t.tokens,
    predicted_ms: round(t.decodeMs),
    predicted_per_second: t.decodeMs > 0 && t.tokens > 1 ? round((1000 * (t.tokens - 1)) / t.decodeMs) : null,
    cache_n: t.reusedTokens,
    queue_ms: round(queueMs),
    bytes_read: Math.round(io.bytes),
    read_requests: Math.round(io.requests),
  };
}
export const round = (x: number) => Math.round(x * 100) / 100;

export function usageOf(m: Model) {
  const t = m.timings!;
  return { prompt_tokens: t.promptTokens, completion_tokens: t.tokens, total_tokens: t.promptTokens + t.tokens, prompt_tokens_details: { cached_tokens: t.reusedTokens } };
}

export function ioTotals(m: Model): { bytes: number; requests: number } {
  const s = m.stats.summary();
  return { bytes: s.tokens * s.bytesPerToken, requests: s.tokens * s.requestsPerToken };
}

/** Tokenizer or template errors in a request are the client's: 400. */
export function wrap<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof FlashlmError) throw new ApiError(400, e.message, 'invalid_request_error', null, e.code.toLowerCase());
    throw e;
  }
}


/** One request's work: what to generate from, how, and the prompt's ids (already checked against the context). */
export interface Job {
  kind: 'completion' | 'chat';
  /** Prompt text or ids (completions). */
  prompt?: string | number[];
  /** The conversation (chat). */
  messages?: ChatMessage[];
  options: ReturnType<typeof generationFields>;
  ids: number[];
}

/** Checks a /v1/completions or /v1/chat/completions body; throws ApiError (400) on what OpenAI would refuse. */
export function parseJob(model: Model, kind: 'completion' | 'chat', body: Body, noTemplateHint = 'give the model a chat template'): Job {
  if (body['model'] !== undefined && !isStr(body['model'])) throw new ApiError(400, "'model' must be a string", 'invalid_request_error', 'model', 'invalid_type');
  const options = generationFields(body, model.contextLength);
  const job: Job = { kind, options, ids: [] };
  if (kind === 'chat') {
    job.messages = parseMessages(body);
    if (!model.chatTemplate) throw new ApiError(400, `the model has no chat template (${noTemplateHint}); /v1/completions works without one`, 'invalid_request_error', 'messages', 'no_chat_template');
    job.ids = wrap(() => model.encodeChat(job.messages!));
  } else {
    let p = body['prompt'];
    if (Array.isArray(p) && p.length === 1 && isStr(p[0])) p = p[0];
    if (isStr(p)) job.prompt = p;
    else if (Array.isArray(p) && p.length > 0 && p.every((id) => isInt(id) && id >= 0 && id < model.arch.vocabSize)) job.prompt = p as number[];
    else throw new ApiError(400, `'prompt' must be a string (or an array of token ids below ${model.arch.vocabSize})`, 'invalid_request_error', 'prompt', 'invalid_type');
    job.ids = isStr(job.prompt) ? wrap(() => model.tokenizer.encode(job.prompt as string)) : job.prompt;
  }
  if (job.ids.length >= model.contextLength) {
    throw new ApiError(400, `This model's maximum context length is ${model.contextLength} tokens. However, your prompt has ${job.ids.length} tokens.`, 'invalid_request_error', kind === 'chat' ? 'messages' : 'prompt', 'context_length_exceeded');
  }
  return job;
}

/** Runs a job on the model: its steps (the caller iterates). */
export function jobSteps(model: Model, job: Job, signal: AbortSignal): AsyncGenerator<Step> {
  const gen: GenerateOptions = { ...job.options, signal };
  return job.kind === 'chat' ? model.chatSteps(job.messages!, gen) : model.steps(job.prompt!, gen);
}

/** The response objects and stream chunks of one completion, in OpenAI's shapes. */
export class Completion {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  private readonly io0: { bytes: number; requests: number };

  constructor(
    private readonly model: Model,
    private readonly job: Job,
    private readonly name: string,
    private readonly queueMs = 0,
  ) {
    this.id = (job.kind === 'chat' ? 'chatcmpl-' : 'cmpl-') + globalThis.crypto.randomUUID().replace(/-/g, '');
    this.io0 = ioTotals(model);
  }

  /** timings: llama-server's figures for this request, plus queue time and bytes read from flash. */
  timings() {
    const io1 = ioTotals(this.model);
    return timingsOf(this.model, this.queueMs, { bytes: io1.bytes - this.io0.bytes, requests: io1.requests - this.io0.requests });
  }

  /** The whole (non-streaming) answer. */
  response(text: string) {
    const finish = finishReason(this.model);
    const choice = this.job.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finish }
      : { index: 0, text, logprobs: null, finish_reason: finish };
    const object = this.job.kind === 'chat' ? 'chat.completion' : 'text_completion';
    return { id: this.id, object, created: this.created, model: this.name, choices: [choice], usage: usageOf(this.model), timings: this.timings() };
  }

  private event(choices: unknown[], extra: Record<string, unknown> = {}): string {
    const object = this.job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    return `data: ${JSON.stringify({ id: this.id, object, created: this.created, model: this.name, choices, ...extra })}\n\n`;
  }

  private choice(text: string, finish: string | null) {
    return this.job.kind === 'chat'
      ? { index: 0, delta: finish ? {} : { content: text }, logprobs: null, finish_reason: finish }
      : { index: 0, text, logprobs: null, finish_reason: finish };
  }

  /** The events that open a stream (chat: the assistant's role). */
  start(): string {
    return this.job.kind === 'chat' ? this.event([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]) : '';
  }

  piece(text: string): string {
    return text ? this.event([this.choice(text, null)]) : '';
  }

  /** The last chunk (finish_reason and timings), the usage chunk when asked for, and [DONE]. */
  end(): string {
    let out = this.event([this.choice('', finishReason(this.model))], { timings: this.timings() });
    if (this.job.options.includeUsage) out += this.event([], { usage: usageOf(this.model) });
    return out + 'data: [DONE]\n\n';
  }
}

/** What an error becomes on the wire. */
export function toApiError(e: unknown): ApiError {
  return e instanceof ApiError ? e
    : e instanceof AbortedError ? new ApiError(499, 'request cancelled', 'invalid_request_error', null, 'cancelled')
    : e instanceof FlashlmError && e.code === 'ARGUMENT' ? new ApiError(400, e.message)
    : new ApiError(500, (e as Error)?.message ?? String(e), 'server_error');
}

export const CORS_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'access-control-allow-origin': '*',
  'access-control-expose-headers': 'x-flashlm-queue-ms, retry-after',
});

export interface OpenAiFetchOptions {
  /** The id /v1/models reports. Default 'flashlm'. */
  modelName?: string;
  /** Largest request body, bytes. Default 1 MiB. */
  maxBody?: number;
  /**
   * Waits for the model (one generation at a time) and returns the function
   * that gives it back; called once per generating request. Default: no wait
   * (the caller serialises).
   */
  acquire?: () => Promise<() => void>;
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { ...CORS_HEADERS, 'content-type': 'application/json', ...headers } });

/**
 * The OpenAI-compatible API as a fetch handler (web Request in, Response
 * out), for edge functions, Deno and workers: GET /v1/models, POST
 * /v1/completions and /v1/chat/completions, streaming (server-sent events)
 * or not, OpenAI-shaped errors, CORS. `request.signal` (a client that goes
 * away) and a cancelled response stream stop the generation.
 */
export async function openAiFetch(request: Request, model: Model, o: OpenAiFetchOptions = {}): Promise<Response> {
  const name = o.modelName ?? 'flashlm';
  try {
    const path = new URL(request.url).pathname.replace(/\/+$/, '');
    if (request.method === 'OPTIONS') {
      return new Response(null, {
        status: 204,
        headers: { ...CORS_HEADERS, 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': request.headers.get('access-control-request-headers') ?? 'authorization, content-type', 'access-control-max-age': '600' },
      });
    }
    const kind = path === '/v1/chat/completions' ? 'chat' : path === '/v1/completions' ? 'completion' : path === '/v1/models' ? 'models' : undefined;
    if (!kind) throw new ApiError(404, `no route ${request.method} ${path}; this server answers /v1/models, /v1/completions and /v1/chat/completions`, 'invalid_request_error', null, 'not_found');
    const method = kind === 'models' ? 'GET' : 'POST';
    if (request.method !== method) throw new ApiError(405, `${path} takes ${method}`, 'invalid_request_error', null, 'method_not_allowed', { allow: method });
    if (kind === 'models') return json(200, { object: 'list', data: [{ id: name, object: 'model', created: 0, owned_by: 'flashlm', context_length: model.contextLength }] });
    const max = o.maxBody ?? 1 << 20;
    if (Number(request.headers.get('content-length') ?? 0) > max) throw new ApiError(413, `request body is larger than ${max} bytes`, 'invalid_request_error', null, 'request_too_large');
    const text = await request.text();
    if (text.length > max) throw new ApiError(413, `request body is larger than ${max} bytes`, 'invalid_request_error', null, 'request_too_large');
    const job = parseJob(model, kind, parseJson(text));
    const t0 = Date.now();
    const release = o.acquire ? await o.acquire() : () => {};
    const abort = new AbortController();
    const onGone = () => abort.abort(new Error('client disconnected'));
    request.signal?.addEventListener('abort', onGone, { once: true });
    const done = () => {
      request.signal?.removeEventListener('abort', onGone);
      release();
    };
    let steps: AsyncGenerator<Step>;
    let completion: Completion;
    try {
      if (request.signal?.aborted) throw new AbortedError('client gone');
      completion = new Completion(model, job, name, Date.now() - t0);
      steps = jobSteps(model, job, abort.signal);
    } catch (e) {
      done();
      throw e;
    }
    if (!job.options.stream) {
      try {
        let out = '';
        for await (const s of steps) out += s.text;
        return json(200, completion.response(out));
      } finally {
        done();
      }
    }
    const enc = new TextEncoder();
    let opened = false;
    let finished = false;
    const finish = () => {
      if (!finished) {
        finished = true;
        done();
      }
    };
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          if (!opened) {
            opened = true;
            const head = completion.start();
            if (head) return controller.enqueue(enc.encode(head));
          }
          // Skip steps that release no text (held back by the decoder or a stop string).
          for (;;) {
            const { done: end, value } = await steps.next();
            if (end) {
              controller.enqueue(enc.encode(completion.end()));
              finish();
              return controller.close();
            }
            if (value.text) return controller.enqueue(enc.encode(completion.piece(value.text)));
          }
        } catch (e) {
          finish();
          if (!(e instanceof AbortedError)) controller.enqueue(enc.encode(`data: ${JSON.stringify(errorBody(toApiError(e)))}\n\n`));
          controller.close();
        }
      },
      async cancel(reason) {
        abort.abort(reason);
        await steps.return(undefined).catch(() => {});
        finish();
      },
    });
    return new Response(body, { status: 200, headers: { ...CORS_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' } });
  } catch (e) {
    const err = toApiError(e);
    return json(err.status === 499 ? 400 : err.status, errorBody(err), err.headers);
  }
}
