/**
 * The HTTP fault matrix: a scripted server on 127.0.0.1 (test/helpers/
 * scripted-server.ts) serves a real .flm and injects one fault, either once
 * (the first request of the phase under test: retries should recover) or
 * always (every request of that phase: a typed error must end it, in
 * bounded time). Phases: `open` (the size probe and the header), `load`
 * (the resident weights, dense: the whole model), and generation under
 * each streaming strategy (the FFN reads). Each case is one openModel +
 * greedy generation through the undici source, as `flashlm run URL` does;
 * outcome and time to end are recorded.
 */
import { FlashlmError } from '../src/errors.js';
import { openModel, type Strategy } from '../src/node.js';
import { HttpSource } from '../src/source/http.js';
import type { HttpOptions } from '../src/source/http-common.js';
import { startScripted, type Fault, type Recorded } from '../test/helpers/scripted-server.js';
import { readFile } from 'node:fs/promises';
import { headerOf } from './corrupt.js';
import type { Fixture } from './fixtures.js';

const RANGE = /^bytes=(\d+)-(\d*)$/;

/** A fault, possibly depending on the request (Content-Range built from the asked range) and on the file size. */
type FaultFn = (req: Recorded, size: number, server: { etag: string | undefined }) => Fault | undefined;

export const FAULTS: { name: string; fault: FaultFn }[] = [
  { name: '200 instead of 206', fault: () => ({ ignoreRange: true }) },
  { name: 'Content-Range shifted by 1', fault: (q, size) => { const m = RANGE.exec(q.range ?? ''); return m ? { contentRange: `bytes ${Number(m[1]) + 1}-${Math.min(size - 1, Number(m[2] || size - 1)) + 1}/${size}` } : undefined; } },
  { name: 'Content-Range, wrong size', fault: (q, size) => { const m = RANGE.exec(q.range ?? ''); return m ? { contentRange: `bytes ${m[1]}-${Math.min(size - 1, Number(m[2] || size - 1))}/${size + 4096}` } : undefined; } },
  { name: 'reset after headers', fault: () => ({ drop: 0 }) },
  { name: 'reset mid-body', fault: () => ({ drop: 1000 }) },
  { name: '503', fault: () => ({ status: 503 }) },
  { name: '429 + Retry-After: 1', fault: () => ({ status: 429, headers: { 'retry-after': '1' } }) },
  { name: '404', fault: () => ({ status: 404 }) },
  { name: 'ETag changes', fault: (_q, _s, server) => ((server.etag = '"v2"'), undefined) },
  { name: 'short body', fault: () => ({ short: 10 }) },
  { name: 'long body (+1 byte)', fault: () => ({ extraByte: true }) },
  { name: 'redirect to itself', fault: () => ({ status: 302, headers: { location: '/model.flm' } }) },
  { name: 'gzip on a 206', fault: () => ({ gzip: true }) },
  { name: 'multipart/byteranges', fault: () => ({ multipart: true }) },
  { name: 'slow first byte 0.5 s', fault: () => ({ delayMs: 500 }) },
  { name: 'slow first byte 3 s', fault: () => ({ delayMs: 3000 }) },
  { name: 'stall after headers', fault: () => ({ stallMs: 5000 }) },
  { name: 'trickle (8 pieces, 0.8 s apart)', fault: () => ({ trickleMs: 800 }) },
  { name: 'never answers', fault: () => ({ never: true }) },
];

export type Target = 'open' | 'load' | Exclude<Strategy, 'dense'>;
export const TARGETS: readonly Target[] = ['open', 'load', 'naive', 'hybrid', 'predictor', 'window'];
export type Mode = 'once' | 'always';
/** undici: what Node's openModel(URL) uses; fetch: the browsers' and Deno's source (HttpSource). */
export type Transport = 'undici' | 'fetch';
export const TRANSPORTS: readonly Transport[] = ['undici', 'fetch'];

/** Short limits, so that an unrecoverable case ends in seconds (the CLI's flags set the same options). */
export const MATRIX_HTTP: HttpOptions = {
  timeoutMs: 1000,
  retries: 3,
  retryBaseMs: 50,
  retryMaxMs: 1000,
  lowSpeedLimit: 16 * 1024,
  lowSpeedTimeMs: 1500,
  deadlineMs: 15_000,
};

export interface MatrixCell {
  transport: Transport;
  fault: string;
  target: Target;
  mode: Mode;
  outcome: 'same' | 'error' | 'stack' | 'different' | 'hang';
  ms: number;
  /** The error's class and message (errors), or what went wrong. */
  detail: string;
  requests: number;
  retries: number;
}

export interface MatrixReport {
  cells: MatrixCell[];
  failures: number;
  seconds: number;
}

const CASE_LIMIT_MS = 60_000;

export async function runFaultCase(bytes: Uint8Array, weightsStart: number, fx: Fixture, reference: Map<string, string>, http0: HttpOptions, transport: Transport, faultName: string, target: Target, mode: Mode): Promise<MatrixCell> {
  const f = FAULTS.find((x) => x.name === faultName)!;
  let phaseActive = false;
  let fired = false;
  const server = await startScripted({
    size: bytes.byteLength,
    content: (offset, length) => bytes.subarray(offset, offset + length),
    etag: '"v1"',
    fault: (_n, req) => {
      if (!phaseActive) return undefined;
      const start = Number(RANGE.exec(req.range ?? '')?.[1] ?? 0);
      // open: the probe and the header; the other phases: weight reads.
      if (target === 'open' ? start >= weightsStart : start < weightsStart) return undefined;
      if (mode === 'once' && fired) return undefined;
      fired = true;
      return f.fault(req, bytes.byteLength, server);
    },
  });
  const strategy: Strategy = target === 'open' || target === 'load' ? 'dense' : target;
  let retries = 0;
  const http: HttpOptions = { ...http0, onRetry: () => retries++ };
  const t0 = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const cell = (outcome: MatrixCell['outcome'], detail: string): MatrixCell => ({ transport, fault: faultName, target, mode, outcome, ms: performance.now() - t0, detail, requests: server.requests.length, retries });
  const attempt = async (): Promise<MatrixCell> => {
    if (target === 'open' || target === 'load') phaseActive = true;
    const source = transport === 'fetch' ? await HttpSource.open(server.url, http) : server.url;
    const model = await openModel(source, { strategy, threads: 1, contextLength: fx.spec.contextLength, http });
    try {
      phaseActive = true;
      let out = '';
      for await (const s of model.generate(fx.spec.prompt, { maxTokens: fx.spec.tokens, temperature: 0 })) out += s;
      return out === reference.get(strategy) ? cell('same', '') : cell('different', JSON.stringify(out.slice(0, 60)));
    } finally {
      await model.close();
    }
  };
  try {
    const hang = new Promise<MatrixCell>((resolve) => (timer = setTimeout(() => resolve(cell('hang', `no end after ${CASE_LIMIT_MS / 1000} s`)), CASE_LIMIT_MS)));
    return await Promise.race([attempt(), hang]);
  } catch (e) {
    if (e instanceof FlashlmError) return cell('error', `${e.name}: ${e.message}`);
    return cell('stack', String((e as Error)?.stack ?? e).split('\n').slice(0, 3).join(' | '));
  } finally {
    clearTimeout(timer);
    await server.stop();
  }
}

/** Every fault × target × mode, `parallel` cases at a time (they mostly wait). */
export async function faultMatrix(fx: Fixture, o: { parallel?: number; faults?: string[]; targets?: readonly Target[]; modes?: Mode[]; http?: HttpOptions; transports?: readonly Transport[] } = {}): Promise<MatrixReport> {
  const t0 = performance.now();
  const bytes = new Uint8Array(await readFile(fx.file));
  const h = headerOf(bytes);
  const weightsStart = Math.min(...h.sections.map((s) => s.offset));
  const reference = new Map<string, string>();
  const { MemorySource } = await import('../src/source/memory.js');
  for (const s of ['dense', 'naive', 'hybrid', 'predictor', 'window'] as const) {
    const m = await openModel(new MemorySource(bytes), { strategy: s, threads: 1, contextLength: fx.spec.contextLength });
    let out = '';
    for await (const t of m.generate(fx.spec.prompt, { maxTokens: fx.spec.tokens, temperature: 0 })) out += t;
    await m.close();
    reference.set(s, out);
  }
  const todo: [Transport, string, Target, Mode][] = [];
  for (const tr of o.transports ?? TRANSPORTS) for (const f of o.faults ?? FAULTS.map((x) => x.name)) for (const t of o.targets ?? TARGETS) for (const m of o.modes ?? (['once', 'always'] as Mode[])) todo.push([tr, f, t, m]);
  const cells: MatrixCell[] = [];
  await Promise.all(
    Array.from({ length: o.parallel ?? 6 }, async () => {
      for (let c = todo.shift(); c; c = todo.shift()) cells.push(await runFaultCase(bytes, weightsStart, fx, reference, { ...MATRIX_HTTP, ...o.http }, ...c));
    }),
  );
  const failures = cells.filter((c) => c.outcome !== 'same' && c.outcome !== 'error').length;
  return { cells, failures, seconds: (performance.now() - t0) / 1000 };
}

const CODE: Record<MatrixCell['outcome'], string> = { same: 'ok', error: 'err', stack: 'STACK', different: 'DIFF', hang: 'HANG' };

export function formatMatrix(r: MatrixReport): string {
  const lines: string[] = [];
  for (const tr of TRANSPORTS) {
    const cells = r.cells.filter((c) => c.transport === tr);
    if (!cells.length) continue;
    const faults = [...new Set(cells.map((c) => c.fault))];
    const targets = TARGETS.filter((t) => cells.some((c) => c.target === t));
    const w = Math.max(...faults.map((f) => f.length), tr.length + 2);
    const cellText = (f: string, t: Target, m: Mode) => {
      const c = cells.find((x) => x.fault === f && x.target === t && x.mode === m);
      return c ? `${CODE[c.outcome]} ${(c.ms / 1000).toFixed(1)}` : '-';
    };
    lines.push(`${`[${tr}]`.padEnd(w)}  ${targets.map((t) => `${t} once | always`.padStart(22)).join(' ')}`);
    for (const f of faults) lines.push(`${f.padEnd(w)}  ${targets.map((t) => `${cellText(f, t, 'once')} | ${cellText(f, t, 'always')}`.padStart(22)).join(' ')}`);
    lines.push('');
  }
  lines.push('(cells: outcome and seconds to end; ok = the reference text, err = a typed one-line error)');
  // One error message per fault (undici, the always-on case where one exists): what users read.
  for (const f of [...new Set(r.cells.map((c) => c.fault))]) {
    const c = r.cells.find((x) => x.fault === f && x.mode === 'always' && x.outcome === 'error') ?? r.cells.find((x) => x.fault === f && x.outcome === 'error');
    if (c) lines.push(`  ${f}: ${c.detail.replace(/http:\/\/127\.0\.0\.1:\d+/, 'URL').slice(0, 200)}`);
  }
  for (const c of r.cells.filter((x) => x.outcome !== 'same' && x.outcome !== 'error')) lines.push(`FAIL ${c.outcome}: [${c.transport}] ${c.fault} ${c.target} ${c.mode}: ${c.detail}`);
  const ms = r.cells.map((c) => c.ms).sort((a, b) => a - b);
  lines.push(`${r.cells.length} cases in ${r.seconds.toFixed(0)} s; time to end: median ${(ms[ms.length >> 1]! / 1000).toFixed(1)} s, max ${(ms[ms.length - 1]! / 1000).toFixed(1)} s`);
  return lines.join('\n');
}
