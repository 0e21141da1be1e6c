/** The `flashlm` command as a user runs it: the compiled bin, real files, real processes. */
import test from 'ava';
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync, copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { startNginx } from './helpers/nginx.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { openCheckpoint } from '../src/convert/index.js';
import { writeFlm } from '../src/format/writer.js';
import { FileSink } from '../src/source/file-node.js';
import { AbortedError } from '../src/errors.js';
import { OPT_DIR, STORIES_BIN, STORIES_GOLDEN, STORIES_TOK, optReference } from './helpers/models.js';

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
    t.regex(r.stderr, new RegExp(`; ${extra[1]} threads?\\n`));
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

test('an aborted conversion removes its temporary file', async (t) => {
  const out = join(dir, 'aborted.flm');
  const ckpt = await openCheckpoint(OPT_DIR);
  const sink = await FileSink.create(out);
  const ctl = new AbortController();
  let calls = 0;
  await t.throwsAsync(
    writeFlm(ckpt, sink, { dtype: 'f32', layout: 'bundled', signal: ctl.signal, onProgress: () => ++calls === 2 && ctl.abort() }),
    { instanceOf: AbortedError },
  );
  await sink.abort();
  await ckpt.close();
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('aborted.flm')), []);
});
