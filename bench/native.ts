/**
 * flashlm against native llama.cpp (issue #8) on the same weights: the random
 * llama2.c checkpoint of `npm run bench:decode` (bench/decode-model.ts: dim 768,
 * 12 layers, hidden 2048, vocab 512, ~85M parameters), run by flashlm from its
 * .flm conversions and by llama.cpp's CPU build (node-llama-cpp) from GGUF files
 * written by bench/gguf.ts.
 *
 *   npm run bench:native -- [--dtypes f32,f16,q8,int8] [--threads 1,2]
 *        [--prompt-tokens 186] [--decode-tokens 64] [--check-tokens 128] [--rounds 3]
 *        [--simd auto|plain|relaxed]   (flashlm's kernels build: bench/relaxed-simd.ts)
 *
 * Pairs: flashlm f32 / GGUF F32, f16 / F16, q8 (one f32 scale per 32 weights) /
 * Q8_0 (one f16 scale per 32), and flashlm's int8 (one scale per row) / Q8_0.
 *
 * node-llama-cpp is not a dependency of the project: the first run installs
 * node-llama-cpp@3.21.1 and its prebuilt CPU binaries for this platform into
 * bench/.cache/native (git-ignored; optional GPU packages left out, ~85 MB),
 * and loads it with `gpu: false, build: 'never'`: it never builds from source
 * nor downloads anything at run time.
 *
 * Correctness first: stories260K (a trained model, so wrong RoPE pairing, head
 * grouping or vocabulary would show) greedy from BOS in both engines must give
 * the same tokens; then on the bench model, native F32 must give flashlm f32's
 * greedy tokens (--check-tokens of them) and first token after the long prompt;
 * and, teacher-forced over the long prompt, the same most likely next token at
 * every position with next-token probabilities within 1e-3 (that comparison is
 * printed for every pair: f16/F16 and q8/Q8_0 are near, not bit-equal, formats).
 * It prints how many of the greedy tokens F16/Q8_0 (native) and f16/q8/int8
 * (flashlm) share with their engine's f32 run. A failed check is printed as
 * PROBLEM and makes the exit code 1 (the timings are still reported).
 *
 * Timing, for each pair and thread count, interleaved (flashlm, native,
 * flashlm, native, ...) after one warm-up of each, medians of --rounds rounds;
 * both engines get the same token ids:
 *   - prompt: the ~186-token paragraph of bench:decode; tokens / time to the
 *     first generated token (flashlm: `model.steps(ids, { maxTokens: 1 })`;
 *     native: `sequence.evaluate(ids)` after `clearHistory()`, batch 512).
 *     flashlm keeps the KV entry of BOS from the previous run (its prefix
 *     reuse), so it computes one position fewer: under 1%.
 *   - decode: greedy after 'Once upon a time'; (tokens - 1) / time between the
 *     first and the last generated token.
 * Prints a table with flashlm ÷ native per row and one JSON line, and writes
 * the JSON to bench/results/native.json.
 */
// first: on Node 20 it turns on relaxed SIMD (flashlm's relaxed-SIMD kernels; --simd plain keeps them off)
import { simdOption } from './relaxed-simd.js';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { openCheckpoint } from '../src/convert/index.js';
import type { DType } from '../src/format/types.js';
import { MemorySource, openModel, type Model } from '../src/node.js';
import { convertToBytes, STORIES_BIN, STORIES_TOK } from '../test/helpers/models.js';
import { arg, intArg } from './args.js';
import {
  CACHE, CKPT, CONTEXT, DECODE_PROMPT, flmPath, PARAGRAPH, median, mtime, NAME, prepare, promptOf, round2, SEED, SHAPE, sizeOf, timeDecode, timePrompt,
} from './decode-model.js';
import { writeGguf, type GgufType } from './gguf.js';

// ---------------------------------------------------------------- arguments

const PAIRS: Record<string, GgufType> = { f32: 'F32', f16: 'F16', q8: 'Q8_0', int8: 'Q8_0' };
const dtypes = (arg('dtypes') ?? 'f32,f16,q8,int8').split(',').map((s) => s.trim()).filter(Boolean) as DType[];
for (const d of dtypes) if (!(d in PAIRS)) throw new Error(`--dtypes: ${d} has no llama.cpp counterpart here (${Object.keys(PAIRS).join(', ')})`);
const threadCounts = (arg('threads') ?? '1,2').split(',').map((s) => Number(s.trim()));
for (const n of threadCounts) if (!Number.isInteger(n) || n < 1) throw new Error(`--threads: ${n} is not a positive integer`);
const promptTokens = intArg('prompt-tokens', 186, 2);
const decodeTokens = intArg('decode-tokens', 64, 2);
const checkTokens = intArg('check-tokens', 128, 2);
const rounds = intArg('rounds', 3, 1);
const cores = os.availableParallelism();

// ---------------------------------------------------------------- node-llama-cpp, on demand

const NLC_VERSION = '3.21.1';
const NATIVE_DIR = `${CACHE}native/`;
/** The prebuilt CPU binaries' package for this platform (node-llama-cpp's optional dependencies). */
function binaryPackage(): string {
  const p = process.platform, a = process.arch;
  const name = p === 'linux' ? `linux-${a}` : p === 'darwin' ? (a === 'arm64' ? 'mac-arm64-metal' : 'mac-x64') : p === 'win32' ? `win-${a}` : null;
  if (!name) throw new Error(`node-llama-cpp has no prebuilt binaries for ${p}-${a}`);
  return `@node-llama-cpp/${name}`;
}

async function installedVersion(pkg: string): Promise<string | null> {
  try {
    return (JSON.parse(await readFile(`${NATIVE_DIR}node_modules/${pkg}/package.json`, 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

/** Installs node-llama-cpp (CPU binaries only) into bench/.cache/native unless it is there; returns its module URL. */
async function ensureNodeLlamaCpp(): Promise<string> {
  const bin = binaryPackage();
  if ((await installedVersion('node-llama-cpp')) !== NLC_VERSION || (await installedVersion(bin)) !== NLC_VERSION) {
    await mkdir(NATIVE_DIR, { recursive: true });
    const args = ['install', '--prefix', NATIVE_DIR, '--no-save', '--omit=optional', '--no-audit', '--no-fund', '-E', `node-llama-cpp@${NLC_VERSION}`, `${bin}@${NLC_VERSION}`];
    console.error(`installing node-llama-cpp ${NLC_VERSION} (${bin}) into ${NATIVE_DIR} ...`);
    // NODE_LLAMA_CPP_SKIP_DOWNLOAD: its postinstall (if npm runs it) must not fetch or build llama.cpp.
    const code = await new Promise<number | null>((resolve, reject) => {
      const p = spawn('npm', args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' } });
      p.on('error', reject);
      p.on('exit', resolve);
    });
    if (code !== 0 || (await installedVersion('node-llama-cpp')) !== NLC_VERSION) throw new Error(`npm ${args.join(' ')} failed (exit ${code})`);
  }
  return pathToFileURL(`${NATIVE_DIR}node_modules/node-llama-cpp/dist/index.js`).href;
}

/** The parts of node-llama-cpp's API used here (it is loaded at run time, from outside the project's dependencies). */
interface NlcSequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], options?: { temperature?: number }): AsyncGenerator<number, void, void | number | number[]>;
  controlledEvaluate(input: [number, { generateNext: { probabilities: true } }][]): Promise<({ next: { probabilities?: Map<number, number> } } | undefined)[]>;
}
interface NlcContext {
  getSequence(): NlcSequence;
  readonly currentThreads: number;
  dispose(): Promise<void>;
}
interface NlcModel {
  createContext(options: { contextSize: number; threads: number; batchSize?: number }): Promise<NlcContext>;
  tokenize(text: string): number[];
  dispose(): Promise<void>;
}
interface NlcLlama {
  loadModel(options: { modelPath: string; gpuLayers?: number }): Promise<NlcModel>;
  readonly gpu: string | false;
  readonly buildType: string;
  readonly cpuMathCores: number;
  readonly llamaCppRelease: { repo: string; release: string };
  readonly systemInfo: string;
  dispose(): Promise<void>;
}

// ---------------------------------------------------------------- files

const GGUF_SRC = fileURLToPath(new URL('./gguf.ts', import.meta.url));
const ggufPath = (type: GgufType) => `${CACHE}${NAME}.${type}.gguf`;
const STORIES_GGUF = `${CACHE}stories260K.F32.gguf`;

/** Writes the GGUF unless a newer one than both the checkpoint and the writer is there. */
async function ensureGguf(ckptPath: string, tokenizer: string, out: string, type: GgufType, name: string): Promise<void> {
  if ((await mtime(out)) > Math.max(await mtime(ckptPath), await mtime(GGUF_SRC))) return;
  const t0 = performance.now();
  const ckpt = await openCheckpoint(ckptPath, { tokenizer });
  try {
    await writeGguf(ckpt, out, { type, name });
  } finally {
    await ckpt.close();
  }
  console.error(`wrote ${out}: ${((await sizeOf(out)) / 2 ** 20).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

// ---------------------------------------------------------------- native timing

/** Seconds from evaluate() to its first generated token, and that token. */
async function nativePrompt(seq: NlcSequence, ids: number[]): Promise<{ seconds: number; token: number }> {
  await seq.clearHistory();
  const t0 = performance.now();
  const it = seq.evaluate(ids, { temperature: 0 });
  const r = await it.next();
  const seconds = (performance.now() - t0) / 1000;
  await it.return();
  if (r.done) throw new Error('native: the prompt run yielded no token');
  return { seconds, token: r.value };
}

/** Greedy tokens (up to maxTokens) and seconds between the first and the last. */
async function nativeDecode(seq: NlcSequence, ids: number[], maxTokens: number): Promise<{ tokens: number; seconds: number; ids: number[] }> {
  await seq.clearHistory();
  const at: number[] = [];
  const out: number[] = [];
  for await (const token of seq.evaluate(ids, { temperature: 0 })) {
    at.push(performance.now());
    out.push(token);
    if (out.length >= maxTokens) break;
  }
  if (at.length < 2) throw new Error(`native decode yielded ${at.length} token(s)`);
  return { tokens: at.length, seconds: (at[at.length - 1]! - at[0]!) / 1000, ids: out };
}

/** flashlm's greedy tokens (its stop token ends the run early). */
async function flashGreedy(model: Model, ids: readonly number[], n: number): Promise<number[]> {
  const out: number[] = [];
  for await (const s of model.steps(ids, { maxTokens: n, temperature: 0 })) if (s.token >= 0) out.push(s.token);
  return out;
}

/** How many leading tokens two runs share. */
const agree = (a: readonly number[], b: readonly number[]) => {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
};

/** Next-token probabilities after each prompt position (teacher-forced), as the engine computes them. */
type Teacher = Float32Array[];

async function nativeTeacher(seq: NlcSequence, ids: number[], vocab: number): Promise<Teacher> {
  await seq.clearHistory();
  const out = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }]));
  return ids.map((_, i) => {
    const p = new Float32Array(vocab);
    for (const [t, v] of out[i]?.next.probabilities ?? []) p[t] = v;
    return p;
  });
}

async function flashTeacher(model: Model, ids: number[]): Promise<Teacher> {
  const out: Teacher = [];
  await model.forwardTokens(ids, (_, logits) => {
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    const p = new Float32Array(logits.length);
    let sum = 0;
    for (let i = 0; i < p.length; i++) sum += p[i] = Math.exp(logits[i]! - max);
    for (let i = 0; i < p.length; i++) p[i]! /= sum;
    out.push(p);
  });
  return out;
}

const argmax = (p: Float32Array) => {
  let best = 0;
  for (let i = 1; i < p.length; i++) if (p[i]! > p[best]!) best = i;
  return best;
};

/** Positions whose most likely next token is the same, and the largest probability difference anywhere. */
function compareTeacher(a: Teacher, b: Teacher): { positions: number; sameArgmax: number; maxAbsDiffP: number } {
  let same = 0, maxd = 0;
  for (let i = 0; i < a.length; i++) {
    if (argmax(a[i]!) === argmax(b[i]!)) same++;
    for (let t = 0; t < a[i]!.length; t++) maxd = Math.max(maxd, Math.abs(a[i]![t]! - b[i]![t]!));
  }
  return { positions: a.length, sameArgmax: same, maxAbsDiffP: Number(maxd.toPrecision(3)) };
}

// ---------------------------------------------------------------- run

const wall0 = performance.now();
const load0 = os.loadavg();
const ggufTypes = [...new Set(dtypes.map((d) => PAIRS[d]!))];
await prepare(dtypes);
for (const t of ggufTypes) await ensureGguf(CKPT, STORIES_TOK, ggufPath(t), t, NAME);
await ensureGguf(STORIES_BIN, STORIES_TOK, STORIES_GGUF, 'F32', 'stories260K');

const nlc = (await import(await ensureNodeLlamaCpp())) as { getLlama(options: Record<string, unknown>): Promise<NlcLlama> };
// CPU only, the prebuilt binary or nothing; no thread cap, so a context's `threads` is what runs.
const llama = await nlc.getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, skipDownload: true, maxThreads: 0, progressLogs: false, logLevel: 'error' });
const nativeInfo = { version: NLC_VERSION, llamaCpp: llama.llamaCppRelease.release, buildType: llama.buildType, gpu: llama.gpu, cpuMathCores: llama.cpuMathCores };
console.error(`node-llama-cpp ${NLC_VERSION}: llama.cpp ${nativeInfo.llamaCpp} (${llama.buildType}, gpu ${llama.gpu}); ${llama.systemInfo}`);

const checks: Record<string, unknown> = {};
const problems: string[] = [];

// 1. stories260K, greedy from BOS: a trained model, so the GGUF's RoPE pairing, GQA and vocabulary are exercised.
{
  const STORIES_N = 200;
  const fm = await openModel(new MemorySource(await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK })), { threads: 1, simd: simdOption });
  const nm = await llama.loadModel({ modelPath: STORIES_GGUF, gpuLayers: 0 });
  const ctx = await nm.createContext({ contextSize: 512, threads: 1 });
  try {
    const f = await flashGreedy(fm, [1], STORIES_N);
    const n = (await nativeDecode(ctx.getSequence(), [1], STORIES_N)).ids;
    const text = fm.tokenizer.decode(f.slice(0, 24));
    const sample = PARAGRAPH.trimEnd(); // node-llama-cpp's tokenize() adds no BOS
    const ours = fm.tokenizer.encode(sample);
    const tokSame = JSON.stringify(ours) === JSON.stringify([1, ...nm.tokenize(sample)]);
    checks.stories260K = { tokens: STORIES_N, equal: agree(f, n), flashlm: f.length, native: n.length, tokenizerAgrees: tokSame };
    console.log(`check: stories260K greedy from BOS: native F32 = flashlm f32 for ${agree(f, n)} of ${Math.min(f.length, n.length)} tokens ("${text.trim()} ...")`);
    console.log(`check: tokenizer: llama.cpp's ids ${tokSame ? '=' : '≠'} flashlm's on the bench paragraph (${ours.length} tokens)`);
    if (agree(f, n) !== STORIES_N) problems.push('stories260K: native and flashlm greedy tokens differ');
  } finally {
    await ctx.dispose();
    await nm.dispose();
    await fm.close();
  }
}

interface Row {
  flashlm: DType;
  native: GgufType;
  threads: number;
  nativeThreads: number;
  promptTokens: number;
  decodeTokens: number;
  flashlmPromptTokS: number;
  nativePromptTokS: number;
  promptRatio: number;
  flashlmDecodeTokS: number;
  nativeDecodeTokS: number;
  decodeRatio: number;
  rounds: { flashlmPromptTokS: number; nativePromptTokS: number; flashlmDecodeTokS: number; nativeDecodeTokS: number }[];
}
const rows: Row[] = [];
const notes: string[] = [];
const greedy = new Map<string, number[]>(); // 'flashlm f32', 'native F32', ... -> checkTokens greedy ids
const firstAfterPrompt = new Map<string, number>();
const teacher = new Map<string, ReturnType<typeof compareTeacher>>(); // 'f32 vs F32' -> flashlm vs native on the prompt
let promptInfo = { text: '', tokens: 0 };
let flashKernels = ''; // model.simd: the kernels build flashlm ran
let decodeIds: number[] = [];

for (const gt of ggufTypes) {
  const flashDtypes = dtypes.filter((d) => PAIRS[d] === gt);
  const nm = await llama.loadModel({ modelPath: ggufPath(gt), gpuLayers: 0 });
  try {
    for (const [ti, n] of threadCounts.entries()) {
      const fms: Model[] = [];
      const ctx = await nm.createContext({ contextSize: CONTEXT, threads: n, batchSize: 512 });
      try {
        for (const d of flashDtypes) fms.push(await openModel(flmPath(d), { contextLength: CONTEXT, threads: n, simd: simdOption }));
        flashKernels = fms[0]?.simd ?? flashKernels;
        const seq = ctx.getSequence();
        for (const fm of fms) if (fm.threading.threads !== n) notes.push(`flashlm asked for ${n} thread(s), ran ${fm.threading.threads}: ${fm.threading.fallbackReason ?? 'no reason given'}`);
        if (ctx.currentThreads !== n) notes.push(`native asked for ${n} thread(s), reports ${ctx.currentThreads}`);
        const f0 = fms[0]!;
        if (!promptInfo.tokens) {
          promptInfo = promptOf(f0, promptTokens);
          decodeIds = f0.tokenizer.encode(DECODE_PROMPT);
        }
        const promptIds = f0.tokenizer.encode(promptInfo.text);

        // Correctness (and warm-up): greedy tokens and the token after the long prompt, once per engine and dtype.
        if (ti === 0) {
          for (const [i, fm] of fms.entries()) {
            greedy.set(`flashlm ${flashDtypes[i]}`, await flashGreedy(fm, decodeIds, checkTokens));
            firstAfterPrompt.set(`flashlm ${flashDtypes[i]}`, (await flashGreedy(fm, promptIds, 1))[0]!);
          }
          greedy.set(`native ${gt}`, (await nativeDecode(seq, decodeIds, checkTokens)).ids);
          firstAfterPrompt.set(`native ${gt}`, (await nativePrompt(seq, promptIds)).token);
          const nt = await nativeTeacher(seq, promptIds, SHAPE.vocabSize);
          for (const [i, fm] of fms.entries()) teacher.set(`flashlm ${flashDtypes[i]} vs native ${gt}`, compareTeacher(await flashTeacher(fm, promptIds), nt));
        }
        // warm-up: one of each, not counted
        for (const fm of fms) {
          await timePrompt(fm, promptIds);
          await timeDecode(fm, decodeIds, decodeTokens);
        }
        await nativePrompt(seq, promptIds);
        await nativeDecode(seq, decodeIds, decodeTokens);

        // flashlm, native, flashlm, native ...: each flashlm model's round is paired with a native round right after it.
        const rs: Row['rounds'][] = fms.map(() => []);
        for (let r = 0; r < rounds; r++) {
          for (const [i, fm] of fms.entries()) {
            const p = await timePrompt(fm, promptIds);
            const dd = await timeDecode(fm, decodeIds, decodeTokens);
            if (dd.tokens < decodeTokens) notes.push(`flashlm ${flashDtypes[i]}: decode stopped after ${dd.tokens} of ${decodeTokens} tokens`);
            const np = await nativePrompt(seq, promptIds);
            const nd = await nativeDecode(seq, decodeIds, decodeTokens);
            if (nd.tokens < decodeTokens) notes.push(`native ${gt}: decode stopped after ${nd.tokens} of ${decodeTokens} tokens`);
            rs[i]!.push({
              flashlmPromptTokS: promptIds.length / p,
              nativePromptTokS: promptIds.length / np.seconds,
              flashlmDecodeTokS: (dd.tokens - 1) / dd.seconds,
              nativeDecodeTokS: (nd.tokens - 1) / nd.seconds,
            });
          }
        }
        for (const [i, d] of flashDtypes.entries()) {
          const m = (k: keyof Row['rounds'][number]) => median(rs[i]!.map((x) => x[k]));
          const row: Row = {
            flashlm: d,
            native: gt,
            threads: fms[i]!.threading.threads,
            nativeThreads: ctx.currentThreads,
            promptTokens: promptIds.length,
            decodeTokens,
            flashlmPromptTokS: round2(m('flashlmPromptTokS')),
            nativePromptTokS: round2(m('nativePromptTokS')),
            promptRatio: round2(m('flashlmPromptTokS') / m('nativePromptTokS')),
            flashlmDecodeTokS: round2(m('flashlmDecodeTokS')),
            nativeDecodeTokS: round2(m('nativeDecodeTokS')),
            decodeRatio: round2(m('flashlmDecodeTokS') / m('nativeDecodeTokS')),
            rounds: rs[i]!.map((x) => ({
              flashlmPromptTokS: round2(x.flashlmPromptTokS),
              nativePromptTokS: round2(x.nativePromptTokS),
              flashlmDecodeTokS: round2(x.flashlmDecodeTokS),
              nativeDecodeTokS: round2(x.nativeDecodeTokS),
            })),
          };
          rows.push(row);
          console.error(
            `${d} vs ${gt}, ${n} thread(s): prompt ${row.flashlmPromptTokS} vs ${row.nativePromptTokS} tok/s (${row.promptRatio}×), ` +
              `decode ${row.flashlmDecodeTokS} vs ${row.nativeDecodeTokS} tok/s (${row.decodeRatio}×)`,
          );
        }
      } finally {
        for (const fm of fms) await fm.close();
        await ctx.dispose();
      }
    }
  } finally {
    await nm.dispose();
  }
}
await llama.dispose();

// ---------------------------------------------------------------- correctness report

const distinct = (a: readonly number[]) => new Set(a).size;
const vs = (a: string, b: string) => {
  const x = greedy.get(a), y = greedy.get(b);
  if (!x || !y) return null;
  return { equal: agree(x, y), of: Math.min(x.length, y.length), distinct: [distinct(x), distinct(y)] };
};
const ref = vs('native F32', 'flashlm f32');
if (ref) {
  const p = firstAfterPrompt.get('native F32') === firstAfterPrompt.get('flashlm f32');
  checks.nativeF32VsFlashlmF32 = { ...ref, firstAfterPromptEqual: p };
  console.log(`check: native F32 = flashlm f32 greedy for ${ref.equal} of ${ref.of} tokens (${ref.distinct[0]} distinct); first token after the ${promptInfo.tokens}-token prompt ${p ? 'equal' : 'DIFFERS'}`);
  if (ref.equal !== ref.of || !p) problems.push('native F32 and flashlm f32 differ: the GGUF does not hold the same model');
}
for (const [k, c] of teacher) {
  checks[`teacher-forced ${k}`] = c;
  console.log(`check: teacher-forced on the ${c.positions}-token prompt, ${k}: same most likely next token at ${c.sameArgmax} of ${c.positions} positions, probabilities within ${c.maxAbsDiffP}`);
  if (k === 'flashlm f32 vs native F32' && (c.sameArgmax !== c.positions || c.maxAbsDiffP > 1e-3)) problems.push('teacher-forced f32: native and flashlm disagree');
}
for (const [a, b] of [['native F16', 'native F32'], ['native Q8_0', 'native F32'], ['flashlm f16', 'flashlm f32'], ['flashlm q8', 'flashlm f32'], ['flashlm int8', 'flashlm f32']] as const) {
  const c = vs(a, b);
  if (!c) continue;
  checks[`${a} vs ${b}`] = c;
  console.log(`check: ${a} greedy = ${b} for ${c.equal === c.of ? `all ${c.of}` : `the first ${c.equal} of ${c.of}`} tokens`);
}

// ---------------------------------------------------------------- report

const wallS = (performance.now() - wall0) / 1000;
const load1 = os.loadavg();
const cpu = os.cpus()[0]?.model ?? 'unknown';
console.log(
  `native: ${NAME} (~85M params) in flashlm (dense, .flm) and llama.cpp ${nativeInfo.llamaCpp} (node-llama-cpp ${NLC_VERSION}, CPU, GGUF); ` +
    `prompt ${promptInfo.tokens} tokens, decode ${decodeTokens} tokens after "${DECODE_PROMPT}", interleaved, median of ${rounds} round(s)`,
);
console.log(`machine: ${cpu}, ${cores} cores, node ${process.version}; load average ${load0[0]!.toFixed(2)} -> ${load1[0]!.toFixed(2)}; flashlm kernels: ${flashKernels}`);
const pad = (s: string | number, w: number) => String(s).padStart(w);
console.log(`${'flashlm'.padEnd(7)} ${'native'.padEnd(6)} ${pad('thr', 3)} | ${pad('prompt tok/s flashlm', 20)} ${pad('native', 8)} ${pad('ratio', 6)} | ${pad('decode tok/s flashlm', 20)} ${pad('native', 8)} ${pad('ratio', 6)}`);
for (const r of rows) {
  console.log(
    `${r.flashlm.padEnd(7)} ${r.native.padEnd(6)} ${pad(r.threads, 3)} | ${pad(r.flashlmPromptTokS.toFixed(1), 20)} ${pad(r.nativePromptTokS.toFixed(1), 8)} ${pad(r.promptRatio.toFixed(2) + '×', 6)} | ` +
      `${pad(r.flashlmDecodeTokS.toFixed(1), 20)} ${pad(r.nativeDecodeTokS.toFixed(1), 8)} ${pad(r.decodeRatio.toFixed(2) + '×', 6)}`,
  );
}
for (const note of new Set(notes)) console.log(`note: ${note}`);
for (const p of problems) console.log(`PROBLEM: ${p}`);
// Both engines run `threads` busy threads; load beyond that at the start is someone else.
if (load0[0]! > cores / 2 || load1[0]! > cores + 1) {
  console.log(`note: the machine was busy (load average ${load0[0]!.toFixed(2)} at start, ${load1[0]!.toFixed(2)} at the end, ${cores} cores): figures are noisy`);
}
const result = {
  bench: 'native',
  model: { ...SHAPE, seed: SEED, name: NAME, contextLength: CONTEXT },
  native: nativeInfo,
  promptTokens: promptInfo.tokens,
  decodeTokens,
  checkTokens,
  rounds,
  threadsRequested: threadCounts,
  machine: { node: process.version, cpu, cores, totalMemMiB: Math.round(os.totalmem() / 2 ** 20), loadavg: [round2(load0[0]!), round2(load1[0]!)] },
  flashlmKernels: flashKernels,
  wallS: round2(wallS),
  checks,
  problems,
  results: rows,
  notes: [...new Set(notes)],
};
const json = JSON.stringify(result);
console.log(json);
const resultsDir = fileURLToPath(new URL('./results/', import.meta.url));
await mkdir(resultsDir, { recursive: true });
await writeFile(`${resultsDir}native.json`, json + '\n');
console.error(`wrote ${resultsDir}native.json (${((await stat(`${resultsDir}native.json`)).size / 1024).toFixed(1)} KiB)`);
if (problems.length) process.exitCode = 1;
