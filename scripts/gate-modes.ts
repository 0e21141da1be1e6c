/**
 * Resident vs predicted gates on a gated model: for each calibrated .flm
 * given, perplexity against dense, top-1 agreement, mean KL, FFN bytes read
 * per token and the extra resident bytes (gate rows, or predictor weights),
 * with the predictor strategy (no cache: the selected records every token)
 * and the window strategy (k = 4, the default cache of a quarter of each
 * layer's neurons), from memory (no merge gaps: bytes read = the records
 * wanted).
 *
 *   node --import=tsx scripts/gate-modes.ts --text brown-eval.txt --tokens 4096 res70.flm pred70.flm ...
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { openFlm } from '../src/format/reader.js';
import { MemorySource } from '../src/source/memory.js';
import { evaluate } from '../src/calibrate/evaluate.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { text: { type: 'string' }, tokens: { type: 'string', default: '4096' }, context: { type: 'string', default: '256' } },
});
const text = readFileSync(values.text!, 'utf8');
const maxTokens = Number(values.tokens);
const context = Number(values.context);
const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
const rows: string[][] = [['file', 'mode', 'strategy', 'ppl', 'dense', 'top-1', 'KL', 'recall', 'records read/layer/token', 'FFN read/token', 'FFN bytes/token', 'extra resident']];
for (const path of positionals) {
  const bytes = new Uint8Array(readFileSync(path));
  const file = await openFlm(new MemorySource(bytes));
  const h = file.header;
  const f = h.ffn[0]!;
  const ffnBytes = h.ffn.reduce((s, e) => s + file.section(e.section).length, 0);
  const mode = h.predictors ? 'predicted' : h.gate ? 'resident' : 'dense';
  const extra = h.predictors ? file.section('predictor').length : h.gate ? h.arch.nLayers * f.neurons * f.partBytes : 0;
  for (const strategy of ['predictor', 'window'] as const) {
    const r = await evaluate(() => new MemorySource(bytes), text, { strategy, window: 4, maxTokens, context });
    const s = r.stats;
    const perToken = s.ffnFractionPerToken * ffnBytes;
    // Records read per token (a cache miss reads one record; gate mode: up and down only).
    const record = (h.predictors ? f.parts.length : f.parts.length - 1) * f.partBytes;
    const line = {
      file: path, mode, strategy, sparsity: h.gate?.sparsity, perplexity: r.perplexity, densePerplexity: r.densePerplexity, top1: r.top1Agreement, kl: r.meanKL,
      recall: s.predictorRecall, precision: s.predictorPrecision, ffnFraction: s.ffnFractionPerToken, ffnBytesPerToken: perToken, extraResident: extra, ffnBytes,
      recordsPerToken: perToken / record / h.arch.nLayers, cacheHitRate: s.cacheHitRate,
    };
    process.stderr.write(JSON.stringify(line) + '\n');
    rows.push([
      path.split('/').at(-1)!, mode, strategy, r.perplexity.toFixed(2), r.densePerplexity.toFixed(2), `${(100 * r.top1Agreement).toFixed(1)}%`, r.meanKL.toFixed(3),
      s.predictorRecall === null ? '-' : `${(100 * s.predictorRecall).toFixed(1)}%`, `${line.recordsPerToken.toFixed(1)} / ${f.neurons}`,
      `${(100 * s.ffnFractionPerToken).toFixed(1)}%`, kib(perToken), kib(extra),
    ]);
  }
}
process.stdout.write(rows.map((r) => `| ${r.join(' | ')} |`).join('\n').replace(/\n/, '\n|' + rows[0]!.map(() => ' --- |').join('') + '\n') + '\n');
