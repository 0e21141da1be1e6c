/**
 * Read throughput of the flash-tier sources vs read size and parallelism:
 *   - FileSource { direct: true } on a 512 MiB file on a real disk (O_DIRECT: no page cache);
 *   - HttpSource (fetch) and NodeHttpSource (undici) against nginx on loopback:
 *     plain; with nginx `limit_rate` (note: nginx credits every request with
 *     one second of rate, so reads under `rate` bytes are not slowed at all);
 *     and a modeled CDN: a proxy in front of nginx that adds a round trip to
 *     every request and paces answers per connection and for the whole link.
 * Prints a table per source and config, two fits of time(n) = overhead +
 * n/bandwidth (latency at p=1; amortized time per read at the highest p),
 * and one JSON line at the end. The default ReadHints come from here.
 *
 *   node --import=tsx bench/sources.ts [--quick] [--only=file|http]
 *        [--rate=20m] [--rtt=20] [--conn-mbps=20] [--link-mbps=100]
 *   (UV_THREADPOOL_SIZE=16 lifts the libuv 4-thread cap on file reads in flight.)
 *
 * Queue depth (`--only=depth`): O_DIRECT random reads of --sizes (default 4K,
 * 16K, 64K) at --depths (default 1,4,8,16,32,64) reads in flight, each libuv
 * pool size of --pools (default 4,8,16,32,64; a child process per size, since
 * UV_THREADPOOL_SIZE only counts before the pool starts) and libuv's io_uring
 * (UV_USE_IO_URING=1: reads bypass the pool), --rounds times interleaved
 * (median per cell), plus the disk's 1 MiB sequential O_DIRECT rate. Reads
 * --file (e.g. a real .flm; never written) or a fresh 512 MiB file.
 *   node --import=tsx bench/sources.ts --only=depth [--file=/tmp/opt13.flm] [--rounds=3]
 *        [--pools=4,8,16,32,64] [--depths=1,4,8,16,32,64] [--sizes=4,16,64] [--uring=1|0]
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, rm, statfs } from 'node:fs/promises';
import { cdnProxy } from './cdn-proxy.js';
import { spawn } from 'node:child_process';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileSource } from '../src/source/file-node.js';
import { NodeHttpSource } from '../src/source/http-node.js';
import { HttpSource } from '../src/source/http.js';
import type { Source } from '../src/source/types.js';
import { startNginx } from '../test/helpers/nginx.js';

const args = process.argv.slice(2);
const arg = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const quick = args.includes('--quick');
const only = arg('only');
const RATE = arg('rate') ?? '20m';
const RTT_MS = Number(arg('rtt') ?? 20);
const CONN_MBPS = Number(arg('conn-mbps') ?? 20);
const LINK_MBPS = Number(arg('link-mbps') ?? 100);

const KiB = 1024;
const MiB = 1024 * KiB;
const FILE_BYTES = 512 * MiB;
const SIZES = quick ? [4 * KiB, 64 * KiB, 1 * MiB, 4 * MiB] : [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB];
const PARALLEL = quick ? [1, 8] : [1, 4, 8, 16];
const CELL_MS = quick ? 200 : 400;

const fmtSize = (n: number) => (n >= MiB ? `${n / MiB}M` : `${n / KiB}K`);

interface Cell {
  size: number;
  parallel: number;
  MBps: number;
  iops: number;
  meanMs: number;
  reads: number;
}

/** Random reads of `size` bytes at 4096-aligned offsets with `parallel` in flight, for about CELL_MS. */
async function measure(src: Source, size: number, parallel: number): Promise<Cell> {
  const slots = Math.floor((src.size - size) / 4096);
  // One page-aligned buffer per worker (WebAssembly memory, like the arena).
  const bufs = Array.from({ length: parallel }, () => new Uint8Array(new WebAssembly.Memory({ initial: Math.ceil(size / 65536) }).buffer, 0, size));
  const pick = () => Math.floor(Math.random() * slots) * 4096;
  await Promise.all(bufs.map((b) => src.read(pick(), b))); // warm: connections, first touch
  let reads = 0;
  let latency = 0;
  const start = performance.now();
  const deadline = start + CELL_MS;
  await Promise.all(
    bufs.map(async (b) => {
      do {
        const t0 = performance.now();
        await src.read(pick(), b);
        latency += performance.now() - t0;
        reads++;
      } while (performance.now() < deadline);
    }),
  );
  const secs = (performance.now() - start) / 1000;
  return { size, parallel, MBps: (reads * size) / secs / 1e6, iops: reads / secs, meanMs: latency / reads, reads };
}

/**
 * time per read = overheadMs + bytes / bandwidth, at `parallel` reads in
 * flight: bandwidth is the best MB/s of the 1 MiB+ reads, the overhead what
 * the smallest read costs beyond its bytes. At p=1 the time is the latency of
 * one read; at higher p the amortized time (1000 / reads per second), which
 * is what a planner keeping p reads in flight pays. breakEvenBytes =
 * overhead x bandwidth: a gap smaller than that is cheaper to read through
 * than to skip with a request of its own.
 */
function fit(cells: Cell[], parallel: number): { parallel: number; overheadMs: number; MBps: number; breakEvenBytes: number } {
  const row = cells.filter((c) => c.parallel === parallel).sort((a, b) => a.size - b.size);
  const MBps = Math.max(...row.filter((c) => c.size >= MiB).map((c) => c.MBps));
  const small = row[0]!;
  const perRead = parallel === 1 ? small.meanMs : 1000 / small.iops;
  const overheadMs = Math.max(0, perRead - small.size / (MBps * 1e3));
  return { parallel, overheadMs, MBps, breakEvenBytes: overheadMs * 1e-3 * MBps * 1e6 };
}

const FIT_AT = [...new Set([1, PARALLEL.includes(8) ? 8 : PARALLEL[PARALLEL.length - 1]!, Math.max(...PARALLEL)])];

function table(title: string, cells: Cell[]): void {
  console.log(`\n${title}   (MB/s; mean ms per read in brackets)`);
  console.log(['size'.padStart(6), ...PARALLEL.map((p) => `p=${p}`.padStart(16))].join(''));
  for (const size of SIZES) {
    const row = PARALLEL.map((p) => {
      const c = cells.find((x) => x.size === size && x.parallel === p)!;
      return `${c.MBps.toFixed(0)} (${c.meanMs < 10 ? c.meanMs.toFixed(2) : c.meanMs.toFixed(0)})`.padStart(16);
    });
    console.log([fmtSize(size).padStart(6), ...row].join(''));
  }
  for (const p of FIT_AT) {
    const f = fit(cells, p);
    console.log(`fit at p=${p}: ${f.overheadMs.toFixed(3)} ms per read + ${f.MBps.toFixed(0)} MB/s  ->  break-even gap ≈ ${(f.breakEvenBytes / KiB).toFixed(0)} KiB`);
  }
}

async function grid(src: Source): Promise<Cell[]> {
  const out: Cell[] = [];
  for (const size of SIZES) for (const p of PARALLEL) out.push(await measure(src, size, p));
  return out;
}

/** Where O_DIRECT means something: os.tmpdir() unless it is tmpfs, else the repo's ignored tmp/. */
async function diskDir(): Promise<string> {
  let base = tmpdir();
  const t = (await statfs(base)).type;
  if (t === 0x01021994 || t === 0x858458f6) {
    base = join(dirname(fileURLToPath(import.meta.url)), '..', 'tmp');
    await mkdir(base, { recursive: true });
  }
  const dir = await mkdtemp(join(base, 'flashlm-bench-'));
  await chmod(dir, 0o755); // nginx workers run as nobody when the bench runs as root
  return dir;
}

// ---- queue depth: libuv pool sizes and io_uring, one child process each ----

const list = (name: string, dflt: number[]) => arg(name)?.split(',').map(Number) ?? dflt;
const DEPTH_SIZES = list('sizes', [4, 16, 64]).map((k) => k * KiB);
const DEPTHS = list('depths', [1, 4, 8, 16, 32, 64]);
const POOLS = list('pools', [4, 8, 16, 32, 64]);

interface DepthCell {
  size: number;
  depth: number;
  MBps: number;
  iops: number;
  meanMs: number;
  /** CPU time of the whole process (main thread + pool) per read, µs: what a read costs the 2 cores. */
  cpuUs: number;
}

interface DepthRun {
  config: string;
  pool: number;
  uring: boolean;
  seqMBps: number;
  load: number;
  cells: DepthCell[];
}

/** The disk's own rate: 1 MiB sequential O_DIRECT reads from a random start, one at a time, for about CELL_MS. */
async function sequentialMBps(src: Source): Promise<number> {
  const buf = new Uint8Array(new WebAssembly.Memory({ initial: MiB / 65536 }).buffer, 0, MiB);
  const blocks = Math.floor(src.size / MiB);
  let at = Math.floor(Math.random() * Math.max(1, blocks - 256));
  let reads = 0;
  const start = performance.now();
  do {
    await src.read(at * MiB, buf);
    reads++;
    at = (at + 1) % blocks;
  } while (performance.now() - start < CELL_MS);
  return (reads * MiB) / ((performance.now() - start) * 1e3);
}

/** The child: this process's pool (or io_uring) over the sizes x depths grid; prints one JSON line. */
async function depthChild(path: string): Promise<void> {
  const f = await FileSource.open(path, { direct: true });
  try {
    await measure(f, 16 * KiB, 8); // warm the JIT and the pool's threads
    const seqMBps = await sequentialMBps(f);
    const cells: DepthCell[] = [];
    for (const size of DEPTH_SIZES) {
      for (const depth of DEPTHS) {
        const c0 = process.cpuUsage();
        const c = await measure(f, size, depth);
        const cpu = process.cpuUsage(c0);
        cells.push({ size, depth, MBps: c.MBps, iops: c.iops, meanMs: c.meanMs, cpuUs: (cpu.user + cpu.system) / c.reads });
      }
    }
    const pool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const uring = process.env.UV_USE_IO_URING === '1';
    const run: DepthRun = { config: uring ? 'io_uring' : `pool ${pool}`, pool, uring, seqMBps, load: loadavg()[0]!, cells };
    console.log(JSON.stringify(run));
  } finally {
    await f.close();
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function depthMain(): Promise<void> {
  const rounds = Number(arg('rounds') ?? 3);
  const uring = arg('uring') !== '0';
  const given = arg('file');
  const dir = given ? undefined : await diskDir();
  const path = given ?? join(dir!, 'model.bin');
  try {
    if (!given) await writeRandomFile(path);
    const configs = [...POOLS.map((p) => ({ UV_THREADPOOL_SIZE: String(p), UV_USE_IO_URING: '0' })), ...(uring ? [{ UV_THREADPOOL_SIZE: '4', UV_USE_IO_URING: '1' }] : [])];
    const runs: DepthRun[] = [];
    const self = fileURLToPath(import.meta.url);
    // Interleaved: every config once per round, so a change in the machine's load hits them all alike.
    for (let r = 0; r < rounds; r++) {
      for (const env of configs) {
        const out = await new Promise<string>((resolve, reject) => {
          const child = spawn(process.execPath, [...process.execArgv, self, '--depth-child', `--file=${path}`, ...args.filter((a) => /^--(sizes|depths|quick)/.test(a))], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
          let text = '';
          child.stdout.on('data', (d: Buffer) => (text += d));
          child.on('error', reject);
          child.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`depth child (${JSON.stringify(env)}) exited with ${code}`))));
        });
        const run = JSON.parse(out.trim().split('\n').pop()!) as DepthRun;
        process.stderr.write(`round ${r + 1}/${rounds} ${run.config}: seq ${run.seqMBps.toFixed(0)} MB/s, load ${run.load.toFixed(2)}\n`);
        runs.push(run);
      }
    }
    const names = [...new Set(runs.map((r) => r.config))];
    const seq = median(runs.map((r) => r.seqMBps));
    const loads = runs.map((r) => r.load);
    console.log(`\n# O_DIRECT random reads of ${given ?? `a ${FILE_BYTES / MiB} MiB file`}: MB/s (mean ms per read; CPU µs per read), median of ${rounds} interleaved rounds of ${CELL_MS} ms cells`);
    console.log(`# disk: 1 MiB sequential O_DIRECT ${seq.toFixed(0)} MB/s (median; range ${Math.min(...runs.map((r) => r.seqMBps)).toFixed(0)}-${Math.max(...runs.map((r) => r.seqMBps)).toFixed(0)}); load average ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)} over the runs`);
    const cellOf = (name: string, size: number, depth: number) => {
      const cs = runs.filter((r) => r.config === name).map((r) => r.cells.find((c) => c.size === size && c.depth === depth)!);
      return { MBps: median(cs.map((c) => c.MBps)), meanMs: median(cs.map((c) => c.meanMs)), cpuUs: median(cs.map((c) => c.cpuUs)) };
    };
    const summary: Record<string, Record<string, number>> = {};
    for (const size of DEPTH_SIZES) {
      console.log(`\n${fmtSize(size)} reads${' '.repeat(4)}${DEPTHS.map((d) => `depth ${d}`.padStart(21)).join('')}`);
      for (const name of names) {
        const row = DEPTHS.map((d) => {
          const c = cellOf(name, size, d);
          (summary[name] ??= {})[`${fmtSize(size)}/d${d}`] = Math.round(c.MBps);
          return `${c.MBps.toFixed(0)} (${c.meanMs.toFixed(2)}; ${c.cpuUs.toFixed(0)})`.padStart(21);
        });
        console.log(`${name.padEnd(13)}${row.join('')}`);
      }
    }
    console.log(`\n${JSON.stringify({ bench: 'sources-depth', file: given ?? null, rounds, cellMs: CELL_MS, seqMBps: Math.round(seq), load: [Math.min(...loads), Math.max(...loads)], MBps: summary })}`);
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}

/** FILE_BYTES of random data at `path`, synced to the disk. */
async function writeRandomFile(path: string): Promise<void> {
  const fh = await open(path, 'w');
  const block = randomBytes(4 * MiB);
  for (let off = 0; off < FILE_BYTES; off += block.length) {
    block.writeUInt32LE(off / block.length, 0);
    await fh.write(block, 0, block.length, off);
  }
  await fh.sync();
  await fh.close();
}

async function main(): Promise<void> {
  const dir = await diskDir();
  const results: Record<string, { cells: Cell[]; fits: ReturnType<typeof fit>[] }> = {};
  const record = (name: string, cells: Cell[]) => {
    results[name] = { cells, fits: FIT_AT.map((p) => fit(cells, p)) };
    table(name, cells);
  };
  try {
    const path = join(dir, 'model.bin');
    await writeRandomFile(path);
    console.log(`# ${FILE_BYTES / MiB} MiB file in ${dir}; UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}; cells of ${CELL_MS} ms; random 4096-aligned offsets`);

    if (only !== 'http') {
      const f = await FileSource.open(path, { direct: true });
      try {
        record('file O_DIRECT', await grid(f));
      } finally {
        await f.close();
      }
    }

    if (only !== 'file') {
      const maxP = Math.max(...PARALLEL);
      const plain = await startNginx({ root: dir });
      const slow = await startNginx({ root: dir, limitRate: RATE });
      const proxy = await cdnProxy(plain.port, RTT_MS, CONN_MBPS, LINK_MBPS);
      const configs = [
        { name: 'nginx loopback', url: plain.url('model.bin') },
        { name: `nginx limit_rate ${RATE}`, url: slow.url('model.bin') },
        { name: `modeled CDN: ${RTT_MS} ms RTT, ${CONN_MBPS} MB/s per connection, ${LINK_MBPS} MB/s link`, url: `http://127.0.0.1:${proxy.port}/model.bin` },
      ];
      try {
        for (const c of configs) {
          for (const [kind, openIt] of [
            ['fetch', () => HttpSource.open(c.url)],
            ['undici', () => NodeHttpSource.open(c.url, { connections: maxP })],
          ] as const) {
            const s = await openIt();
            try {
              await measure(s, 64 * KiB, 4); // warm the JIT and the connections
              record(`${kind}: ${c.name}`, await grid(s));
            } finally {
              await s.close();
            }
          }
        }
      } finally {
        await proxy.close();
        await slow.stop();
        await plain.stop();
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const compact = Object.fromEntries(
    Object.entries(results).map(([k, v]) => [
      k,
      {
        fits: v.fits.map((f) => ({ p: f.parallel, overheadMs: +f.overheadMs.toFixed(3), MBps: Math.round(f.MBps), breakEvenKiB: Math.round(f.breakEvenBytes / KiB) })),
        MBps: Object.fromEntries(v.cells.map((c) => [`${fmtSize(c.size)}/p${c.parallel}`, Math.round(c.MBps)])),
      },
    ]),
  );
  console.log(`\n${JSON.stringify({ bench: 'sources', rate: RATE, cdn: { rttMs: RTT_MS, connMBps: CONN_MBPS, linkMBps: LINK_MBPS }, threadpool: process.env.UV_THREADPOOL_SIZE ?? 4, results: compact })}`);
}

if (args.includes('--depth-child')) await depthChild(arg('file')!);
else if (only === 'depth') await depthMain();
else await main();
