/**
 * Runs the corrupted-file fuzzer in worker processes (fuzz/worker.ts) with a
 * watchdog: a worker silent for longer than a case may take is killed and
 * its case counted as a hang; a worker that dies mid-case (a crash, an
 * out-of-memory) counts as a crash. Either way the next worker resumes at
 * the following case, so one bad case never hides the others.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FAILING, KINDS, OUTCOMES, type Kind, type Outcome } from './corrupt.js';
import type { Fixture } from './fixtures.js';
import type { Job, WorkerMessage } from './worker.js';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));

export interface Failure {
  fixture: string;
  kind: Kind;
  i: number;
  strategy: string;
  outcome: Outcome;
  what: string;
  detail: string;
}

export interface CorruptReport {
  /** Mutated files (each run once per strategy). */
  mutations: number;
  /** Runs: mutations × strategies. */
  runs: number;
  /** Runs per fixture, kind and outcome. */
  counts: Record<string, Record<Kind, Record<Outcome, number>>>;
  /** Typed errors by class. */
  errors: Record<string, number>;
  /** Typed errors by message, numbers elided. */
  rules: Record<string, number>;
  failures: Failure[];
  /** Slowest run that ended (ms). */
  maxMs: number;
  seconds: number;
}

export interface CorruptOptions {
  fixtures: Fixture[];
  /** Mutations per fixture and kind. */
  cases: number;
  seed: number;
  strategies: ('dense' | 'window')[];
  jobs: number;
  /** A run that has not ended after this long is a hang. */
  hangMs: number;
  kinds?: readonly Kind[];
  /** Called now and then with the runs done so far. */
  onProgress?: (done: number, total: number) => void;
}

function emptyCounts(): Record<Kind, Record<Outcome, number>> {
  const c = {} as Record<Kind, Record<Outcome, number>>;
  for (const k of KINDS) c[k] = Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<Outcome, number>;
  return c;
}

export async function fuzzCorrupt(o: CorruptOptions): Promise<CorruptReport> {
  const t0 = performance.now();
  const kinds = o.kinds ?? KINDS;
  const report: CorruptReport = { mutations: 0, runs: 0, counts: {}, errors: {}, rules: {}, failures: [], maxMs: 0, seconds: 0 };
  for (const f of o.fixtures) report.counts[f.name] = emptyCounts();
  const total = o.fixtures.length * kinds.length * o.cases * o.strategies.length;

  // Work in slices, so jobs share it evenly and a restart loses little.
  const slice = Math.max(1, Math.min(500, Math.ceil(o.cases / Math.max(1, o.jobs))));
  const queue: { fixture: Fixture; kind: Kind; from: number; to: number }[] = [];
  for (const fixture of o.fixtures) for (const kind of kinds) for (let from = 0; from < o.cases; from += slice) queue.push({ fixture, kind, from, to: Math.min(o.cases, from + slice) });

  const record = (fixture: Fixture, kind: Kind, i: number, strategy: string, outcome: Outcome, what: string, detail: string, ms = 0) => {
    report.counts[fixture.name]![kind][outcome]++;
    report.runs++;
    if (outcome === 'error') {
      const cls = detail.split(':')[0]!;
      report.errors[cls] = (report.errors[cls] ?? 0) + 1;
      // The rule that caught it, numbers and names elided: which checks do the work.
      const rule = detail.replace(/^\w+: /, '').replace(/\d+/g, 'N').replace(/"[^"]*"/g, '"…"').slice(0, 70);
      report.rules[rule] = (report.rules[rule] ?? 0) + 1;
    }
    if (FAILING.has(outcome)) report.failures.push({ fixture: fixture.name, kind, i, strategy, outcome, what, detail });
    if (ms > report.maxMs) report.maxMs = ms;
    if (report.runs % 200 === 0) o.onProgress?.(report.runs, total);
  };

  /** Runs [from, to) of a slice in workers until every case has an outcome. */
  const runSlice = async (s: (typeof queue)[number]) => {
    let next = s.from;
    while (next < s.to) {
      const job: Job = { fixture: s.fixture, kind: s.kind, strategies: o.strategies, from: next, to: s.to, seed: o.seed, hangMs: o.hangMs };
      // A worker of its own for each attempt; --max-old-space-size bounds what a header claiming huge sizes can take.
      const child: ChildProcess = fork(WORKER, [], { execArgv: ['--import=tsx', '--max-old-space-size=1024'], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
      child.send(job);
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      let current = { i: next, what: '', strategiesDone: 0 };
      const ended = await new Promise<'done' | 'hang' | 'crash'>((resolve) => {
        let watchdog: ReturnType<typeof setTimeout>;
        // The reference generation and the first case may be slow; then each run has hangMs, plus slack for the worker's own timer.
        const arm = (ms: number) => {
          clearTimeout(watchdog);
          watchdog = setTimeout(() => resolve('hang'), ms);
        };
        arm(o.hangMs * 4 + 30_000);
        child.on('message', (m: WorkerMessage) => {
          if (m.type === 'start') current = { i: m.i, what: m.what, strategiesDone: 0 };
          else if (m.type === 'case') {
            record(s.fixture, s.kind, m.i, m.strategy, m.outcome, m.what, m.detail, m.ms);
            current.strategiesDone++;
            if (current.strategiesDone === o.strategies.length) {
              report.mutations++;
              next = m.i + 1;
            }
          } else if (m.type === 'done') {
            clearTimeout(watchdog);
            resolve('done');
          } else if (m.type === 'fatal') {
            clearTimeout(watchdog);
            stderr += m.message;
            resolve('crash');
            return;
          }
          arm(o.hangMs * 2 + 10_000);
        });
        child.once('exit', () => {
          clearTimeout(watchdog);
          resolve('crash');
        });
      });
      if (ended !== 'done' || child.exitCode === null) child.kill('SIGKILL');
      if (ended === 'done') break;
      // The case in flight gets the verdict for each run it had left; the next worker starts after it.
      if (next < s.to) {
        if (current.i !== next) current = { i: next, what: '(stopped before the case was made)', strategiesDone: 0 };
        const detail = ended === 'hang' ? `worker silent for ${o.hangMs * 2 + 10_000} ms` : stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 300);
        for (const strategy of o.strategies.slice(current.strategiesDone)) record(s.fixture, s.kind, next, strategy, ended, current.what, detail);
        report.mutations++;
        next++;
      }
    }
  };

  const workers = Array.from({ length: Math.max(1, o.jobs) }, async () => {
    for (let s = queue.shift(); s; s = queue.shift()) await runSlice(s);
  });
  await Promise.all(workers);
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}
