import type { Model } from '../node.js';
import { fmtBytes } from '../engine/arena.js';
import { interruptSignal } from './terminal.js';
import type { StatsSummary } from '../flash/stats.js';
import { oracleModeFor, type OracleMode } from '../flash/oracle.js';
import { generateOptions, openModelCli, rate, type ModelFlags, type SamplingFlags } from './options.js';

export interface RunFlags extends ModelFlags, SamplingFlags {
  prompt: string;
  chat?: boolean;
  system?: string;
  stats?: 'table' | 'json';
}

/** One stderr line on how the model was laid out (and notes on threads and the oracle). */
export function describeModel(model: Model, oracle?: OracleMode): string {
  const p = model.plan;
  const residency =
    p.strategy === 'dense'
      ? `dense: ${fmtBytes(p.residentBytes + p.ffnBytes)} of weights resident`
      : `${p.strategy}${p.window ? ` (window ${p.window})` : ''}, sparsity ${p.sparsity}: resident ${fmtBytes(p.residentBytes)}, FFN ${fmtBytes(p.ffnBytes)} streamed` +
        (p.window ? `, cache ${fmtBytes(p.cacheBytes)} (${p.capacity}/${p.neurons} neurons per layer)` : '') +
        `, staging ${fmtBytes(p.stagingBytes)}` +
        (p.prefetchBytes ? ` + ${fmtBytes(p.prefetchBytes)} for the next layer's reads` : '');
  const th = model.threading;
  let out = `${residency}; arena ${fmtBytes(p.arenaBytes)}; ${th.threads} thread${th.threads === 1 ? '' : 's'}, kernels ${model.simd}\n`;
  if (th.fallbackReason) out += `note: running on one thread: ${th.fallbackReason}\n`;
  if (p.sparsity === 'oracle') {
    const how = oracleModeFor(p.ffnBytes, oracle) === 'paged'
      ? `reads each layer's FFN records again from the source (no copy of the FFN, ${fmtBytes(p.ffnBytes)})`
      : `keeps a dense copy of the FFN (${fmtBytes(p.ffnBytes)}) outside the arena`;
    out += `note: the oracle ${how} to know the true active neurons, its time reported apart (oracle ms / token): it measures the streaming machinery; run \`flashlm calibrate\` for a predictor that saves memory and I/O\n`;
  }
  return out;
}

/** What stderr says when a generation ends for a reason the user should know (the context is full). */
export function finishNote(model: Model): string {
  const tm = model.timings;
  return tm?.finishReason === 'context'
    ? `note: generation stopped: the context is full (${model.contextLength} tokens: prompt ${tm.promptTokens} + ${tm.tokens} generated); --context sets a longer one (at most the model's ${model.arch.maxSeqLen})\n`
    : '';
}

/** `flashlm run`: streams the continuation to stdout; Ctrl-C stops generation cleanly. */
export async function runGenerate(modelPath: string, flags: RunFlags): Promise<void> {
  const t0 = performance.now();
  const model = await openModelCli(modelPath, flags);
  process.stderr.write(describeModel(model, flags.oracle));
  const interrupt = interruptSignal();
  const tLoad = performance.now();
  let n = 0;
  try {
    const options = generateOptions(flags, interrupt.signal);
    const messages = [...(flags.system ? [{ role: 'system', content: flags.system }] : []), { role: 'user', content: flags.prompt }];
    const stream = flags.chat ? model.chat(messages, options) : model.generate(flags.prompt, options);
    for await (const text of stream) {
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
  process.stderr.write(finishNote(model));
  process.stderr.write(`loaded in ${((tLoad - t0) / 1000).toFixed(2)} s` +
    (tm ? `; prompt: ${tm.promptTokens} tokens, ${rate(tm.promptTokens - tm.reusedTokens, tm.promptMs)}; generated: ${tm.tokens} tokens, ${rate(tm.tokens - 1, tm.decodeMs)}` : `; ${n} pieces`) + '\n');
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
    ['  of it hidden behind compute', s.hiddenIoMsPerToken.toFixed(2)],
    ['unpack ms / token', s.unpackMsPerToken.toFixed(2)],
    ['compute ms / token', s.computeMsPerToken.toFixed(2)],
    ['total ms / token', s.msPerToken.toFixed(2)],
    ['cache hit rate', pct(s.cacheHitRate)],
    ...(s.tierHitRate === null ? [] : [['bytes served by cache tiers (memory, OPFS)', pct(s.tierHitRate)] as [string, string]]),
    ['cache LRU evictions / token', s.cacheLruEvictionsPerToken === null ? 'n/a' : s.cacheLruEvictionsPerToken.toFixed(1)],
    ['uncached (overflow) neurons / token', s.cacheOverflowPerToken === null ? 'n/a' : s.cacheOverflowPerToken.toFixed(1)],
    ['FFN read / token (of all FFN)', pct(s.ffnFractionPerToken)],
    ['resident bytes', fmtBytes(s.residentBytes)],
    ['arena bytes', fmtBytes(s.arenaBytes)],
    ['predictor recall', pct(s.predictorRecall)],
    ['predictor precision', pct(s.predictorPrecision)],
    ['prefetched neurons / token (used)', `${s.prefetchedNeuronsPerToken.toFixed(1)} (${pct(s.prefetchUseRate)})`],
    ['lookahead recall / precision', `${pct(s.lookaheadRecall)} / ${pct(s.lookaheadPrecision)}`],
    ['true active / token (of FFN neurons)', pct(s.activeFractionPerToken)],
    ['neurons read / token (of FFN neurons)', pct(s.newFractionPerToken)],
    ['oracle ms / token (not in total)', s.oracleMsPerToken.toFixed(2)],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + '\n';
}
