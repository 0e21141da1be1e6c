/**
 * A corrupted-file fuzz worker (a child process, so the parent can kill a
 * case that hangs in synchronous code or takes the process down). Gets one
 * job over IPC, runs its cases in order and reports each as it ends.
 */
import { readFile } from 'node:fs/promises';
import { Mutator, runCase, generate, type Kind, type CaseResult } from './corrupt.js';
import type { Fixture } from './fixtures.js';

export interface Job {
  fixture: Fixture;
  kind: Kind;
  strategies: ('dense' | 'window')[];
  from: number;
  to: number;
  seed: number;
  hangMs: number;
}

export type WorkerMessage =
  | ({ type: 'case'; i: number; strategy: string; what: string } & CaseResult)
  | { type: 'start'; i: number; what: string }
  | { type: 'done' }
  | { type: 'fatal'; message: string };

const send = (m: WorkerMessage) => new Promise<void>((resolve) => process.send!(m, undefined, {}, () => resolve()));

process.once('message', async (job: Job) => {
  try {
    const bytes = new Uint8Array(await readFile(job.fixture.file));
    const mutator = new Mutator(bytes, job.seed);
    const reference = new Map<string, string>();
    for (const s of job.strategies) reference.set(s, await generate(bytes, { ...job.fixture.spec, strategy: s }));
    for (let i = job.from; i < job.to; i++) {
      const m = await mutator.make(job.kind, i);
      await send({ type: 'start', i, what: m.what });
      for (const strategy of job.strategies) {
        const r = await runCase(m.bytes, { ...job.fixture.spec, strategy }, reference.get(strategy)!, job.hangMs, m.relabel);
        await send({ type: 'case', i, strategy, what: m.what, ...r });
      }
    }
    await send({ type: 'done' });
  } catch (e) {
    await send({ type: 'fatal', message: String((e as Error)?.stack ?? e) });
  }
  process.disconnect();
});
