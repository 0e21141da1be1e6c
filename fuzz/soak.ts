/**
 * The soak: for a given time, a model over HTTP (the fixture served by
 * `flashlm host` in a child process) answers a mix of direct generations
 * (greedy and sampled, plain and window strategies alternating by round)
 * and OpenAI-API requests through `startApiServer` (completions, streaming
 * or not, some abandoned mid-stream by the client). Every round (a minute)
 * closes the model and the API server and opens them again, so open/close
 * leaks show too. Every few seconds it samples this process's RSS, V8 heap
 * (after a full GC when --expose-gc is on), external and ArrayBuffer
 * memory, its active handles, and the host child's RSS; at the end it
 * prints the least-squares slope of each (MB per minute) over the samples
 * after the first fifth (warm-up: JIT, caches, pools filling).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openModel, type Model } from '../src/node.js';
import { startApiServer, type ApiServer } from '../src/cli/serve.js';
import { rng } from '../src/util/random.js';
import type { Fixture } from './fixtures.js';

const ENTRY = fileURLToPath(new URL('./flashlm.ts', import.meta.url));
const ROUND_MS = 60_000;
const SAMPLE_MS = 5_000;
const MB = 1024 * 1024;

export interface SoakSample {
  s: number;
  rss: number;
  heap: number;
  external: number;
  arrayBuffers: number;
  handles: number;
  hostRss: number;
  /** The host child's V8 heap after its own full GC (last report). */
  hostHeap: number;
}

export interface SoakReport {
  minutes: number;
  generations: number;
  apiRequests: number;
  abandoned: number;
  rounds: number;
  tokens: number;
  errorCount: number;
  /** The first few. */
  errors: string[];
  /** MB per minute after the warm-up (handles: per minute). */
  slopes: Record<'rss' | 'heap' | 'external' | 'arrayBuffers' | 'hostRss' | 'hostHeap' | 'handles', number>;
  first: SoakSample;
  last: SoakSample;
  peakRss: number;
  samples: number;
  failures: number;
}

export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) throw new Error(`--soak: a duration such as 10m, 90s or 1h, got ${s}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 'm') as 'ms' | 's' | 'm' | 'h'];
}

function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den ? num / den : 0;
}

async function childRss(pid: number | undefined): Promise<number> {
  if (!pid) return 0;
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

const PROMPTS = ['Once upon a time', 'Lily and Tom', 'The little dog', 'One day, a', 'She was happy because', ''];

export async function soak(fx: Fixture, durationMs: number, _dir: string): Promise<SoakReport> {
  // The host reports its own heap after a full GC every few seconds (on stderr), so its RSS can be told from lazy collection.
  const probe = `data:text/javascript,setInterval(()=>{globalThis.gc();process.stderr.write('soak-heap '+process.memoryUsage().heapUsed+'\\n')},${SAMPLE_MS}).unref()`;
  const host = spawn(process.execPath, ['--expose-gc', `--import=${probe}`, '--import=tsx', ENTRY, 'host', dirname(fx.file), '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let hostHeap = 0;
  host.stderr.on('data', (d: Buffer) => {
    const m = /soak-heap (\d+)\n(?![\s\S]*soak-heap)/.exec(d.toString());
    if (m) hostHeap = Number(m[1]);
  });
  const origin = await new Promise<string>((resolve, reject) => {
    let out = '';
    host.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = / at (http:\/\/[^/\s]+)\//.exec(out);
      if (m) resolve(m[1]!);
    });
    host.stderr.on('data', (d: Buffer) => (out += d.toString()));
    host.once('exit', () => reject(new Error(`flashlm host exited: ${out}`)));
  });
  const url = `${origin}/${basename(fx.file)}`;
  const gc = (globalThis as { gc?: () => void }).gc;
  const r = rng(7);
  const report = { generations: 0, apiRequests: 0, abandoned: 0, rounds: 0, tokens: 0, errorCount: 0, errors: [] as string[] };
  const samples: SoakSample[] = [];
  const t0 = performance.now();
  const sample = async () => {
    gc?.();
    const m = process.memoryUsage();
    samples.push({ s: (performance.now() - t0) / 1000, rss: m.rss, heap: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, handles: process.getActiveResourcesInfo().length, hostRss: await childRss(host.pid), hostHeap });
  };
  const error = (e: unknown) => {
    report.errorCount++;
    if (report.errors.length < 5) report.errors.push(String((e as Error)?.message ?? e).slice(0, 200));
  };
  let nextSample = 0;
  try {
    while (performance.now() - t0 < durationMs) {
      report.rounds++;
      const strategy = report.rounds % 2 ? 'window' : 'hybrid';
      let model: Model | undefined;
      let api: ApiServer | undefined;
      try {
        model = await openModel(url, { strategy, threads: 1, contextLength: 256, http: { timeoutMs: 10_000 } });
        api = await startApiServer(model, { port: 0, queue: 4 });
        const roundEnd = Math.min(performance.now() + ROUND_MS, t0 + durationMs);
        while (performance.now() < roundEnd) {
          if (performance.now() - t0 >= nextSample) {
            await sample();
            nextSample += SAMPLE_MS;
          }
          const prompt = PROMPTS[Math.floor(r() * PROMPTS.length)]!;
          const maxTokens = 16 + Math.floor(r() * 48);
          const pick = r();
          try {
            if (pick < 0.4) {
              for await (const _ of model.generate(prompt, { maxTokens, temperature: r() < 0.5 ? 0 : 0.8, seed: Math.floor(r() * 1e6) })) report.tokens++;
              report.generations++;
            } else if (pick < 0.9) {
              const stream = pick < 0.65;
              const res = await fetch(`${api.origin}/v1/completions`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0.7, seed: Math.floor(r() * 1e6), stream }),
              });
              if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
              if (stream) await res.text();
              else report.tokens += ((await res.json()) as { usage?: { completion_tokens?: number } }).usage?.completion_tokens ?? 0;
              report.apiRequests++;
            } else {
              // A client that walks away mid-stream: the server must stop generating and free the request.
              const ac = new AbortController();
              const res = await fetch(`${api.origin}/v1/completions`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ prompt, max_tokens: 200, stream: true }),
                signal: ac.signal,
              });
              const reader = res.body!.getReader();
              await reader.read();
              ac.abort();
              await reader.cancel().catch(() => {});
              report.abandoned++;
              // A request queued behind it ends once the server has stopped the abandoned one: the model is free again for direct calls.
              const after = await fetch(`${api.origin}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, max_tokens: 1 }) });
              if (after.status !== 200) throw new Error(`after an abandoned stream: HTTP ${after.status}: ${await after.text()}`);
              await after.text();
              report.apiRequests++;
            }
          } catch (e) {
            error(e);
          }
        }
      } catch (e) {
        error(e);
      } finally {
        await api?.close();
        await model?.close();
      }
    }
    await sample();
  } finally {
    host.kill('SIGTERM');
  }
  const warm = samples.slice(Math.floor(samples.length / 5));
  const xs = warm.map((s) => s.s / 60);
  const sl = (k: keyof SoakSample, scale: number) => slope(xs, warm.map((s) => s[k] / scale));
  const slopes = { rss: sl('rss', MB), heap: sl('heap', MB), external: sl('external', MB), arrayBuffers: sl('arrayBuffers', MB), hostRss: sl('hostRss', MB), hostHeap: sl('hostHeap', MB), handles: sl('handles', 1) };
  const first = warm[0] ?? samples[0]!;
  const last = samples[samples.length - 1]!;
  // A failure is an error, or (over 5 minutes or more, where a slope means something) growth that does not level off:
  // more than 1 MB/min of heap after GC or of RSS, or handles that keep piling up.
  const long = durationMs >= 300_000;
  const failures = report.errorCount + (long && gc && slopes.heap > 1 ? 1 : 0) + (long && slopes.rss > 1 ? 1 : 0) + (last.handles > first.handles + 20 ? 1 : 0);
  return { minutes: (performance.now() - t0) / 60_000, ...report, slopes, first, last, peakRss: Math.max(...samples.map((s) => s.rss)), samples: samples.length, failures };
}

export function formatSoak(s: SoakReport): string {
  const mb = (b: number) => (b / MB).toFixed(1);
  const rows: [string, string, string, string][] = [
    ['rss', mb(s.first.rss), mb(s.last.rss), s.slopes.rss.toFixed(3)],
    ['heap used (after GC)', mb(s.first.heap), mb(s.last.heap), s.slopes.heap.toFixed(3)],
    ['external', mb(s.first.external), mb(s.last.external), s.slopes.external.toFixed(3)],
    ['arrayBuffers', mb(s.first.arrayBuffers), mb(s.last.arrayBuffers), s.slopes.arrayBuffers.toFixed(3)],
    ['host child rss', mb(s.first.hostRss), mb(s.last.hostRss), s.slopes.hostRss.toFixed(3)],
    ['host heap (after GC)', mb(s.first.hostHeap), mb(s.last.hostHeap), s.slopes.hostHeap.toFixed(3)],
    ['active handles', String(s.first.handles), String(s.last.handles), s.slopes.handles.toFixed(3)],
  ];
  const lines = [`${'metric'.padEnd(22)} ${'after warm-up'.padStart(14)} ${'end'.padStart(10)} ${'slope /min'.padStart(11)}  (MB; handles: count)`];
  for (const [a, b, c, d] of rows) lines.push(`${a.padEnd(22)} ${b.padStart(14)} ${c.padStart(10)} ${d.padStart(11)}`);
  lines.push(`${s.minutes.toFixed(1)} min, ${s.rounds} rounds (open/close), ${s.generations} generations, ${s.apiRequests} API requests, ${s.abandoned} abandoned streams, ${s.tokens} tokens; ${s.samples} samples, peak RSS ${mb(s.peakRss)} MB`);
  if (s.errorCount) lines.push(`errors (${s.errorCount}): ${s.errors.join(' | ')}`);
  return lines.join('\n');
}
