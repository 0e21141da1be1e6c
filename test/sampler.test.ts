/**
 * The sampler's optional controls — top-k, min-p, llama.cpp's repeat penalty
 * over the last N tokens, OpenAI's presence and frequency penalties — against
 * a straightforward TypeScript reference (f64 softmax, a full sort) on fixed
 * seeded logits: the same token for every draw, over many vocabularies,
 * options and seeds. With the new options off the sampler is the one
 * test/hot-path.test.ts checks token for token.
 */
import test from 'ava';
import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import { Arena } from '../src/engine/arena.js';
import { Sampler, samplingOptionsError, type SamplingOptions } from '../src/engine/sampler.js';
import { rng } from '../src/util/random.js';

/** llama2.c's xorshift64* in BigInt (the sampler's generator, written plainly). */
function xorshift(seed: number): () => number {
  let s = BigInt.asUintN(64, BigInt(Math.floor(seed))) || 0x2545f4914f6cdd1dn;
  return () => {
    s ^= s >> 12n;
    s ^= BigInt.asUintN(64, s << 25n);
    s ^= s >> 27n;
    const u = Number(BigInt.asUintN(64, s * 0x2545f4914f6cdd1dn) >> 32n);
    return (u >>> 8) / 16777216;
  };
}

/** The reference: one draw, from the logits and the token history, written as the definitions read. */
function reference(logits: Float32Array, o: SamplingOptions, prompt: number[], generated: number[], coinOf: () => number): number {
  const V = logits.length;
  const l = Array.from(logits);
  // llama.cpp: each distinct token among the last repeatLastN (prompt and generated) once.
  const rp = o.repeatPenalty ?? 1;
  if (rp !== 1) {
    const all = [...prompt, ...generated];
    const lastN = o.repeatLastN ?? 64;
    for (const t of new Set(all.slice(Math.max(0, all.length - lastN)))) l[t] = l[t]! <= 0 ? l[t]! * rp : l[t]! / rp;
  }
  // OpenAI: mu[j] -= c[j] * frequency + (c[j] > 0) * presence, c over generated tokens.
  const c = new Map<number, number>();
  for (const t of generated) c.set(t, (c.get(t) ?? 0) + 1);
  for (const [t, n] of c) l[t] = l[t]! - n * (o.frequencyPenalty ?? 0) - (o.presencePenalty ?? 0);
  const temp = o.temperature ?? 0;
  if (temp <= 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (l[i]! > l[best]!) best = i;
    return best;
  }
  const max = Math.max(...l);
  const e = l.map((x) => Math.exp((x - max) / temp));
  const z = e.reduce((a, b) => a + b, 0);
  const p = e.map((x) => x / z);
  const coin = coinOf();
  const k = o.topK ?? 0;
  const topP = o.topP ?? 0.9;
  const filtered = (k > 0 && k < V) || (o.minP ?? 0) > 0 || (topP > 0 && topP < 1);
  // Unfiltered, the draw walks the ids in order (llama2.c's); filtered, the candidates most probable first.
  let order = filtered ? [...p.keys()].sort((a, b) => p[b]! - p[a]! || a - b) : [...p.keys()];
  if (k > 0 && k < V) order = order.slice(0, k);
  if (topP > 0 && topP < 1) {
    const total = k > 0 && k < V ? order.reduce((a, t) => a + p[t]!, 0) : 1;
    let cum = 0;
    for (let i = 0; i < order.length; i++) {
      cum += p[order[i]!]!;
      if (cum > topP * total) {
        order = order.slice(0, i + 1);
        break;
      }
    }
  }
  const minP = o.minP ?? 0;
  if (minP > 0) {
    const floor = minP * p[order[0]!]!;
    order = order.filter((t) => p[t]! >= floor);
  }
  const kept = order.reduce((a, t) => a + p[t]!, 0);
  let cdf = 0;
  for (const t of order) {
    cdf += p[t]!;
    if (coin * kept < cdf) return t;
  }
  return order[order.length - 1]!;
}


let kernels: Kernels;
let ptr = 0;
let view: Float32Array;
test.before(async () => {
  const memory = createArena(4 << 20);
  kernels = await loadKernels(memory);
  const arena = new Arena(memory, kernels.heap_base());
  ptr = arena.alloc('logits', 40000 * 4);
  view = arena.f32(ptr, 40000);
});

const OPTION_SETS: SamplingOptions[] = [
  { temperature: 0.8, topK: 1 },
  { temperature: 1, topK: 5, topP: 1 },
  { temperature: 0.7, topK: 40, topP: 0.9 },
  { temperature: 1.2, topK: 3, topP: 0.5 },
  { temperature: 1, minP: 0.05, topP: 1 },
  { temperature: 0.9, minP: 0.2, topP: 0.95 },
  { temperature: 1, topK: 20, minP: 0.1, topP: 0.8 },
  { temperature: 0, repeatPenalty: 1.3 },
  { temperature: 0, repeatPenalty: 2, repeatLastN: 4 },
  { temperature: 0, presencePenalty: 1.5 },
  { temperature: 0, frequencyPenalty: 0.8, presencePenalty: -0.2 },
  { temperature: 0.8, topP: 0.9, repeatPenalty: 1.1, repeatLastN: 16 },
  { temperature: 1, topK: 10, presencePenalty: 0.6, frequencyPenalty: 0.4 },
  { temperature: 1, repeatPenalty: 0.8, presencePenalty: 2, frequencyPenalty: 1, topP: 1 },
];

test('each control draws the reference token for every step, seed and vocabulary', (t) => {
  const rand = rng(11);
  let draws = 0;
  for (const vocab of [3, 17, 512, 4096]) {
    for (const [i, base] of OPTION_SETS.entries()) {
      for (const seed of [1, 42, 2 ** 40 + i]) {
        const opts = { ...base, seed };
        const prompt = Array.from({ length: 30 }, () => Math.floor(rand() * Math.min(vocab, 40)));
        const s = new Sampler(kernels, vocab, opts, prompt);
        const coin = xorshift(seed);
        const generated: number[] = [];
        const logits = new Float32Array(vocab);
        for (let step = 0; step < 20; step++) {
          // Peaked on the few tokens the history holds, so the penalties matter.
          for (let j = 0; j < vocab; j++) logits[j] = (rand() - 0.5) * 6 + (j < 40 ? 3 : 0);
          view.set(logits);
          const a = s.sample(ptr, view);
          const b = reference(logits, opts, prompt, generated, coin);
          if (a !== b) return t.fail(`vocab ${vocab} ${JSON.stringify(opts)} step ${step}: ${a} != ${b}`);
          s.accept(a);
          generated.push(a);
          draws++;
        }
      }
    }
  }
  t.log(`${draws} draws compared`);
  t.is(draws, 4 * OPTION_SETS.length * 3 * 20);
});

test('the controls do what they say on a hand-made distribution', (t) => {
  const V = 8;
  const put = (xs: number[]) => view.set(xs);
  // top-k 2 never draws the third token, however many draws.
  const s = new Sampler(kernels, V, { temperature: 1, topK: 2, topP: 1, seed: 5 });
  const seen = new Set<number>();
  for (let i = 0; i < 400; i++) {
    put([3, 2.9, 2.8, 0, 0, 0, 0, 0]);
    seen.add(s.sample(ptr, view));
  }
  t.deepEqual([...seen].sort(), [0, 1]);
  // min-p 0.5 keeps tokens at least half as probable as the best: 0 and 1 (e^-0.5 ≈ 0.61), not 2 (e^-1).
  const m = new Sampler(kernels, V, { temperature: 1, minP: 0.5, topP: 1, seed: 5 });
  seen.clear();
  for (let i = 0; i < 400; i++) {
    put([3, 2.5, 2, 0, 0, 0, 0, 0]);
    seen.add(m.sample(ptr, view));
  }
  t.deepEqual([...seen].sort(), [0, 1]);
  // repeat penalty: the prompt's token 0 (logit 3 → 1.5) loses to token 1 (2.5); outside the window it does not.
  put([3, 2.5, 0, 0, 0, 0, 0, 0]);
  t.is(new Sampler(kernels, V, { repeatPenalty: 2 }, [0, 7]).sample(ptr, view), 1);
  put([3, 2.5, 0, 0, 0, 0, 0, 0]);
  t.is(new Sampler(kernels, V, { repeatPenalty: 2, repeatLastN: 1 }, [0, 7]).sample(ptr, view), 0);
  // presence and frequency count generated tokens only (not the prompt).
  const f = new Sampler(kernels, V, { frequencyPenalty: 0.3 }, [0, 0, 0]);
  put([3, 2.5, 0, 0, 0, 0, 0, 0]);
  t.is(f.sample(ptr, view), 0);
  f.accept(0);
  put([3, 2.5, 0, 0, 0, 0, 0, 0]);
  t.is(f.sample(ptr, view), 0, '3 - 0.3 > 2.5');
  f.accept(0);
  put([3, 2.5, 0, 0, 0, 0, 0, 0]);
  t.is(f.sample(ptr, view), 1, '3 - 0.6 < 2.5');
});

test('options are range-checked', (t) => {
  t.is(samplingOptionsError({ temperature: 0.7, topK: 40, minP: 0.05, repeatPenalty: 1.1 }), undefined);
  t.regex(samplingOptionsError({ topK: 1.5 })!, /topK/);
  t.regex(samplingOptionsError({ minP: 2 })!, /minP/);
  t.regex(samplingOptionsError({ topP: -1 })!, /topP/);
  t.regex(samplingOptionsError({ repeatPenalty: 0 })!, /repeatPenalty/);
  t.regex(samplingOptionsError({ presencePenalty: NaN })!, /presencePenalty/);
  t.regex(samplingOptionsError({ temperature: '1' as unknown as number })!, /temperature/);
});
