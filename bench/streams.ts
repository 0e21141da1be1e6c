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
 * 9 KiB on end. Prints a table, then one line of JSON.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { intArg } from './args.js';

const cols = intArg('cols', 768, 8);
const reps = intArg('reps', 9, 1);
const here = fileURLToPath(new URL('.', import.meta.url));
const out = `${here}.cache/streams-probe.wasm`;
mkdirSync(`${here}.cache`, { recursive: true });
execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/assemblyscript/bin/asc.js', import.meta.url)), `${here}streams/probe.ts`,
  '-O3', '--runtime', 'stub', '--noAssert', '--enable', 'simd', '--importMemory', '-o', out], { stdio: 'inherit' });

const TOTAL = 384 * 2 ** 20, W = 1 << 20, X = 4096, OUT = 65536;
const memory = new WebAssembly.Memory({ initial: (TOTAL + W) / 65536 + 1 });
const { instance } = await WebAssembly.instantiate(readFileSync(out), { env: { memory, abort() { throw new Error('abort'); } } });
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
console.log(JSON.stringify({ bench: 'streams', cols, reps, node: process.version, results }));
