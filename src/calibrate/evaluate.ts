/**
 * `flashlm eval` as a library call: perplexity of a strategy over a text,
 * and, against the dense model, top-1 agreement and the mean KL divergence
 * KL(dense ‖ strategy) of the next-token distributions.
 */
import { AbortedError, ArgumentError } from '../errors.js';
import { openModel, type OpenOptions } from '../model.js';
import type { StatsSummary } from '../flash/stats.js';
import type { Source } from '../source/types.js';
import { scoringWindows } from './text.js';
import { yieldToEventLoop } from '../util/yield.js';

export interface EvalOptions extends Omit<OpenOptions, 'contextLength' | 'measurePredictor' | 'onProgress'> {
  /** Tokens per scoring window. Default min(256, model context). */
  context?: number;
  /** Score at most about this many tokens (evenly spaced windows). Default: all. */
  maxTokens?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface EvalResult {
  perplexity: number;
  densePerplexity: number;
  /** Share of positions where the strategy's argmax equals dense's. */
  top1Agreement: number;
  /** Mean over positions of KL(dense ‖ strategy), nats. */
  meanKL: number;
  scoredTokens: number;
  /** The strategy model's run stats (predictor recall/precision measured against the true active sets). */
  stats: StatsSummary;
}

/** log-softmax of `logits` into `out` (float64); returns the argmax. */
export function logSoftmax(logits: ArrayLike<number>, out: Float64Array): number {
  let max = -Infinity;
  let arg = 0;
  for (let i = 0; i < out.length; i++) {
    const v = logits[i]!;
    if (v > max) {
      max = v;
      arg = i;
    }
  }
  let sum = 0;
  for (let i = 0; i < out.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < out.length; i++) out[i] = logits[i]! - lse;
  return arg;
}

/** KL(p ‖ q) from log-probabilities. */
export function klDivergence(logP: Float64Array, logQ: Float64Array): number {
  let kl = 0;
  for (let i = 0; i < logP.length; i++) {
    const lp = logP[i]!;
    if (lp > -745) kl += Math.exp(lp) * (lp - logQ[i]!);
  }
  return Math.max(0, kl);
}

/**
 * Scores `text` with the strategy in `opts` and with dense. `input` is opened
 * twice (a path or URL), or is a function returning a fresh Source.
 */
export async function evaluate(input: string | URL | (() => Source), text: string, opts: EvalOptions = {}): Promise<EvalResult> {
  const { context: ctxOpt, maxTokens, signal, onProgress, ...open } = opts;
  const src = () => (typeof input === 'function' ? input() : input);
  const strategy = open.strategy ?? 'dense';
  const model = await openModel(src(), { ...open, contextLength: undefined, measurePredictor: strategy === 'predictor' || strategy === 'window' });
  const dense = strategy === 'dense' ? undefined : await openModel(src(), { strategy: 'dense', wasm: open.wasm, wasmThreads: open.wasmThreads, threads: open.threads });
  try {
    const context = Math.min(ctxOpt ?? 256, model.contextLength);
    const ids = model.tokenizer.encode(text);
    const windows = scoringWindows(ids, context, maxTokens);
    const total = windows.reduce((s, w) => s + w.target.length, 0);
    // Perplexity needs at least one predicted token: an empty text would report NaN.
    if (total === 0) throw new ArgumentError(`the text has ${ids.length} token${ids.length === 1 ? '' : 's'}: at least 2 are needed to score one prediction`);
    const V = model.arch.vocabSize;
    const denseLogp = new Float64Array(context * V);
    const denseTop = new Int32Array(context);
    const lp = new Float64Array(V);
    let nllDense = 0;
    let nll = 0;
    let agree = 0;
    let kl = 0;
    let done = 0;
    for (const w of windows) {
      if (signal?.aborted) throw new AbortedError('aborted', { cause: signal.reason });
      if (dense) {
        await dense.forwardTokens(w.input, (pos, logits) => {
          const row = denseLogp.subarray(pos * V, (pos + 1) * V);
          denseTop[pos] = logSoftmax(logits, row);
          nllDense -= row[w.target[pos]!]!;
        }, signal);
      }
      await model.forwardTokens(w.input, (pos, logits) => {
        const top = logSoftmax(logits, lp);
        nll -= lp[w.target[pos]!]!;
        if (dense) {
          const row = denseLogp.subarray(pos * V, (pos + 1) * V);
          if (denseTop[pos] === top) agree++;
          kl += klDivergence(row, lp);
        }
      }, signal);
      done += w.target.length;
      onProgress?.(done, total);
      await yieldToEventLoop();
    }
    if (!dense) {
      nllDense = nll;
      agree = total;
    }
    return {
      perplexity: Math.exp(nll / total),
      densePerplexity: Math.exp(nllDense / total),
      top1Agreement: agree / total,
      meanKL: kl / total,
      scoredTokens: total,
      stats: model.stats.summary(),
    };
  } finally {
    await model.close();
    await dense?.close();
  }
}
