/**
 * Prefetch (src/flash/prefetch.ts): reading layer l+1's neurons while layer l
 * computes changes where records come from, not what is computed. On the
 * calibrated OPT fixture (predictors and lookahead predictors trained here),
 * from a file and over HTTP: window gives bit-identical logits with and
 * without prefetch (the prefetch area comes out of staging, so the cache and
 * its compute order are the same); without a cache the staging batches
 * differ, so the FFN sums group differently: the same argmax everywhere and
 * logits within float rounding. The stats show the prefetch at work: neurons
 * read ahead and used, hidden I/O, the lookahead's recall per layer.
 */
import test from 'ava';
import { openModel, type OpenOptions } from '../src/node.js';
import { openFlm } from '../src/format/reader.js';
import { writeWithPredictors } from '../src/format/rewrite.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { calibrate } from '../src/calibrate/calibrate.js';
import type { StatsSummary } from '../src/flash/stats.js';
import { brownSplit, brownText } from '../scripts/brown.js';
import { servedDir } from './helpers/served-dir.js';
import { OPT_DIR, convertToBytes, optReference } from './helpers/models.js';

const served = servedDir('flashlm-prefetch-');

/** The OPT fixture with predictors, with and without lookahead predictors, on disk and behind nginx. */
let made: Promise<Record<string, { path: string; url: string }>> | undefined;
const files = () => (made ??= (async () => {
  const bytes = await convertToBytes(OPT_DIR);
  const file = await openFlm(new MemorySource(bytes));
  const result = await calibrate(file, [brownText(brownSplit().calibration)], { tokens: 1024, context: 64, holdout: 0.2, epochs: 1, rank: 16 });
  const out: Record<string, { path: string; url: string }> = {};
  for (const [name, lookahead] of [['ahead', result.lookahead], ['direct', []]] as const) {
    const sink = new MemorySink();
    await writeWithPredictors(file, result.predictors, sink, { lookahead });
    out[name] = served.place(`${name}.flm`, sink.bytes());
  }
  return out;
})());

// A fixed token sequence: the reference prompt's continuation, scored teacher-forced one position at a time.
const { ref } = optReference();
const IDS: number[] = [...ref.prompt_ids, ...ref.greedy_ids].slice(0, 40);

/** Logits at every position (copied), and the stats summary. */
async function score(input: string, opts: OpenOptions): Promise<{ logits: Float32Array[]; s: StatsSummary }> {
  const model = await openModel(input, { contextLength: 64, batchSize: 1, ...opts });
  try {
    const logits: Float32Array[] = [];
    await model.forwardTokens(IDS, (_pos, l) => logits.push(l.slice()));
    return { logits, s: model.stats.summary() };
  } finally {
    await model.close();
  }
}

/** Largest |a - b| over every position's logits (0: bit-identical; Infinity: an argmax differs). */
function logitsDiff(a: Float32Array[], b: Float32Array[]): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  const argmax = (v: Float32Array) => v.reduce((best, x, i) => (x > v[best]! ? i : best), 0);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (argmax(x) !== argmax(y)) return Infinity;
    for (let j = 0; j < x.length; j++) worst = Math.max(worst, Math.abs(x[j]! - y[j]!));
  }
  return worst;
}

// A budget under the FFN's 12 MiB: the window cache holds ~10% of each layer, so misses (and prefetches) happen every token.
const MEMORY = '16M';

for (const where of ['file', 'http'] as const) {
  for (const [strategy, sparsity] of [['window', 'predictor'], ['window', 'oracle'], ['predictor', 'predictor'], ['hybrid', undefined]] as const) {
    test(`${where}: ${strategy} (${sparsity ?? 'all neurons'}) gives the same logits with and without prefetch, and prefetches`, async (t) => {
      const f = (await files()).ahead!;
      const input = where === 'file' ? f.path : f.url;
      const opts: OpenOptions = { strategy, sparsity, memory: strategy === 'hybrid' ? undefined : MEMORY, direct: where === 'file' };
      const off = await score(input, { ...opts, prefetch: false });
      const on = await score(input, { ...opts, prefetch: true });
      const diff = logitsDiff(on.logits, off.logits);
      if (strategy === 'window') t.is(diff, 0, 'window: logits differ with prefetch');
      else t.true(diff < 1e-3, `logits differ by ${diff}`);
      t.is(off.s.prefetchedNeuronsPerToken, 0);
      t.is(off.s.prefetchUseRate, null);
      t.true(on.s.prefetchedNeuronsPerToken > 0, 'nothing was prefetched');
      t.true(on.s.prefetchUseRate! > 0, 'no prefetched neuron was used');
      t.log(`${where} ${strategy}: prefetched ${on.s.prefetchedNeuronsPerToken.toFixed(0)} neurons/token, ${(100 * on.s.prefetchUseRate!).toFixed(0)}% used; hidden ${on.s.hiddenIoMsPerToken.toFixed(2)} of ${on.s.ioMsPerToken.toFixed(2)} I/O ms; lookahead recall ${on.s.lookaheadRecall?.toFixed(3)}`);
      if (strategy === 'hybrid') {
        // Every record is needed: everything read ahead is used, and the bytes per token stay the same.
        t.is(on.s.prefetchUseRate, 1);
        t.is(on.s.bytesPerToken, off.s.bytesPerToken);
        t.is(on.s.lookaheadRecall, null);
      } else {
        // Layers 1..5 were predicted a layer early: recall against what each selected, per layer and in all.
        t.true(on.s.lookaheadRecall! > 0.5, `lookahead recall ${on.s.lookaheadRecall}`);
        t.true(on.s.lookaheadPrecision! > 0.2, `lookahead precision ${on.s.lookaheadPrecision}`);
        const la = on.s.layers!.lookaheadRecall;
        t.is(la.length, 6);
        t.is(la[0], null, 'layer 0 has no layer before it');
        for (let l = 1; l < 6; l++) t.true(la[l]! > 0.3, `layer ${l}: ${la[l]}`);
        if (sparsity === 'oracle') {
          // With the oracle, the file's direct predictor is measured on the way, per layer, next to the lookahead.
          const pr = on.s.layers!.predictorRecall;
          for (let l = 0; l < 6; l++) t.true(pr[l]! > 0.8, `layer ${l} predictor recall ${pr[l]}`);
        }
      }
    });
  }
}

test('without lookahead predictors, the next layer\'s direct predictor on this layer\'s input names the prefetch (same logits)', async (t) => {
  const f = (await files()).direct!;
  const opts: OpenOptions = { strategy: 'window', sparsity: 'predictor', memory: MEMORY, direct: true };
  const off = await score(f.path, { ...opts, prefetch: false });
  const on = await score(f.path, opts);
  t.is(logitsDiff(on.logits, off.logits), 0);
  t.true(on.s.prefetchedNeuronsPerToken > 0);
  t.true(on.s.lookaheadRecall! > 0.3, `recall ${on.s.lookaheadRecall}`);
});

test('a cache too small for the active set (overflow): prefetched neurons it cannot hold are computed from the prefetch, same argmax and logits within rounding', async (t) => {
  const f = (await files()).ahead!;
  const opts: OpenOptions = { strategy: 'window', sparsity: 'predictor', memory: '14.2M', direct: true };
  const off = await score(f.path, { ...opts, prefetch: false });
  const on = await score(f.path, opts);
  t.true(on.s.cacheOverflowPerToken! > 10, `overflow ${on.s.cacheOverflowPerToken}`);
  t.true(logitsDiff(on.logits, off.logits) < 1e-3);
  t.true(on.s.prefetchUseRate! > 0.3, `use ${on.s.prefetchUseRate}`);
});

test('the plan reserves a prefetch area only where something can name the next layer\'s neurons', async (t) => {
  const f = await files();
  const plan = async (input: string, opts: OpenOptions) => {
    const m = await openModel(input, { contextLength: 64, ...opts });
    try {
      return m.plan;
    } finally {
      await m.close();
    }
  };
  t.true((await plan(f.ahead!.path, { strategy: 'window', memory: MEMORY })).prefetchBytes > 0);
  t.is((await plan(f.ahead!.path, { strategy: 'window', memory: MEMORY, prefetch: false })).prefetchBytes, 0);
  t.true((await plan(f.ahead!.path, { strategy: 'hybrid' })).prefetchBytes > 0);
  t.is((await plan(f.ahead!.path, { strategy: 'naive' })).prefetchBytes, 0);
  // The uncalibrated fixture: window with the oracle has no predictor to look ahead with.
  const bare = served.place('bare.flm', await convertToBytes(OPT_DIR));
  t.is((await plan(bare.path, { strategy: 'window', memory: MEMORY })).prefetchBytes, 0);
});
