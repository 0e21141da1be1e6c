// The engine, in a dedicated module worker: opens the model through the OPFS
// cache tier (CDN -> OPFS -> arena), generates, and posts progress, text and
// per-token figures to the page. The page's thread never runs the engine.
// In chat mode the model stays open between turns (KV-cache reuse).
//
// dist/bundle/flashlm.js is the browser build (esbuild bundle of dist/browser.js);
// it finds wasm/flashlm.wasm next to itself (../../wasm/ from dist/bundle/).
import { openModel, HttpSource, OpfsCachedSource, cacheKey } from '../../dist/bundle/flashlm.js';

/** @type {AbortController | undefined} */
let running;

const post = (msg) => self.postMessage(msg);

/** Wraps a Source to report load progress (bytes read so far) at most every 50 ms. */
function withProgress(source, onBytes) {
  let bytes = 0;
  let last = 0;
  return {
    get name() { return source.name; },
    get size() { return source.size; },
    get identity() { return source.identity; },
    get hints() { return source.hints; },
    get alignment() { return source.alignment; },
    async read(offset, into) {
      await source.read(offset, into);
      bytes += into.byteLength;
      const now = performance.now();
      if (now - last > 50) {
        last = now;
        onBytes(bytes);
      }
    },
    close: () => source.close(),
  };
}

/**
 * Opens the model through the OPFS tier, posting load progress. Resolves to
 * the model, the OPFS source (for its counters) and the time it started.
 */
async function open(req, signal) {
  const t0 = performance.now();
  const url = new URL(req.url, req.base).href;
  post({ type: 'phase', phase: 'connecting', url });
  // The OPFS tier is the cache: keep the browser's HTTP cache out of the way.
  const http = await HttpSource.open(url, { init: { cache: 'no-store' }, signal });
  const cached = await OpfsCachedSource.open(http, {
    maxBytes: req.cache?.maxBytes,
    chunkBytes: req.cache?.chunkBytes,
    onNotice: (message) => post({ type: 'notice', message }),
    ...(req.cache?.enabled === false ? { maxBytes: 0 } : {}),
  });
  post({ type: 'phase', phase: 'loading', size: cached.size, cache: { enabled: cached.enabled, chunks: cached.cachedChunks, bytes: cached.cachedBytes } });
  const counters = () => ({ ...cached.counters, cachedBytes: cached.cachedBytes, enabled: cached.enabled });
  const source = withProgress(cached, (bytes) => post({ type: 'progress', bytes, size: cached.size, counters: counters() }));
  try {
    const model = await openModel(source, { strategy: req.strategy ?? 'window', memory: req.memory || undefined, contextLength: req.contextLength, threads: req.threads });
    return { model, counters, loadMs: performance.now() - t0 };
  } catch (e) {
    await cached.close().catch(() => {});
    throw e;
  }
}

function postReady({ model, counters, loadMs }) {
  const p = model.plan;
  post({
    type: 'ready',
    loadMs,
    arch: { type: model.arch.type, dModel: model.arch.dModel, nLayers: model.arch.nLayers, ffnDim: model.arch.ffnDim, vocabSize: model.arch.vocabSize, dtype: model.header.dtype },
    plan: { strategy: p.strategy, sparsity: p.sparsity, window: p.window, arenaBytes: p.arenaBytes, residentBytes: p.residentBytes, ffnBytes: p.ffnBytes },
    counters: counters(),
    threading: model.threading,
    chatTemplate: model.chatTemplate !== undefined,
  });
}

/** Runs a step iterator (steps or chatSteps), posting each token and the summary. */
async function stream(opened, steps, t0) {
  const { model, counters } = opened;
  let text = '';
  let prev = counters();
  let n = 0;
  const tGen = performance.now();
  for await (const step of steps) {
    text += step.text;
    const now = counters();
    const s = step.stats;
    post({
      type: 'token',
      text: step.text,
      index: n++,
      stats: s && {
        bytesRead: s.bytesRead,
        requests: s.requests,
        cacheHits: s.cacheHits,
        cacheLookups: s.cacheLookups,
        ms: s.ms,
        ioMs: s.ioMs,
        computeMs: s.computeMs,
      },
      opfs: { hitBytes: now.hitBytes - prev.hitBytes, networkBytes: now.networkBytes - prev.networkBytes, networkReads: now.networkReads - prev.networkReads },
    });
    prev = now;
  }
  post({ type: 'done', text, tokens: n, genMs: performance.now() - tGen, totalMs: performance.now() - t0, summary: model.stats.summary(), timings: model.timings, counters: counters() });
}

/** Plain completion: opens the model, generates, closes it. */
async function generate(req) {
  await endChat();
  const abort = new AbortController();
  running = abort;
  const t0 = performance.now();
  const opened = await open(req, abort.signal);
  try {
    postReady(opened);
    const o = req;
    await stream(opened, opened.model.steps(req.prompt, { maxTokens: o.maxTokens, temperature: o.temperature, topP: o.topP, seed: o.seed, signal: abort.signal }), t0);
  } finally {
    await opened.model.close();
    if (running === abort) running = undefined;
  }
}

/**
 * The chat session: the model stays open between turns, so each turn reuses
 * the KV cache of the conversation so far and computes only the new turn.
 */
let chat;

/** The settings that need another model when they change. */
const chatKey = (req) => JSON.stringify([new URL(req.url, req.base).href, req.strategy, req.memory, req.threads, req.contextLength, req.cache]);

async function endChat() {
  const c = chat;
  chat = undefined;
  await c?.model.close();
}

/** One chat turn: `messages` is the whole conversation, ending with the user's new message. */
async function chatTurn(req) {
  const abort = new AbortController();
  running = abort;
  const t0 = performance.now();
  try {
    if (chat?.key !== chatKey(req)) {
      await endChat();
      chat = { key: chatKey(req), ...(await open(req, abort.signal)) };
      postReady(chat);
    } else postReady({ ...chat, loadMs: null });
    const o = req;
    await stream(chat, chat.model.chatSteps(req.messages, { maxTokens: o.maxTokens, temperature: o.temperature, topP: o.topP, seed: o.seed, signal: abort.signal }), t0);
  } finally {
    if (running === abort) running = undefined;
  }
}

/** Deletes the whole OPFS cache folder (or one model's). */
async function clearCache(url, base) {
  const root = await navigator.storage.getDirectory();
  if (!url) {
    await root.removeEntry('flashlm-cache', { recursive: true }).catch(() => {});
    return;
  }
  const u = new URL(url, base);
  const dir = await root.getDirectoryHandle('flashlm-cache').catch(() => undefined);
  await dir?.removeEntry(await cacheKey(`${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`), { recursive: true }).catch(() => {});
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.type === 'generate') {
      if (running) throw new Error('already generating');
      await generate(msg);
    } else if (msg.type === 'chat') {
      if (running) throw new Error('already generating');
      await chatTurn(msg);
    } else if (msg.type === 'end-chat') {
      await endChat();
    } else if (msg.type === 'abort') {
      running?.abort(new Error('stopped'));
    } else if (msg.type === 'clear-cache') {
      await clearCache(msg.url, msg.base);
      post({ type: 'cleared' });
    } else if (msg.type === 'estimate') {
      post({ type: 'estimate', estimate: await navigator.storage.estimate() });
    }
  } catch (e) {
    running = undefined;
    post({ type: 'error', message: e?.message ?? String(e), code: e?.code });
  }
};

post({ type: 'hello' });
