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
import { createArena, loadKernels } from './kernels/load.js';
import type { Kernels } from './kernels/types.js';
import { Arena, MAX_ARENA_BYTES, WASM_PAGE, fmtBytes, parseBytes } from './engine/arena.js';
import { ResidentFfn } from './engine/ffn.js';
import { Sampler, type SamplingOptions } from './engine/sampler.js';
import { Transformer, residentSections } from './engine/transformer.js';
import type { Source } from './source/types.js';
import { createTokenizer } from './tokenizer/index.js';
import type { Tokenizer } from './tokenizer/types.js';

export interface OpenOptions {
  /** Arena budget in bytes (or '512M', '2G'). Default: what the model needs. */
  memory?: number | string;
  /** Longest prompt + generation, in tokens. Default min(model max, 2048). */
  contextLength?: number;
  /** The kernel module, for bundlers that move the .wasm (bytes, a compiled Module, or its URL). */
  wasm?: BufferSource | WebAssembly.Module | URL | string;
}

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  signal?: AbortSignal;
}

/** Turns a path or URL into a Source; returns undefined when it does not handle the input. */
export type SourceOpener = (input: string | URL) => Promise<Source | undefined>;

const openers: SourceOpener[] = [];

/** Lets a platform entry (Node, Deno, browser) teach openModel new kinds of input. */
export function registerSourceOpener(opener: SourceOpener): void {
  openers.unshift(opener);
}

async function resolveSource(input: string | URL | Source): Promise<Source> {
  if (typeof input === 'object' && !(input instanceof URL)) return input;
  for (const open of openers) {
    const s = await open(input);
    if (s) return s;
  }
  throw new ArgumentError(`no source can open ${String(input)} on this platform`);
}

export class Model {
  private busy = false;
  private closed = false;

  private constructor(
    readonly file: FlmFile,
    readonly tokenizer: Tokenizer,
    private readonly kernels: Kernels,
    private readonly transformer: Transformer,
  ) {}

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
    const source = await resolveSource(input);
    try {
      const file = await openFlm(source);
      const a = file.header.arch;
      const contextLength = options.contextLength ?? Math.min(a.maxSeqLen, 2048);
      if (!Number.isInteger(contextLength) || contextLength < 1 || contextLength > a.maxSeqLen) {
        throw new ArgumentError(`contextLength must be an integer in [1, ${a.maxSeqLen}]`);
      }
      const tokenizer = await createTokenizer(file.header.tokenizer);
      // Size the arena: a probe instance tells the kernels' static size and scratch needs.
      const probe = await loadKernels(createArena(WASM_PAGE * 2), options.wasm);
      const maxCols = Math.max(...file.header.tensors.map((t) => t.shape[t.shape.length - 1]!));
      const need =
        probe.heap_base() +
        residentSections(file).reduce((sum, s) => sum + s.length, 0) +
        file.header.ffn.reduce((s, f) => s + file.section(f.section).length, 0) +
        Transformer.workingBytes(a, contextLength, maxCols, probe) +
        64 * 64; // alignment slack for each region
      const budget = options.memory === undefined ? need : typeof options.memory === 'string' ? parseBytes(options.memory) : options.memory;
      if (!(budget > 0) || budget > MAX_ARENA_BYTES) throw new ArgumentError(`memory budget must be in (0, 4 GiB], got ${fmtBytes(budget)}`);
      const memory = createArena(budget);
      const kernels = await loadKernels(memory, options.wasm);
      const arena = new Arena(memory, kernels.heap_base());
      const transformer = await Transformer.load(file, kernels, arena, contextLength, () => ResidentFfn.load(file, kernels, arena));
      return new Model(file, tokenizer, kernels, transformer);
    } catch (e) {
      await source.close().catch(() => {});
      throw e;
    }
  }

  /**
   * Streams generated text for `prompt` (the prompt itself is not echoed).
   * Stops at a stop token, after maxTokens, at the context length, or when
   * the signal aborts (AbortedError).
   */
  async *generate(prompt: string, options: GenerateOptions = {}): AsyncGenerator<string, void, undefined> {
    for await (const step of this.steps(prompt, options)) if (step.text) yield step.text;
  }

  /** Like generate(), token by token: the id and the text it completes. */
  async *steps(prompt: string, options: GenerateOptions = {}): AsyncGenerator<{ token: number; text: string }, void, undefined> {
    if (this.closed) throw new ArgumentError('model is closed');
    if (this.busy) throw new ArgumentError('model is already generating; one generation at a time');
    const maxTokens = options.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new ArgumentError('maxTokens must be a non-negative integer');
    this.busy = true;
    try {
      const a = this.arch;
      const ids = this.tokenizer.encode(prompt);
      if (ids.length === 0) ids.push(a.bosId);
      if (ids.length >= this.contextLength) throw new ArgumentError(`prompt is ${ids.length} tokens; the context holds ${this.contextLength}`);
      const sampler = new Sampler(this.kernels, a.vocabSize, options);
      const decoder = this.tokenizer.streamDecoder(ids);
      const stop = new Set(a.stopIds);
      const check = () => {
        if (options.signal?.aborted) throw new AbortedError('generation aborted', { cause: options.signal.reason });
      };
      let logits = 0;
      for (let pos = 0; pos < ids.length; pos++) {
        check();
        logits = await this.transformer.forward(ids[pos]!, pos);
      }
      let pos = ids.length;
      for (let n = 0; n < maxTokens; n++) {
        check();
        const next = sampler.sample(logits, this.transformer.logitsView);
        if (stop.has(next)) break;
        yield { token: next, text: decoder.push(next) };
        if (pos >= this.contextLength || n + 1 === maxTokens) break;
        logits = await this.transformer.forward(next, pos++);
      }
      const rest = decoder.flush();
      if (rest) yield { token: -1, text: rest };
    } finally {
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
      for (let pos = 0; pos < ids.length; pos++) {
        if (signal?.aborted) throw new AbortedError('aborted', { cause: signal.reason });
        await this.transformer.forward(ids[pos]!, pos);
        onLogits(pos, this.transformer.logitsView);
      }
    } finally {
      this.busy = false;
    }
  }

  /** Greedy or sampled generation collected into one string. */
  async complete(prompt: string, options: GenerateOptions = {}): Promise<string> {
    let out = '';
    for await (const t of this.generate(prompt, options)) out += t;
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.source.close();
  }
}

/** Opens a .flm model from a path or URL (with a platform opener) or any Source. */
export function openModel(input: string | URL | Source, options?: OpenOptions): Promise<Model> {
  return Model.open(input, options);
}

