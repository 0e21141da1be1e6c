/**
 * A sample of the corrupted files through the real `flashlm run` (a child
 * process each): the in-process verdicts assume src/cli/main.ts prints a
 * FlashlmError in one line; this checks it end to end. Verdicts: exit 0 with
 * the reference text (same), exit 1 with exactly one stderr line starting
 * "flashlm: " (error), anything else (stack, different, hang).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../test/helpers/processes.js';
import { KINDS, Mutator } from './corrupt.js';
import type { Fixture } from './fixtures.js';
import { readFile } from 'node:fs/promises';

const ENTRY = fileURLToPath(new URL('./flashlm.ts', import.meta.url));

export interface CliReport {
  runs: number;
  counts: Record<string, number>;
  failures: number;
  lines: string[];
}

/** `flashlm run` on a file; its verdict against the reference stdout. */
export async function cliVerdict(file: string, fx: Fixture, strategy: string, reference: string | undefined): Promise<{ verdict: string; stdout: string; stderr: string }> {
  const r = await run(process.execPath, ['--import=tsx', ENTRY, 'run', file, '-p', fx.spec.prompt, '-n', String(fx.spec.tokens), '--context', String(fx.spec.contextLength), '--strategy', strategy, '-t', '1'], { timeoutMs: 60_000 });
  const errLines = r.stderr.trim().split('\n');
  let verdict: string;
  if (r.code === 0) verdict = reference === undefined || r.stdout === reference ? 'same' : 'different';
  else if (r.code === 1 && errLines.length === 1 && errLines[0]!.startsWith('flashlm: ')) verdict = 'error';
  else if (r.code === null) verdict = 'hang';
  else verdict = 'stack';
  return { verdict, stdout: r.stdout, stderr: r.stderr };
}

export async function cliSample(fixtures: Fixture[], perKind: number, seed: number, dir: string): Promise<CliReport> {
  const counts: Record<string, number> = {};
  const lines: string[] = [];
  let failures = 0;
  let runs = 0;
  for (const fx of fixtures) {
    const bytes = new Uint8Array(await readFile(fx.file));
    const mutator = new Mutator(bytes, seed);
    for (const strategy of ['dense', 'window']) {
      const ref = await cliVerdict(fx.file, fx, strategy, undefined);
      if (ref.verdict !== 'same') throw new Error(`the unmutated ${fx.name} fails under the CLI: ${ref.stderr}`);
      for (const kind of KINDS) {
        for (let i = 0; i < perKind; i++) {
          // Cases spread over the range the in-process fuzzer covers, so the sample is not only its first few.
          const m = await mutator.make(kind, i * 37);
          const file = join(dir, `cli-${fx.name}.flm`);
          await writeFile(file, m.bytes);
          const v = await cliVerdict(file, fx, strategy, ref.stdout);
          if (v.verdict === 'different' && m.relabel) v.verdict = 'relabel';
          counts[v.verdict] = (counts[v.verdict] ?? 0) + 1;
          runs++;
          if (v.verdict !== 'same' && v.verdict !== 'error' && v.verdict !== 'relabel') {
            failures++;
            lines.push(`FAIL ${v.verdict}: ${fx.name}:${kind}:${i * 37} (${strategy}) ${m.what}\n${v.stderr.split('\n').slice(0, 6).join('\n')}`);
          }
        }
      }
    }
  }
  lines.unshift(`${runs} CLI runs: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return { runs, counts, failures, lines };
}
