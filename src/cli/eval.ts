import { readFile } from 'node:fs/promises';
import '../node.js'; // file and HTTP openers
import type { Strategy } from '../plan.js';
import type { Sparsity } from '../flash/streaming.js';
import { evaluate } from '../calibrate/evaluate.js';
import { formatStats } from './run.js';
import { interruptSignal, progressBar } from './terminal.js';
import { ArgumentError } from '../errors.js';
import { httpOptions, type HttpFlags } from './options.js';

export interface EvalFlags extends HttpFlags {
  text: string[];
  strategy: Strategy;
  sparsity?: Sparsity;
  window: number;
  memory?: string;
  context: number;
  tokens?: number;
  direct?: boolean;
  threads?: number;
  stats?: 'table' | 'json';
}

/** `flashlm eval`: perplexity with a strategy, and its agreement with dense. */
export async function runEval(modelPath: string, flags: EvalFlags): Promise<void> {
  const text = (await Promise.all(flags.text.map((f) => readFile(f, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new ArgumentError(`--text ${f}: ${e.code === 'EISDIR' ? 'is a directory' : e.code === 'ENOENT' ? 'no such file' : e.message}`, { cause: e });
  })))).join('\n');
  const interrupt = interruptSignal();
  const bar = progressBar('scoring [{bar}] {percentage}% {value}/{total} tokens eta {eta_formatted}');
  const t0 = performance.now();
  try {
    const r = await evaluate(modelPath, text, {
      strategy: flags.strategy,
      sparsity: flags.sparsity,
      window: flags.window,
      memory: flags.memory,
      direct: flags.direct,
      threads: flags.threads,
      http: httpOptions(flags),
      context: flags.context,
      maxTokens: flags.tokens,
      signal: interrupt.signal,
      onProgress: (done, total) => {
        if (!bar) return;
        if (!bar.isActive) bar.start(total, 0);
        bar.update(done);
      },
    });
    bar?.stop();
    const s = r.stats;
    const label = `${s.strategy}${s.window ? ` (window ${s.window})` : ''}${s.sparsity !== 'off' ? `, sparsity ${s.sparsity}` : ''}`;
    const pct = (v: number | null) => (v === null ? 'n/a' : `${(100 * v).toFixed(2)}%`);
    process.stdout.write(
      [
        `scored tokens          ${r.scoredTokens}`,
        `perplexity             ${r.perplexity.toFixed(3)}  (${label})`,
        `dense perplexity       ${r.densePerplexity.toFixed(3)}  (${(100 * (r.perplexity / r.densePerplexity - 1)).toFixed(2)}% above dense)`,
        `top-1 agreement        ${pct(r.top1Agreement)}`,
        `mean KL(dense‖strategy) ${r.meanKL.toFixed(5)} nats`,
        `predictor recall       ${pct(s.predictorRecall)}`,
        `predictor precision    ${pct(s.predictorPrecision)}`,
        `FFN read / token       ${pct(s.ffnFractionPerToken)}`,
      ].join('\n') + '\n',
    );
    process.stderr.write(`evaluated in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    if (flags.stats === 'table') process.stderr.write(formatStats(s));
    if (flags.stats === 'json') {
      process.stderr.write(JSON.stringify({ ...s, perplexity: r.perplexity, densePerplexity: r.densePerplexity, top1Agreement: r.top1Agreement, meanKL: r.meanKL, scoredTokens: r.scoredTokens }) + '\n');
    }
  } catch (e) {
    bar?.stop();
    throw e;
  } finally {
    interrupt.release();
  }
}
