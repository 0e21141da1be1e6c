/**
 * The model and the timers of `npm run bench:decode`, shared with
 * `npm run bench:native` (which runs the same weights in llama.cpp): a random
 * llama2.c checkpoint of a realistic Llama shape (dim 768, 12 layers, hidden
 * 2048, vocab 512 with the stories260K tokenizer), cached in bench/.cache/
 * (git-ignored) with its .flm conversions, the prompts, and how a prompt and
 * a decode are timed through `model.steps()`.
 */
import { mkdir, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/convert/index.js';
import type { DType } from '../src/format/types.js';
import { writeFlm } from '../src/format/writer.js';
import { FileSink, type Model } from '../src/node.js';
import { STORIES_TOK } from '../test/helpers/models.js';
import { llama2cBytes, writeRandomLlama2c } from '../test/helpers/random-llama2c.js';

// ---------------------------------------------------------------- the model

export const SHAPE = { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 512, seqLen: 1024 };
export const SEED = 8;
export const CONTEXT = 1024;
export const CACHE = fileURLToPath(new URL('./.cache/', import.meta.url));
export const NAME = `llama-d${SHAPE.dim}-l${SHAPE.nLayers}-h${SHAPE.hiddenDim}-v${SHAPE.vocabSize}-s${SEED}`;
export const CKPT = `${CACHE}${NAME}.bin`;
export const flmPath = (dtype: DType) => `${CACHE}${NAME}.${dtype}.flm`;

const checkpointBytes = () => llama2cBytes(SHAPE);
const makeCheckpoint = () => writeRandomLlama2c(CKPT, SHAPE, SEED);

export const mtime = (p: string) => stat(p).then((s) => s.mtimeMs, () => -1);
export const sizeOf = (p: string) => stat(p).then((s) => s.size, () => -1);

export async function convert(dtype: DType): Promise<void> {
  const t0 = performance.now();
  const ckpt = await openCheckpoint(CKPT, { tokenizer: STORIES_TOK });
  const sink = await FileSink.create(flmPath(dtype));
  try {
    await writeFlm(ckpt, sink, { dtype, layout: 'bundled', meta: { source: `bench/decode.ts ${NAME}` } });
  } catch (e) {
    await sink.abort();
    throw e;
  } finally {
    await ckpt.close();
  }
  console.error(`converted to ${dtype}: ${((await sizeOf(flmPath(dtype))) / 2 ** 20).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

/** Makes the checkpoint if missing, and the .flm of each dtype if missing or older than it. */
export async function prepare(dtypes: readonly DType[]): Promise<void> {
  await mkdir(CACHE, { recursive: true });
  if ((await sizeOf(CKPT)) !== checkpointBytes()) {
    const t0 = performance.now();
    console.error(`making the random checkpoint ${CKPT} (${(checkpointBytes() / 2 ** 20).toFixed(0)} MiB) ...`);
    await makeCheckpoint();
    console.error(`made in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  const ckptTime = await mtime(CKPT);
  for (const d of dtypes) if ((await mtime(flmPath(d))) < ckptTime) await convert(d);
}

// ---------------------------------------------------------------- prompts

/** Public-domain English (the opening of Jerome K. Jerome's "Three Men in a Boat", 1889), repeated if a longer prompt is asked for. */
export const PARAGRAPH =
  'There were four of us - George, and William Samuel Harris, and myself, and Montmorency. We were sitting in my room, ' +
  'smoking, and talking about how bad we were - bad from a medical point of view I mean, of course. We were all feeling ' +
  'seedy, and we were getting quite nervous about it. Harris said he felt such extraordinary fits of giddiness come over ' +
  'him at times, that he hardly knew what he was doing; and then George said that he had fits of giddiness too, and ' +
  'hardly knew what he was doing. With me, it was my liver that was out of order. I knew it was my liver that was out ' +
  'of order, because I had just been reading a patent liver-pill circular, in which were detailed the various symptoms ' +
  'by which a man could tell when his liver was out of order. ';
export const DECODE_PROMPT = 'Once upon a time';

/** The longest prefix of the paragraph (repeated) that encodes to at most `n` tokens, BOS included. */
export function promptOf(model: Model, n: number): { text: string; tokens: number } {
  const count = (s: string) => model.tokenizer.encode(s).length;
  let text = PARAGRAPH;
  while (count(text) < n) text += PARAGRAPH;
  let lo = 1, hi = text.length; // count(text[0, lo)) <= n; count(text) >= n
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (count(text.slice(0, mid)) <= n) lo = mid;
    else hi = mid - 1;
  }
  const t = text.slice(0, lo).trimEnd();
  return { text: t, tokens: count(t) };
}

// ---------------------------------------------------------------- measuring

/** Seconds from calling steps() to its first yielded token (all prompt positions run by then). */
export async function timePrompt(model: Model, text: string | readonly number[]): Promise<number> {
  const t0 = performance.now();
  for await (const s of model.steps(text, { maxTokens: 1, temperature: 0 })) {
    if (s.token >= 0) return (performance.now() - t0) / 1000;
  }
  throw new Error('the prompt run yielded no token (the model emitted its stop token)');
}

/** Tokens yielded and seconds between the first and the last. */
export async function timeDecode(model: Model, text: string | readonly number[], maxTokens: number): Promise<{ tokens: number; seconds: number; ids: number[] }> {
  const at: number[] = [];
  const ids: number[] = [];
  for await (const s of model.steps(text, { maxTokens, temperature: 0 })) {
    if (s.token < 0) continue; // the decoder's flush at the end
    at.push(performance.now());
    ids.push(s.token);
  }
  if (at.length < 2) throw new Error(`decode yielded ${at.length} token(s)`);
  return { tokens: at.length, seconds: (at[at.length - 1]! - at[0]!) / 1000, ids };
}

export const median = (a: number[]) => {
  const s = [...a].sort((p, q) => p - q);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
export const round2 = (x: number) => Math.round(x * 100) / 100;
