/**
 * Quality of the quantized dtypes against f32 on both fixtures (stories260K,
 * opt-relu-6m), teacher-forced over held-out Brown text (scripts/brown.ts's
 * evaluation split): top-1 agreement with f32, mean KL(f32 || dtype) per
 * position, and each file's perplexity. Files are converted in memory.
 *
 *   node --import=tsx scripts/q4-quality.ts [--tokens N] [--context C]
 *
 * Rows: f32, q8 (--dtype int8), q4 everywhere (--dtype q4), q4 FFN + q8
 * resident (--dtype q4 --resident-dtype int8), q4 FFN + f16 resident.
 */
import { parseArgs } from 'node:util';
import { openCheckpoint } from '../src/convert/index.js';
import { writeFlm } from '../src/format/writer.js';
import type { DType } from '../src/format/types.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { openModel } from '../src/model.js';
import { logSoftmax, klDivergence } from '../src/calibrate/evaluate.js';
import { scoringWindows } from '../src/calibrate/text.js';
import { brownSplit, brownText } from './brown.js';
import { STORIES_BIN, STORIES_TOK, OPT_DIR } from '../test/helpers/models.js';

const { values } = parseArgs({ options: { tokens: { type: 'string', default: '8192' }, context: { type: 'string', default: '256' } } });
const maxTokens = Number(values.tokens), context = Number(values.context);

async function convert(input: string, tokenizer: string | undefined, dtype: DType, residentDtype?: DType): Promise<Uint8Array> {
  const ckpt = await openCheckpoint(input, { tokenizer });
  try {
    const sink = new MemorySink();
    await writeFlm(ckpt, sink, { dtype, layout: 'bundled', ...(residentDtype ? { residentDtype } : {}) });
    return sink.bytes();
  } finally {
    await ckpt.close();
  }
}

const text = brownText(brownSplit().evaluation);
const rows: [string, DType, DType | undefined][] = [['q8 (int8)', 'q8', undefined], ['q4', 'q4', undefined], ['q4 FFN + q8 resident', 'q4', 'q8'], ['q4 FFN + f16 resident', 'q4', 'f16']];
console.log(`held-out Brown (scripts/brown.ts evaluation split), windows of ${context} tokens, up to ${maxTokens} scored tokens per fixture`);
console.log('| fixture | dtype | file bytes | top-1 vs f32 | mean KL(f32‖dtype) | perplexity (f32 → dtype) |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const [name, input, tok] of [['stories260K', STORIES_BIN, STORIES_TOK], ['opt-relu-6m', OPT_DIR, undefined]] as const) {
  const ref = await convert(input, tok, 'f32');
  const f32 = await openModel(new MemorySource(ref), { threads: 1 });
  const ids = f32.tokenizer.encode(text);
  const windows = scoringWindows(ids, Math.min(context, f32.contextLength), maxTokens);
  const V = f32.arch.vocabSize;
  // f32 log-probabilities of every scored position, kept for the comparisons
  const refLp: Float64Array[] = [];
  let nllRef = 0, n = 0;
  for (const w of windows) {
    await f32.forwardTokens(w.input, (pos, logits) => {
      const lp = new Float64Array(V);
      logSoftmax(logits, lp);
      refLp.push(lp);
      nllRef -= lp[w.target[pos]!]!;
      n++;
    });
  }
  await f32.close();
  for (const [label, dtype, res] of rows) {
    const bytes = await convert(input, tok, dtype, res);
    const m = await openModel(new MemorySource(bytes), { threads: 1 });
    const lp = new Float64Array(V);
    let i = 0, agree = 0, kl = 0, nll = 0;
    for (const w of windows) {
      await m.forwardTokens(w.input, (pos, logits) => {
        const top = logSoftmax(logits, lp);
        const r = refLp[i++]!;
        let rt = 0;
        for (let j = 1; j < V; j++) if (r[j]! > r[rt]!) rt = j;
        if (rt === top) agree++;
        kl += klDivergence(r, lp);
        nll -= lp[w.target[pos]!]!;
      });
    }
    await m.close();
    console.log(`| ${name} | ${label} | ${bytes.length} (f32 ${ref.length}) | ${((agree / n) * 100).toFixed(2)}% | ${(kl / n).toExponential(3)} | ${Math.exp(nllRef / n).toFixed(3)} → ${Math.exp(nll / n).toFixed(3)} |`);
  }
  console.log(`(${name}: ${n} scored positions)`);
}
