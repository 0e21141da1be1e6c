/**
 * End to end on real weights: the dense engine must reproduce the external
 * references token for token (llama2.c's published stories260K output, the
 * PyTorch greedy continuation of the OPT fixture), and quantized files must
 * stay close to f32.
 */
import test from 'ava';
import { openModel, type Model, type OpenOptions } from '../src/node.js';
import { MemorySource } from '../src/source/memory.js';
import { AbortedError, ArgumentError, BudgetError } from '../src/errors.js';
import type { DType } from '../src/format/types.js';
import { chooseFfnTouch, type ResidentFfn } from '../src/engine/ffn.js';
import { Transformer } from '../src/engine/transformer.js';
import type { Kernels } from '../src/kernels/types.js';
import { OPT_DIR, STORIES_BIN, STORIES_GOLDEN, STORIES_TOK, convertToBytes, optReference } from './helpers/models.js';

const stories = (dtype: DType = 'f32', layout: 'bundled' | 'split' = 'bundled') => convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK, dtype, layout });
const opt = (dtype: DType = 'f32', layout: 'bundled' | 'split' = 'bundled') => convertToBytes(OPT_DIR, { dtype, layout });

test('stories260K: greedy from an empty prompt reproduces llama2.c, all 256 tokens', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  const ids: number[] = [];
  let text = '';
  for await (const step of model.steps('', { maxTokens: 256, temperature: 0 })) {
    if (step.token >= 0) ids.push(step.token);
    text += step.text;
  }
  await model.close();
  t.is(text, STORIES_GOLDEN);
  t.is(ids.length, 256);
});

test('stories260K: split layout generates the same as bundled', async (t) => {
  const model = await openModel(new MemorySource(await stories('f32', 'split')));
  t.is(await model.complete('', { maxTokens: 256 }), STORIES_GOLDEN);
  await model.close();
});

test('OPT fixture: greedy continuation equals the PyTorch reference', async (t) => {
  const { ref, lastLogits } = optReference();
  const model = await openModel(new MemorySource(await opt()));
  t.deepEqual(model.tokenizer.encode(ref.prompt), ref.prompt_ids);
  // Last-prompt-position logits against PyTorch's, then the 32 greedy ids.
  let last: Float32Array | undefined;
  await model.forwardTokens(ref.prompt_ids, (pos, logits) => {
    if (pos === ref.prompt_ids.length - 1) last = logits.slice();
  });
  let maxDiff = 0;
  for (let i = 0; i < lastLogits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(last![i]! - lastLogits[i]!));
  t.true(maxDiff < 1e-3, `max |logit - reference| = ${maxDiff}`);
  const top5 = [...last!.keys()].sort((a, b) => last![b]! - last![a]!).slice(0, 5);
  t.deepEqual(top5, ref.last_logits_top5);
  const ids: number[] = [];
  let text = '';
  for await (const s of model.steps(ref.prompt, { maxTokens: ref.n, temperature: 0 })) {
    if (s.token >= 0) ids.push(s.token);
    text += s.text;
  }
  t.deepEqual(ids, ref.greedy_ids);
  t.is(text, ref.text);
  await model.close();
});

/**
 * Closeness metric for quantized files: teacher-forced over the f32 model's
 * own greedy sequence, the share of positions whose argmax agrees with f32
 * (top-1 agreement), and the mean KL(f32 || quantized) of next-token distributions.
 */
async function agreement(ref: Uint8Array, other: Uint8Array, prompt: string, n: number, otherOptions: OpenOptions = {}) {
  const a = await openModel(new MemorySource(ref));
  const ids = a.tokenizer.encode(prompt);
  for await (const s of a.steps(prompt, { maxTokens: n })) if (s.token >= 0) ids.push(s.token);
  const refLogits: Float32Array[] = [];
  await a.forwardTokens(ids, (_, l) => refLogits.push(l.slice()));
  await a.close();
  const b = await openModel(new MemorySource(other), otherOptions);
  let agree = 0;
  let kl = 0;
  await b.forwardTokens(ids, (pos, l) => {
    const p = softmax(refLogits[pos]!);
    const q = softmax(l);
    if (argmax(refLogits[pos]!) === argmax(l)) agree++;
    for (let i = 0; i < p.length; i++) if (p[i]! > 0) kl += p[i]! * Math.log(p[i]! / Math.max(q[i]!, 1e-30));
  });
  await b.close();
  return { top1: agree / ids.length, meanKL: kl / ids.length };
}

function softmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  const out = new Float64Array(x.length);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += out[i] = Math.exp(x[i]! - m);
  for (let i = 0; i < x.length; i++) out[i]! /= s;
  return out;
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

for (const [dtype, minTop1, maxKL] of [['f16', 0.97, 0.01], ['int8', 0.9, 0.05]] as const) {
  test(`${dtype} files stay close to f32 (top-1 agreement, mean KL)`, async (t) => {
    const o = await agreement(await opt(), await opt(dtype), 'In the morning she', 96);
    const s = await agreement(await stories(), await stories(dtype), 'Once upon a time', 200);
    t.log(`OPT ${dtype}: top-1 ${(o.top1 * 100).toFixed(1)}%, mean KL ${o.meanKL.toExponential(2)}; stories ${dtype}: top-1 ${(s.top1 * 100).toFixed(1)}%, mean KL ${s.meanKL.toExponential(2)}`);
    for (const r of [o, s]) {
      t.true(r.top1 >= minTop1, `top-1 ${r.top1}`);
      t.true(r.meanKL <= maxKL, `mean KL ${r.meanKL}`);
    }
  });
}

test('an f16 KV cache: half the cache memory, close to f32 (top-1, KL), the same logits for any batch size or thread count', async (t) => {
  for (const [name, bytes, prompt, n] of [['OPT', await opt(), 'In the morning she', 96], ['stories', await stories(), 'Once upon a time', 200]] as const) {
    const r = await agreement(bytes, bytes, prompt, n, { kvDtype: 'f16' });
    t.log(`${name} f16 KV cache: top-1 ${(r.top1 * 100).toFixed(1)}%, mean KL ${r.meanKL.toExponential(2)}`);
    t.true(r.top1 >= 0.97, `top-1 ${r.top1}`);
    t.true(r.meanKL <= 0.01, `mean KL ${r.meanKL}`);
    const logits = async (o: OpenOptions) => {
      const m = await openModel(new MemorySource(bytes), { contextLength: 256, kvDtype: 'f16', ...o });
      const ids = m.tokenizer.encode(prompt.repeat(6));
      let last = new Float32Array(0);
      await m.forwardTokens(ids, (_, l) => (last = l.slice()));
      const cache = m.plan.workingBytes;
      await m.close();
      return { last, cache };
    };
    const one = await logits({ batchSize: 1, threads: 1 });
    const block = await logits({ batchSize: 32, threads: 2 });
    t.deepEqual(block.last, one.last, `${name}: blocks of 32 on 2 threads = token by token on 1`);
    const f32 = await openModel(new MemorySource(bytes), { contextLength: 256, batchSize: 1, threads: 1 });
    const a = f32.arch;
    t.is(f32.plan.workingBytes - one.cache, 2 * a.nLayers * 256 * a.nKvHeads * a.headDim * 2, 'half the cache (both keep a block of f32 K and V rows)');
    await f32.close();
  }
});

/** As agreement(), for several quantized files against one f32 reference over several prompts (positions pooled). */
async function agreementMany(ref: Uint8Array, others: Uint8Array[], prompts: readonly string[], n: number) {
  const sums = others.map(() => ({ agree: 0, kl: 0, total: 0 }));
  for (const prompt of prompts) {
    const a = await openModel(new MemorySource(ref));
    const ids = a.tokenizer.encode(prompt);
    for await (const s of a.steps(prompt, { maxTokens: n })) if (s.token >= 0) ids.push(s.token);
    const refLogits: Float32Array[] = [];
    await a.forwardTokens(ids, (_, l) => refLogits.push(l.slice()));
    await a.close();
    for (const [i, other] of others.entries()) {
      const b = await openModel(new MemorySource(other));
      const sum = sums[i]!;
      await b.forwardTokens(ids, (pos, l) => {
        const p = softmax(refLogits[pos]!);
        const q = softmax(l);
        if (argmax(refLogits[pos]!) === argmax(l)) sum.agree++;
        for (let j = 0; j < p.length; j++) if (p[j]! > 0) sum.kl += p[j]! * Math.log(p[j]! / Math.max(q[j]!, 1e-30));
      });
      sum.total += ids.length;
      await b.close();
    }
  }
  return sums.map((s) => ({ top1: s.agree / s.total, meanKL: s.kl / s.total, positions: s.total }));
}

const CLOSENESS_PROMPTS = ['Once upon a time', 'The little dog', 'Tom and Sue went to the park', 'One day, a big bird', 'She was very happy because', 'In the morning she', 'The sun was shining and', 'There was a boy named Tim'];

test('q8 files (int8, one scale per 32 weights) stay close to f32, at least as close as per-row int8 (8 prompts x 200 tokens)', async (t) => {
  for (const [name, file] of [['OPT', opt], ['stories', stories]] as const) {
    // one f32 reference per prompt, teacher-forced through both quantized files; positions pooled over
    // the prompts (a single prompt's ~200 positions make a one-position top-1 difference pure noise)
    const [row, q8] = await agreementMany(await file(), [await file('int8'), await file('q8')], CLOSENESS_PROMPTS, 200) as [Closeness, Closeness];
    t.log(`${name} (${q8.positions} positions): q8 top-1 ${(q8.top1 * 100).toFixed(2)}%, mean KL ${q8.meanKL.toExponential(2)}; per-row int8 top-1 ${(row.top1 * 100).toFixed(2)}%, mean KL ${row.meanKL.toExponential(2)}`);
    t.true(q8.top1 >= 0.9, `${name} q8 top-1 ${q8.top1}`);
    t.true(q8.meanKL <= 0.05, `${name} q8 mean KL ${q8.meanKL}`);
    t.true(q8.top1 >= row.top1, `${name}: q8 top-1 ${q8.top1} < per-row ${row.top1}`);
    t.true(q8.meanKL <= row.meanKL, `${name}: q8 mean KL ${q8.meanKL} > per-row ${row.meanKL}`);
  }
});
type Closeness = { top1: number; meanKL: number; positions: number };

test('sampling is reproducible with a seed and differs across seeds', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  const run = (seed: number) => model.complete('Once upon a time', { maxTokens: 60, temperature: 1, topP: 0.9, seed });
  const a = await run(42);
  t.is(await run(42), a);
  t.not(await run(43), a);
  t.true(a.length > 20);
  await model.close();
});

test('abort stops generation with AbortedError', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  const ctl = new AbortController();
  let n = 0;
  await t.throwsAsync(
    (async () => {
      for await (const _ of model.generate('', { signal: ctl.signal })) if (++n === 5) ctl.abort();
    })(),
    { instanceOf: AbortedError },
  );
  t.is(n, 5);
  await model.close();
});

test('the arena is fixed at the budget, and too small a budget is a BudgetError', async (t) => {
  const bytes = await opt();
  const model = await openModel(new MemorySource(bytes), { contextLength: 64 });
  const need = model.memory.usedBytes;
  t.true(model.memory.arenaBytes >= need);
  await model.close();
  const roomy = await openModel(new MemorySource(bytes), { contextLength: 64, memory: 64 << 20 });
  t.is(roomy.memory.arenaBytes, 64 << 20);
  await roomy.close();
  await t.throwsAsync(openModel(new MemorySource(bytes), { memory: '4M' }), { instanceOf: BudgetError, message: /needs \d+\.\d MiB, the budget is 4\.00 MiB/ });
  await t.throwsAsync(openModel(new MemorySource(bytes), { contextLength: 100000 }), { instanceOf: ArgumentError });
});

test('generation stops at the context length', async (t) => {
  const model = await openModel(new MemorySource(await stories()), { contextLength: 10 });
  let n = 0;
  for await (const s of model.steps('', { maxTokens: 100 })) if (s.token >= 0) n++;
  t.is(n, 10); // one token from each of the 10 positions (BOS at 0)
  await model.close();
});

/** The logits the engine holds after its last forward pass (a copy). */
const lastLogits = (m: Model) => (m as unknown as { transformer: { logitsView: Float32Array } }).transformer.logitsView.slice();

test('batched prefill equals token-by-token: same last-prompt logits bit for bit, same greedy text (both fixtures, every dtype)', async (t) => {
  const prose = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends and her big red ball.';
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as DType[]) {
    for (const [name, bytes, prompt] of [['stories', await stories(dtype), prose], ['OPT', await opt(dtype), optReference().ref.prompt + ' ' + prose]] as const) {
      const results: { ids: number[]; logits: Float32Array }[] = [];
      for (const batchSize of [1, 7, 32]) {
        const model = await openModel(new MemorySource(bytes), { batchSize, contextLength: 128 });
        t.is(model.plan.batch, batchSize);
        const ids: number[] = [];
        let logits: Float32Array | undefined;
        for await (const s of model.steps(prompt, { maxTokens: 12, temperature: 0 })) {
          logits ??= lastLogits(model); // before the first token is fed back: the prompt's last logits
          if (s.token >= 0) ids.push(s.token);
        }
        t.true(model.timings!.promptTokens > 20, `${name}: a prompt longer than the blocks`);
        results.push({ ids, logits: logits! });
        await model.close();
      }
      for (const r of results.slice(1)) {
        t.deepEqual(r.ids, results[0]!.ids, `${name} ${dtype}: greedy ids`);
        t.deepEqual(new Uint32Array(r.logits.buffer), new Uint32Array(results[0]!.logits.buffer), `${name} ${dtype}: logits bits`);
      }
    }
  }
});

test('batchSize outside [1, 1024] is an ArgumentError; streaming strategies take it, and give prompt blocks up under a tight budget', async (t) => {
  const bytes = await stories();
  await t.throwsAsync(openModel(new MemorySource(bytes), { batchSize: 0 }), { instanceOf: ArgumentError });
  await t.throwsAsync(openModel(new MemorySource(bytes), { batchSize: 1.5 }), { instanceOf: ArgumentError });
  const m = await openModel(new MemorySource(bytes), { strategy: 'hybrid', batchSize: 16 });
  t.is(m.plan.batch, 16);
  await m.close();
  const roomy = await openModel(new MemorySource(bytes), { strategy: 'window', memory: '64M' });
  t.is(roomy.plan.batch, 32);
  await roomy.close();
  // 400 KB beyond what one token at a time needs: a block's activation rows would take more than an eighth of it.
  const one = await openModel(new MemorySource(bytes), { strategy: 'window', batchSize: 1 });
  const tight = await openModel(new MemorySource(bytes), { strategy: 'window', memory: one.plan.residentBytes + one.plan.workingBytes + 400_000 });
  t.is(tight.plan.batch, 1);
  await one.close();
  await tight.close();
});

test('onProgress reports the weights loaded at open: rising to the resident part (streaming) or the whole model (dense)', async (t) => {
  const bytes = await opt();
  for (const strategy of ['dense', 'hybrid'] as const) {
    const seen: { loaded: number; total: number }[] = [];
    const model = await openModel(new MemorySource(bytes), { strategy, onProgress: (p) => seen.push(p) });
    const want = model.plan.residentBytes + (strategy === 'dense' ? model.plan.ffnBytes : 0);
    t.true(seen.length >= (strategy === 'dense' ? 2 : 1), `${strategy}: a report per section read (or per piece of one)`);
    t.true(seen.every((p, i) => p.total === want && p.loaded > (i ? seen[i - 1]!.loaded : 0)), `${strategy}: rising, out of ${want}`);
    t.is(seen.at(-1)!.loaded, want, `${strategy}: ends at the total`);
    await model.close();
  }
});

test('chooseFfnTouch keeps the FFN record touch only where it times faster, and leaves the kernels set that way', (t) => {
  // A clock that advances by what each run costs: 10 ms a run without the touch, `withTouch` with it (a little jitter).
  const run = (withTouch: number) => {
    let clock = 0, on = 0, i = 0;
    const k = { ffn_touch_set: (v: number) => { on = v; }, ffn_touch: () => on } as unknown as Kernels;
    const chose = chooseFfnTouch(k, () => { clock += (on ? withTouch : 10) + (i++ % 3) * 0.1; }, 7, () => clock);
    return { chose, on };
  };
  t.deepEqual(run(7), { chose: true, on: 1 }, '30% faster with the touch: on');
  t.deepEqual(run(14), { chose: false, on: 0 }, 'slower with it: off');
  t.deepEqual(run(9.8), { chose: false, on: 0 }, 'within 5%: off (no gain worth the loads)');
});

test.serial('a dense model times its FFN touch at open (same tokens either way); streaming strategies leave it off', async (t) => {
  const bytes = await opt();
  // Count the timing runs at open: withFfnInput is where Model.open hands the resident FFN its input (serial: no other test opens a model meanwhile).
  const proto = Transformer.prototype;
  const original = proto.withFfnInput;
  let timed = 0;
  proto.withFfnInput = function <T>(this: Transformer, f: (x: number, out: number) => T): T {
    timed++;
    return original.call(this, f) as T;
  };
  let dense: Model;
  try {
    dense = await openModel(new MemorySource(bytes), { strategy: 'dense' });
    t.is(timed, 1, 'dense: timed once at open');
    t.is(typeof dense.ffnTouch, 'boolean');
    const hybrid0 = await openModel(new MemorySource(bytes), { strategy: 'hybrid' });
    t.is(timed, 1, 'hybrid: not timed');
    await hybrid0.close();
  } finally {
    proto.withFfnInput = original;
  }
  const greedy = async (m: Model) => {
    const ids: number[] = [];
    for await (const s of m.steps('Hello', { maxTokens: 12, temperature: 0 })) ids.push(s.token);
    return ids;
  };
  const tokens = await greedy(dense);
  await dense.close();
  const hybrid = await openModel(new MemorySource(bytes), { strategy: 'hybrid' });
  t.false(hybrid.ffnTouch);
  t.deepEqual(await greedy(hybrid), tokens);
  await hybrid.close();
});

test('denseLayout: rows (the default for SiLU-gated dense models) stays close to records, which give the streamed bits; OPT (relu) keeps records; bad values are ArgumentErrors', async (t) => {
  const prose = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';
  const run = async (bytes: Uint8Array, options: OpenOptions) => {
    const model = await openModel(new MemorySource(bytes), { contextLength: 128, ...options });
    const ids: number[] = [];
    let logits: Float32Array | undefined;
    for await (const s of model.steps(prose, { maxTokens: 24, temperature: 0 })) {
      logits ??= lastLogits(model);
      if (s.token >= 0) ids.push(s.token);
    }
    const plan = model.plan;
    await model.close();
    return { ids, logits: logits!, plan };
  };
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as DType[]) {
    const bytes = await stories(dtype);
    const rows = await run(bytes, {});
    const records = await run(bytes, { denseLayout: 'records' });
    const hybrid = await run(bytes, { strategy: 'hybrid' });
    t.is(rows.plan.denseLayout, 'rows');
    t.is(records.plan.denseLayout, 'records');
    t.is(hybrid.plan.denseLayout, null);
    // on top: the activations (ffnDim f32), and batched-kernel scratch as wide as ffnDim (the down matrix's columns)
    t.true(rows.plan.batchScratchBytes > records.plan.batchScratchBytes);
    t.is(rows.plan.arenaBytes - records.plan.arenaBytes, 4 * records.plan.neurons + rows.plan.workingBytes - records.plan.workingBytes, dtype);
    t.deepEqual(rows.ids, records.ids, `${dtype}: greedy ids`);
    let worst = 0, scale = 0;
    for (let i = 0; i < rows.logits.length; i++) {
      worst = Math.max(worst, Math.abs(rows.logits[i]! - records.logits[i]!));
      scale = Math.max(scale, Math.abs(records.logits[i]!));
    }
    t.true(worst > 0 && worst < 1e-4 * scale, `${dtype}: logits differ by ${worst} of ${scale} (rounding only)`);
    t.deepEqual(new Uint32Array(records.logits.buffer), new Uint32Array(hybrid.logits.buffer), `${dtype}: records = the streamed bits`);
    t.deepEqual(records.ids, hybrid.ids);
  }
  const relu = await run(await opt(), {});
  t.is(relu.plan.denseLayout, 'records', 'ReLU: records, whose down pass skips the zeros');
  await t.throwsAsync(openModel(new MemorySource(await stories()), { denseLayout: 'columns' as 'rows' }), { instanceOf: ArgumentError, message: /denseLayout must be rows or records/ });
});

test('f16Checked: a dense f16 model checks its weights finite at open (then the kernels skip the inf/NaN detection); an inf weight, streaming or f32 leave it off', async (t) => {
  const open = async (bytes: Uint8Array, options: OpenOptions = {}) => {
    const model = await openModel(new MemorySource(bytes), { contextLength: 64, ...options });
    const checked = model.f16Checked;
    const text = await model.complete('Once upon a time', { maxTokens: 8 });
    await model.close();
    return { checked, text };
  };
  const f16 = await stories('f16');
  const dense = await open(f16);
  t.true(dense.checked);
  t.is((await open(f16, { denseLayout: 'records' })).checked, true);
  const hybrid = await open(f16, { strategy: 'hybrid' });
  t.false(hybrid.checked);
  t.is(hybrid.text, (await open(f16, { denseLayout: 'records' })).text, 'the same text with and without the check');
  t.false((await open(await stories('f32'))).checked);
  // the scans at open find one inf anywhere: the converter refuses non-finite weights, so it is put in the arena
  for (const denseLayout of ['rows', 'records'] as const) {
    const model = await openModel(new MemorySource(f16), { contextLength: 64, denseLayout });
    const tr = (model as unknown as { transformer: Transformer & { ffn: ResidentFfn & Record<string, unknown>; layers: { wq: { ptr: number }; wo: { ptr: number; rows: number; cols: number } }[] } }).transformer;
    const ffn = tr.ffn;
    const mem = new DataView(tr.arena.memory.buffer);
    const at: [string, number, () => boolean][] = [['wq', tr.layers[0]!.wq.ptr + 6, () => tr.f16Finite()], ['wo', tr.layers[1]!.wo.ptr + 2 * (tr.layers[1]!.wo.rows * tr.layers[1]!.wo.cols - 1), () => tr.f16Finite()]];
    const rows = ffn['rows'] as ({ gate: number; up: number; D: number } | null)[];
    const parts = ffn['partPtrs'] as number[][];
    if (denseLayout === 'rows') at.push(['gate', rows[1]!.gate + 10, () => ffn.f16Finite()], ['up', rows[0]!.up + 4, () => ffn.f16Finite()], ['D', rows[2]!.D + 2 * 999, () => ffn.f16Finite()]);
    else at.push(['down part', parts[3]![2]! + 8, () => ffn.f16Finite()]);
    for (const [what, ptr, finite] of at) {
      t.true(finite(), `${denseLayout} ${what}: finite as loaded`);
      const saved = mem.getUint16(ptr, true);
      mem.setUint16(ptr, 0xfc00, true);
      t.false(finite(), `${denseLayout}: an inf in ${what} is found`);
      mem.setUint16(ptr, saved, true);
    }
    await model.close();
  }
});
