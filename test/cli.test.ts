/** The `flashlm` command as a user runs it: the compiled bin, real files, real processes. */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync, copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { startNginx } from './helpers/nginx.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { OPT_DIR, STORIES_BIN, STORIES_GOLDEN, STORIES_TOK, optReference } from './helpers/models.js';
import { writeRandomLlama2c } from './helpers/random-llama2c.js';
import { startScripted } from './helpers/scripted-server.js';

const BIN = fileURLToPath(new URL('../bin/flashlm.js', import.meta.url));
const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'flashlm-cli-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

async function flashlm(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { maxBuffer: 1 << 26 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test.serial('convert + run stories260K: stdout is exactly the generated text', async (t) => {
  const out = join(dir, 'stories.flm');
  const c = await flashlm('convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', out);
  t.is(c.code, 0, c.stderr);
  t.regex(c.stderr, /wrote .*stories\.flm: llama, f32, bundled/);
  const r = await flashlm('run', out, '-n', '256', '--temp', '0');
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, STORIES_GOLDEN + '\n');
  t.regex(r.stderr, /arena/);
  const i = await flashlm('inspect', out);
  t.regex(i.stdout, /architecture\s+llama/);
  t.regex(i.stdout, /ffn\.4\s+@/);
  const j = JSON.parse((await flashlm('inspect', out, '--json')).stdout);
  t.is(j.arch.dModel, 64);
  t.is(j.sections.length, 6);
});

test.serial('run --dense-layout records gives the llama2.c text too; a bad layout is a one-line error (then the usage)', async (t) => {
  const out = join(dir, 'stories.flm');
  const r = await flashlm('run', out, '-n', '256', '--temp', '0', '--dense-layout', 'records');
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, STORIES_GOLDEN + '\n');
  const bad = await flashlm('run', out, '--dense-layout', 'columns');
  t.not(bad.code, 0);
  // commander's one-line error, then the usage (main.ts showHelpAfterError), no stack trace
  t.regex(bad.stderr.split('\n')[0]!, /^error: option '--dense-layout <l>' argument 'columns' is invalid\. Allowed choices are rows, records\.$/);
  t.notRegex(bad.stderr, /\n\s+at /);
});

test.serial('convert --dtype int8 writes q8 (one scale per 32 weights), --dtype int8-row the per-row int8; both run', async (t) => {
  for (const [flag, dtype, note] of [['int8', 'q8', /one scale per 32 weights/], ['int8-row', 'int8', /one scale per row/], ['q8', 'q8', /one scale per 32 weights/]] as const) {
    const out = join(dir, `stories-${flag}.flm`);
    const c = await flashlm('convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', out, '--dtype', flag);
    t.is(c.code, 0, c.stderr);
    t.regex(c.stderr, new RegExp(`wrote .*: llama, ${dtype}, bundled`));
    const i = await flashlm('inspect', out);
    t.regex(i.stdout, new RegExp(`weights\\s+${dtype}`));
    t.regex(i.stdout, note);
    t.is(JSON.parse((await flashlm('inspect', out, '--json')).stdout).dtype, dtype);
    const r = await flashlm('run', out, '-n', '24', '--temp', '0');
    t.is(r.code, 0, r.stderr);
    t.true(r.stdout.startsWith('Once upon a time'), `${flag}: ${r.stdout}`);
  }
});

test.serial('convert OPT to f16 split and run the reference prompt', async (t) => {
  const { ref } = optReference();
  const out = join(dir, 'opt-f16-split.flm');
  const c = await flashlm('convert', OPT_DIR, '-o', out, '--dtype', 'f16', '--layout', 'split');
  t.is(c.code, 0, c.stderr);
  const r = await flashlm('run', out, '-p', ref.prompt, '-n', String(ref.n), '--temp', '0');
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, ref.text + '\n');
});

test.serial('run --threads 1 and 2, --batch-size 1 and 8: the same text; stderr says the threads and the prompt and decode rates', async (t) => {
  const { ref } = optReference();
  const out = join(dir, 'opt-f16-split.flm');
  const runs = [['-t', '1', '-b', '1'], ['-t', '2', '-b', '8'], ['--threads', '2', '--batch-size', '1']];
  for (const extra of runs) {
    const r = await flashlm('run', out, '-p', ref.prompt, '-n', String(ref.n), '--temp', '0', ...extra);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, ref.text + '\n', extra.join(' '));
    t.regex(r.stderr, new RegExp(`; ${extra[1]} threads?(, kernels [a-z-]+)?\\n`));
    t.regex(r.stderr, /prompt: \d+ tokens, [\d.]+ tokens\/s; generated: \d+ tokens, [\d.]+ tokens\/s/);
  }
  const bad = await flashlm('run', out, '-t', '0');
  t.not(bad.code, 0);
  t.regex(bad.stderr, /threads/);
});

test.serial('run --stats json ends stderr with one JSON object holding the documented keys', async (t) => {
  const { ref } = optReference();
  const out = join(dir, 'opt-f16-split.flm');
  const r = await flashlm('run', out, '-p', ref.prompt, '-n', '16', '--strategy', 'window', '--sparsity', 'oracle', '--memory', '64M', '--stats', 'json');
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, ref.text.slice(0, r.stdout.length - 1) + '\n', 'same text as dense');
  const lines = r.stderr.trim().split('\n');
  const stats = JSON.parse(lines[lines.length - 1]!);
  for (const key of ['tokens', 'bytesPerToken', 'requestsPerToken', 'meanRequestBytes', 'ioMsPerToken', 'unpackMsPerToken', 'computeMsPerToken', 'msPerToken', 'cacheHitRate', 'ffnFractionPerToken', 'residentBytes', 'arenaBytes', 'predictorRecall', 'predictorPrecision']) {
    t.true(key in stats, key);
  }
  t.is(stats.arenaBytes, 64 << 20);
  t.true(stats.bytesPerToken > 0 && stats.ffnFractionPerToken > 0 && stats.ffnFractionPerToken < 1);
  t.is(stats.predictorRecall, null);
  t.regex(r.stderr, /window \(window 4\), sparsity oracle: resident .* cache .* neurons per layer/);
});

test.serial('inspect and run read a model over HTTP (nginx on loopback)', async (t) => {
  const { ref } = optReference();
  chmodSync(dir, 0o755);
  chmodSync(join(dir, 'opt-f16-split.flm'), 0o644);
  const nginx = await startNginx({ root: dir });
  try {
    const url = nginx.url('/opt-f16-split.flm');
    const i = await flashlm('inspect', url);
    t.is(i.code, 0, i.stderr);
    t.regex(i.stdout, /architecture\s+opt/);
    const r = await flashlm('run', url, '-p', ref.prompt, '-n', '8', '--strategy', 'hybrid');
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, ref.text.slice(0, r.stdout.length - 1) + '\n');
  } finally {
    await nginx.stop();
  }
});

test('bad input stops with an error naming the file and tensor, and leaves nothing behind', async (t) => {
  const bad = join(dir, 'bad-opt');
  mkdirSync(bad);
  for (const f of ['config.json', 'tokenizer.json']) copyFileSync(join(OPT_DIR, f), join(bad, f));
  // a safetensors file cut short in the middle of its data
  const full = readFileSync(join(OPT_DIR, 'model.safetensors'));
  writeFileSync(join(bad, 'model.safetensors'), full.subarray(0, full.byteLength >> 1));
  const out = join(dir, 'bad.flm');
  const c = await flashlm('convert', bad, '-o', out);
  t.is(c.code, 1);
  t.regex(c.stderr, /model\.safetensors/);
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('bad.flm')), []);
  const missing = await flashlm('convert', join(dir, 'nope'), '-o', out);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /nope/);
  const badFlag = await flashlm('convert', STORIES_BIN, '-o', out, '--dtype', 'f8');
  t.not(badFlag.code, 0);
  t.regex(badFlag.stderr, /f8/);
  const notFlm = await flashlm('run', STORIES_BIN);
  t.is(notFlm.code, 1);
  t.regex(notFlm.stderr, /not a \.flm file/);
});

test('convert and calibrate never write over an input, a directory or a non-.flm file (without --force); checked before any work', async (t) => {
  const work = join(dir, 'outputs');
  mkdirSync(join(work, 'hf'), { recursive: true });
  const ckpt = join(work, 'stories.bin'), tok = join(work, 'tok.bin'), notes = join(work, 'notes.txt');
  copyFileSync(STORIES_BIN, ckpt);
  copyFileSync(STORIES_TOK, tok);
  writeFileSync(notes, 'keep me');
  const before = readFileSync(ckpt);
  const cases: [string, RegExp][] = [
    [ckpt, /would overwrite an input/],
    [tok, /would overwrite an input/],
    [notes, /exists and is not a \.flm file; use --force/],
    [join(work, 'hf'), /is a directory/],
    [join(work, 'no', 'such', 'x.flm'), /folder .* does not exist/],
  ];
  for (const [out, want] of cases) {
    const r = await flashlm('convert', ckpt, '--tokenizer', tok, '-o', out);
    t.is(r.code, 1, out);
    t.regex(r.stderr.trim(), want, out);
    t.false(r.stderr.includes('converting'), 'refused before converting');
  }
  t.deepEqual(readFileSync(ckpt), before, 'the checkpoint is intact');
  t.is(readFileSync(notes, 'utf8'), 'keep me');
  t.deepEqual(readdirSync(work).sort(), ['hf', 'notes.txt', 'stories.bin', 'tok.bin'], 'no temporary files');
  const model = join(work, 'm.flm');
  t.is((await flashlm('convert', ckpt, '--tokenizer', tok, '-o', model)).code, 0);
  t.is((await flashlm('convert', ckpt, '--tokenizer', tok, '-o', model)).code, 0, 'an existing .flm is replaced');
  t.is((await flashlm('convert', ckpt, '--tokenizer', tok, '-o', notes, '--force')).code, 0, '--force replaces a non-.flm file');
  const cal = await flashlm('calibrate', model, '--text', notes, '-o', model);
  t.is(cal.code, 1);
  t.regex(cal.stderr, /would overwrite an input/);
});

test('run over a trickling server: each retry is said on stderr, and the low-speed limit and deadline end it with one line', async (t) => {
  const model = join(dir, 'trickle.flm');
  t.is((await flashlm('convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', model)).code, 0);
  const bytes = readFileSync(model);
  // The size probe is answered; every later read trickles (8 pieces, 400 ms apart).
  const srv = await startScripted({ size: bytes.byteLength, etag: '"t"', content: (o, n) => bytes.subarray(o, o + n), fault: (n) => (n >= 2 ? { trickleMs: 400 } : undefined) });
  try {
    const started = Date.now();
    const r = await flashlm('run', srv.url, '-n', '4', '--speed-limit', '1000000', '--speed-time', '0.3', '--http-retries', '2', '--read-deadline', '20');
    t.not(r.code, 0);
    t.regex(r.stderr, /retry 1 of 2 in [\d.]+ s/);
    t.regex(r.stderr, /retry 2 of 2 in [\d.]+ s/);
    const last = r.stderr.trim().split('\n').pop()!;
    t.regex(last, /^flashlm: .*failed after 3 attempts: slower than 1000000 bytes\/s/);
    t.false(/\n\s+at /.test(r.stderr), 'no stack trace');
    t.true(Date.now() - started < 20_000, 'ended by the low-speed limit, long before any idle timeout');
  } finally {
    await srv.stop();
  }
});

test('bad paths, sizes and texts end with one line on stderr, no stack trace', async (t) => {
  const model = join(dir, 'errors.flm');
  t.is((await flashlm('convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', model)).code, 0);
  const sub = join(dir, 'a-directory');
  mkdirSync(sub, { recursive: true });
  const empty = join(dir, 'empty.txt');
  writeFileSync(empty, '');
  const cases: [string[], RegExp][] = [
    [['run', sub], /is a directory, not a \.flm file/],
    [['inspect', sub], /is a directory, not a \.flm file/],
    [['run', join(dir, 'missing.flm')], /cannot open/],
    [['eval', model, '--text', sub], /--text .*: is a directory/],
    [['eval', model, '--text', join(dir, 'missing.txt')], /--text .*: no such file/],
    [['eval', model, '--text', empty], /at least 2 are needed/],
    ...['abc', '-5M', '1e3', '0x100', ''].map((m): [string[], RegExp] => [['run', model, '-n', '1', '--memory', m], /is not a memory size|memory budget must be/]),
    [['run', model, '-n', '1', '--memory', '0'], /memory budget must be in/],
  ];
  for (const [args, want] of cases) {
    const r = await flashlm(...args);
    const what = args.join(' ');
    t.not(r.code, 0, what);
    const lines = r.stderr.trim().split('\n');
    t.regex(lines[lines.length - 1]!, want, what);
    t.false(/\n\s+at /.test(r.stderr), `${what}: no stack trace`);
  }
});

test.serial('SIGINT, SIGTERM and SIGHUP during a real `flashlm convert` leave no temporary file and no output', async (t) => {
  t.timeout(120_000);
  // A checkpoint big enough (~50 MB) that the conversion is still running when the signal comes.
  const ckpt = join(dir, 'big.bin');
  await writeRandomLlama2c(ckpt, { dim: 512, hiddenDim: 1536, nLayers: 6, nHeads: 8, nKvHeads: 8, vocabSize: 512, seqLen: 256 }, 3);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const out = join(dir, `signalled-${signal}.flm`);
    const child = spawn(process.execPath, [BIN, 'convert', ckpt, '--tokenizer', STORIES_TOK, '-o', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // Signal once the temporary file exists: the conversion is writing.
    const t0 = Date.now();
    while (!readdirSync(dir).some((f) => f.startsWith(`signalled-${signal}.flm.`)) && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 5));
    const started = readdirSync(dir).some((f) => f.startsWith(`signalled-${signal}.flm.`));
    child.kill(signal);
    const code = await exited;
    if (!started) {
      t.fail(`${signal}: the conversion never created its temporary file (${stderr})`);
      continue;
    }
    t.not(code, 0, `${signal}: non-zero exit`);
    t.deepEqual(readdirSync(dir).filter((f) => f.startsWith(`signalled-${signal}.flm`)), [], `${signal}: nothing left behind`);
    t.regex(stderr.trim().split('\n').pop() ?? '', /^flashlm: .*(interrupted|stopped by SIG|abort)/i, `${signal}: one line on stderr`);
    t.false(/\n\s+at /.test(stderr), `${signal}: no stack trace`);
  }
});
