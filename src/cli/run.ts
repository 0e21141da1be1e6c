import { openModel, type Strategy } from '../node.js';
import { fmtBytes } from '../engine/arena.js';
import { interruptSignal } from './terminal.js';
import type { Sparsity } from '../flash/streaming.js';
import type { StatsSummary } from '../flash/stats.js';

export interface RunFlags {
  prompt: string;
  tokens: number;
  temp: number;
  topP: number;
  seed?: number;
  memory?: string;
  context?: number;
  batchSize?: number;
  threads?: number;
  strategy: Strategy;
  sparsity?: Sparsity;
  window: number;
  direct?: boolean;
  measurePredictor?: boolean;
  stats?: 'table' | 'json';
}

/** `flashlm run`: streams the continuation to stdout; Ctrl-C stops generation cleanly. */
export async function runGenerate(modelPath: string, flags: RunFlags): Promise<void> {
  const t0 = performance.now();
  const model = await openModel(modelPath, {
    memory: flags.memory,
    contextLength: flags.context,
    batchSize: flags.batchSize,
    threads: flags.threads,
    strategy: flags.strategy,
    sparsity: flags.sparsity,
    window: flags.window,
    direct: flags.direct,
    measurePredictor: flags.measurePredictor,
  });
  const p = model.plan;
  const residency =
    p.strategy === 'dense'
      ? `dense: ${fmtBytes(p.residentBytes + p.ffnBytes)} of weights resident`
      : `${p.strategy}${p.window ? ` (window ${p.window})` : ''}, sparsity ${p.sparsity}: resident ${fmtBytes(p.residentBytes)}, FFN ${fmtBytes(p.ffnBytes)} streamed` +
        (p.window ? `, cache ${fmtBytes(p.cacheBytes)} (${p.capacity}/${p.neurons} neurons per layer)` : '') +
        `, staging ${fmtBytes(p.stagingBytes)}`;
  const th = model.threading;
  process.stderr.write(`${residency}; arena ${fmtBytes(p.arenaBytes)}; ${th.threads} thread${th.threads === 1 ? '' : 's'}\n`);
  if (th.fallbackReason) process.stderr.write(`note: running on one thread: ${th.fallbackReason}\n`);
  if (p.sparsity === 'oracle') {
    process.stderr.write(`note: the oracle keeps a dense copy of the FFN (${fmtBytes(p.ffnBytes)}) outside the arena to know the true active neurons: it measures the streaming machinery; run \`flashlm calibrate\` for a predictor that saves memory and I/O\n`);
  }
  const interrupt = interruptSignal();
  const tLoad = performance.now();
  let n = 0;
  try {
    for await (const text of model.generate(flags.prompt, { maxTokens: flags.tokens, temperature: flags.temp, topP: flags.topP, seed: flags.seed, signal: interrupt.signal })) {
      process.stdout.write(text);
      n++;
    }
    process.stdout.write('\n');
  } finally {
    interrupt.release();
    await model.close();
  }
  // As llama.cpp reports them: prompt processing and decoding rates apart (the first token comes from the prompt's pass).
  const tm = model.timings;
  const rate = (tokens: number, ms: number) => (ms > 0 && tokens > 0 ? `${((1000 * tokens) / ms).toFixed(1)} tokens/s` : 'n/a');
  process.stderr.write(`loaded in ${((tLoad - t0) / 1000).toFixed(2)} s` +
    (tm ? `; prompt: ${tm.promptTokens} tokens, ${rate(tm.promptTokens, tm.promptMs)}; generated: ${tm.tokens} tokens, ${rate(tm.tokens - 1, tm.decodeMs)}` : `; ${n} pieces`) + '\n');
  if (flags.stats === 'table') process.stderr.write(formatStats(model.stats.summary()));
  if (flags.stats === 'json') process.stderr.write(JSON.stringify(model.stats.summary()) + '\n');
}

export function formatStats(s: StatsSummary): string {
  const pct = (v: number | null) => (v === null ? 'n/a' : `${(100 * v).toFixed(1)}%`);
  const rows: [string, string][] = [
    ['tokens (forward passes)', String(s.tokens)],
    ['bytes read / token', fmtBytes(Math.round(s.bytesPerToken))],
    ['read requests / token', s.requestsPerToken.toFixed(1)],
    ['mean request size', fmtBytes(Math.round(s.meanRequestBytes))],
    ['I/O ms / token', s.ioMsPerToken.toFixed(2)],
    ['unpack ms / token', s.unpackMsPerToken.toFixed(2)],
    ['compute ms / token', s.computeMsPerToken.toFixed(2)],
    ['total ms / token', s.msPerToken.toFixed(2)],
    ['cache hit rate', pct(s.cacheHitRate)],
    ['cache LRU evictions / token', s.cacheLruEvictionsPerToken === null ? 'n/a' : s.cacheLruEvictionsPerToken.toFixed(1)],
    ['uncached (overflow) neurons / token', s.cacheOverflowPerToken === null ? 'n/a' : s.cacheOverflowPerToken.toFixed(1)],
    ['FFN read / token (of all FFN)', pct(s.ffnFractionPerToken)],
    ['resident bytes', fmtBytes(s.residentBytes)],
    ['arena bytes', fmtBytes(s.arenaBytes)],
    ['predictor recall', pct(s.predictorRecall)],
    ['predictor precision', pct(s.predictorPrecision)],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + '\n';
}
