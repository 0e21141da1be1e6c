/**
 * An edge function that streams generated text: `export default { fetch }`,
 * the module shape Deno Deploy and Cloudflare Workers run. Weights are read
 * by HTTP range from the model URL (a CDN); nothing but the arena is kept in
 * memory, and the arena is sized to fit a 128 MB isolate.
 *
 *   GET  /?prompt=Once%20upon&n=64&temp=0
 *   POST /  {"prompt": "Once upon", "maxTokens": 64, "temperature": 0}
 *   -> 200 text/plain, the continuation streamed as it is generated
 *
 *   GET /v1/models, POST /v1/completions, POST /v1/chat/completions
 *   -> the OpenAI API (as `flashlm serve`; chat needs the model's chat
 *      template), streaming as server-sent events when "stream": true
 *
 * Configuration (env bindings on Workers, environment variables on Deno):
 *   FLASHLM_MODEL_URL   the .flm URL (required)
 *   FLASHLM_MEMORY      arena budget (default 48M: the rest of 128 MB is the
 *                       JS heap and the HTTP bodies in flight); reads are
 *                       staged through 4 MiB of it
 *   FLASHLM_STRATEGY    default: window when the file has predictors, else
 *                       hybrid (attention resident, the FFN streamed each
 *                       token: exact, no predictor needed)
 *   FLASHLM_MAX_TOKENS  most tokens one request may ask for (default 512)
 *   FLASHLM_THREADS     kernel threads (default 1: edge isolates have no
 *                       SharedArrayBuffer, and each worker costs memory
 *                       the 128 MB budget does not have)
 *
 * On Workers, where `new URL(..., import.meta.url)` does not reach the .wasm,
 * import it (`import wasm from 'flashlm/wasm/flashlm.wasm'`) and build the
 * handler with `createHandler({ wasm })`.
 */
import { ArgumentError, HttpSource, openAiFetch, openFlm, openModel, STRATEGIES } from 'flashlm';

// Derived rather than imported: resolves the same with the package's types or without them.
type Strategy = (typeof STRATEGIES)[number];
type Model = Awaited<ReturnType<typeof openModel>>;

export interface HandlerOptions {
  modelUrl?: string;
  memory?: string | number;
  strategy?: Strategy;
  maxTokens?: number;
  /** Kernel threads (default 1, or FLASHLM_THREADS). */
  threads?: number;
  /** The kernels (bytes or a compiled module) where the runtime cannot fetch them next to the module. */
  wasm?: BufferSource | WebAssembly.Module;
  /** A Jinja chat template for /v1/chat/completions, when the model carries none. */
  chatTemplate?: string;
}

type Env = Record<string, unknown> | undefined;

/** A setting from the Workers env binding, else the process environment (Deno). */
function setting(env: Env, name: string): string | undefined {
  const v = env?.[name];
  if (typeof v === 'string') return v;
  const deno = (globalThis as { Deno?: { env: { get(n: string): string | undefined } } }).Deno;
  try {
    return deno?.env.get(name);
  } catch {
    return undefined; // no --allow-env
  }
}

const TEXT = { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' };

interface Ask {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP?: number;
  seed?: number;
}

async function parseAsk(req: Request, cap: number): Promise<Ask | Response> {
  let raw: Record<string, unknown>;
  if (req.method === 'GET') {
    const q = new URL(req.url).searchParams;
    raw = { prompt: q.get('prompt') ?? '', maxTokens: q.get('n') ?? q.get('maxTokens') ?? undefined, temperature: q.get('temp') ?? undefined, topP: q.get('top_p') ?? undefined, seed: q.get('seed') ?? undefined };
  } else if (req.method === 'POST') {
    try {
      raw = (await req.json()) as Record<string, unknown>;
    } catch {
      return new Response('body must be JSON: {"prompt": "...", "maxTokens": 64}\n', { status: 400, headers: TEXT });
    }
  } else {
    return new Response('GET or POST\n', { status: 405, headers: { ...TEXT, allow: 'GET, POST' } });
  }
  const num = (v: unknown, d: number | undefined) => (v === undefined || v === null || v === '' ? d : Number(v));
  const ask = { prompt: String(raw.prompt ?? ''), maxTokens: num(raw.maxTokens, 64)!, temperature: num(raw.temperature, 0)!, topP: num(raw.topP, undefined), seed: num(raw.seed, undefined) };
  if (!Number.isInteger(ask.maxTokens) || ask.maxTokens < 0 || ask.maxTokens > cap) return new Response(`maxTokens must be an integer in [0, ${cap}]\n`, { status: 400, headers: TEXT });
  if (!(ask.temperature >= 0)) return new Response('temperature must be >= 0\n', { status: 400, headers: TEXT });
  return ask;
}

/** A fetch handler bound to one model (opened on the first request, kept for the isolate's life). */
export function createHandler(options: HandlerOptions = {}): { fetch(req: Request, env?: Env): Promise<Response>; arenaBytes(): number | undefined } {
  let model: Promise<Model> | undefined;
  let opened: Model | undefined;
  /** One generation at a time per model: requests queue here. */
  let turn: Promise<void> = Promise.resolve();

  const load = (env: Env): Promise<Model> => {
    model ??= (async () => {
      const url = options.modelUrl ?? setting(env, 'FLASHLM_MODEL_URL');
      if (!url) throw new ArgumentError('set FLASHLM_MODEL_URL to the .flm URL');
      const memory = options.memory ?? setting(env, 'FLASHLM_MEMORY') ?? '48M';
      let strategy = options.strategy ?? (setting(env, 'FLASHLM_STRATEGY') as Strategy | undefined);
      if (strategy !== undefined && !STRATEGIES.includes(strategy)) throw new ArgumentError(`FLASHLM_STRATEGY must be one of ${STRATEGIES.join(', ')}`);
      const source = await HttpSource.open(url);
      try {
        if (!strategy) strategy = (await openFlm(source)).header.predictors ? 'window' : 'hybrid';
      } catch (e) {
        await source.close();
        throw e;
      }
      // openModel closes the source itself if it fails.
      const threads = options.threads ?? Number(setting(env, 'FLASHLM_THREADS') ?? 1);
      return (opened = await openModel(source, { memory, strategy, threads, wasm: options.wasm, stagingBytes: 4 << 20, chatTemplate: options.chatTemplate }));
    })();
    model.catch(() => (model = undefined)); // a failed open is retried by the next request
    return model;
  };

  return {
    /** The model's arena (its WebAssembly memory) once opened: the bulk of what the isolate holds. */
    arenaBytes: () => opened?.memory.arenaBytes,
    async fetch(req: Request, env?: Env): Promise<Response> {
      const path = new URL(req.url).pathname;
      if (path.startsWith('/v1/') || req.method === 'OPTIONS') {
        let m: Model;
        try {
          m = await load(env);
        } catch (e) {
          return Response.json({ error: { message: `cannot open the model: ${(e as Error).message}`, type: 'server_error', param: null, code: null } }, { status: 502 });
        }
        // Requests take turns on the model, as below: the turn ends when the answer (or its stream) does.
        const acquire = async () => {
          let release!: () => void;
          const mine = new Promise<void>((r) => (release = r));
          const before = turn;
          turn = turn.then(() => mine);
          await before;
          return release;
        };
        const name = (options.modelUrl ?? setting(env, 'FLASHLM_MODEL_URL') ?? 'flashlm').replace(/[?#].*$/, '').split('/').pop()!.replace(/\.flm$/, '');
        return openAiFetch(req, m, { modelName: name, acquire });
      }
      const cap = options.maxTokens ?? Number(setting(env, 'FLASHLM_MAX_TOKENS') ?? 512);
      const ask = await parseAsk(req, cap);
      if (ask instanceof Response) return ask;
      let m: Model;
      try {
        m = await load(env);
      } catch (e) {
        return new Response(`cannot open the model: ${(e as Error).message}\n`, { status: 502, headers: TEXT });
      }
      // Wait for our turn; the turn ends when the stream ends or is cancelled.
      let release!: () => void;
      const mine = new Promise<void>((r) => (release = r));
      const before = turn;
      turn = turn.then(() => mine);
      await before;
      const abort = new AbortController();
      const enc = new TextEncoder();
      let steps: AsyncGenerator<string, void, undefined>;
      try {
        steps = m.generate(ask.prompt, { ...ask, signal: abort.signal });
      } catch (e) {
        release();
        throw e;
      }
      let finished = false;
      const finish = () => {
        if (!finished) {
          finished = true;
          release();
        }
      };
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            const { done, value } = await steps.next();
            if (done) {
              finish();
              controller.close();
            } else controller.enqueue(enc.encode(value));
          } catch (e) {
            finish();
            // Headers are gone already: end the text with the reason.
            controller.enqueue(enc.encode(`\n[flashlm: ${(e as Error).message}]\n`));
            controller.close();
          }
        },
        async cancel(reason) {
          abort.abort(reason);
          await steps.return().catch(() => {});
          finish();
        },
      });
      return new Response(body, { status: 200, headers: TEXT });
    },
  };
}

export default createHandler();
