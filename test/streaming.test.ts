/**
 * Flash streaming on real weights: every strategy, reading neurons from
 * memory, a file and nginx over HTTP, must generate exactly the dense
 * engine's tokens when it knows the true active sets (oracle), stay inside
 * its memory budget, and the window strategy must read a small fraction of
 * the FFN per token.
 */
import test from 'ava';
import { isDeepStrictEqual } from 'node:util';
import { openModel, type OpenOptions, type Strategy } from '../src/node.js';
import { openCheckpoint } from '../src/convert/index.js';
import { openFlm } from '../src/format/reader.js';
import { writeWithPredictors, type LayerPredictor } from '../src/format/rewrite.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { BudgetError, IntegrityError, SourceError } from '../src/errors.js';
import type { Source } from '../src/source/types.js';
import type { TokenStats } from '../src/flash/stats.js';
import { servedDir } from './helpers/served-dir.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK, convertToBytes, optReference } from './helpers/models.js';

const { place } = servedDir('flashlm-stream-');

const fixtures = {
  opt: { bytes: (layout: 'bundled' | 'split' = 'bundled') => convertToBytes(OPT_DIR, { layout }), prompt: optReference().ref.prompt, n: 24 },
  stories: { bytes: (layout: 'bundled' | 'split' = 'bundled') => convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK, layout }), prompt: 'Once upon a time', n: 48 },
} as const;

async function greedy(input: Parameters<typeof openModel>[0], opts: OpenOptions, prompt: string, n: number) {
  const model = await openModel(input, { contextLength: 128, ...opts });
  const ids: number[] = [];
  for await (const s of model.steps(prompt, { maxTokens: n })) if (s.token >= 0) ids.push(s.token);
  const summary = model.stats.summary();
  const mem = model.memory;
  await model.close();
  return { ids, summary, mem };
}

const STREAMING: Strategy[] = ['naive', 'hybrid', 'predictor', 'window'];

for (const [name, fx] of Object.entries(fixtures)) {
  for (const layout of ['bundled', 'split'] as const) {
    test(`${name} ${layout}: every strategy with the oracle equals dense, from memory, a file and HTTP`, async (t) => {
      const bytes = await fx.bytes(layout);
      const dense = await greedy(new MemorySource(bytes), { strategy: 'dense' }, fx.prompt, fx.n);
      t.is(dense.ids.length, fx.n);
      const { path, url } = place(`${name}-${layout}.flm`, bytes);
      for (const strategy of STREAMING) {
        for (const [where, input] of [['memory', new MemorySource(bytes)], ['file', path], ['http', url]] as const) {
          const r = await greedy(input, { strategy, sparsity: 'oracle' }, fx.prompt, fx.n);
          t.deepEqual(r.ids, dense.ids, `${strategy} from ${where}`);
          t.true(r.summary.bytesPerToken > 0, `${strategy} from ${where} read nothing`);
        }
      }
    });
  }
}

test('prompt blocks: every strategy reads the union of a block\'s neurons once, with the same tokens as one prompt token at a time', async (t) => {
  const bytes = await fixtures.opt.bytes();
  const prompt = fixtures.opt.prompt.repeat(3);
  /** Bytes the source served, while the model opened, prefilled and generated. */
  const run = async (opts: OpenOptions) => {
    const src = new MemorySource(bytes);
    let read = 0;
    const counting: Source = {
      name: src.name,
      size: src.size,
      identity: src.identity,
      read: (o, into) => ((read += into.byteLength), src.read(o, into)),
      close: () => src.close(),
    };
    const r = await greedy(counting, opts, prompt, 8);
    return { ids: r.ids, read };
  };
  const dense = await run({ strategy: 'dense' });
  for (const strategy of STREAMING) {
    for (const sparsity of strategy === 'naive' || strategy === 'hybrid' ? ([undefined] as const) : (['oracle'] as const)) {
      const one = await run({ strategy, sparsity, batchSize: 1 });
      const block = await run({ strategy, sparsity });
      t.deepEqual(one.ids, dense.ids, `${strategy} token by token`);
      t.deepEqual(block.ids, dense.ids, `${strategy} in prompt blocks`);
      t.log(`${strategy}: ${(one.read / 2 ** 20).toFixed(1)} MiB token by token, ${(block.read / 2 ** 20).toFixed(1)} MiB in blocks`);
      t.true(block.read < one.read, `${strategy}: blocks read ${block.read} bytes, token by token ${one.read}`);
    }
  }
});

test('q8 files (group scales inside every record): every strategy with the oracle equals dense, bundled and split', async (t) => {
  for (const [name, input, prompt, n] of [['opt', OPT_DIR, optReference().ref.prompt, 24], ['stories', STORIES_BIN, 'Once upon a time', 48]] as const) {
    for (const layout of ['bundled', 'split'] as const) {
      const bytes = await convertToBytes(input, { tokenizer: name === 'stories' ? STORIES_TOK : undefined, layout, dtype: 'q8' });
      const dense = await greedy(new MemorySource(bytes), { strategy: 'dense' }, prompt, n);
      t.is(dense.ids.length, n);
      for (const strategy of STREAMING) {
        const r = await greedy(new MemorySource(bytes), { strategy, sparsity: 'oracle' }, prompt, n);
        t.deepEqual(r.ids, dense.ids, `${name} ${layout} ${strategy}`);
      }
    }
  }
});

test('window: reads well under 10% of the FFN per token on the OPT fixture, with cache hits', async (t) => {
  const bytes = await fixtures.opt.bytes();
  const { ref } = optReference();
  const model = await openModel(new MemorySource(bytes), { strategy: 'window', sparsity: 'oracle', window: 4 });
  await model.complete(ref.prompt, { maxTokens: 96 });
  // Skip the prompt: the window warms up on it.
  const s = model.stats.summary(model.stats.tokens.slice(ref.prompt_ids.length));
  await model.close();
  t.log(`window 4: FFN read ${(100 * s.ffnFractionPerToken).toFixed(2)}% per token, hit rate ${(100 * s.cacheHitRate!).toFixed(1)}%, ${s.requestsPerToken.toFixed(1)} requests/token`);
  t.true(s.ffnFractionPerToken < 0.1);
  // A budget that fits every neuron: the window alone decides what stays.
  const roomy = await openModel(new MemorySource(bytes), { strategy: 'window', sparsity: 'oracle', window: 4, memory: '256M' });
  t.is(roomy.plan.capacity, roomy.plan.neurons);
  await roomy.complete(ref.prompt, { maxTokens: 48 });
  t.is(roomy.stats.summary().cacheLruEvictionsPerToken, 0, 'a full-size cache never evicts early');
  await roomy.close();
  t.true(s.cacheHitRate! > 0.3);
  const hybrid = await greedy(new MemorySource(bytes), { strategy: 'hybrid' }, ref.prompt, 8);
  t.true(hybrid.summary.ffnFractionPerToken > 0.99, 'hybrid reads the whole FFN');
});

test('window under a tight budget degrades (LRU, overflow) but stays exact, and never exceeds the arena', async (t) => {
  const bytes = await fixtures.opt.bytes();
  const { ref } = optReference();
  const dense = await greedy(new MemorySource(bytes), { strategy: 'dense' }, ref.prompt, 24);
  const file = await openFlm(new MemorySource(bytes));
  const resident = file.section('resident').length;
  const f = file.header.ffn[0]!;
  const record = f.parts.length * f.partBytes;
  // Room for roughly 40 neurons per layer beyond the fixed part: far below the window's needs.
  // Prompt blocks of 32 asked for explicitly (a tight budget would give them up): their union overflows the cache too.
  const probe = await openModel(new MemorySource(bytes), { strategy: 'window', sparsity: 'oracle', contextLength: 128, batchSize: 32 });
  const fixed = probe.plan.arenaBytes - probe.plan.cacheBytes - probe.plan.stagingBytes;
  await probe.close();
  const staging = 4 * record + 8192;
  const budget = fixed + staging + 40 * (record + 8) * file.header.arch.nLayers;
  const model = await openModel(new MemorySource(bytes), { strategy: 'window', sparsity: 'oracle', contextLength: 128, memory: budget, stagingBytes: staging, batchSize: 32 });
  t.is(model.memory.arenaBytes, Math.ceil(budget / 65536) * 65536);
  t.true(model.memory.usedBytes <= model.memory.arenaBytes);
  t.true(model.plan.capacity < 60, `capacity ${model.plan.capacity}`);
  const ids: number[] = [];
  for await (const s of model.steps(ref.prompt, { maxTokens: 24 })) if (s.token >= 0) ids.push(s.token);
  t.deepEqual(ids, dense.ids);
  t.true(resident > 0);
  const c = model.cacheCounters()!;
  t.log(`capacity ${model.plan.capacity}/${model.plan.neurons}: ${c.lruEvictions} LRU evictions, ${c.overflows} overflow neurons`);
  t.true(c.lruEvictions > 0 && c.overflows > 0, 'the degraded paths ran');
  // ...and the run stats say so
  const sum = model.stats.summary();
  t.true(sum.cacheLruEvictionsPerToken! > 0 && sum.cacheOverflowPerToken! > 0);
  t.true(c.used.every((u) => u <= model.plan.capacity));
  await model.close();
});

test('a budget below the resident part is refused with a clear BudgetError', async (t) => {
  const bytes = await fixtures.opt.bytes();
  await t.throwsAsync(openModel(new MemorySource(bytes), { strategy: 'window', sparsity: 'oracle', memory: '3M' }), {
    instanceOf: BudgetError,
    message: /resident part alone does not fit/,
  });
  await t.throwsAsync(openModel(new MemorySource(bytes), { strategy: 'dense', memory: '6M' }), { instanceOf: BudgetError, message: /dense strategy/ });
});

/**
 * A predictor a test can write without training: rank d with A = I and
 * B = W_up, bias = b_up, threshold 0 predicts exactly the ReLU-active set.
 */
async function exactPredictors(): Promise<LayerPredictor[]> {
  const ckpt = await openCheckpoint(OPT_DIR);
  const { dModel: d, ffnDim: n, nLayers } = ckpt.arch;
  const a = new Float32Array(d * d);
  for (let i = 0; i < d; i++) a[i * d + i] = 1;
  const out: LayerPredictor[] = [];
  for (let l = 0; l < nLayers; l++) {
    out.push({ rank: d, threshold: 0, a, b: await ckpt.readRows(`layers.${l}.ffn_up`, 0, n), bias: await ckpt.readRows(`layers.${l}.ffn_up_bias`, 0, n) });
  }
  await ckpt.close();
  return out;
}

test('predictor and window strategies use the file\'s predictor; recall/precision are measured', async (t) => {
  const bytes = await fixtures.opt.bytes();
  const sink = new MemorySink();
  await writeWithPredictors(await openFlm(new MemorySource(bytes)), await exactPredictors(), sink);
  const withPred = sink.bytes();
  const { ref } = optReference();
  const dense = await greedy(new MemorySource(bytes), { strategy: 'dense' }, ref.prompt, 24);
  for (const strategy of ['predictor', 'window'] as const) {
    const r = await greedy(new MemorySource(withPred), { strategy, measurePredictor: true }, ref.prompt, 24);
    t.deepEqual(r.ids, dense.ids, strategy);
    t.true(r.summary.predictorRecall! > 0.99, `recall ${r.summary.predictorRecall}`);
    t.true(r.summary.predictorPrecision! > 0.99, `precision ${r.summary.predictorPrecision}`);
    t.is(r.summary.sparsity, 'predictor');
  }
  // Without the oracle the predictor's quality is not known.
  const plain = await greedy(new MemorySource(withPred), { strategy: 'predictor' }, ref.prompt, 4);
  t.is(plain.summary.predictorRecall, null);
  await t.throwsAsync(openModel(new MemorySource(bytes), { strategy: 'predictor', sparsity: 'predictor' }), { message: /no predictors/ });
});

test('a long window generation keeps RunStats bounded: running averages over every token, only the recent ones kept', async (t) => {
  const bytes = await fixtures.stories.bytes();
  const model = await openModel(new MemorySource(bytes), { strategy: 'window', contextLength: 512 });
  const yielded: TokenStats[] = [];
  let seed = 1;
  while (model.stats.count < 2600) {
    for await (const s of model.steps('', { maxTokens: 500, temperature: 1, seed: seed++ })) if (s.stats) yielded.push(s.stats);
  }
  const stats = model.stats;
  const cap = stats.capacity;
  t.true(stats.count > 2 * cap, `${stats.count} tokens`);
  t.is(stats.retained, cap, 'retained token count stays at the ring size');
  const recent = stats.tokens;
  t.is(recent.length, cap);
  t.is(stats.summary().tokens, stats.count, 'the averages cover every token');
  // the per-step items are the tokens' own numbers (each a separate object), and the ring holds the same numbers
  // (the last forward pass of a generation is not yielded: its token hit a stop or maxTokens)
  const last = yielded[yielded.length - 1]!;
  t.true(recent.slice(-3).some((r) => isDeepStrictEqual(r, last)));
  t.is(new Set(yielded).size, yielded.length);
  const tail = yielded.slice(-200);
  t.true(tail.every((s) => s.cacheLookups > 0 && s.ms > 0));
  await model.close();
});

/** A source over `bytes` whose reads after `arm()` can fail or be corrupted; with or without readInto. */
function faultySource(bytes: Uint8Array, withReadInto: boolean, fault: (n: number, offset: number, into: Uint8Array, at: number, length: number) => void) {
  const inner = new MemorySource(bytes);
  let armed = false;
  let n = 0;
  const src = {
    name: 'faulty',
    size: inner.size,
    identity: inner.identity,
    arm: () => (armed = true),
    async read(offset: number, into: Uint8Array) {
      await inner.read(offset, into);
      if (armed) fault(n++, offset, into, 0, into.byteLength);
    },
    async close() {},
  } as Source & { arm(): boolean };
  if (withReadInto) {
    src.readInto = async (offset: number, into: Uint8Array, at: number, length: number) => {
      await inner.readInto(offset, into, at, length);
      if (armed) fault(n++, offset, into, at, length);
    };
  }
  return src;
}

for (const layout of ['bundled', 'split'] as const) {
  for (const withReadInto of [true, false]) {
    test(`window (${layout}, ${withReadInto ? 'readInto' : 'read'}): a failed read or a corrupted record stops generation with that error`, async (t) => {
      const bytes = await fixtures.stories.bytes(layout);
      const unhandled: unknown[] = [];
      const onUnhandled = (e: unknown) => unhandled.push(e);
      process.on('unhandledRejection', onUnhandled);
      try {
        // A read rejects (the 3rd after arming) while others are in flight.
        const failing = faultySource(bytes, withReadInto, (n) => {
          if (n === 2) throw new SourceError('injected read failure');
        });
        const a = await openModel(failing, { strategy: 'window', contextLength: 128, stagingBytes: 16384 });
        failing.arm();
        await t.throwsAsync(a.complete('Once upon a time', { maxTokens: 20 }), { instanceOf: SourceError, message: /injected/ });
        await a.close();
        // A byte of a streamed FFN record flips.
        const file = await openFlm(new MemorySource(bytes));
        const ffn = file.header.ffn.map((f) => file.section(f.section));
        const corrupt = faultySource(bytes, withReadInto, (n, offset, into, at, length) => {
          for (const s of ffn) {
            const lo = Math.max(offset, s.offset);
            const hi = Math.min(offset + length, s.offset + s.length);
            if (lo < hi) into[at + (lo - offset) + Math.floor((hi - lo) / 2)]! ^= 0x10;
          }
        });
        const b = await openModel(corrupt, { strategy: 'window', contextLength: 128 });
        corrupt.arm();
        await t.throwsAsync(b.complete('Once upon a time', { maxTokens: 20 }), { instanceOf: IntegrityError, message: /hash/ });
        await b.close();
        await new Promise((r) => setTimeout(r, 20));
        t.deepEqual(unhandled, []);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });
  }
}
