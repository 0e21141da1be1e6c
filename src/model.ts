/**
 * The library API: openModel() -> Model -> generate(). Platform-neutral: it
 * imports no `node:` module. Paths and URLs become Sources through openers
 * that the platform entry registers (src/node.ts adds files; HTTP and others
 * come with their own modules).
 */
import { AbortedError, ArgumentError } from './errors.js';
import type { FlmHeader } from './format/layout.js';
import { openFlm, type FlmFile } from './format/reader.js';
import type { ArchConfig } from './format/types.js';
import { createArena, kernelsUrl, loadKernels, simdBuild, type SimdBuild, type SimdMode, PROBE_ARENA_BYTES } from './kernels/load.js';
import { createPool, planThreads, type KernelPool } from './kernels/pool.js';
import type { Kernels } from './kernels/types.js';
import { Arena, sizeOption } from './engine/arena.js';
import { ResidentFfn } from './engine/ffn.js';
import { planMemory, type MemoryPlan, type PlanOptions, type Strategy } from './plan.js';
export { STRATEGIES, type Strategy, type MemoryPlan, type DenseLayout } from './plan.js';
import { Oracle, type OracleMode } from './flash/oracle.js';
import { DEFAULT_HINTS } from './flash/planner.js';
import { RunStats, type TokenStats } from './flash/stats.js';
import { StreamingFfn, type Sparsity } from './flash/streaming.js';
import { Sampler, samplingOptionsError, type SamplingOptions } from './engine/sampler.js';
import { StopMatcher } from './engine/stop.js';
import { CHAT_TEMPLATE_HINT, chatTemplateOf, renderChat, type ChatMessage, type ChatTemplate } from './chat.js';
export type { ChatMessage, ChatTemplate } from './chat.js';
import { Transformer, residentSections } from './engine/transformer.js';
import type { Source } from './source/types.js';
import { MemoryCachedSource } from './source/memory-cache.js';
import type { HttpOptions } from './source/http-common.js';
import { createTokenizer } from './tokenizer/index.js';
import type { Tokenizer } from './tokenizer/types.js';

export interface OpenOptions extends PlanOptions {
  /** Arena budget in bytes (or '512M', '2G'). Default: what the strategy needs (window: a cache for a quarter of each layer's neurons). */
  memory?: number | string;
  /**
   * An in-memory cache of the bytes read from the source, in bytes (or
   * '512M', '2G'): JS heap on top of the `memory` budget, not inside the
   * arena (MemoryCachedSource). For remote sources, which have no OS page
   * cache: re-read neurons and read-through gaps come from memory instead of
   * the network. Default: none (0: none). Not for direct (O_DIRECT) files.
   */
  memoryCache?: number | string;
  /** Default 'dense'. */
  strategy?: Strategy;
  /** How predictor/window choose neurons. Default: 'predictor' when the file has predictors, else 'oracle'. */
  sparsity?: Sparsity;
  /** Window length in tokens for the window strategy. Default 4. */
  window?: number;
  /** Staging area for reads, bytes. Default: up to 16 MiB. */
  stagingBytes?: number;
  /** Measure predictor recall/precision against the true active set (loads an oracle outside the budget). */
  measurePredictor?: boolean;
  /**
   * How the oracle knows the true activations: 'copy' keeps a dense copy of
   * the FFN outside the budget, 'paged' reads each layer from the source as
   * needed (no copy; for models whose FFN does not fit in memory). Default:
   * copy up to 1 GiB of FFN, paged beyond.
   */
  oracle?: OracleMode;
  /** File sources: bypass the page cache (O_DIRECT). */
  direct?: boolean;
  /** HTTP sources opened from a URL: timeouts, retries, low-speed limit, deadline, retry notices (HttpOptions). */
  http?: HttpOptions;
  /** Told as the weights read at open land in the arena (the resident part; the whole model for dense): bytes so far and in all. */
  onProgress?: (progress: { loaded: number; total: number }) => void;
  /**
   * Prompt tokens per forward pass: each resident weight is applied to the
   * whole block at once, and streaming strategies read the block's neurons
   * once; 1 runs the prompt token by token (the tokens are the same either
   * way). Default 32 (streaming under a tight budget: 1, see planMemory).
   */
  batchSize?: number;
  /**
   * The KV cache's element type: 'f32' (default; the reference results) or
   * 'f16', half the memory (a 6.7B-shaped model's 2048-token cache: 1 GiB
   * instead of 2, inside wasm32's 4 GiB), its rows rounded to nearest even.
   */
  kvDtype?: 'f32' | 'f16';
  /** Longest prompt + generation, in tokens. Default min(model max, 2048). */
  contextLength?: number;
  /**
   * Threads the kernels run on, the caller's included. Default: the hardware
   * threads (os.availableParallelism(), navigator.hardwareConcurrency). Where
   * threads cannot run (no SharedArrayBuffer: a page without COOP/COEP, an edge
   * isolate; a browser's main thread) the model runs on one and says why in
   * `model.threading.fallbackReason`. Results are identical for any count.
   */
  threads?: number;
  /** The kernel module, for bundlers that move the .wasm (bytes, a compiled Module, or its URL). */
  wasm?: BufferSource | WebAssembly.Module | URL | string;
  /**
   * Kernels build when `wasm` is not given: 'auto' (default) the relaxed-SIMD
   * build (fused multiply-adds) where the runtime has relaxed SIMD, else the
   * plain SIMD one; 'plain' or 'relaxed' forces one. `model.simd` says which ran.
   */
  simd?: SimdMode;
  /** The threads build of the kernels (wasm/flashlm.mt.wasm), when `wasm` is given and threads are wanted. */
  wasmThreads?: BufferSource | WebAssembly.Module | URL | string;
  /**
   * A Jinja chat template (its source text) for chat(): overrides the one in
   * the model's tokenizer_config.json, or gives one to a model without.
   */
  chatTemplate?: string;
}

/** Why a generation ended: a stop token or stop string, maxTokens, the context length, or the caller (signal, or the iterator closed early). */
export type FinishReason = 'stop' | 'length' | 'context' | 'abort';

export interface Timings {
  /** Prompt tokens, reused ones included. */
  promptTokens: number;
  /** Leading prompt tokens whose KV entries the model already held (not computed again). */
  reusedTokens: number;
  /** Time to compute the promptTokens - reusedTokens others. */
  promptMs: number;
  /** Tokens generated (yielded). */
  tokens: number;
  /** Forward passes of generated tokens: tokens - 1 of them (the first comes from the prompt's pass). */
  decodeMs: number;
  /** Why it ended (undefined while it runs). */
  finishReason?: FinishReason;
}

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  /**
   * Stop strings: generation ends where the text first contains one; the text
   * before it is all that is yielded (never any part of a stop string: text
   * that might begin one is held back until it is known not to).
   */
  stop?: string | readonly string[];
  signal?: AbortSignal;
}

/** One generated token: its id, the text it releases ('' while text is held back), and its forward pass's stats. */
export interface Step {
  token: number;
  text: string;
  stats?: TokenStats;
}

/** End-of-turn tokens of common chat formats: with a chat template, generation stops at any the vocabulary has. */
const END_OF_TURN = ['<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>'];

/** Turns a path or URL into a Source; returns undefined when it does not handle the input. */
export type SourceOpener = (input: string | URL, options: OpenOptions) => Promise<Source | undefined>;

const openers: SourceOpener[] = [];

/** Lets a platform entry (Node, Deno, browser) teach openModel new kinds of input. */
export function registerSourceOpener(opener: SourceOpener): void {
  openers.unshift(opener);
}

/** Opens a path or URL through the registered openers (a Source passes through). */
export async function resolveSource(input: string | URL | Source, options: OpenOptions = {}): Promise<Source> {
  if (typeof input === 'object' && !(input instanceof URL)) return input;
  for (const open of openers) {
    const s = await open(input, options);
    if (s) return s;
  }
  throw new ArgumentError(`no source can open ${String(input)} on this platform`);
}

export class Model {
  private busy = false;
  private closed = false;

  private lastTokenStats: TokenStats | undefined;
  private lastTimings: Timings | undefined;
  /** The token ids whose keys and values the KV cache holds, at positions 0..n-1. */
  private kvIds: number[] = [];

  /**
   * Timing of the latest generation (live while it runs): prompt tokens and the
   * time to process them (prefill), generated tokens and the time spent
   * computing them after the first (sampling and the caller's time excluded).
   */
  get timings(): Timings | undefined {
    return this.lastTimings && { ...this.lastTimings };
  }

  private constructor(
    readonly file: FlmFile,
    readonly tokenizer: Tokenizer,
    private readonly kernels: Kernels,
    private readonly transformer: Transformer,
    /** How the arena was divided (strategy, cache capacity, staging). */
    readonly plan: MemoryPlan,
    /** Per-token statistics of every forward pass since open. */
    readonly stats: RunStats,
    private readonly streaming: StreamingFfn | undefined,
    private readonly pool: KernelPool,
    /** Kernel threads in use, and why fewer than asked for (null when none were refused). */
    readonly threading: { threads: number; fallbackReason: string | null },
    /** The chat template chat() renders (the file's, or openModel's `chatTemplate`), if any. */
    readonly chatTemplate: ChatTemplate | undefined,
  ) {}

  /** The kernels build running: 'relaxed-simd' (fused multiply-adds) or 'simd' (see OpenOptions.simd). */
  get simd(): SimdBuild {
    return simdBuild(this.kernels);
  }

  /** Whether the FFN kernels touch each next batch of records ahead of use: timed at open for the dense strategy (chooseFfnTouch), else off. */
  get ffnTouch(): boolean {
    return this.kernels.ffn_touch() !== 0;
  }

  /**
   * Whether every f16 weight was checked finite at open (the dense strategy's
   * weights, which stay put): the f16 kernels then skip their per-weight
   * inf/NaN detection, same output, ~14% faster (Kernels.f16_finite_set).
   */
  get f16Checked(): boolean {
    return this.kernels.f16_finite() !== 0;
  }

  /** How many leading tokens of the KV cache are valid (what the next prompt can reuse). */
  get cachedTokens(): number {
    return this.kvIds.length;
  }

  /** Cumulative window-cache counters over all layers (window strategy only). */
  cacheCounters(): ReturnType<StreamingFfn['cacheCounters']> {
    return this.streaming?.cacheCounters();
  }

  get arch(): ArchConfig {
    return this.file.header.arch;
  }

  get header(): FlmHeader {
    return this.file.header;
  }

  /** Arena size and use, by region. */
  get memory(): { arenaBytes: number; usedBytes: number; regions: { name: string; bytes: number }[] } {
    const a = this.transformer.arena;
    return { arenaBytes: a.size, usedBytes: a.used, regions: a.regions.map(({ name, bytes }) => ({ name, bytes })) };
  }

  get contextLength(): number {
    return this.transformer.contextLength;
  }

  static async open(input: string | URL | Source, options: OpenOptions = {}): Promise<Model> {
    const cacheBytes = sizeOption(options.memoryCache) ?? 0;
    if (!(cacheBytes >= 0) || !Number.isFinite(cacheBytes)) throw new ArgumentError(`memoryCache must be a size >= 0 (bytes, or e.g. 512M, 2G), got ${String(options.memoryCache)}`);
    let source = await resolveSource(input, options);
    let pool: KernelPool | undefined;
    try {
      source = MemoryCachedSource.wrap(source, { maxBytes: cacheBytes });
      const file = await openFlm(source);
      const a = file.header.arch;
      const contextLength = options.contextLength ?? Math.min(a.maxSeqLen, 2048);
      if (!Number.isInteger(contextLength) || contextLength < 1 || contextLength > a.maxSeqLen) {
        throw new ArgumentError(`contextLength must be an integer in [1, ${a.maxSeqLen}]`);
      }
      const tokenizer = await createTokenizer(file.header.tokenizer);
      const chatTemplate = chatTemplateOf(file.header.tokenizer, options.chatTemplate);
      // Threads need a shared arena and the threads build; decided before the arena exists.
      const tp = await planThreads(options.threads);
      let fallbackReason = tp.fallbackReason;
      // the build planThreads chose, or its relaxed-SIMD twin where the runtime has it (options.simd)
      let wasm = options.wasm ?? kernelsUrl(tp.shared, options.simd);
      if (tp.shared && options.wasm !== undefined) {
        if (options.wasmThreads !== undefined) wasm = options.wasmThreads;
        else {
          tp.threads = 1;
          tp.shared = false;
          fallbackReason = 'a kernels module was given (wasm) without its threads build (wasmThreads)';
        }
      }
      // A probe instance tells the kernels' static size and scratch needs before the arena exists.
      const probe = await loadKernels(createArena(PROBE_ARENA_BYTES, { shared: tp.shared }), wasm);
      const plan = planMemory(file, probe, { ...options, threads: tp.threads }, contextLength);
      const memory = createArena(plan.arenaBytes, { shared: tp.shared });
      const kernels = await loadKernels(memory, wasm);
      // Everything read into the arena (resident sections, streamed FFN chunks) is hashed in place.
      file.useKernelHasher(kernels);
      const arena = new Arena(memory, kernels.heap_base());
      pool = await createPool(kernels, {
        threads: plan.threads,
        region: plan.poolBytes ? arena.alloc('threads', plan.poolBytes) : 0,
        maxPositions: contextLength,
        maxNeurons: a.ffnDim,
        maxDim: a.dModel,
        batchScratchBytes: plan.batchScratchBytes,
      });
      fallbackReason ??= pool.fallbackReason;
      const threading = { threads: pool.threads, fallbackReason };
      const k = pool.kernels;
      const strategy = plan.strategy;
      const stats = new RunStats({
        residentBytes: plan.residentBytes,
        arenaBytes: plan.arenaBytes,
        ffnBytesTotal: plan.ffnBytes,
        ffnNeurons: a.nLayers * a.ffnDim,
        nLayers: a.nLayers,
        strategy,
        sparsity: plan.sparsity,
        window: plan.window,
        layout: file.header.layout,
        dtype: file.header.dtype,
        kernels: simdBuild(kernels),
      });
      // The oracle reads past the memory tier: its dense reads would otherwise fill it and count as the strategy's hits.
      const oracleFile = source instanceof MemoryCachedSource ? file.withSource(source.inner) : file;
      const oracle = plan.sparsity === 'oracle' || options.measurePredictor ? await Oracle.create(oracleFile, options.wasm ?? kernelsUrl(false, options.simd), { mode: options.oracle, stats }) : undefined;
      let streaming: StreamingFfn | undefined;
      let resident: ResidentFfn | undefined;
      // Load progress: the weights read at open (the resident part, and the FFN for dense).
      const loadTotal = plan.residentBytes + (strategy === 'dense' ? plan.ffnBytes : 0);
      let loaded = 0;
      const onProgress = options.onProgress;
      const onBytes = onProgress && ((n: number) => onProgress({ loaded: (loaded += n), total: loadTotal }));
      const transformer = await Transformer.load(file, k, arena, contextLength, async (sectionPtrs) =>
        strategy === 'dense'
          ? (resident = await ResidentFfn.load(file, k, arena, onBytes, { rows: plan.denseLayout === 'rows' }))
          : (streaming = new StreamingFfn(file, k, arena, sectionPtrs, {
              selection: plan.sparsity,
              window: plan.window,
              capacity: plan.capacity,
              stagingBytes: plan.stagingBytes,
              prefetchBytes: plan.prefetchBytes,
              hints: source.hints ?? DEFAULT_HINTS,
              alignment: source.alignment ?? 1,
              oracle,
              stats,
            })),
        plan.batch,
        onBytes,
        plan.kvDtype,
      );
      // Resident weights: time the FFN with and without its record touch on this machine (same bits either way).
      if (resident) {
        const r = resident;
        // They stay put, so their f16 values are checked once: finite ones need no detection per weight.
        if (file.header.tensors.some((e) => e.dtype === 'f16') || file.header.ffn.some((f) => f.dtype === 'f16')) k.f16_finite_set(transformer.f16Finite() && r.f16Finite() ? 1 : 0);
        transformer.withFfnInput((x, out) => r.chooseTouch(x, out));
      }
      return new Model(file, tokenizer, k, transformer, plan, stats, streaming, pool, threading, chatTemplate);
    } catch (e) {
      await pool?.close().catch(() => {});
      await source.close().catch(() => {});
      throw e;
    }
  }

  /** Runs one position, with the strategy's per-token work and stats around it. */
  private async forward(token: number, pos: number): Promise<number> {
    this.stats.beginToken();
    const tier = this.file.source.tier;
    const tierHit = tier?.hitBytes ?? 0;
    const tierNet = tier?.networkBytes ?? 0;
    if (this.plan.strategy === 'naive') {
      // Nothing stays resident: the attention/embedding weights are read again every token.
      const t0 = performance.now();
      let bytes = 0;
      const hints = this.file.source.hints ?? DEFAULT_HINTS;
      let requests = 0;
      for (const s of residentSections(this.file)) {
        requests += await this.file.readSection(s, this.transformer.arena.u8(this.transformer.sectionPtrs.get(s.name)!, s.length), 0, hints);
        bytes += s.length;
      }
      this.stats.io(bytes, requests, performance.now() - t0, false);
    }
    this.kvIds.length = pos; // entries from pos on are overwritten (or left invalid by an error)
    const logits = await this.transformer.forward(token, pos);
    this.kvIds.push(token);
    if (tier) this.stats.tier(tier.hitBytes - tierHit, tier.networkBytes - tierNet);
    this.lastTokenStats = this.stats.endToken();
    return logits;
  }

  /**
   * Runs the prompt from position `from` (the KV cache holds ids[0..from))
   * and returns the last position's logits: in blocks of `plan.batch` tokens
   * (no per-token stats: the block is read and computed as one), or token by
   * token with per-token stats when the batch is 1.
   */
  private async prefill(ids: readonly number[], from: number, check: () => void): Promise<number> {
    const B = this.transformer.batch;
    let logits = 0;
    if (B === 1) {
      for (let pos = from; pos < ids.length; pos++) {
        check();
        logits = await this.forward(ids[pos]!, pos);
      }
      return logits;
    }
    this.lastTokenStats = undefined;
    for (let pos = from; pos < ids.length; pos += B) {
      check();
      const T = Math.min(B, ids.length - pos);
      this.kvIds.length = pos;
      logits = await this.transformer.forwardBlock(ids, pos, pos, T);
      for (let t = 0; t < T; t++) this.kvIds.push(ids[pos + t]!);
    }
    return logits;
  }

  /** The prompt ids of a chat: the template rendered over the messages (ending where the assistant's answer starts), tokenized with no special tokens added. */
  encodeChat(messages: readonly ChatMessage[]): number[] {
    if (!this.chatTemplate) throw new ArgumentError(`this model has no chat template: ${CHAT_TEMPLATE_HINT}`);
    return this.tokenizer.encode(renderChat(this.chatTemplate, messages), { addSpecialTokens: false });
  }

  /** The chat's rendered prompt text (for inspection). */
  renderChat(messages: readonly ChatMessage[]): string {
    if (!this.chatTemplate) throw new ArgumentError(`this model has no chat template: ${CHAT_TEMPLATE_HINT}`);
    return renderChat(this.chatTemplate, messages);
  }

  /**
   * Streams the assistant's answer to `messages` through the model's chat
   * template; it ends at the template's end-of-turn token (or EOS). A prompt
   * that begins with what the KV cache holds (the previous turns) reuses it.
   */
  async *chat(messages: readonly ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<string, void, undefined> {
    for await (const step of this.chatSteps(messages, options)) if (step.text) yield step.text;
  }

  /** chat(), token by token (as steps()). */
  chatSteps(messages: readonly ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<Step, void, undefined> {
    const ids = this.encodeChat(messages);
    const stop = new Set<number>();
    for (const s of [this.chatTemplate!.special['eos_token'], ...END_OF_TURN]) {
      const id = typeof s === 'string' ? this.tokenizer.tokenId(s) : undefined;
      if (id !== undefined) stop.add(id);
    }
    if (this.tokenizer.eosId !== undefined) stop.add(this.tokenizer.eosId);
    return this.run(ids, options, stop);
  }

  /**
   * Streams generated text for `prompt` (the prompt itself is not echoed).
   * Stops at a stop token or stop string, after maxTokens, at the context
   * length, or when the signal aborts (AbortedError); `model.timings.finishReason`
   * says which. A prompt that begins with tokens the KV cache already holds
   * (a previous prompt and its generated text) computes only the rest.
   */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<string, void, undefined> {
    for await (const step of this.steps(prompt, options)) if (step.text) yield step.text;
  }

  /**
   * Like generate(), token by token: the id, the text it releases, and the
   * stats of the forward pass that produced it. `prompt` may be token ids
   * (used as they are). A final step with token -1 carries text the decoder
   * or the stop strings held back to the end.
   */
  steps(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<Step, void, undefined> {
    const ids = typeof prompt === 'string' ? this.tokenizer.encode(prompt) : [...prompt];
    if (ids.length === 0) ids.push(this.arch.bosId);
    return this.run(ids, options, new Set(this.arch.stopIds));
  }

  /** Prompt tokens in, generated steps out; the KV cache's common prefix with `ids` is reused. */
  private async *run(ids: number[], options: GenerateOptions, stopIds: ReadonlySet<number>): AsyncGenerator<Step, void, undefined> {
    if (this.closed) throw new ArgumentError('model is closed');
    if (this.busy) throw new ArgumentError('model is already generating; one generation at a time');
    const maxTokens = options.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new ArgumentError('maxTokens must be a non-negative integer');
    const bad = samplingOptionsError(options);
    if (bad) throw new ArgumentError(bad);
    const stops = options.stop === undefined ? [] : typeof options.stop === 'string' ? [options.stop] : [...options.stop];
    if (stops.some((x) => typeof x !== 'string')) throw new ArgumentError('stop must be a string or an array of strings');
    const a = this.arch;
    for (const id of ids) if (!(Number.isInteger(id) && id >= 0 && id < a.vocabSize)) throw new ArgumentError(`token id ${id} outside the vocabulary`);
    if (ids.length >= this.contextLength) throw new ArgumentError(`prompt is ${ids.length} tokens; the context holds ${this.contextLength}`);
    this.busy = true;
    const timings: Timings = { promptTokens: ids.length, reusedTokens: 0, promptMs: 0, tokens: 0, decodeMs: 0 };
    this.lastTimings = timings;
    try {
      const sampler = new Sampler(this.kernels, a.vocabSize, options, ids);
      const decoder = this.tokenizer.streamDecoder(ids);
      const matcher = new StopMatcher(stops);
      const check = () => {
        if (options.signal?.aborted) throw new AbortedError('generation aborted', { cause: options.signal.reason });
      };
      // Reuse the KV entries of the longest common prefix; the last prompt token always runs (its logits are needed).
      const kv = this.kvIds;
      const limit = Math.min(kv.length, ids.length - 1);
      let common = 0;
      while (common < limit && kv[common] === ids[common]) common++;
      kv.length = common;
      timings.reusedTokens = common;
      const t0 = performance.now();
      let logits = await this.prefill(ids, common, check);
      timings.promptMs = performance.now() - t0;
      let pos = ids.length;
      let finish: FinishReason = 'length';
      for (let n = 0; n < maxTokens; n++) {
        check();
        const next = sampler.sample(logits, this.transformer.logitsView);
        if (stopIds.has(next)) {
          finish = 'stop';
          break;
        }
        sampler.accept(next);
        timings.tokens++;
        const piece = decoder.push(next);
        if (matcher.active) {
          const r = matcher.push(piece);
          yield { token: next, text: r.text, stats: this.lastTokenStats };
          if (r.stopped) {
            timings.finishReason = 'stop';
            return;
          }
        } else yield { token: next, text: piece, stats: this.lastTokenStats };
        if (pos >= this.contextLength) {
          finish = 'context';
          break;
        }
        if (n + 1 === maxTokens) break;
        const t1 = performance.now();
        logits = await this.forward(next, pos++);
        timings.decodeMs += performance.now() - t1;
      }
      let rest = decoder.flush();
      if (matcher.active) {
        const r = matcher.push(rest);
        rest = r.stopped ? r.text : r.text + matcher.flush();
        if (r.stopped) finish = 'stop';
      }
      timings.finishReason = finish;
      if (rest) yield { token: -1, text: rest };
    } finally {
      timings.finishReason ??= 'abort';
      this.busy = false;
    }
  }

  /**
   * Teacher-forced scoring: runs `ids` from position 0 and calls `onLogits`
   * with the next-token logits after each one (the view is reused: copy what
   * you keep). For evaluation and tests.
   */
  async forwardTokens(ids: readonly number[], onLogits: (pos: number, logits: Float32Array) => void, signal?: AbortSignal): Promise<void> {
    if (this.closed) throw new ArgumentError('model is closed');
    if (this.busy) throw new ArgumentError('model is already generating; one generation at a time');
    if (ids.length > this.contextLength) throw new ArgumentError(`${ids.length} tokens do not fit the context of ${this.contextLength}`);
    this.busy = true;
    try {
      this.kvIds.length = 0;
      for (let pos = 0; pos < ids.length; pos++) {
        if (signal?.aborted) throw new AbortedError('aborted', { cause: signal.reason });
        await this.forward(ids[pos]!, pos);
        onLogits(pos, this.transformer.logitsView);
      }
    } finally {
      this.busy = false;
    }
  }

  /** Greedy or sampled generation collected into one string (why it ended: `model.timings.finishReason`). */
  async complete(prompt: string, options: GenerateOptions = {}): Promise<string> {
    let out = '';
    for await (const t of this.generate(prompt, options)) out += t;
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.close();
    await this.file.source.close();
  }
}

/** Opens a .flm model from a path or URL (with a platform opener) or any Source. */
export function openModel(input: string | URL | Source, options?: OpenOptions): Promise<Model> {
  return Model.open(input, options);
}

