/** Options that `run`, `chat` and `serve` share: loading a model, and sampling. */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { STRATEGIES, type DenseLayout, type Strategy } from '../plan.js';
import type { Sparsity } from '../flash/streaming.js';
import { openModel, type GenerateOptions, type Model, type OpenOptions } from '../node.js';
import { fmtBytes } from '../engine/arena.js';
import { progressBar } from './terminal.js';
import type { HttpOptions } from '../source/http-common.js';

export const int = (name: string, min: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};
export const float = (name: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};

export interface ModelFlags extends HttpFlags {
  memory?: string;
  /** --memory-cache: bytes read from the source kept in memory (outside the arena). */
  memoryCache?: string;
  context?: number;
  batchSize?: number;
  kvDtype?: 'f32' | 'f16';
  threads?: number;
  /** --simd: the kernels build (auto: relaxed SIMD where the runtime has it). */
  simd?: 'auto' | 'plain' | 'relaxed';
  strategy: Strategy;
  /** --dense-layout: the dense strategy's FFN layout (rows: faster; records: the streamed bits). */
  denseLayout?: DenseLayout;
  sparsity?: Sparsity;
  window: number;
  direct?: boolean;
  /** --io-depth: local file reads in flight (the launcher sized libuv's pool from it before Node started it). */
  ioDepth?: number;
  /** false with --no-prefetch. */
  prefetch: boolean;
  measurePredictor?: boolean;
  /** How the oracle knows the true active neurons: a copy of the FFN, or each layer read again (no copy). */
  oracle?: 'copy' | 'paged';
  chatTemplate?: string;
}

/** The flags addHttpOptions adds. */
export interface HttpFlags {
  httpTimeout?: number;
  httpRetries?: number;
  httpConnections?: number;
  speedLimit?: number;
  speedTime?: number;
  readDeadline?: number;
}

/** HTTP sources: --http-timeout, --http-retries, --speed-limit/--speed-time (as curl's), --read-deadline. */
export function addHttpOptions(c: Command): Command {
  return c
    .option('--http-timeout <s>', 'URLs: retry an attempt that receives nothing for this many seconds (default 30)', float('http-timeout', 0.001, 86400))
    .option('--http-retries <n>', 'URLs: retries per read (default 4)', int('http-retries', 0))
    .option('--http-connections <n>', 'URLs: requests in flight at most (connections, or HTTP/2 streams; default 64)', int('http-connections', 1))
    .option('--speed-limit <bytes>', 'URLs: retry an attempt slower than this many bytes/s over --speed-time (default 1024; 0 = off)', int('speed-limit', 0))
    .option('--speed-time <s>', 'URLs: the window of --speed-limit in seconds (default 30)', float('speed-time', 0.001, 86400))
    .option('--read-deadline <s>', 'URLs: give up a read, retries included, after this many seconds (default 300; 0 = none)', float('read-deadline', 0, 86400));
}

/** The HttpOptions of those flags; every retry is said on stderr as it happens. */
export function httpOptions(f: HttpFlags): HttpOptions {
  const s = (v: number | undefined) => (v === undefined ? undefined : Math.round(v * 1000));
  return {
    timeoutMs: s(f.httpTimeout),
    retries: f.httpRetries,
    connections: f.httpConnections,
    lowSpeedLimit: f.speedLimit,
    lowSpeedTimeMs: s(f.speedTime),
    deadlineMs: s(f.readDeadline),
    onRetry: (e) => process.stderr.write(`flashlm: ${e.source}: ${e.what}: ${e.reason}; retry ${e.retry} of ${e.retries} in ${(e.waitMs / 1000).toFixed(1)} s\n`),
  };
}

/** The file writers' flags (convert, synth): --dtype (default `dtype`), --resident-dtype, --layout, --force. */
export function addWeightOptions(c: Command, dtype: string, residentExample: string): Command {
  const dtypes = ['f32', 'f16', 'int8', 'q8', 'int8-row', 'q4'];
  return c
    .addOption(new Option('--dtype <dtype>', 'weight storage type (int8 = q8: one scale per 32 weights; int8-row: one scale per row; q4: 4-bit, one f16 scale per 32 weights)').choices(dtypes).default(dtype))
    .addOption(new Option('--resident-dtype <dtype>', `storage type of the resident matrices (attention, embeddings, head) when it should differ from --dtype, ${residentExample}`).choices(dtypes))
    .addOption(new Option('--layout <layout>', 'FFN layout: row-column bundles, or split up/down matrices').choices(['bundled', 'split']).default('bundled'))
    .option('--force', 'replace an existing output file that is not a .flm');
}

/** --memory, --memory-cache, --context, --batch-size, --kv-dtype, --threads, --strategy, --dense-layout, --sparsity, --window, --direct, --chat-template, and the HTTP flags. */
export function addModelOptions(c: Command): Command {
  return addHttpOptions(c)
    .option('--memory <size>', 'arena budget, e.g. 512M, 2G (default: what the strategy needs)')
    .option('--memory-cache <size>', 'keep bytes read from the source in memory, e.g. 2G, outside the --memory budget: a page cache for URLs (default: none)')
    .option('--context <n>', 'context length in tokens', int('context', 1))
    .option('-b, --batch-size <n>', 'prompt tokens per forward pass (default 32; 1 = token by token, same tokens)', int('batch-size', 1))
    .addOption(new Option('--kv-dtype <t>', 'KV cache element type: f16 halves its memory (for long contexts of big models)').choices(['f32', 'f16']))
    .option('-t, --threads <n>', 'kernel threads, the main one included (default: every core; same output for any count)', int('threads', 1))
    .addOption(new Option('--simd <build>', 'kernels build: relaxed SIMD (fused multiply-add) where the runtime has it, or either forced').choices(['auto', 'plain', 'relaxed']))
    .addOption(new Option('--strategy <s>', 'what stays resident and what is streamed').choices([...STRATEGIES]).default('dense'))
    .addOption(new Option('--dense-layout <l>', "dense: SiLU-gated layers' FFN as rows (default, faster) or as the file's records (the bits the streaming strategies give)").choices(['rows', 'records']))
    .addOption(new Option('--sparsity <s>', 'how predictor/window choose neurons (default: the file\'s predictors or gate thresholds, else oracle)').choices(['predictor', 'oracle', 'off', 'gate']))
    .option('--window <k>', 'window strategy: keep neurons used in the last k tokens', int('window', 1), 4)
    .addOption(new Option('--oracle <mode>', 'the oracle (--sparsity oracle, --measure-predictor): a copy of the FFN outside the budget, or each layer read again from the file (no copy); default: copy up to 1 GiB of FFN').choices(['copy', 'paged']))
    .option('--direct', 'read local files with O_DIRECT (bypass the page cache)')
    .option('--io-depth <n>', 'local files: reads in flight, and libuv threads to run them (default: UV_THREADPOOL_SIZE, else 32)', int('io-depth', 1))
    .option('--no-prefetch', "don't read the next layer's neurons while this one computes (hybrid; predictor/window with predictors)")
    .option('--chat-template <file>', 'a Jinja chat template (instead of, or for a model without, the one in its tokenizer_config.json)');
}

export function openOptions(f: ModelFlags): OpenOptions {
  return {
    memory: f.memory,
    memoryCache: f.memoryCache,
    contextLength: f.context,
    batchSize: f.batchSize,
    kvDtype: f.kvDtype,
    threads: f.threads,
    simd: f.simd,
    strategy: f.strategy,
    denseLayout: f.denseLayout,
    sparsity: f.sparsity,
    window: f.window,
    direct: f.direct,
    prefetch: f.prefetch,
    measurePredictor: f.measurePredictor,
    oracle: f.oracle,
    chatTemplate: f.chatTemplate === undefined ? undefined : readFileSync(f.chatTemplate, 'utf8'),
    http: httpOptions(f),
  };
}

/** Opens the model the flags describe, with a progress bar of the weights being loaded when stderr is a terminal. */
export async function openModelCli(model: string, f: ModelFlags): Promise<Model> {
  // The file source takes its reads in flight from UV_THREADPOOL_SIZE (file-node.ts threadPoolSize), which bin/flashlm.js
  // already set from --io-depth before libuv started its pool; run in-process, the pool keeps its size and the depth still holds.
  if (f.ioDepth !== undefined) process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, f.ioDepth));
  const bar = progressBar('loading [{bar}] {percentage}% {got} / {size}');
  try {
    return await openModel(model, {
      ...openOptions(f),
      onProgress: bar && (({ loaded, total }) => {
        if (!bar.isActive) bar.start(total, 0, { size: fmtBytes(total), got: '0 B' });
        bar.update(loaded, { got: fmtBytes(loaded) });
      }),
    });
  } finally {
    bar?.stop();
  }
}

export interface SamplingFlags {
  tokens: number;
  temp: number;
  topP: number;
  topK?: number;
  minP?: number;
  repeatPenalty?: number;
  repeatLastN?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  stop?: string[];
  seed?: number;
}

/** -n, --temp, --top-p, --top-k, --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty, --stop, --seed. */
export function addSamplingOptions(c: Command): Command {
  return c
    .option('-n, --tokens <n>', 'most tokens to generate', int('tokens', 0), 256)
    .option('--temp <t>', 'temperature; 0 = greedy', float('temp', 0, 100), 0)
    .option('--top-p <p>', 'nucleus sampling mass (1 = off)', float('top-p', 0, 1), 0.9)
    .option('--top-k <k>', 'keep the k most probable tokens (0 = off)', int('top-k', 0))
    .option('--min-p <p>', 'drop tokens under p × the best one\'s probability (0 = off)', float('min-p', 0, 1))
    .option('--repeat-penalty <r>', 'llama.cpp repeat penalty over the last --repeat-last-n tokens (1 = off)', float('repeat-penalty', 0.01, 100))
    .option('--repeat-last-n <n>', 'window of the repeat penalty, in tokens', int('repeat-last-n', 0), 64)
    .option('--presence-penalty <v>', 'OpenAI presence penalty over the generated tokens', float('presence-penalty', -2, 2))
    .option('--frequency-penalty <v>', 'OpenAI frequency penalty over the generated tokens', float('frequency-penalty', -2, 2))
    .option('--stop <text>', 'stop before this text (repeatable; \\n is a newline)', (v: string, prev: string[] = []) => [...prev, v.replace(/\\n/g, '\n')])
    .option('--seed <s>', 'random seed', int('seed', 0));
}

export function generateOptions(f: SamplingFlags, signal?: AbortSignal): GenerateOptions {
  return {
    maxTokens: f.tokens,
    temperature: f.temp,
    topP: f.topP,
    topK: f.topK,
    minP: f.minP,
    repeatPenalty: f.repeatPenalty,
    repeatLastN: f.repeatLastN,
    presencePenalty: f.presencePenalty,
    frequencyPenalty: f.frequencyPenalty,
    stop: f.stop,
    seed: f.seed,
    signal,
  };
}

/** As llama.cpp reports it: tokens per second, or n/a. */
export function rate(tokens: number, ms: number): string {
  return ms > 0 && tokens > 0 ? `${((1000 * tokens) / ms).toFixed(1)} tokens/s` : 'n/a';
}
