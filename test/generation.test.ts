/**
 * Generation controls in the library: stop strings (text-level, nothing of a
 * stop string ever emitted, held-back text released when it turns out not to
 * match), finishReason, AbortError, the new sampling options through the
 * model, and KV-cache reuse (a prompt extending the last one computes only
 * the new tokens and gives exactly a fresh model's text).
 */
import test from 'ava';
import fc from 'fast-check';
import { openModel, AbortedError, FlashlmError } from '../src/node.js';
import { MemorySource } from '../src/source/memory.js';
import { StopMatcher } from '../src/engine/stop.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK, convertToBytes, optReference } from './helpers/models.js';

const stories = () => convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
const opt = () => convertToBytes(OPT_DIR);

test('StopMatcher: any split of any text gives the text before the first stop string, never a piece of one', (t) => {
  fc.assert(
    fc.property(
      fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\n'), maxLength: 40 }),
      fc.array(fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\n'), minLength: 1, maxLength: 4 }), { maxLength: 3 }),
      fc.array(fc.nat(40), { maxLength: 8 }),
      (text, stops, cuts) => {
        const m = new StopMatcher(stops);
        const at = [...new Set(cuts.map((c) => Math.min(c, text.length)))].sort((a, b) => a - b);
        const pieces: string[] = [];
        let prev = 0;
        for (const c of [...at, text.length]) {
          pieces.push(text.slice(prev, c));
          prev = c;
        }
        let out = '';
        let stopped = false;
        for (const p of pieces) {
          const r = m.push(p);
          out += r.text;
          // What is out so far never ends inside a stop string that the full text has at that place.
          if (r.stopped) {
            stopped = true;
            break;
          }
        }
        if (!stopped) out += m.flush();
        const first = Math.min(...stops.filter((s) => s).map((s) => (text.indexOf(s) < 0 ? Infinity : text.indexOf(s))), Infinity);
        const expected = first === Infinity ? text : text.slice(0, first);
        return out === expected && stopped === (first !== Infinity);
      },
    ),
    { numRuns: 2000, seed: 11 },
  );
  // held-back text comes out as soon as it cannot be a stop string
  const m = new StopMatcher(['END']);
  t.deepEqual(m.push('the E'), { text: 'the ', stopped: false });
  t.deepEqual(m.push('N'), { text: '', stopped: false });
  t.deepEqual(m.push('D!'), { text: '', stopped: true });
  const n = new StopMatcher(['END']);
  n.push('an E');
  t.deepEqual(n.push('ND'.slice(0, 1) + 'x'), { text: 'ENx', stopped: false });
});

test('stop strings through the model: the greedy text cut before the first stop; finishReason stop / length / context', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  try {
    const full = await model.complete('', { maxTokens: 120 });
    t.is(model.timings!.finishReason, 'length');
    for (const stop of ['Lily', 'park.', ' ', 'e', '\n', 'zzz']) {
      const text = await model.complete('', { maxTokens: 120, stop });
      const i = full.indexOf(stop);
      t.is(text, i < 0 ? full : full.slice(0, i), JSON.stringify(stop));
      t.is(model.timings!.finishReason, i < 0 ? 'length' : 'stop', JSON.stringify(stop));
    }
    const two = await model.complete('', { maxTokens: 120, stop: ['ball', 'red'] });
    t.is(two, full.slice(0, full.indexOf('red')));
    // steps never carry a piece of the stop string
    let joined = '';
    for await (const s of model.steps('', { maxTokens: 120, stop: 'big, red' })) {
      t.false(s.text.includes('big, red'));
      joined += s.text;
    }
    t.is(joined, full.slice(0, full.indexOf('big, red')));
  } finally {
    await model.close();
  }
  const small = await openModel(new MemorySource(await stories()), { contextLength: 16 });
  try {
    await small.complete('Once upon a time', { maxTokens: 100 });
    t.is(small.timings!.finishReason, 'context');
    t.is(small.timings!.promptTokens + small.timings!.tokens, 17);
  } finally {
    await small.close();
  }
});

test('abort: AbortedError named AbortError with code ABORTED; finishReason abort', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  try {
    const ctl = new AbortController();
    let n = 0;
    const e = await t.throwsAsync(async () => {
      for await (const _ of model.generate('Once', { maxTokens: 100, signal: ctl.signal })) if (++n === 3) ctl.abort();
    });
    t.true(e instanceof AbortedError && e instanceof FlashlmError);
    t.is(e!.name, 'AbortError');
    t.is((e as AbortedError).code, 'ABORTED');
    t.is(model.timings!.finishReason, 'abort');
    // stopping the iterator early is an abort too; the model is free again
    for await (const _ of model.generate('Once', { maxTokens: 100 })) break;
    t.is(model.timings!.finishReason, 'abort');
    t.truthy(await model.complete('Once', { maxTokens: 5 }));
  } finally {
    await model.close();
  }
});

test('sampling options reach the sampler: bad values are ArgumentErrors; a strong repeat penalty changes greedy text; topK 1 is greedy', async (t) => {
  const model = await openModel(new MemorySource(await stories()));
  try {
    const greedy = await model.complete('Once upon a time', { maxTokens: 60 });
    t.is(await model.complete('Once upon a time', { maxTokens: 60, temperature: 1.3, topK: 1, seed: 9 }), greedy);
    t.is(await model.complete('Once upon a time', { maxTokens: 60, temperature: 0.8, minP: 1, topP: 1, seed: 3 }), greedy);
    const penalised = await model.complete('Once upon a time', { maxTokens: 60, repeatPenalty: 3 });
    t.not(penalised, greedy);
    t.not(await model.complete('Once upon a time', { maxTokens: 60, frequencyPenalty: 2 }), greedy);
    // the same seed, the same text
    const o = { maxTokens: 40, temperature: 0.9, topK: 20, minP: 0.05, presencePenalty: 0.5, seed: 77 };
    t.is(await model.complete('Once', o), await model.complete('Once', o));
    await t.throwsAsync(model.complete('x', { topK: -1 }), { code: 'ARGUMENT', message: /topK/ });
    await t.throwsAsync(model.complete('x', { minP: 1.5 }), { code: 'ARGUMENT', message: /minP/ });
    await t.throwsAsync(model.complete('x', { stop: [3 as unknown as string] }), { code: 'ARGUMENT', message: /stop/ });
  } finally {
    await model.close();
  }
});

test('KV reuse: a prompt extending the last generation computes only the new tokens, and the text equals a fresh model\'s', async (t) => {
  const { ref } = optReference();
  for (const [name, bytes, batchSize] of [['stories', await stories(), 32], ['stories b=1', await stories(), 1], ['opt', await opt(), 8]] as const) {
    const model = await openModel(new MemorySource(bytes), { batchSize });
    const fresh = await openModel(new MemorySource(bytes), { batchSize });
    try {
      const p1 = name === 'opt' ? ref.prompt : 'Once upon a time, there was';
      const a1 = await model.complete(p1, { maxTokens: 20 });
      t.is(model.timings!.reusedTokens, 0);
      const p1ids = model.tokenizer.encode(p1);
      t.is(model.cachedTokens, p1ids.length + 19, 'the prompt and all generated tokens but the last are in the cache');
      // The next prompt: the first exchange and more text.
      const p2 = p1 + a1 + ' Then';
      const ids2 = model.tokenizer.encode(p2);
      const passes = model.stats.summary().tokens;
      const a2 = await model.complete(p2, { maxTokens: 30 });
      const tm = model.timings!;
      t.true(tm.reusedTokens >= p1ids.length, `${name}: reused ${tm.reusedTokens} of ${tm.promptTokens}`);
      // Token by token, every forward pass is counted: only the new prompt tokens and the decoded ones ran.
      if (batchSize === 1) t.is(model.stats.summary().tokens - passes, tm.promptTokens - tm.reusedTokens + tm.tokens - 1);
      t.is(tm.promptTokens, ids2.length);
      t.is(a2, await fresh.complete(p2, { maxTokens: 30 }), name);
      t.is(fresh.timings!.reusedTokens, 0);
      // The same prompt again reuses all but its last token; a different one reuses only what it shares.
      t.is(await model.complete(p2, { maxTokens: 30 }), a2);
      t.is(model.timings!.reusedTokens, ids2.length - 1);
      const other = await model.complete('Zebras', { maxTokens: 10 });
      t.true(model.timings!.reusedTokens <= 1);
      t.is(other, await fresh.complete('Zebras', { maxTokens: 10 }));
      // Teacher forcing rewrites the cache from 0: the next generation still matches.
      await model.forwardTokens(ids2.slice(0, 5), () => {});
      t.is(await model.complete(p2, { maxTokens: 30 }), a2);
      t.is(model.timings!.reusedTokens, 5);
    } finally {
      await model.close();
      await fresh.close();
    }
  }
});

test('KV reuse with a streaming strategy (hybrid, token by token) gives the dense text', async (t) => {
  const bytes = await opt();
  const { ref } = optReference();
  const model = await openModel(new MemorySource(bytes), { strategy: 'hybrid' });
  const dense = await openModel(new MemorySource(bytes));
  try {
    const a1 = await model.complete(ref.prompt, { maxTokens: 10 });
    const p2 = ref.prompt + a1 + ' and';
    const a2 = await model.complete(p2, { maxTokens: 10 });
    t.true(model.timings!.reusedTokens > 0);
    t.is(a2, await dense.complete(p2, { maxTokens: 10 }));
  } finally {
    await model.close();
    await dense.close();
  }
});
