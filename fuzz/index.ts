/**
 * `npm run fuzz`: the hardening fuzzers of issue 12.
 *
 *   corrupt  byte flips in every region, truncations and header-field
 *            mutations (hash recomputed) of both fixtures, each run as
 *            `flashlm run` runs it, dense and window; outcome classes:
 *            same output / typed error / stack trace / hang / crash /
 *            different output (the last four fail the run). A sample also
 *            goes through the real CLI (a child process per case).
 *   http     the fault matrix: a scripted 127.0.0.1 server injecting each
 *            fault once and on every request, against the resident load
 *            (dense) and the streaming strategies, with the time each case
 *            takes to end.
 *   soak     (only with --soak DURATION) generations and API requests over
 *            HTTP, RSS / heap / external / handles sampled, slopes printed.
 *
 *   npm run fuzz -- [--cases N] [--seed S] [--jobs J] [--only corrupt,http]
 *                   [--cli N] [--hang-ms MS] [--soak 10m] [--out FILE]
 *                   [--replay stories:header:123]
 *
 * --cases is per fixture and kind (default 300: 2 × 3 × 300 = 1,800 files,
 * 3,600 runs); --jobs worker processes (default 1: fuzzing shares the
 * machine). Prints tables, then one JSON line; exits 1 on any failing
 * outcome. Everything is deterministic for a given --seed.
 */
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { arg, argv, intArg } from '../bench/args.js';
import { KINDS, OUTCOMES, Mutator, generate, runCase, type Kind } from './corrupt.js';
import { fuzzCorrupt, type CorruptReport } from './corrupt-runner.js';
import { FIXTURES, writeFixtures, type Fixture, type FixtureName } from './fixtures.js';
import { cliSample, type CliReport } from './cli-sample.js';
import { faultMatrix, formatMatrix, type MatrixReport } from './http-matrix.js';
import { soak, formatSoak, parseDuration, type SoakReport } from './soak.js';
import { readFile } from 'node:fs/promises';

const SECTIONS = ['corrupt', 'http', 'soak'] as const;
const only = (arg('only') ?? (arg('soak') ? 'soak' : 'corrupt,http')).split(',').map((s) => s.trim());
for (const s of only) if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`--only: unknown ${s} (one of ${SECTIONS.join(', ')})`);
const CASES = intArg('cases', 300, 1);
const SEED = intArg('seed', 1, 0);
const JOBS = intArg('jobs', 1, 1);
const CLI = intArg('cli', 6, 0);
const HANG_MS = intArg('hang-ms', 20_000, 100);
const OUT = arg('out');

const pad = (s: string | number, w: number) => String(s).padStart(w);

function formatCorrupt(r: CorruptReport): string {
  const lines: string[] = [];
  const cols = OUTCOMES;
  lines.push(`${'fixture'.padEnd(8)} ${'kind'.padEnd(9)} ${cols.map((c) => pad(c, 9)).join(' ')}`);
  const total = Object.fromEntries(cols.map((c) => [c, 0])) as Record<string, number>;
  for (const [fx, byKind] of Object.entries(r.counts)) {
    for (const k of KINDS) {
      const row = byKind[k];
      if (cols.every((c) => row[c] === 0)) continue;
      for (const c of cols) total[c]! += row[c];
      lines.push(`${fx.padEnd(8)} ${k.padEnd(9)} ${cols.map((c) => pad(row[c], 9)).join(' ')}`);
    }
  }
  lines.push(`${'all'.padEnd(8)} ${''.padEnd(9)} ${cols.map((c) => pad(total[c]!, 9)).join(' ')}`);
  lines.push(`typed errors: ${Object.entries(r.errors).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`);
  const rules = Object.entries(r.rules).sort((a, b) => b[1] - a[1]);
  lines.push(`the ${Math.min(12, rules.length)} most frequent of ${rules.length} distinct error messages (numbers as N):`);
  for (const [m, n] of rules.slice(0, 12)) lines.push(`${pad(n, 8)}  ${m}`);
  lines.push(`${r.mutations} mutated files, ${r.runs} runs in ${r.seconds.toFixed(0)} s; slowest run ${r.maxMs.toFixed(0)} ms`);
  for (const f of r.failures.slice(0, 20)) lines.push(`FAIL ${f.outcome}: ${f.fixture}:${f.kind}:${f.i} (${f.strategy}) ${f.what} => ${f.detail}`);
  if (r.failures.length > 20) lines.push(`... and ${r.failures.length - 20} more failures`);
  return lines.join('\n');
}

async function replay(spec: string, fixtures: Fixture[]): Promise<void> {
  const [name, kind, i] = spec.split(':');
  const fx = fixtures.find((f) => f.name === name);
  if (!fx || !KINDS.includes(kind as Kind) || !Number.isInteger(Number(i))) throw new Error('--replay fixture:kind:i, e.g. stories:header:12');
  const bytes = new Uint8Array(await readFile(fx.file));
  const m = await new Mutator(bytes, SEED).make(kind as Kind, Number(i));
  console.log(m.what);
  for (const strategy of ['dense', 'window'] as const) {
    const ref = await generate(bytes, { ...fx.spec, strategy });
    const r = await runCase(m.bytes, { ...fx.spec, strategy }, ref, HANG_MS, m.relabel);
    console.log(`${strategy}: ${r.outcome} ${r.detail} (${r.ms.toFixed(0)} ms)`);
    if (r.outcome === 'stack') {
      try {
        await generate(m.bytes, { ...fx.spec, strategy });
      } catch (e) {
        console.log(e);
      }
    }
  }
}

async function main(): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'flashlm-fuzz-'));
  const result: { fuzz: string; seed: number; command: string; machine: string; corrupt?: unknown; cli?: Omit<CliReport, 'lines'>; http?: unknown; soak?: SoakReport } = {
    fuzz: 'flashlm',
    seed: SEED,
    command: `npm run fuzz -- ${argv.join(' ')}`.trim(),
    machine: `${cpus().length} × ${cpus()[0]?.model ?? '?'}, load ${loadavg()[0]!.toFixed(2)}`,
  };
  let failed = 0;
  try {
    const names = (arg('fixtures')?.split(',') ?? [...FIXTURES]) as FixtureName[];
    const fixtures = await writeFixtures(dir, names);
    const replaySpec = arg('replay');
    if (replaySpec) {
      await replay(replaySpec, fixtures);
      return 0;
    }
    console.log(`# ${result.command}\n# ${result.machine}; fixtures: ${fixtures.map((f) => `${f.name} ${(f.bytes / 1e6).toFixed(1)} MB`).join(', ')}`);

    if (only.includes('corrupt')) {
      console.log(`\n## corrupted files: ${CASES} mutations per fixture and kind (${KINDS.join(', ')}), each run dense and window; seed ${SEED}, ${JOBS} worker(s)`);
      const r = await fuzzCorrupt({
        fixtures,
        cases: CASES,
        seed: SEED,
        strategies: ['dense', 'window'],
        jobs: JOBS,
        hangMs: HANG_MS,
        onProgress: (done, total) => {
          if (process.stderr.isTTY) process.stderr.write(`\r${done} / ${total} runs`);
          else if (done % 10_000 === 0) process.stderr.write(`${done} / ${total} runs, ${new Date().toISOString()}\n`);
        },
      });
      if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
      console.log(formatCorrupt(r));
      failed += r.failures.length;
      result.corrupt = { mutations: r.mutations, runs: r.runs, seconds: Math.round(r.seconds), counts: r.counts, errors: r.errors, distinctMessages: Object.keys(r.rules).length, failures: r.failures.slice(0, 50) };
      if (CLI > 0) {
        console.log(`\n## through the real CLI: ${CLI} mutations per fixture and kind, \`flashlm run\` in a child process`);
        const c = await cliSample(fixtures, CLI, SEED, dir);
        console.log(c.lines.join('\n'));
        failed += c.failures;
        result.cli = { runs: c.runs, counts: c.counts, failures: c.failures };
      }
    }
    if (only.includes('http')) {
      console.log('\n## HTTP fault matrix (scripted server on 127.0.0.1; "once": the first request the phase makes, "always": every request of the phase)');
      const m: MatrixReport = await faultMatrix(fixtures.find((f) => f.name === 'stories') ?? fixtures[0]!);
      console.log(formatMatrix(m));
      failed += m.failures;
      // The JSON line keeps each cell's outcome and time; the messages are in the table above.
      result.http = { seconds: Math.round(m.seconds), failures: m.failures, cells: m.cells.map((c) => [c.transport, c.fault, c.target, c.mode, c.outcome, Math.round(c.ms)]) };
    }
    if (only.includes('soak')) {
      const ms = parseDuration(arg('soak') ?? '10m');
      console.log(`\n## soak: ${(ms / 60_000).toFixed(1)} min of generations and API requests over HTTP`);
      const s = await soak(fixtures.find((f) => f.name === 'stories') ?? fixtures[0]!, ms, dir);
      console.log(formatSoak(s));
      failed += s.failures;
      result.soak = s;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  (result as Record<string, unknown>).failed = failed;
  const line = JSON.stringify(result);
  console.log(line);
  if (OUT) {
    await mkdir(dirname(OUT), { recursive: true });
    await writeFile(OUT, line + '\n');
  }
  if (failed) console.log(`${failed} failing case(s)`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
