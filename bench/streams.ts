/**
 * Why the dots kernels read rows far apart (bench/README "Far rows"): the DRAM
 * read rate of 4 concurrent weight streams by where they sit, with a probe
 * module (bench/streams/probe.ts, compiled here by asc into bench/.cache/) that
 * does the engine's row-dot arithmetic over 384 MiB of f32 rows.
 *
 *   node --import=tsx bench/streams.ts [--cols 768] [--reps 9]
 *
 * Cases, round-robin, medians (and best) of --reps: one row after another; 4
 * neighbouring rows side by side; 4 rows a quarter of the matrix apart; 4 far
 * streams over records that each read 6 KiB and skip 3 KiB (a pass over FFN
 * records' gate and up parts), 3 KiB and skip 6 KiB (the down pass), and read
 * 9 KiB on end. Then the same memory read by 1 and by 2 threads (worker_threads
 * on the shared memory, each thread half of it): with no arithmetic (the
 * memory system's ceiling) and as 4 far rows with the dots' arithmetic (the
 * kernels' pattern), so a 2-thread speed-up of a matvec from memory can be set
 * against what two threads can read at all (`--no-threads` skips it). Prints
 * tables, then one line of JSON.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { argv, intArg } from './args.js';

const cols = intArg('cols', 768, 8);
const reps = intArg('reps', 9, 1);
const here = fileURLToPath(new URL('.', import.meta.url));
const out = `${here}.cache/streams-probe.wasm`;
mkdirSync(`${here}.cache`, { recursive: true });
const TOTAL = 384 * 2 ** 20, W = 1 << 20, X = 4096, OUT = 65536;
const PAGES = (TOTAL + W) / 65536 + 1;
// a shared memory, so the threads' part can run the same module on it from workers
execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/assemblyscript/bin/asc.js', import.meta.url)), `${here}streams/probe.ts`,
  '-O3', '--runtime', 'stub', '--noAssert', '--enable', 'simd', '--enable', 'threads', '--importMemory', '--sharedMemory',
  '--initialMemory', String(PAGES), '--maximumMemory', String(PAGES), '-o', out], { stdio: 'inherit' });

const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES, shared: true } as WebAssembly.MemoryDescriptor);
const module = new WebAssembly.Module(readFileSync(out));
const instance = new WebAssembly.Instance(module, { env: { memory, abort() { throw new Error('abort'); } } });
const e = instance.exports as Record<string, (...a: number[]) => void>;
new Float32Array(memory.buffer, W, TOTAL / 4).fill(0.5);
new Float32Array(memory.buffer, X, cols).fill(1);
const rb = cols * 4, rows = Math.floor(TOTAL / rb / 4) * 4;
const KiB = 1024;
const cases: { name: string; bytes: number; run: () => void; gbs: number[] }[] = [
  { name: 'one row after another', bytes: rows * rb, run: () => e.one_stream!(OUT, W, X, rows, rb), gbs: [] },
  { name: '4 neighbouring rows', bytes: rows * rb, run: () => e.four_rows!(OUT, W, X, rows, rb, 0), gbs: [] },
  { name: '4 rows a quarter apart', bytes: rows * rb, run: () => e.four_rows!(OUT, W, X, rows, rb, 1), gbs: [] },
  ...([[2 * rb, rb], [rb, 2 * rb], [3 * rb, 0]] as const).map(([rd, sk]) => ({
    name: `4 far streams: read ${rd / KiB} KiB, skip ${sk / KiB} KiB`,
    bytes: Math.floor(TOTAL / (rd + sk) / 4) * 4 * rd,
    run: () => e.four_records!(OUT, W, X, TOTAL, rb, rd, sk),
    gbs: [] as number[],
  })),
];
for (const c of cases) c.run();
for (let i = 0; i < reps; i++) {
  for (const c of cases) {
    const t0 = performance.now();
    c.run();
    c.gbs.push(c.bytes / ((performance.now() - t0) / 1000) / 1e9);
  }
}
const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1]!;
console.log(`4 weight streams over ${TOTAL / 2 ** 20} MiB of ${cols}-column f32 rows, GB/s read (median [best] of ${reps})`);
const results = cases.map((c) => ({ name: c.name, gbs: +median(c.gbs).toFixed(2), bestGbs: +Math.max(...c.gbs).toFixed(2) }));
for (const r of results) console.log(`${r.name.padEnd(40)} ${r.gbs.toFixed(1).padStart(6)} [${r.bestGbs.toFixed(1)}]`);

// ---------------------------------------------------------------- 1 thread against 2

/**
 * A worker running probe calls on the shared memory: it waits on ctl[0] (a
 * round number), runs the call in job (name index, then arguments) and adds
 * one to ctl[1].
 */
const NAMES = ['read_only', 'four_rows'];
const WORKER = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl, job, names } = workerData;
const e = new WebAssembly.Instance(module, { env: { memory, abort() { throw new Error('abort'); } } }).exports;
let seen = 0;
for (;;) {
  Atomics.wait(ctl, 0, seen);
  seen = Atomics.load(ctl, 0);
  if (seen < 0) break;
  e[names[job[0]]](...Array.from(job.subarray(1)));
  Atomics.add(ctl, 1, 1);
  Atomics.notify(ctl, 1);
}`;

const threadRows: { name: string; gbs1: number; gbs2: number; ratio: number }[] = [];
if (!argv.includes('--no-threads')) {
  const ctl = new Int32Array(new SharedArrayBuffer(8));
  const job = new Float64Array(new SharedArrayBuffer(8 * 8));
  const worker = new Worker(WORKER, { eval: true, workerData: { module, memory, ctl, job, names: NAMES } });
  worker.unref();
  const OUT2 = OUT + 4096;
  // each case: the call on [0, TOTAL) for one thread, and its two halves (this thread, the worker) for two
  const half = (rows * rb) / 2;
  const tcases = [
    { name: 'read only, 4 far streams per thread', bytes: rows * rb,
      one: () => e.read_only!(OUT, W, rows * rb),
      two: [[0, OUT, W, half], [0, OUT2, W + half, half]] },
    { name: '4 rows a quarter apart, dots', bytes: rows * rb,
      one: () => e.four_rows!(OUT, W, X, rows, rb, 1),
      two: [[1, OUT, W, X, rows / 2, rb, 1], [1, OUT2, W + half, X, rows / 2, rb, 1]] },
  ];
  const g1 = tcases.map(() => [] as number[]), g2 = tcases.map(() => [] as number[]);
  let round = 0;
  const both = (mine: number[], theirs: number[]) => {
    job.set(theirs);
    Atomics.store(ctl, 1, 0);
    Atomics.store(ctl, 0, ++round);
    Atomics.notify(ctl, 0);
    e[NAMES[mine[0]!]!]!(...mine.slice(1));
    while (Atomics.load(ctl, 1) < 1) Atomics.wait(ctl, 1, 0);
  };
  for (const c of tcases) { c.one(); both(c.two[0]!, c.two[1]!); } // warm-up
  for (let i = 0; i < reps; i++) {
    tcases.forEach((c, k) => {
      let t0 = performance.now();
      c.one();
      g1[k]!.push(c.bytes / ((performance.now() - t0) / 1000) / 1e9);
      t0 = performance.now();
      both(c.two[0]!, c.two[1]!);
      g2[k]!.push(c.bytes / ((performance.now() - t0) / 1000) / 1e9);
    });
  }
  Atomics.store(ctl, 0, -1);
  Atomics.notify(ctl, 0);
  tcases.forEach((c, k) => {
    const a = median(g1[k]!), b = median(g2[k]!);
    threadRows.push({ name: c.name, gbs1: +a.toFixed(2), gbs2: +b.toFixed(2), ratio: +(b / a).toFixed(2) });
  });
  console.log(`\nthe same ${TOTAL / 2 ** 20} MiB read by 1 thread and by 2 (each half of it), GB/s (median of ${reps})`);
  console.log(`${'case'.padEnd(40)} ${'1 thread'.padStart(8)} ${'2 threads'.padStart(9)} ${'2 ÷ 1'.padStart(6)}`);
  for (const r of threadRows) console.log(`${r.name.padEnd(40)} ${r.gbs1.toFixed(1).padStart(8)} ${r.gbs2.toFixed(1).padStart(9)} ${(r.ratio.toFixed(2) + '×').padStart(6)}`);
}
console.log(JSON.stringify({ bench: 'streams', cols, reps, node: process.version, results, threads: threadRows }));
