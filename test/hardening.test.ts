/**
 * Issue 12's fuzzers, a short deterministic slice of each (`npm run fuzz`
 * runs them at length), and the write failures of `convert` / `calibrate`:
 * an unwritable folder (EACCES, privileges dropped to nobody when running
 * as root) and a full disk (ENOSPC on a small tmpfs; EFBIG under
 * `prlimit --fsize` where mounting is not allowed).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILING, KINDS, Mutator, generate, runCase, type Outcome } from '../fuzz/corrupt.js';
import { writeFixtures, type Fixture } from '../fuzz/fixtures.js';
import { cliSample } from '../fuzz/cli-sample.js';
import { faultMatrix } from '../fuzz/http-matrix.js';
import { run } from './helpers/processes.js';
import { STORIES_BIN, STORIES_TOK } from './helpers/models.js';

const CLI = fileURLToPath(new URL('../fuzz/flashlm.ts', import.meta.url));
const cli = (args: string[], wrap: string[] = []) => {
  const [cmd, ...pre] = wrap.length ? wrap : [process.execPath];
  return run(cmd!, [...pre, ...(wrap.length ? [process.execPath] : []), '--import=tsx', CLI, ...args], { timeoutMs: 120_000 });
};

let dir: string;
let fixtures: Fixture[];
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flashlm-hardening-'));
  await chmod(dir, 0o755); // the EACCES tests read the inputs as nobody
  fixtures = await writeFixtures(dir);
});
test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('corrupted files (fuzz slice): every flip, truncation and re-hashed header mutation ends in the reference text or a typed error, dense and window', async (t) => {
  const counts: Record<string, Record<Outcome, number>> = {};
  const failures: string[] = [];
  for (const fx of fixtures) {
    const bytes = new Uint8Array(await readFile(fx.file));
    const mutator = new Mutator(bytes, 12);
    const per = fx.name === 'stories' ? 40 : 12;
    for (const strategy of ['dense', 'window'] as const) {
      const reference = await generate(bytes, { ...fx.spec, strategy });
      t.true(reference.length > 0, `${fx.name} ${strategy} generates text`);
      for (const kind of KINDS) {
        const c = (counts[`${fx.name} ${kind}`] ??= { same: 0, error: 0, relabel: 0, stack: 0, hang: 0, crash: 0, different: 0 });
        for (let i = 0; i < per; i++) {
          const m = await mutator.make(kind, i);
          const r = await runCase(m.bytes, { ...fx.spec, strategy }, reference, 30_000, m.relabel);
          c[r.outcome]++;
          if (FAILING.has(r.outcome)) failures.push(`${r.outcome}: ${fx.name}:${kind}:${i} (${strategy}) ${m.what} => ${r.detail}`);
        }
      }
    }
  }
  t.log(Object.entries(counts).map(([k, c]) => `${k}: ${Object.entries(c).filter(([, n]) => n).map(([o, n]) => `${o} ${n}`).join(', ')}`).join('\n'));
  t.deepEqual(failures, []);
  // Every kind reaches the reader's rules: truncations and header edits are refused, flips both.
  for (const fx of fixtures) {
    t.true(counts[`${fx.name} truncate`]!.error > 0 && counts[`${fx.name} header`]!.error > 0 && counts[`${fx.name} flip`]!.error > 0, fx.name);
  }
});

test('corrupted files through the real `flashlm run`: exit 0 with the reference text, or exit 1 with one line', async (t) => {
  const r = await cliSample(fixtures.filter((f) => f.name === 'stories'), 1, 12, dir);
  t.log(r.lines.join('\n'));
  t.is(r.failures, 0);
  t.true((r.counts.error ?? 0) > 0);
});

test('HTTP faults (matrix slice): a fault once is retried into the reference text, on every request it is a typed error; none hangs', async (t) => {
  const stories = fixtures.find((f) => f.name === 'stories')!;
  const fast = ['200 instead of 206', 'Content-Range shifted by 1', 'reset after headers', 'reset mid-body', '503', '404', 'ETag changes', 'short body', 'long body (+1 byte)', 'redirect to itself', 'gzip on a 206', 'multipart/byteranges'];
  // More retries than the fuzzer's, so a loaded machine (an attempt idle past 1 s) cannot turn a recovered read into an error.
  const http = { retries: 6 };
  const m1 = await faultMatrix(stories, { faults: fast, targets: ['open', 'load', 'window'], parallel: 4, http });
  const m2 = await faultMatrix(stories, { faults: ['never answers', 'stall after headers'], targets: ['window'], parallel: 4, http });
  const cells = [...m1.cells, ...m2.cells];
  const bad = cells.filter((c) => c.outcome !== 'same' && c.outcome !== 'error');
  t.deepEqual(bad.map((c) => `${c.fault} ${c.target} ${c.mode}: ${c.outcome} ${c.detail}`), []);
  for (const tr of ['undici', 'fetch']) {
    const cell = (f: string, target: string, mode: string) => cells.find((c) => c.transport === tr && c.fault === f && c.target === target && c.mode === mode)!;
    for (const f of ['reset after headers', 'reset mid-body', '503', 'short body', 'never answers', 'stall after headers']) {
      // (The size probe's body is one byte: a cut after 1000 bytes or a 10-byte body does not shorten it.)
      const targets = f === 'never answers' || f === 'stall after headers' ? ['window'] : f === 'reset mid-body' || f === 'short body' ? ['load', 'window'] : ['open', 'load', 'window'];
      for (const target of targets) {
        t.is(cell(f, target, 'once').outcome, 'same', `${tr}: ${f} once, ${target}`);
        t.true(cell(f, target, 'once').retries >= 1, `${tr}: ${f} once, ${target}: retried`);
        t.is(cell(f, target, 'always').outcome, 'error', `${tr}: ${f} always, ${target}`);
      }
    }
    // The cause is named, on the size probe as on reads (not as a length problem).
    for (const target of ['open', 'load', 'window']) {
      t.regex(cell('gzip on a 206', target, 'once').detail, /Content-Encoding: gzip/, `${tr} ${target}`);
      t.regex(cell('multipart/byteranges', target, 'once').detail, /multipart\/byteranges/, `${tr} ${target}`);
      t.regex(cell('404', target, 'once').detail, /^SourceError: .*HTTP 404/, `${tr} ${target}`);
    }
    t.regex(cell('ETag changes', 'window', 'once').detail, /file changed on the server/, tr);
  }
});

// ---------------------------------------------------------------- write failures

const asRoot = process.getuid?.() === 0;
const setpriv = spawnSync('setpriv', ['--version']).status === 0;
/** Runs a command as nobody when we are root (root writes anywhere); as ourselves otherwise. */
const dropPrivileges = asRoot ? (setpriv ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : undefined) : [];

const prlimit = spawnSync('prlimit', ['--version']).status === 0;

/** A small folder to fill: a 256 KiB tmpfs mounted at `at` (needs privileges); false when refused. */
function mountSmall(at: string): boolean {
  return spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', at]).status === 0;
}

async function calibrationInputs(): Promise<{ model: string; text: string }> {
  const text = join(dir, 'calibration.txt');
  await writeFile(text, 'Once upon a time there was a little girl named Lily. She liked to play in the park with her dog.\n'.repeat(80));
  await chmod(text, 0o644);
  const stories = fixtures.find((f) => f.name === 'stories')!;
  await chmod(stories.file, 0o644);
  return { model: stories.file, text };
}

const convertArgs = (out: string) => ['convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', out];
const calibrateArgs = (model: string, text: string, out: string) => ['calibrate', model, '--text', text, '-o', out, '--tokens', '256', '--context', '16'];

(dropPrivileges ? test : test.skip)('EACCES: convert and calibrate into a folder they cannot write give one line and leave nothing behind', async (t) => {
  const ro = join(dir, 'read-only');
  await mkdir(ro);
  await chmod(ro, 0o555);
  const { model, text } = await calibrationInputs();
  for (const args of [convertArgs(join(ro, 'out.flm')), calibrateArgs(model, text, join(ro, 'out.flm'))]) {
    const r = await cli(args, dropPrivileges!);
    t.is(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    t.regex(lines[lines.length - 1]!, /^flashlm: -o .*out\.flm: the folder .*read-only is not writable$/);
    t.false(/\n\s+at /.test(r.stderr), 'no stack trace');
    t.deepEqual(await readdir(ro), []);
  }
});

(asRoot || prlimit ? test.serial : test.skip)('ENOSPC: convert and calibrate onto a full disk give one line and leave no temporary file', async (t) => {
  const small = join(dir, 'small');
  await mkdir(small);
  const { model, text } = await calibrationInputs();
  const mounted = asRoot && mountSmall(small);
  if (mounted) t.teardown(() => void spawnSync('umount', [small]));
  if (!mounted && !prlimit) return t.fail('mount was refused and prlimit is missing: no way to make a write fail for lack of space here');
  // Without mount privileges: the same write failure by a file size limit (EFBIG; Node ignores SIGXFSZ).
  const wrap = mounted ? [] : ['prlimit', '--fsize=262144'];
  t.log(mounted ? 'full disk: a 256 KiB tmpfs' : 'mount refused: file size limit (prlimit --fsize, EFBIG) instead');
  for (const args of [convertArgs(join(small, 'out.flm')), calibrateArgs(model, text, join(small, 'out.flm'))]) {
    const r = await cli(args, wrap);
    t.is(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    t.regex(lines[lines.length - 1]!, mounted ? /^flashlm: .*out\.flm: ENOSPC: no space left on device/ : /^flashlm: .*out\.flm: EFBIG: file too large/);
    t.false(/\n\s+at /.test(r.stderr), 'no stack trace');
    t.deepEqual(await readdir(small), [], 'no output, no temporary file');
  }
});
