/**
 * `flashlm synth`: a tiny synthetic model written by the CLI, its activation
 * statistics measured through the dense engine (not re-derived from the
 * design), every strategy with the oracle equal to dense token for token, the
 * neuron fractions of `--stats json`, and the oracle without a copy of the
 * FFN equal to the one with.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { openModel, type OpenOptions } from '../src/node.js';
import { openFlm, type FlmFile } from '../src/format/reader.js';
import { writeFlm } from '../src/format/writer.js';
import type { Layout } from '../src/format/layout.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { Oracle } from '../src/flash/oracle.js';
import { createTokenizer } from '../src/tokenizer/index.js';
import { SynthCheckpoint } from '../src/synth/checkpoint.js';
import { shapeArch } from '../src/synth/shapes.js';
import { loadSynthTokenizer } from '../src/synth/tokenizer.js';
import { measureActivity } from '../src/synth/measure.js';
import { rng } from '../src/util/random.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const exec = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'flashlm-synth-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** The CLI from its sources (no build needed), as a separate process. */
async function flashlm(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  // The arguments travel in the environment: node takes a first argument `inspect` after -e as its debugger.
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'flashlm', ...JSON.parse(process.env.FLASHLM_TEST_ARGS)]);`;
  try {
    const env = { ...process.env, FLASHLM_TEST_ARGS: JSON.stringify(args) };
    const { stdout, stderr } = await exec(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { maxBuffer: 1 << 26, timeout: 120_000, env });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const PROMPT =
  'There were four of us - George, and William Samuel Harris, and myself, and Montmorency. We were sitting in my room, ' +
  'smoking, and talking about how bad we were - bad from a medical point of view I mean, of course.';

/** A synthetic model written to memory (the test's own shapes: a tiny OPT, or a tiny ReLU-gated Llama). */
async function synthBytes(kind: 'opt' | 'llama', layout: Layout = 'bundled', dtype: 'f32' | 'f16' = 'f32'): Promise<Uint8Array> {
  const arch =
    kind === 'opt'
      ? shapeArch('tiny')
      : { ...shapeArch('llama-7b'), dModel: 128, embedDim: 128, nHeads: 4, nKvHeads: 2, headDim: 32, ffnDim: 2048, nLayers: 2, vocabSize: 4096, maxSeqLen: 512 };
  const tok = await loadSynthTokenizer(arch.vocabSize);
  const ckpt = new SynthCheckpoint({ arch: { ...arch, bosId: tok.bosId, eosId: tok.eosId, stopIds: [tok.eosId] }, tokenizer: tok.spec, tokenizerVocab: tok.vocab, seed: 3, name: `test-${kind}` });
  const sink = new MemorySink();
  await writeFlm(ckpt, sink, { dtype, layout, meta: { synthetic: 'true' } });
  return sink.bytes();
}

test.serial('synth --shape tiny writes a synthetic .flm (the same bytes for the same seed); inspect says it is synthetic', async (t) => {
  const a = join(dir, 'a.flm');
  const r = await flashlm('synth', '--shape', 'tiny', '--seed', '7', '-o', a);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /wrote .*a\.flm: synthetic tiny \(2 layers\), f16, bundled/);
  const i = await flashlm('inspect', a);
  t.is(i.code, 0, i.stderr);
  t.regex(i.stdout, /synthetic\s+random weights \(flashlm synth --shape tiny --seed 7\), about 3% of FFN neurons active/);
  t.regex(i.stdout, /d_model 128, layers 2, heads 4 \(kv 4\) x 32, ffn 2048, vocab 4096/);
  const j = JSON.parse((await flashlm('inspect', a, '--json')).stdout);
  t.is(j.meta.synthetic, 'true');
  t.is(j.meta['synth.shape'], 'tiny');
  // Deterministic from the seed; another seed, other weights.
  const b = join(dir, 'b.flm');
  t.is((await flashlm('synth', '--shape', 'tiny', '--seed', '7', '-o', b)).code, 0);
  t.true(readFileSync(a).equals(readFileSync(b)));
  t.is((await flashlm('synth', '--shape', 'tiny', '--seed', '8', '-o', b)).code, 0);
  t.false(readFileSync(a).equals(readFileSync(b)));
  // Resident matrices in another dtype than the FFN (int8 = q8), as a 6.7B shape needs to fit wasm32's 4 GiB.
  const q = join(dir, 'q.flm');
  t.is((await flashlm('synth', '--shape', 'tiny', '--resident-dtype', 'int8', '-o', q)).code, 0);
  const jq = JSON.parse((await flashlm('inspect', q, '--json')).stdout) as { dtype: string; tensors: { name: string; dtype: string }[] };
  t.is(jq.dtype, 'f16');
  t.is(jq.tensors.find((x) => x.name === 'layers.0.wq')!.dtype, 'q8');
  t.is(jq.tensors.find((x) => x.name === 'tok_embeddings')!.dtype, 'q8');
  // Bad flags are one-line errors.
  const bad = await flashlm('synth', '--shape', 'tiny', '--layers', '3', '-o', join(dir, 'c.flm'));
  t.is(bad.code, 1);
  t.regex(bad.stderr, /^flashlm: --layers must be in \[1, 2\] for tiny\n$/);
});

test.serial('Ctrl-C during synth leaves no file behind', async (t) => {
  const sub = join(dir, 'interrupt');
  mkdirSync(sub);
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'flashlm', ...JSON.parse(process.env.FLASHLM_TEST_ARGS)]);`;
  const args = ['synth', '--shape', 'opt-1.3b', '--layers', '2', '-o', join(sub, 'big.flm')];
  const child = spawn(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { env: { ...process.env, FLASHLM_TEST_ARGS: JSON.stringify(args) }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)));
  // Wait until the temporary file has some bytes, then interrupt.
  for (let i = 0; i < 600; i++) {
    const tmp = readdirSync(sub).find((f) => f.includes('.tmp-'));
    if (tmp && statSync(join(sub, tmp)).size > 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.true(readdirSync(sub).some((f) => f.includes('.tmp-')), 'the writer started');
  child.kill('SIGINT');
  const code = await exited;
  t.not(code, 0);
  t.deepEqual(readdirSync(sub), []);
  t.regex(stderr, /^flashlm: [^\n]*abort[^\n]*\n$/); // one line
});

for (const kind of ['opt', 'llama'] as const) {
  test(`${kind}: sparsity, hot and cold neurons, and turnover measured through the dense engine`, async (t) => {
    const file = await openFlm(new MemorySource(await synthBytes(kind)));
    const tok = await createTokenizer(file.header.tokenizer);
    const prompt = tok.encode(PROMPT);
    const r = await measureActivity(file, prompt, 150, 5);
    t.is(r.tokens.length, prompt.length + 150);
    for (const [l, layer] of r.layers.entries()) {
      const msg = `layer ${l}: ${JSON.stringify({ active: layer.activeFraction, top10: layer.top10Share, fresh: layer.newFraction })}`;
      // ~97% of the neurons zero per token.
      t.true(layer.activeFraction > 0.02 && layer.activeFraction < 0.045, msg);
      // Skewed: the most active tenth of the neurons fire far more than a tenth of the time (uniform firing: ~0.15 at this length).
      t.true(layer.top10Share > 0.4, msg);
      // Turnover: at least 40% of a token's active neurons were not active in the 5 tokens before.
      t.true(layer.newFraction >= 0.4, msg);
    }
  });
}

async function greedy(bytes: Uint8Array, opts: OpenOptions, n = 24) {
  const model = await openModel(new MemorySource(bytes), { contextLength: 128, threads: 1, ...opts });
  const ids: number[] = [];
  for await (const s of model.steps('In the morning she went to the', { maxTokens: n, temperature: 0 })) if (s.token >= 0) ids.push(s.token);
  const summary = model.stats.summary();
  const tokens = model.stats.tokens;
  await model.close();
  return { ids, summary, tokens };
}

for (const kind of ['opt', 'llama'] as const) {
  for (const layout of ['bundled', 'split'] as const) {
    test(`${kind} ${layout}: every strategy with the oracle (copied and paged) generates the dense tokens`, async (t) => {
      const bytes = await synthBytes(kind, layout, 'f16');
      const dense = await greedy(bytes, { strategy: 'dense' });
      t.is(dense.ids.length, 24);
      t.true(new Set(dense.ids).size > 4, `a varied continuation: ${dense.ids}`);
      for (const strategy of ['naive', 'hybrid'] as const) t.deepEqual((await greedy(bytes, { strategy })).ids, dense.ids, strategy);
      for (const strategy of ['predictor', 'window'] as const) {
        for (const oracle of ['copy', 'paged'] as const) {
          const r = await greedy(bytes, { strategy, sparsity: 'oracle', window: 5, oracle });
          t.deepEqual(r.ids, dense.ids, `${strategy} (${oracle} oracle)`);
        }
      }
    });
  }
}

test('run --stats json: activeFractionPerToken and newFractionPerToken, and the oracle time apart', async (t) => {
  const path = join(dir, 'stats.flm');
  t.is((await flashlm('synth', '--shape', 'tiny', '-o', path)).code, 0);
  const texts: string[] = [];
  const stats = async (...args: string[]) => {
    const r = await flashlm('run', path, '-p', PROMPT, '-n', '16', '--temp', '0', '--stats', 'json', ...args);
    t.is(r.code, 0, r.stderr);
    texts.push(r.stdout);
    return JSON.parse(r.stderr.trim().split('\n').at(-1)!) as Record<string, number | null>;
  };
  const win = await stats('--strategy', 'window', '--window', '5', '--sparsity', 'oracle');
  // The oracle without a copy of the FFN: the same text, the same true and read neuron counts.
  const paged = await stats('--strategy', 'window', '--window', '5', '--sparsity', 'oracle', '--oracle', 'paged');
  t.is(texts[1], texts[0]);
  t.is(paged.activeFractionPerToken, win.activeFractionPerToken);
  t.is(paged.newFractionPerToken, win.newFractionPerToken);
  t.true(win.activeFractionPerToken! > 0.02 && win.activeFractionPerToken! < 0.045, String(win.activeFractionPerToken));
  // The window reads only the active neurons it does not hold: more than none, fewer than all active ones.
  t.true(win.newFractionPerToken! > 0 && win.newFractionPerToken! < win.activeFractionPerToken!, `${win.newFractionPerToken} vs ${win.activeFractionPerToken}`);
  t.true(win.oracleMsPerToken! > 0);
  const hybrid = await stats('--strategy', 'hybrid');
  t.is(hybrid.newFractionPerToken, 1); // every neuron, every token
  // No oracle, but every neuron computed: the same true active sets as the oracle's.
  t.is(texts[2], texts[0]);
  t.is(hybrid.activeFractionPerToken, win.activeFractionPerToken);
  t.is(hybrid.oracleMsPerToken, 0);
  const dense = await stats();
  t.is(dense.newFractionPerToken, 0);
});

test('per token: neurons read = cache misses, true active = the oracle set the window looked up', async (t) => {
  const bytes = await synthBytes('opt');
  const r = await greedy(bytes, { strategy: 'window', sparsity: 'oracle', window: 5 });
  const n = 2 * 2048;
  for (const s of r.tokens) {
    t.true(s.activeKnown);
    t.is(s.trueActive, s.cacheLookups);
    t.is(s.neuronsRead, s.cacheLookups - s.cacheHits);
  }
  const sum = (f: (s: (typeof r.tokens)[number]) => number) => r.tokens.reduce((a, s) => a + f(s), 0);
  t.true(Math.abs(r.summary.activeFractionPerToken! - sum((s) => s.trueActive) / r.tokens.length / n) < 1e-12);
  t.true(Math.abs(r.summary.newFractionPerToken! - sum((s) => s.neuronsRead) / r.tokens.length / n) < 1e-12);
});

test('the paged oracle (no copy, small chunks) gives the copying oracle\'s activations bit for bit', async (t) => {
  for (const kind of ['opt', 'llama'] as const) {
    for (const layout of ['bundled', 'split'] as const) {
      const file: FlmFile = await openFlm(new MemorySource(await synthBytes(kind, layout, 'f16')));
      const copy = await Oracle.create(file, undefined, { mode: 'copy' });
      // 100 KiB chunks: many chunks per layer, the last one short.
      const paged = await Oracle.create(file, undefined, { mode: 'paged', chunkBytes: 100 << 10 });
      t.is(copy.mode, 'copy');
      t.is(paged.mode, 'paged');
      const d = file.header.arch.dModel;
      const next = rng(5);
      const mem = new WebAssembly.Memory({ initial: 1 });
      const x = new Float32Array(mem.buffer, 64, d);
      for (let l = 0; l < file.header.arch.nLayers; l++) {
        for (let i = 0; i < d; i++) x[i] = 2 * next() - 1;
        t.false(paged.ready(l, mem, 64));
        await paged.prepare(l, mem, 64);
        t.true(paged.ready(l, mem, 64));
        const want = copy.activations(l, x).slice();
        const got = paged.activations(l, x);
        t.deepEqual(got, want, `${kind} ${layout} layer ${l}`);
        t.true(want.some((v) => v !== 0) && want.some((v) => v === 0));
        x[0]! += 1; // another input: prepare again
        t.false(paged.ready(l, mem, 64));
      }
    }
  }
});
