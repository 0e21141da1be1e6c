/**
 * End-to-end prompt processing and decode speed of a Llama-shaped model of
 * realistic size (issue #8): dim 768, 12 layers, 12 heads (12 kv heads),
 * hidden 2048, vocab 512, seq_len 1024 — about 85M parameters, 340 MB at f32.
 *
 *   npm run bench:decode -- [--dtypes f32,f16,int8,q8,q4] [--threads 1,2]
 *        [--prompt-tokens 186] [--decode-tokens 64] [--decode-context 0] [--rounds 3]
 *        [--simd auto|plain|relaxed] [--versus DIR]
 *
 * --simd: the kernels build (default auto: relaxed SIMD where the runtime has
 * it; on Node 20 bench/relaxed-simd.ts turns on V8's flag for it); each row
 * says which build ran.
 *
 * The model is a random llama2.c checkpoint (run.c's format, shared
 * classifier), made once from a seeded PRNG (normal * 0.02, norms = 1) with
 * the stories260K tokenizer and cached in bench/.cache/ (git-ignored), then
 * converted there to .flm at each dtype (redone when the checkpoint is newer).
 * Token 1 (BOS, llama2.c's stop token) gets a tiny embedding row, so that its
 * logit is never the greedy argmax and decoding never stops early. (Greedy
 * decoding of a random model with a tied classifier repeats one token; the
 * dense engine does the same work whatever the token, so that does not matter.)
 *
 * For each dtype × thread count it opens the .flm with
 * `openModel(path, { contextLength: 1024 })` (the dense strategy: all weights
 * resident), warms up once, then runs `rounds` rounds of:
 *   - prompt: `model.steps(prompt, { maxTokens: 1, temperature: 0 })` on a
 *     fixed English paragraph trimmed to --prompt-tokens tokens (BOS included);
 *     prompt tok/s = prompt tokens / time from the call to its first yielded step.
 *   - decode: `model.steps('Once upon a time', { maxTokens: N, temperature: 0 })`;
 *     decode tok/s = (tokens - 1) / time between the first and last yielded token.
 *     --decode-context C: after "Once upon a time. " and the paragraph, ~C tokens in
 *     all, so each token attends over ~C cached positions (a long chat; that prompt's
 *     prefill is not timed).
 * and reports medians. Prints a table, then one line of JSON.
 *
 * --versus DIR: another build of the kernels (a wasm/ directory, e.g. of an
 * older commit: `git worktree add /tmp/old <rev> && (cd /tmp/old && npm install
 * && npm run build:wasm)`, then `--versus /tmp/old/wasm`), or a whole checkout
 * (a directory with src/node.ts and a built wasm/: `--versus /tmp/old`), whose
 * own openModel then runs in this process, for changes to the host too. Each
 * row also opens the model with that build, alternates the two round by round
 * (this build, then that one), and prints this build's speed over that one's:
 * the median of the per-round ratios, so load that comes and goes hits both alike.
 *
 * Threads: each row opens the model with `{ threads: n }` and reports what
 * `model.threading` says ran (a fallback to one thread is noted with its reason),
 * and its prompt and decode speed-ups over the same dtype's one-thread row.
 */
import { simdOption } from './relaxed-simd.js';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FormatError } from '../src/errors.js';
import type { DType } from '../src/format/types.js';
import { relaxedSimdSupported } from '../src/kernels/load.js';
import { openModel, type Model, type OpenOptions } from '../src/node.js';
import { arg, intArg } from './args.js';
import { CONTEXT, convert, DECODE_PROMPT, flmPath, median, NAME, prepare, promptOf, round2, SEED, SHAPE, sizeOf, timeDecode, timePrompt } from './decode-model.js';

// ---------------------------------------------------------------- arguments


const ALL_DTYPES: readonly DType[] = ['f32', 'f16', 'int8', 'q8', 'q4'];
const dtypes = (arg('dtypes') ?? ALL_DTYPES.join(',')).split(',').map((s) => s.trim()).filter(Boolean) as DType[];
for (const d of dtypes) if (!ALL_DTYPES.includes(d)) throw new Error(`--dtypes: unknown dtype ${d} (${ALL_DTYPES.join(', ')})`);
const cores = os.availableParallelism();
const threadCounts = (arg('threads') ?? Array.from({ length: cores }, (_, i) => i + 1).join(','))
  .split(',')
  .map((s) => Number(s.trim()));
for (const n of threadCounts) if (!Number.isInteger(n) || n < 1) throw new Error(`--threads: ${n} is not a positive integer`);
const promptTokens = intArg('prompt-tokens', 186, 2);
const decodeTokens = intArg('decode-tokens', 64, 2);
const decodeContext = intArg('decode-context', 0, 0);
if (decodeContext + decodeTokens > CONTEXT) throw new Error(`--decode-context ${decodeContext} + --decode-tokens ${decodeTokens} exceed the model's context of ${CONTEXT}`);
const rounds = intArg('rounds', 3, 1);
const versusDir = arg('versus');

/** openModel options for the --versus kernels: that directory's build of the kind this run loads. */
async function versusKernels(dir: string): Promise<Pick<OpenOptions, 'wasm' | 'wasmThreads'>> {
  const relaxed = simdOption === 'relaxed' || (simdOption === 'auto' && relaxedSimdSupported());
  const file = (name: string) => readFile(join(resolve(dir), name)).catch(() => {
    throw new Error(`--versus: no ${name} in ${dir} (run npm run build:wasm there)`);
  });
  return { wasm: await file(relaxed ? 'flashlm.relaxed.wasm' : 'flashlm.wasm'), wasmThreads: await file(relaxed ? 'flashlm.mt.relaxed.wasm' : 'flashlm.mt.wasm') };
}
type Open = (path: string, opts: OpenOptions) => Promise<Model>;
/** --versus a checkout: its own openModel (its host code and its wasm/). */
const versusCheckout = versusDir !== undefined && existsSync(join(resolve(versusDir), 'src', 'node.ts'));

/** How --versus DIR opens a model: the checkout's openModel, or this one's with DIR's kernels. */
async function versusOpener(dir: string): Promise<Open> {
  if (versusCheckout) return ((await import(pathToFileURL(join(resolve(dir), 'src', 'node.ts')).href)) as { openModel: Open }).openModel;
  const kernels = await versusKernels(dir);
  return (path, opts) => openModel(path, { ...opts, ...kernels });
}
const versusOpen = versusDir === undefined ? undefined : await versusOpener(versusDir);

interface Row {
  dtype: DType;
  threads: number;
  fileMiB: number;
  arenaMiB: number;
  openS: number;
  promptTokens: number;
  decodeTokens: number;
  promptTokS: number;
  decodeTokS: number;
  promptOverDecode: number;
  /** The kernels build that ran (model.simd). */
  kernels: string;
  /** Whether the FFN kernels touched each next batch of records (model.ffnTouch: timed at open). */
  ffnTouch: boolean;
  rounds: { promptTokS: number; decodeTokS: number }[];
  /** --versus: that build's medians, and this build's speed over it (median of per-round ratios). */
  versus?: { promptTokS: number; decodeTokS: number; promptRatio: number; decodeRatio: number };
}

const wall0 = performance.now();
const load0 = os.loadavg();
await prepare(dtypes);

const rows: Row[] = [];
const notes: string[] = [];
for (const dtype of dtypes) {
  for (const n of threadCounts) {
    const t0 = performance.now();
    let model: Model;
    try {
      model = await openModel(flmPath(dtype), { contextLength: CONTEXT, threads: n, simd: simdOption });
    } catch (e) {
      if (!(e instanceof FormatError)) throw e;
      console.error(`${flmPath(dtype)}: ${e.message}; converting again`); // e.g. written by an older format version
      await convert(dtype);
      model = await openModel(flmPath(dtype), { contextLength: CONTEXT, threads: n, simd: simdOption });
    }
    const openS = (performance.now() - t0) / 1000;
    let vmodel: Model | undefined;
    try {
      if (versusOpen) vmodel = await versusOpen(flmPath(dtype), { contextLength: CONTEXT, threads: n, simd: simdOption });
      const threads = model.threading.threads;
      if (threads !== n) notes.push(`${dtype}: asked for ${n} thread(s), ran ${threads}: ${model.threading.fallbackReason ?? 'no reason given'}`);

      const prompt = promptOf(model, promptTokens);
      // a long decode prompt starts as DECODE_PROMPT does, so neither prompt reuses the other's cached positions
      const decodeText = decodeContext > 0 ? `${DECODE_PROMPT}. ${promptOf(model, Math.max(2, decodeContext - model.tokenizer.encode(`${DECODE_PROMPT}. `).length + 1)).text}` : DECODE_PROMPT;
      // warm-up: one round of each, not counted
      for (const m of vmodel ? [model, vmodel] : [model]) {
        await timePrompt(m, prompt.text);
        await timeDecode(m, decodeText, decodeTokens);
      }

      const rs: Row['rounds'] = [], vs: Row['rounds'] = [];
      let decoded = 0;
      for (let r = 0; r < rounds; r++) {
        const p = await timePrompt(model, prompt.text);
        const d = await timeDecode(model, decodeText, decodeTokens);
        decoded = d.tokens;
        if (d.tokens < decodeTokens) notes.push(`${dtype} t${threads}: decode stopped after ${d.tokens} of ${decodeTokens} tokens`);
        rs.push({ promptTokS: prompt.tokens / p, decodeTokS: (d.tokens - 1) / d.seconds });
        if (vmodel) {
          const vp = await timePrompt(vmodel, prompt.text);
          const vd = await timeDecode(vmodel, decodeText, decodeTokens);
          vs.push({ promptTokS: prompt.tokens / vp, decodeTokS: (vd.tokens - 1) / vd.seconds });
        }
      }
      const promptTokS = median(rs.map((x) => x.promptTokS));
      const decodeTokS = median(rs.map((x) => x.decodeTokS));
      const row: Row = {
        dtype,
        threads,
        fileMiB: round2((await sizeOf(flmPath(dtype))) / 2 ** 20),
        arenaMiB: round2(model.memory.arenaBytes / 2 ** 20),
        openS: round2(openS),
        promptTokens: prompt.tokens,
        decodeTokens: decoded,
        promptTokS: round2(promptTokS),
        decodeTokS: round2(decodeTokS),
        promptOverDecode: round2(promptTokS / decodeTokS),
        kernels: model.simd,
        ffnTouch: model.ffnTouch,
        rounds: rs.map((x) => ({ promptTokS: round2(x.promptTokS), decodeTokS: round2(x.decodeTokS) })),
        ...(vmodel ? {
          versus: {
            promptTokS: round2(median(vs.map((x) => x.promptTokS))),
            decodeTokS: round2(median(vs.map((x) => x.decodeTokS))),
            promptRatio: round2(median(rs.map((x, i) => x.promptTokS / vs[i]!.promptTokS))),
            decodeRatio: round2(median(rs.map((x, i) => x.decodeTokS / vs[i]!.decodeTokS))),
          },
        } : {}),
      };
      rows.push(row);
      console.error(`${dtype} t${threads} ${model.simd}: prompt ${row.promptTokS} tok/s, decode ${row.decodeTokS} tok/s`);
    } finally {
      await model.close();
      await vmodel?.close();
    }
  }
}

// ---------------------------------------------------------------- report

const wallS = (performance.now() - wall0) / 1000;
const load1 = os.loadavg();
const cpu = os.cpus()[0]?.model ?? 'unknown';
const r0 = rows[0];
console.log(
  `decode: ${NAME} (~85M params, dense), context ${CONTEXT}; prompt ${r0?.promptTokens ?? promptTokens} tokens, ` +
    `decode ${decodeTokens} tokens after ${decodeContext > 0 ? `a ${decodeContext}-token prompt` : `"${DECODE_PROMPT}"`}, median of ${rounds} round(s)`,
);
console.log(`machine: ${cpu}, ${cores} cores, node ${process.version}; load average ${load0[0]!.toFixed(2)} -> ${load1[0]!.toFixed(2)}`);
const pad = (s: string | number, w: number) => String(s).padStart(w);
// speed-up over the same dtype's one-thread row (issue #8's target: 2 threads >= 1.6x on decode)
const speedup = (r: Row, key: 'promptTokS' | 'decodeTokS'): number | null => {
  const one = rows.find((o) => o.dtype === r.dtype && o.threads === 1 && o.kernels === r.kernels);
  return one ? round2(r[key] / one[key]) : null;
};
const times = (v: number | null) => (v === null ? '-' : `${v.toFixed(2)}x`);
const vsHead = versusDir === undefined ? '' : ` | versus: prompt  decode  prompt ÷  decode ÷`;
console.log(`${'dtype'.padEnd(5)} ${pad('threads', 7)} ${pad('prompt tok/s', 12)} ${pad('decode tok/s', 12)} ${pad('prompt÷decode', 13)} ${pad('prompt÷1t', 9)} ${pad('decode÷1t', 9)}  kernels${vsHead}`);
for (const r of rows) {
  const v = r.versus ? ` | ${pad(r.versus.promptTokS.toFixed(1), 14)} ${pad(r.versus.decodeTokS.toFixed(1), 7)} ${pad(times(r.versus.promptRatio), 9)} ${pad(times(r.versus.decodeRatio), 9)}` : '';
  console.log(`${r.dtype.padEnd(5)} ${pad(r.threads, 7)} ${pad(r.promptTokS.toFixed(2), 12)} ${pad(r.decodeTokS.toFixed(2), 12)} ${pad(r.promptOverDecode.toFixed(2), 13)} ${pad(times(speedup(r, 'promptTokS')), 9)} ${pad(times(speedup(r, 'decodeTokS')), 9)}  ${r.kernels}${r.ffnTouch ? '+touch' : ''}${v}`);
}
if (versusDir !== undefined) console.log(`versus: ${versusCheckout ? 'the checkout' : 'the kernels'} in ${versusDir}, alternated round by round; ÷ = this build's speed over that one's (median of per-round ratios)`);
for (const note of new Set(notes)) console.log(`note: ${note}`);
// The benchmark itself adds about 1 to the load average (one busy thread); more than that is someone else.
if (load0[0]! > cores / 2 || load1[0]! > cores / 2 + 1) {
  console.log(`note: the machine was busy (load average ${load0[0]!.toFixed(2)} at start, ${load1[0]!.toFixed(2)} at the end, ${cores} cores): figures are noisy`);
}
console.log(
  JSON.stringify({
    bench: 'decode',
    model: { ...SHAPE, seed: SEED, name: NAME, contextLength: CONTEXT, strategy: 'dense' },
    promptTokens: r0?.promptTokens ?? promptTokens,
    decodeTokens,
    decodeContext,
    rounds,
    threadsRequested: threadCounts,
    ...(versusDir === undefined ? {} : { versus: versusDir }),
    machine: { node: process.version, cpu, cores, totalMemMiB: Math.round(os.totalmem() / 2 ** 20), loadavg: [round2(load0[0]!), round2(load1[0]!)] },
    wallS: round2(wallS),
    results: rows.map((r) => ({ ...r, promptSpeedup: speedup(r, 'promptTokS'), decodeSpeedup: speedup(r, 'decodeTokS') })),
    notes: [...new Set(notes)],
  }),
);
