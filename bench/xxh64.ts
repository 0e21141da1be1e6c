/**
 * Integrity hashing throughput: the kernels' in-place xxh64 (assembly/xxh64.ts,
 * through ArenaHasher.matches, as FlmFile.verify calls it) against xxhash-wasm's
 * h64Raw on the same arena views (which first copies them into its own memory).
 *
 *   node --import=tsx bench/xxh64.ts [--region 64] [--reps 9] [--sizes 2048,16384,1048576]
 *
 * For each block size, both hash a whole `region`-MiB area of the arena block
 * after block ("stream": the bytes come from memory, as freshly read chunks do),
 * and one block over and over ("hot": from cache, the pure compute rate).
 * Round-robin over `reps` runs so background load hits both alike; prints the
 * median GB/s (1e9 bytes/s), the load average, then one line of JSON.
 */
import { loadavg } from 'node:os';
import xxhash from 'xxhash-wasm';
import { ArenaHasher, getHasher } from '../src/format/hash.js';
import { createArena, loadKernels } from '../src/kernels/load.js';

const argv = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1]! : def;
};
const region = Number(arg('region', '64')) << 20;
const reps = Number(arg('reps', '9'));
const sizes = arg('sizes', '2048,16384,1048576').split(',').map(Number);
const hotBytes = 256 << 20; // bytes hashed per "hot" run

const memory = createArena(region + (4 << 20));
const k = await loadKernels(memory);
const base = (k.heap_base() + 4095) & ~4095;
const arena = new Uint8Array(memory.buffer, base, region);
for (let i = 0; i < region; i += 4) new DataView(memory.buffer).setUint32(base + i, Math.imul(i + 1, 2654435761) >>> 0, true);
const api = await xxhash();
const h = new ArenaHasher(k, await getHasher());

let sink = 0;
function run(kind: 'kernel' | 'library', size: number, hot: boolean): number {
  const blocks = hot ? Math.floor(hotBytes / size) : Math.floor(region / size);
  const t0 = performance.now();
  if (kind === 'kernel') {
    for (let b = 0; b < blocks; b++) sink ^= h.matches(base + (hot ? 0 : b * size), size, 0, 0) ? 1 : 0;
  } else {
    for (let b = 0; b < blocks; b++) {
      const at = hot ? 0 : b * size;
      sink ^= Number(api.h64Raw(arena.subarray(at, at + size)) & 1n);
    }
  }
  return (blocks * size) / ((performance.now() - t0) / 1000) / 1e9;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!;
const load0 = loadavg();
const rows: { size: number; mode: string; kernel: number; library: number; ratio: number }[] = [];
for (const size of sizes) {
  for (const hot of [false, true]) {
    run('kernel', size, hot), run('library', size, hot); // warm up
    const kr: number[] = [];
    const lr: number[] = [];
    for (let r = 0; r < reps; r++) {
      kr.push(run('kernel', size, hot));
      lr.push(run('library', size, hot));
    }
    const kernel = median(kr);
    const library = median(lr);
    rows.push({ size, mode: hot ? 'hot' : 'stream', kernel, library, ratio: kernel / library });
  }
}
const load1 = loadavg();
const fmt = (x: number) => x.toFixed(2).padStart(8);
console.log(`xxh64 GB/s, median of ${reps}; stream = ${region >> 20} MiB region block after block, hot = one block repeated`);
console.log(`${'block'.padStart(9)} ${'mode'.padStart(6)} ${'kernel'.padStart(8)} ${'library'.padStart(8)} ${'ratio'.padStart(6)}`);
for (const r of rows) console.log(`${String(r.size).padStart(9)} ${r.mode.padStart(6)} ${fmt(r.kernel)} ${fmt(r.library)} ${r.ratio.toFixed(2).padStart(6)}`);
console.log(`load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}`);
console.log(JSON.stringify({ reps, region, rows, loadavg: { before: load0, after: load1 }, sink }));
