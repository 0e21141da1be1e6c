/**
 * Multithreaded kernels over ONE shared WebAssembly.Memory (issue #8 item 1).
 *
 * N-1 workers plus the calling thread each run an instance of the threads
 * build (wasm/flashlm.mt.wasm) on the same shared arena; every instance keeps
 * its scratch in its own region (assembly/arena.ts thread_init). `pool.kernels`
 * has the Kernels contract: matvec_*, attention, the FFN kernels and the gated
 * ones split their work over the threads, everything else runs on the caller.
 * Splits keep each output's arithmetic, so results are BIT-IDENTICAL to the
 * single-threaded kernels for any thread count:
 *   - matvec / gate_act: output rows at multiples of 8 (so the dots' single-row remainder stays the same);
 *   - attention: heads (each thread its own scores scratch);
 *   - FFN: by its neuron ranges (assembly/ffn.ts: the one-thread kernel, too, sums the
 *     ranges' partial sums in a fixed order), each range's records read on end into the
 *     pool's parts buffer, then added on the caller in order: one hand-off per FFN;
 *   - batched FFN and gate mode: (a) activations over neurons at multiples of 64 (the FFN
 *     batch) into hOut or the pool's h buffer, then (b) out's columns at multiples of 8
 *     (q8, q4: 32), each chunk walking the whole h sequence with the same down queues (so
 *     these chunks are wide: at least 256 columns, one per thread at d = 768).
 *
 * Dispatch: a job is a list of split calls (segments), each cut into chunks
 * (ranges of rows / heads / neurons / columns, ~GRAIN bytes of weights, at least
 * two per thread). The caller writes the job into a control block in the arena,
 * bumps a generation counter (Atomics), then every thread — the caller too —
 * claims chunks one at a time (compare-and-swap on one claim word) until none
 * are left; the caller then waits only for chunks other threads claimed. Which
 * thread runs a chunk never changes its arithmetic, and a worker that is slow,
 * late or descheduled (another process on the core) only loses the chunks it did
 * not claim, where fixed per-thread shares made every hand-off wait for it.
 * `inOneJob(k, fn)` runs independent calls (q, k and v of one input; a block's
 * attention rows) as one job: one hand-off instead of one per call. Workers spin
 * briefly on the counter (hand-offs come every 10-500 µs), then Atomics.wait;
 * the last chunk done notifies the caller. The caller blocks (spin, then
 * Atomics.wait) until all are done, so it must be a thread that may block: a
 * browser's main (UI) thread may not, and there the pool falls back to one
 * thread (run the engine in a module worker).
 *
 * Workers are created from a self-contained source string (Node: worker_threads
 * with `eval: true`; Deno and browsers: a module Worker from a blob: URL), so
 * bundlers need not find a worker file. When SharedArrayBuffer, shared
 * WebAssembly memory, Atomics.wait or Worker are unavailable (a page without
 * COOP/COEP, an edge isolate, a browser main thread), `planThreads` and
 * `createPool` fall back to one thread and say why (`fallbackReason`).
 *
 * Wiring (see docs in the report / README):
 *   const tp = await planThreads(options.threads);            // before the arena exists
 *   const probe = await loadKernels(createArena(PROBE_ARENA_BYTES, { shared: tp.shared }), tp.wasm);
 *   const extra = poolBytes(probe, tp.threads, { maxPositions, maxNeurons, maxDim }); // add to the plan
 *   const memory = createArena(arenaBytes, { shared: tp.shared });
 *   const k = await loadKernels(memory, tp.wasm);
 *   const region = arena.alloc('threads', extra);
 *   const pool = await createPool(k, { threads: tp.threads, region, maxPositions, maxNeurons, maxDim });
 *   ... use pool.kernels instead of k ...; await pool.close() when the model closes.
 */

import type { Kernels } from './types.js';
import { DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL, isSharedMemory, kernelsModule } from './load.js';

/** The threads build's extra exports (assembly/index.mt.ts; thread_* are in both builds). */
export interface SplitKernels {
  matvec_f32_rows(out: number, W: number, x: number, bias: number, rows: number, cols: number, r0: number, r1: number): void;
  matvec_f16_rows(out: number, W: number, x: number, bias: number, rows: number, cols: number, r0: number, r1: number): void;
  matvec_i8_prepare(x: number, cols: number, scratch: number): void;
  matvec_i8_rows(out: number, W: number, scales: number, bias: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  matvec_q8_rows(out: number, W: number, scales: number, bias: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  attention_heads(out: number, q: number, kCache: number, vCache: number, nHeads: number, nKvHeads: number, headDim: number, nPos: number, scale: number, scratch: number, h0: number, h1: number, kvF16: number, headBytes: number): void;
  ffn_ranges(kind: number, out: number, parts: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, ptrs: number, hOut: number, athr: number, r0: number, r1: number): void;
  ffn_ranges_sum(out: number, parts: number, d: number, n: number): void;
  ffn_range_count(d: number): number;
  ffn_parts_bytes(d: number): number;
  gate_act_rows(t: number, out: number, x: number, d: number, n: number, gate: number, stride: number, r0: number, r1: number, afn: number, athr: number): void;
  gated_h(t: number, x: number, d: number, ptrs: number, n: number, act: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  gated_down(t: number, out: number, d: number, ptrs: number, n: number, h: number, j0: number, j1: number): void;
  matmul_rows(t: number, out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  ffn_batch_act(code: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, stride: number, H: number, scratch: number, n0: number, n1: number, afn: number, athr: number): void;
  ffn_batch_down(t: number, out: number, ldo: number, T: number, d: number, n: number, down: number, stride: number, H: number, scratch: number, j0: number, j1: number): void;
  // q4 (assembly/q4.ts): matvec_q8's pair, and the FFN / gated range kernels with the same arguments as above (t ignored)
  matvec_q4_prepare(x: number, cols: number, scratch: number): void;
  matvec_q4_rows(out: number, W: number, scales: number, bias: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  q4_ffn_ranges(kind: number, out: number, parts: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, ptrs: number, hOut: number, athr: number, r0: number, r1: number): void;
  q4_gate_act_rows(t: number, out: number, x: number, d: number, n: number, gate: number, stride: number, r0: number, r1: number, afn: number, athr: number): void;
  q4_gated_h(t: number, x: number, d: number, ptrs: number, n: number, act: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  q4_gated_down(t: number, out: number, d: number, ptrs: number, n: number, h: number, j0: number, j1: number): void;
  // the rows layout (assembly/rows.ts): ffn_rows as activations over neurons [n0, n1), then output rows [r0, r1)
  rows_act(t: number, h: number, x: number, d: number, n: number, gate: number, up: number, stride: number, n0: number, n1: number, afn: number, athr: number): void;
  rows_down(t: number, out: number, d: number, n: number, D: number, S: number, h: number, r0: number, r1: number): void;
  rows_batch_down(t: number, out: number, ldo: number, T: number, d: number, n: number, D: number, S: number, H: number, scratch: number, r0: number, r1: number): void;
  rows_fold(H: number, T: number, n: number, S: number): void;
}

/** Job codes: index into OPS (the worker calls exports by these names). */
const OPS = [
  'matvec_f32_rows', 'matvec_f16_rows', 'matvec_i8_rows', 'attention_heads',
  'ffn_ranges', 'gate_act_rows', 'gated_h', 'gated_down',
  'matmul_rows', 'ffn_batch_act', 'ffn_batch_down', 'matvec_q8_rows',
  'matvec_q4_rows', 'q4_ffn_ranges', 'q4_gate_act_rows', 'q4_gated_h', 'q4_gated_down',
  'rows_act', 'rows_down', 'rows_batch_down',
] as const satisfies readonly (keyof SplitKernels)[];
const OP = Object.fromEntries(OPS.map((n, i) => [n, i])) as Record<(typeof OPS)[number], number>;

/** Sizes the pool's arena region depends on. */
export interface PoolLimits {
  /** Largest nPos attention is called with (the context length): each worker has nPos f32 of scores. */
  maxPositions: number;
  /** Largest n of an FFN call without hOut (the FFN width): the shared activation buffer. */
  maxNeurons: number;
  /**
   * Largest d of an FFN call (the model's width): the one-token FFN's partial sums
   * (ffn_parts_bytes(maxDim)). 0 (default) runs one-token FFN calls on the caller alone.
   */
  maxDim?: number;
  /**
   * Scratch each worker needs for the batched (prompt) kernels: batch_scratch_bytes(T, cols)
   * of the largest call; 0 (default) runs batched kernels on the caller alone.
   */
  batchScratchBytes?: number;
}

export interface PoolOptions extends PoolLimits {
  /** Threads including the caller (1 = no workers). */
  threads: number;
  /** Arena offset of poolBytes(k, threads, limits) bytes reserved for the pool (64-byte aligned). */
  region: number;
  /**
   * Smallest work (multiply-adds) a call must have to be split; smaller calls run
   * on the caller alone. Default 65536 (~15 µs of one thread). 0 splits everything (tests).
   */
  minWork?: number;
  /**
   * Whether to run split calls on the caller alone for a while when the threads
   * are slower than it would be alone (a busy machine; default true unless minWork
   * is 0). Results are the same either way.
   */
  adaptive?: boolean;
  /** Bytes of weights per chunk of a split call (default GRAIN, 4 MiB; bench/kernels.ts --versus-grain compares others). */
  grain?: number;
  /** Milliseconds a worker spins on the control block before sleeping in Atomics.wait (default 0.2). */
  spinMs?: number;
  /** Milliseconds to wait for workers to start (default 30000). */
  startTimeoutMs?: number;
}

export interface KernelPool {
  /** The Kernels contract, with the heavy kernels split over `threads` threads. */
  readonly kernels: Kernels;
  /** Threads used, including the caller (1 after a fallback). */
  readonly threads: number;
  /** Why the pool runs on one thread although more were asked for (null otherwise). */
  readonly fallbackReason: string | null;
  /** Arena bytes the pool uses (its region). */
  readonly bytes: number;
  /** Worker threads running now (threads - 1 while open, 0 after close). */
  readonly workers: number;
  /** Jobs handed to the workers so far (each one or more split calls: see jobGroup). */
  readonly jobs: number;
  /** Terminates the workers (idempotent); pool.kernels then run on the caller alone. */
  close(): Promise<void>;
}

export interface ThreadPlan {
  /** Threads to use, including the caller. */
  threads: number;
  /** Whether the arena must be shared: createArena(bytes, { shared }). */
  shared: boolean;
  /** Kernels build to load: wasm/flashlm.mt.wasm when shared, else wasm/flashlm.wasm. */
  wasm: URL;
  /** Why fewer threads than asked for (null when none were refused). */
  fallbackReason: string | null;
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;
/**
 * Weight bytes per chunk of a split call (see seg in createPool). Large, because
 * a chunk is one dots call: its rows are read as 4 far streams (gemv.ts) only if
 * it has many, and each f16 chunk scales x anew. 4 MiB against 256 KiB, 2 threads
 * (bench/README "Chunks of a split matvec"): 4096x11008 f16 1.0-1.2x -> 1.6-1.95x
 * of one thread, int8 1.35-1.47x -> 1.35-1.73x, f32 about the same (DRAM-bound).
 */
const GRAIN = 1 << 22;

// ---- control block layout (Int32 indices; the region starts 64-byte aligned) ----
// A job is a list of segments (one split kernel call each) cut into chunks
// (ranges of its rows / heads / neurons / columns); every thread, the caller
// included, claims chunks one at a time until none are left, so a worker that
// is late or descheduled only loses the chunks it did not claim.
const I_GEN = 0; // job generation, bumped once per job (the workers' wake-up word)
const I_CLAIM = 16; // (chunks << 16) | next chunk to claim, of the current job (own cache line)
const I_DONE = 32; // chunks finished (own cache line)
const I_SLEEP = 48; // workers in Atomics.wait on I_GEN
const I_QUIT = 49;
const I_ERR = 50; // first worker error: 1 + worker index
const I_NSEG = 51; // segments of the current job
const HEADER_BYTES = 256;
/** Segments one job holds (a group of more is run as several jobs). */
const MAX_SEG = 64;
// per segment, Int32: op, index of the range's lo and hi arguments, chunk step, range end, first chunk, scratch kind, scratch argument index
const META_I32 = 8;
const M_OP = 0, M_LO = 1, M_HI = 2, M_STEP = 3, M_END = 4, M_FIRST = 5, M_SKIND = 6, M_SARG = 7;
const SLOT_F64 = 16; // argument slots per segment (f64): a split kernel's arguments (up to 15)
/**
 * Adaptive mode (createPool): split calls per measured window (~one token of an 85M
 * model), windows between trials of the other mode (first, most), and the least pause
 * (ms) between calls that restarts a window (else 8x their mean spacing).
 */
const WINDOW = 48, FIRST_PERIOD = 16, MAX_PERIOD = 128, GAP_MS = 20;
/** Largest chunk count of one job (the claim word keeps it in 15 bits). */
const MAX_CHUNKS = 32767;

function ctrlBytes(_threads: number): number {
  return align64(HEADER_BYTES + MAX_SEG * META_I32 * 4 + MAX_SEG * SLOT_F64 * 8);
}

/** Per-worker arena bytes: the module's thread scratch + attention scores + batched-kernel scratch. */
export function perThreadBytes(k: Kernels, limits: PoolLimits): number {
  const scratch = (k as Partial<Kernels>).thread_scratch_bytes?.() ?? 0;
  return align64(scratch >>> 0) + align64(Math.max(1, limits.maxPositions) * 4) + align64(limits.batchScratchBytes ?? 0);
}

/** The one-token FFN's partial sums (ffn_ranges' parts) for FFNs up to limits.maxDim wide. */
function partsBytes(k: Kernels, limits: PoolLimits): number {
  const d = Math.max(0, limits.maxDim ?? 0);
  return d > 0 ? align64(((k as Partial<SplitKernels>).ffn_parts_bytes?.(d) ?? 0) >>> 0) : 0;
}

/**
 * Arena bytes a pool of `threads` threads needs (0 for one thread): the control
 * block, the shared FFN activation buffer (maxNeurons f32), the FFN ranges' partial
 * sums (the module's ffn_parts_bytes(maxDim)) and, per worker
 * (threads - 1 of them), perThreadBytes(k, limits). The caller's thread keeps the
 * module's default scratch (below heap_base) and the callers' attention scratch.
 */
export function poolBytes(k: Kernels, threads: number, limits: PoolLimits): number {
  if (!(threads > 1)) return 0;
  return ctrlBytes(threads) + align64(Math.max(1, limits.maxNeurons) * 4) + partsBytes(k, limits) + (threads - 1) * perThreadBytes(k, limits);
}

// ---------------------------------------------------------------- environment

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string' &&
  typeof (globalThis as { Deno?: unknown }).Deno === 'undefined';

/** Hardware threads: os.availableParallelism (Node), navigator.hardwareConcurrency (Deno, browsers). */
export async function availableThreads(): Promise<number> {
  if (isNode) {
    try {
      const spec = 'node:os';
      const os = (await import(/* @vite-ignore */ spec)) as typeof import('node:os');
      return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
    } catch {
      // fall through
    }
  }
  const hc = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return Math.max(1, typeof hc === 'number' && hc > 0 ? hc : 1);
}

/**
 * Why threads cannot run here (null when they can): SharedArrayBuffer, shared
 * WebAssembly memory, blocking Atomics.wait on this thread, and a Worker API.
 */
export async function threadsUnavailableReason(): Promise<string | null> {
  if (typeof SharedArrayBuffer !== 'function') {
    return typeof (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === 'boolean'
      ? 'SharedArrayBuffer is unavailable: the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)'
      : 'SharedArrayBuffer is unavailable in this runtime';
  }
  if ((globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === false) {
    return 'the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)';
  }
  if (typeof Atomics !== 'object' || typeof Atomics.wait !== 'function') return 'Atomics.wait is unavailable in this runtime';
  try {
    const m = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true } as WebAssembly.MemoryDescriptor);
    if (!(m.buffer instanceof SharedArrayBuffer)) return 'WebAssembly shared memory is unsupported';
  } catch (e) {
    return `WebAssembly shared memory (threads) is unsupported: ${(e as Error).message}`;
  }
  try {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
  } catch {
    return 'Atomics.wait may not block this thread (a browser main thread): run the engine in a worker to use threads';
  }
  if (isNode) {
    try {
      const spec = 'node:worker_threads';
      const wt = (await import(/* @vite-ignore */ spec)) as typeof import('node:worker_threads');
      if (typeof wt.Worker !== 'function') return 'node:worker_threads has no Worker';
    } catch (e) {
      return `node:worker_threads is unavailable: ${(e as Error).message}`;
    }
  } else if (typeof (globalThis as { Worker?: unknown }).Worker !== 'function') {
    return 'no Worker API in this runtime (an edge isolate?)';
  }
  return null;
}

/**
 * Decides the thread count and the kernels build before the arena exists.
 * `requested`: threads including the caller; default (undefined or 0) = the
 * hardware threads. Falls back to 1 (unshared arena, single-threaded build)
 * with a reason when threads are unavailable here.
 */
export async function planThreads(requested?: number): Promise<ThreadPlan> {
  const hw = await availableThreads();
  let threads = requested === undefined || requested === 0 ? hw : Math.floor(requested);
  if (!(threads >= 1)) throw new RangeError(`threads must be a positive integer, got ${requested}`);
  threads = Math.min(threads, 256);
  if (threads === 1) return { threads: 1, shared: false, wasm: DEFAULT_WASM_URL, fallbackReason: null };
  const reason = await threadsUnavailableReason();
  if (reason) return { threads: 1, shared: false, wasm: DEFAULT_WASM_URL, fallbackReason: reason };
  return { threads, shared: true, wasm: DEFAULT_MT_WASM_URL, fallbackReason: null };
}

// ---------------------------------------------------------------- worker

/**
 * The worker, self-contained (no imports): receives { module, memory, ctrl,
 * index, workers, scratch, spinMs, ops } once, instantiates the module on the
 * shared memory, moves its scratch (thread_init), answers 'ready', then serves
 * jobs from the control block until I_QUIT. Runs as a Node eval worker (CJS
 * script) and as a module Worker (Deno, browsers).
 */
const WORKER_SOURCE = `
const I_GEN = ${I_GEN}, I_CLAIM = ${I_CLAIM}, I_DONE = ${I_DONE}, I_SLEEP = ${I_SLEEP}, I_QUIT = ${I_QUIT}, I_ERR = ${I_ERR}, I_NSEG = ${I_NSEG};
const HEADER_BYTES = ${HEADER_BYTES}, MAX_SEG = ${MAX_SEG}, META_I32 = ${META_I32}, SLOT_F64 = ${SLOT_F64};
function serve(d, post) {
  let ex;
  try {
    const inst = new WebAssembly.Instance(d.module, { env: { memory: d.memory } });
    ex = inst.exports;
    ex.thread_init(d.scratch);
  } catch (e) {
    post({ ok: false, error: String(e && e.stack || e) });
    return;
  }
  const buf = d.memory.buffer;
  const I = new Int32Array(buf, d.ctrl, HEADER_BYTES / 4);
  const M = new Int32Array(buf, d.ctrl + HEADER_BYTES, MAX_SEG * META_I32);
  const A = new Float64Array(buf, d.ctrl + HEADER_BYTES + MAX_SEG * META_I32 * 4, MAX_SEG * SLOT_F64);
  const L = new Float64Array(SLOT_F64);
  const fns = d.ops.map((n) => ex[n]);
  const scratchOf = [0, d.scores, d.batch];
  const spinMs = d.spinMs;
  // chunk c of the current job: find its segment, set the range (and this thread's scratch), call
  const run = (c) => {
    const ns = I[I_NSEG];
    let s = 0;
    while (s + 1 < ns && M[(s + 1) * META_I32 + ${M_FIRST}] <= c) s++;
    const m = s * META_I32;
    for (let i = 0; i < SLOT_F64; i++) L[i] = A[s * SLOT_F64 + i];
    const lo = (c - M[m + ${M_FIRST}]) * M[m + ${M_STEP}];
    L[M[m + ${M_LO}]] = lo;
    L[M[m + ${M_HI}]] = Math.min(M[m + ${M_END}], lo + M[m + ${M_STEP}]);
    if (M[m + ${M_SKIND}]) L[M[m + ${M_SARG}]] = scratchOf[M[m + ${M_SKIND}]];
    fns[M[m + ${M_OP}]](L[0], L[1], L[2], L[3], L[4], L[5], L[6], L[7], L[8], L[9], L[10], L[11], L[12], L[13], L[14]);
  };
  let gen = Atomics.load(I, I_GEN);
  post({ ok: true });
  for (;;) {
    let g = Atomics.load(I, I_GEN);
    if (g === gen) {
      const t0 = performance.now();
      let spins = 0;
      while ((g = Atomics.load(I, I_GEN)) === gen) {
        if ((++spins & 127) === 0 && performance.now() - t0 > spinMs) {
          Atomics.add(I, I_SLEEP, 1);
          Atomics.wait(I, I_GEN, gen);
          Atomics.sub(I, I_SLEEP, 1);
        }
      }
    }
    gen = g;
    if (Atomics.load(I, I_QUIT)) break;
    // claim chunks until none is left; the job cannot end before the claimed ones are counted done,
    // so its arguments stay put while they run (a late worker may even claim a later job's chunks)
    let mine = 0, total = 0;
    for (;;) {
      const w = Atomics.load(I, I_CLAIM);
      total = w >>> 16;
      const c = w & 0xffff;
      if (c >= total) break;
      if (Atomics.compareExchange(I, I_CLAIM, w, w + 1) !== w) continue;
      mine++;
      try {
        run(c);
      } catch (e) {
        Atomics.compareExchange(I, I_ERR, 0, d.index);
      }
    }
    if (mine > 0 && Atomics.add(I, I_DONE, mine) + mine === total) Atomics.notify(I, I_DONE);
  }
}
if (typeof process === 'object' && process && process.versions && process.versions.node && typeof Deno === 'undefined') {
  import('node:worker_threads').then(({ parentPort }) => {
    parentPort.once('message', (d) => serve(d, (m) => parentPort.postMessage(m)));
  });
} else {
  self.onmessage = (ev) => { self.onmessage = null; serve(ev.data, (m) => self.postMessage(m)); };
}
`;

interface WorkerHandle {
  /** False once the worker has exited (or was terminated). */
  readonly alive: boolean;
  post(msg: unknown): void;
  onMessage(cb: (m: unknown) => void): void;
  onError(cb: (e: unknown) => void): void;
  /** Called once the worker answered 'ready'. */
  started(): void;
  terminate(): Promise<void>;
}

async function spawnWorker(index: number): Promise<WorkerHandle> {
  if (isNode) {
    const spec = 'node:worker_threads';
    const wt = (await import(/* @vite-ignore */ spec)) as typeof import('node:worker_threads');
    const w = new wt.Worker(WORKER_SOURCE, { eval: true, name: `flashlm-pool-${index}` } as import('node:worker_threads').WorkerOptions);
    let alive = true;
    w.on('exit', () => { alive = false; });
    return {
      get alive() { return alive; },
      post: (m) => w.postMessage(m),
      onMessage: (cb) => w.on('message', cb),
      onError: (cb) => { w.on('error', cb); w.on('exit', (code) => cb(new Error(`worker exited with code ${code}`))); },
      // started: drop the message listener (it refs the worker's port) and unref, so an
      // unclosed pool never keeps the process alive
      started: () => { w.removeAllListeners('message'); w.unref(); },
      terminate: async () => { await w.terminate(); },
    };
  }
  const W = (globalThis as unknown as { Worker: new (url: string, o?: object) => Worker }).Worker;
  let url: string;
  let revoke = () => {};
  try {
    url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }));
    revoke = () => URL.revokeObjectURL(url);
  } catch {
    url = `data:text/javascript;charset=utf-8,${encodeURIComponent(WORKER_SOURCE)}`;
  }
  const w = new W(url, { type: 'module', name: `flashlm-pool-${index}` });
  let alive = true;
  return {
    get alive() { return alive; },
    post: (m) => w.postMessage(m),
    onMessage: (cb) => w.addEventListener('message', (ev: MessageEvent) => cb(ev.data)),
    onError: (cb) => {
      w.addEventListener('error', (ev: ErrorEvent) => { ev.preventDefault?.(); cb(new Error(ev.message || 'worker error')); });
      w.addEventListener('messageerror', () => cb(new Error('worker could not receive the module or the memory')));
    },
    started: () => {},
    terminate: async () => { w.terminate(); alive = false; revoke(); },
  };
}

// ---------------------------------------------------------------- pool

type Split = Kernels & SplitKernels;

/** Dtype codes of the split kernels (assembly/batch.ts T_*); q4's one-token range kernels live in assembly/q4.ts. */
const DT_BATCH = { f32: 0, f16: 1, i8: 2, q8: 3, q4: 4 } as const;
const DT = DT_BATCH;
/** Output-column split alignment of the FFN down passes: q8 and q4 down scales cover 32 columns. */
const colAlign = (dt: number) => (dt === DT.q8 || dt === DT.q4 ? 32 : 8);
type RangeKernel = 'ffn_ranges' | 'gate_act_rows' | 'gated_h' | 'gated_down';

/** A pool that runs everything on the caller (threads = 1), with the reason when more were asked for. */
function singlePool(k: Kernels, reason: string | null): KernelPool {
  return { kernels: k, threads: 1, fallbackReason: reason, bytes: 0, workers: 0, jobs: 0, close: async () => {} };
}

/**
 * Starts threads - 1 workers on k's module and memory (the threads build on a
 * shared arena: see planThreads). Never throws for a missing capability: it
 * returns a one-thread pool whose kernels are `k` and says why.
 */
export async function createPool(k: Kernels, options: PoolOptions): Promise<KernelPool> {
  const threads = Math.floor(options.threads);
  if (!(threads >= 1)) throw new RangeError(`threads must be a positive integer, got ${options.threads}`);
  if (threads === 1) return singlePool(k, null);
  const memory = k.memory;
  const mod = kernelsModule(k);
  const sk = k as Split;
  /** The range kernel `name` for dtype code dt (op index and function): q4's live in assembly/q4.ts, with the same arguments. */
  const rk = <N extends RangeKernel>(dt: number, name: N): { op: number; fn: SplitKernels[N] } =>
    dt === DT.q4 ? { op: OP[`q4_${name}`], fn: sk[`q4_${name}`] as SplitKernels[N] } : { op: OP[name], fn: sk[name] };
  if (!isSharedMemory(memory)) return singlePool(k, 'the arena is not shared: create it with createArena(bytes, { shared: true }) and load wasm/flashlm.mt.wasm (planThreads)');
  if (!mod || typeof sk.matvec_f32_rows !== 'function' || typeof sk.thread_init !== 'function') {
    return singlePool(k, 'the kernels are not the threads build (wasm/flashlm.mt.wasm) loaded with loadKernels');
  }
  const reason = await threadsUnavailableReason();
  if (reason) return singlePool(k, reason);

  const limits: PoolLimits = { maxPositions: Math.max(1, options.maxPositions | 0), maxNeurons: Math.max(1, options.maxNeurons | 0), maxDim: Math.max(0, options.maxDim ?? 0), batchScratchBytes: Math.max(0, options.batchScratchBytes ?? 0) };
  const bytes = poolBytes(k, threads, limits);
  const region = options.region >>> 0;
  if (region % 64 !== 0) throw new RangeError(`pool region must be 64-byte aligned, got ${region}`);
  if (region < k.heap_base() || region + bytes > memory.buffer.byteLength) {
    throw new RangeError(`pool region [${region}, ${region + bytes}) is outside the arena's free part [${k.heap_base()}, ${memory.buffer.byteLength})`);
  }
  const ctrl = region;
  const hbuf = ctrl + ctrlBytes(threads);
  const perThread = perThreadBytes(k, limits);
  const parts = align64(hbuf + limits.maxNeurons * 4);
  const scratch0 = parts + partsBytes(k, limits);
  const moduleScratch = align64(sk.thread_scratch_bytes() >>> 0);
  const workerScratch = (t: number) => scratch0 + (t - 1) * perThread; // t >= 1
  const workerScores = (t: number) => workerScratch(t) + moduleScratch;
  const workerBatch = (t: number) => workerScores(t) + align64(limits.maxPositions * 4);

  new Uint8Array(memory.buffer, ctrl, ctrlBytes(threads)).fill(0);
  const I = new Int32Array(memory.buffer, ctrl, HEADER_BYTES / 4);
  const M = new Int32Array(memory.buffer, ctrl + HEADER_BYTES, MAX_SEG * META_I32);
  const A = new Float64Array(memory.buffer, ctrl + HEADER_BYTES + MAX_SEG * META_I32 * 4, MAX_SEG * SLOT_F64);
  const nWorkers = threads - 1;
  const spinMs = options.spinMs ?? 0.2;
  const minWork = options.minWork ?? 65536;
  const grain = options.grain ?? GRAIN;
  if (!(grain >= 1)) throw new RangeError(`grain must be a positive number of bytes, got ${options.grain}`);
  // ---- start the workers ----
  const handles: WorkerHandle[] = [];
  try {
    const started = await Promise.race([
      Promise.all(Array.from({ length: nWorkers }, async (_, i) => {
        const w = await spawnWorker(i + 1);
        handles.push(w);
        await new Promise<void>((resolve, reject) => {
          w.onMessage((m) => {
            const r = m as { ok?: boolean; error?: string };
            if (r && r.ok) resolve();
            else reject(new Error(r?.error ?? 'worker failed to start'));
          });
          w.onError(reject);
          w.post({ module: mod, memory, ctrl, index: i + 1, scratch: workerScratch(i + 1), scores: workerScores(i + 1), batch: workerBatch(i + 1), spinMs, ops: OPS });
        });
      })).then(() => true),
      new Promise<false>((resolve) => {
        const t = setTimeout(() => resolve(false), options.startTimeoutMs ?? 30000);
        (t as { unref?: () => void }).unref?.();
      }),
    ]);
    if (!started) throw new Error('workers did not start in time');
    for (const h of handles) h.started();
  } catch (e) {
    Atomics.store(I, I_QUIT, 1);
    Atomics.add(I, I_GEN, 1);
    Atomics.notify(I, I_GEN);
    await Promise.allSettled(handles.map((h) => h.terminate()));
    return singlePool(k, `cannot start worker threads: ${(e as Error).message}`);
  }

  let closed = false;
  let running = false;
  /** The job being built: segments and chunks so far; `grouping` > 0 while inOneJob collects calls. */
  let nseg = 0, nchunks = 0, grouping = 0, jobs = 0;
  const L = new Float64Array(SLOT_F64);
  const fns = OPS.map((n) => sk[n] as unknown as (...a: number[]) => void);

  /** Chunk c of the current job on the caller (its own scratch is in the arguments). */
  const runChunk = (c: number) => {
    let s = 0;
    while (s + 1 < nseg && M[(s + 1) * META_I32 + M_FIRST]! <= c) s++;
    const m = s * META_I32;
    for (let i = 0; i < SLOT_F64; i++) L[i] = A[s * SLOT_F64 + i]!;
    const lo = (c - M[m + M_FIRST]!) * M[m + M_STEP]!;
    L[M[m + M_LO]!] = lo;
    L[M[m + M_HI]!] = Math.min(M[m + M_END]!, lo + M[m + M_STEP]!);
    fns[M[m + M_OP]!]!(L[0]!, L[1]!, L[2]!, L[3]!, L[4]!, L[5]!, L[6]!, L[7]!, L[8]!, L[9]!, L[10]!, L[11]!, L[12]!, L[13]!, L[14]!);
  };

  /**
   * Runs the job built so far: publishes it (claim word, generation; wakes
   * sleeping workers), claims chunks like any worker, then waits for the chunks
   * the workers claimed (spin, then sleep).
   */
  const runJob = () => {
    if (nseg === 0) return;
    if (running) throw new Error('pool: re-entrant kernel call');
    running = true;
    jobs++;
    const total = nchunks;
    try {
      I[I_NSEG] = nseg;
      Atomics.store(I, I_DONE, 0);
      Atomics.store(I, I_CLAIM, total << 16);
      Atomics.add(I, I_GEN, 1);
      if (Atomics.load(I, I_SLEEP) > 0) Atomics.notify(I, I_GEN);
      let ownError: unknown = null;
      let mine = 0;
      for (;;) {
        const w = Atomics.load(I, I_CLAIM);
        const c = w & 0xffff;
        if (c >= total) break;
        if (Atomics.compareExchange(I, I_CLAIM, w, w + 1) !== w) continue;
        mine++;
        try {
          runChunk(c);
        } catch (e) {
          ownError ??= e ?? new Error('kernel failed'); // rethrown once the workers are done with this job
        }
      }
      let v = mine > 0 ? Atomics.add(I, I_DONE, mine) + mine : Atomics.load(I, I_DONE);
      if (v < total) {
        const t0 = performance.now();
        let spins = 0;
        while ((v = Atomics.load(I, I_DONE)) < total) {
          if ((++spins & 127) === 0) {
            const el = performance.now() - t0;
            if (el > spinMs) Atomics.wait(I, I_DONE, v, 1);
            if (el > 60000) throw new Error('pool: a worker stopped responding');
          }
        }
      }
      const err = Atomics.exchange(I, I_ERR, 0);
      if (ownError) throw ownError;
      if (err) throw new Error(`pool: a kernel failed on worker ${err}`);
    } finally {
      nseg = 0;
      nchunks = 0;
      running = false;
    }
  };

  // ---- a busy machine: when another process takes the cores, workers are descheduled (the
  // caller waits for the chunk one holds) or spin where the caller could run, and the threads
  // can be slower than the caller alone. So the pool measures: split calls go in windows of
  // WINDOW calls, and the work done per millisecond of wall time (same call mix either way)
  // decides whether threads or the caller alone run the next windows; the other mode gets a
  // trial window every `period` windows (doubling while it keeps losing). On an idle machine
  // that costs one window in ~100 at the caller-alone speed. Results are the same either way.
  const adaptive = options.adaptive ?? minWork > 0; // minWork 0 (tests): always split
  let solo = false, trial = false, period = FIRST_PERIOD, windowsLeft = FIRST_PERIOD;
  let winKind = -1, winCalls = 0, winWork = 0, winStart = 0, lastCall = 0;
  /** Work per ms at [2 * kind + mode]: kind 0 one-token calls, 1 batched (prompt) ones; mode 0 threads, 1 alone. */
  const rate = [0, 0, 0, 0];
  /** Counts a split call of `work` (kind 1: batched); true when it should run on the caller alone. */
  const alone = (work: number, kind: number): boolean => {
    if (!adaptive) return false;
    const now = performance.now();
    // a window holds one kind of call, and no pause much longer than its calls are apart
    // (the caller waited for input or I/O: not the kernels' time)
    if (kind !== winKind || winCalls === 0 || now - lastCall > Math.max(GAP_MS, (8 * (lastCall - winStart)) / winCalls)) {
      winKind = kind; winCalls = 0; winWork = 0; winStart = now;
    }
    lastCall = now;
    winWork += work;
    if (++winCalls >= WINDOW) {
      const mode = solo ? 1 : 0, i = 2 * kind;
      rate[i + mode] = winWork / Math.max(1e-3, now - winStart);
      const other = rate[i + 1 - mode]!;
      if (trial) {
        // the trial mode stays only if clearly faster than the other on the same kind of calls;
        // else back, trying it less often
        trial = false;
        if (other > 0 && rate[i + mode]! > 1.1 * other) period = FIRST_PERIOD;
        else {
          solo = !solo;
          if (other > 0) period = Math.min(MAX_PERIOD, 2 * period);
        }
        windowsLeft = period;
      } else if (--windowsLeft <= 0) {
        solo = !solo;
        trial = true;
      }
      winCalls = 0;
    }
    return solo;
  };

  /** minWork 0 (tests): every call cut as finely as three chunks per thread. */
  const fine = minWork <= 0;

  /**
   * Adds a segment to the job: kernel `op` over the range [0, end), its lo / hi
   * at argument indices lo / hi, cut at multiples of `align` into chunks of
   * about `grain` bytes of weights (default GRAIN: ~130 µs of an f32 matvec from memory; claiming
   * one costs well under 1 µs), at least two per thread. Down passes
   * (`down`) are cut into wide column ranges instead (downChunks). minWork 0
   * (tests) cuts as finely as three per thread. `skind` 1 (attention scores) or
   * 2 (batch scratch) puts each worker's own scratch at argument `sarg`.
   * Returns the segment's first argument slot in A (the caller fills the rest).
   */
  const seg = (op: number, lo: number, hi: number, end: number, align: number, bytes: number, skind = 0, sarg = 0, down = false): number => {
    const blocks = Math.ceil(end / align);
    const want = fine ? 3 * threads : down ? downChunks(end) : Math.max(2 * threads, Math.ceil(bytes / grain));
    const step = Math.ceil(blocks / Math.max(1, Math.min(blocks, MAX_CHUNKS, want))) * align;
    const n = Math.ceil(end / step);
    if (nseg === MAX_SEG || nchunks + n > MAX_CHUNKS) runJob(); // a full group: calls in it are independent
    const m = nseg * META_I32;
    M[m + M_OP] = op; M[m + M_LO] = lo; M[m + M_HI] = hi; M[m + M_STEP] = step; M[m + M_END] = end;
    M[m + M_FIRST] = nchunks; M[m + M_SKIND] = skind; M[m + M_SARG] = sarg;
    nchunks += n;
    return nseg++ * SLOT_F64;
  };
  /**
   * Chunks of a down pass over d columns: each chunk walks every neuron's row (its
   * queue and axpy calls per neuron, short strided reads), which at d = 768 costs
   * 1.5-2.6x the CPU at 128 columns per chunk than at 384 (f32, int8), so chunks
   * are at least 256 columns wide and a multiple of the thread count.
   */
  const downChunks = (d: number) => threads * Math.max(1, Math.floor(d / (threads * 256)));
  /** Runs the job now unless inOneJob is collecting calls. */
  const submit = () => { if (grouping === 0) runJob(); };

  /** Whether a call of `work` multiply-adds is split: big enough, and threads are not slower (alone). */
  const split2 = (work: number, kind = 0) => (minWork <= 0 || work >= 2 * minWork) && !alone(work, kind);

  // ---- split kernels ----
  const BPW = [4, 2, 1, 1, 0.5625]; // weight bytes by dtype code (chunk sizing only)
  const matvec = (dt: 0 | 1, out: number, W: number, x: number, bias: number, rows: number, cols: number): boolean => {
    if (closed || !split2(rows * cols) || rows < 16) return false;
    const b = seg(dt === 0 ? OP.matvec_f32_rows : OP.matvec_f16_rows, 6, 7, rows, 8, rows * cols * BPW[dt]!);
    A[b] = out; A[b + 1] = W; A[b + 2] = x; A[b + 3] = bias; A[b + 4] = rows; A[b + 5] = cols;
    submit();
    return true;
  };

  /** A quantized matvec split by rows: x quantized once (`prepare`) into the caller's scratch, read by every thread. */
  const quantized = (whole: Kernels['matvec_q8'], prepare: SplitKernels['matvec_i8_prepare'], op: number, bpw: number): Kernels['matvec_q8'] =>
    (out, W, scales, x, bias, rows, cols, scratch) => {
      if (closed || !split2(rows * cols) || rows < 16) { whole(out, W, scales, x, bias, rows, cols, scratch); return; }
      prepare(x, cols, scratch);
      const b = seg(op, 7, 8, rows, 8, rows * cols * bpw);
      A[b] = out; A[b + 1] = W; A[b + 2] = scales; A[b + 3] = bias; A[b + 4] = rows; A[b + 5] = cols; A[b + 6] = scratch;
      submit();
    };

  const split: Partial<Kernels> = {
    matvec_f32: (out, W, x, bias, rows, cols) => { if (!matvec(0, out, W, x, bias, rows, cols)) k.matvec_f32(out, W, x, bias, rows, cols); },
    matvec_f16: (out, W, x, bias, rows, cols) => { if (!matvec(1, out, W, x, bias, rows, cols)) k.matvec_f16(out, W, x, bias, rows, cols); },
    matvec_i8: quantized(k.matvec_i8, sk.matvec_i8_prepare, OP.matvec_i8_rows, 1),
    matvec_q8: quantized(k.matvec_q8, sk.matvec_i8_prepare, OP.matvec_q8_rows, 1), // the same quantized x as int8
    matvec_q4: quantized(k.matvec_q4, sk.matvec_q4_prepare, OP.matvec_q4_rows, 0.5625),
    attention: (out, q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale, scratch, kvF16, headBytes) => {
      // ~4 cache bytes read per multiply-add (K then V, f32) and a softmax: counted twice a matvec's
      const work = 4 * nHeads * nPos * headDim;
      if (closed || !split2(work) || nHeads < 2 || nPos > limits.maxPositions) {
        k.attention(out, q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale, scratch, kvF16, headBytes);
        return;
      }
      const b = seg(OP.attention_heads, 10, 11, nHeads, 1, kvF16 ? work / 2 : work, 1, 9);
      A[b] = out; A[b + 1] = q; A[b + 2] = kc; A[b + 3] = vc; A[b + 4] = nHeads; A[b + 5] = nKvHeads; A[b + 6] = headDim; A[b + 7] = nPos;
      A[b + 8] = scale; A[b + 9] = scratch; A[b + 12] = kvF16; A[b + 13] = headBytes;
      submit();
    },
  };


  /**
   * FFN by neuron ranges (ffn_ranges): range 0 into out, the others into the parts
   * buffer, then added on the caller in order; false (the caller runs the whole
   * kernel) when not worth splitting or wider than limits.maxDim.
   */
  const ffn = (dt: number, swiglu: boolean, out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, ptrs: number, hasBias: number, hOut: number, afn = 0, athr = 0): boolean => {
    const nParts = swiglu ? 3 : 2;
    if (closed || !split2(n * d * nParts) || d > limits.maxDim! || d < 16) return false;
    const ranges = sk.ffn_range_count(d);
    if (ranges < 2) return false;
    runJob(); // a collecting inOneJob: the FFN's job follows what was collected
    const b = seg(rk(dt, 'ffn_ranges').op, 13, 14, ranges, 1, n * d * nParts * BPW[dt]!);
    A[b] = dt | (swiglu ? 8 : 0) | (hasBias ? 16 : 0) | (afn << 5); A[b + 1] = out; A[b + 2] = parts; A[b + 3] = x;
    A[b + 4] = d; A[b + 5] = n; A[b + 6] = gate; A[b + 7] = up; A[b + 8] = down; A[b + 9] = stride; A[b + 10] = ptrs;
    A[b + 11] = hOut; A[b + 12] = athr;
    runJob();
    sk.ffn_ranges_sum(out, parts, d, n);
    return true;
  };

  for (const [name, dt] of Object.entries(DT)) {
    const n = name as keyof typeof DT;
    const relu = `ffn_relu_${n}` as const, sw = `ffn_swiglu_${n}` as const;
    const reluP = `ffn_relu_${n}_ptrs` as const, swP = `ffn_swiglu_${n}_ptrs` as const;
    const ga = `gate_act_${n}` as const, gp = `ffn_gated_${n}_ptrs` as const;
    split[relu] = (out, x, d, nn, up, down, stride, hasBias, hOut) => {
      if (!ffn(dt, false, out, x, d, nn, 0, up, down, stride, 0, hasBias, hOut)) k[relu](out, x, d, nn, up, down, stride, hasBias, hOut);
    };
    split[sw] = (out, x, d, nn, gate, up, down, stride, hOut, afn, athr) => {
      if (!ffn(dt, true, out, x, d, nn, gate, up, down, stride, 0, 0, hOut, afn, athr)) k[sw](out, x, d, nn, gate, up, down, stride, hOut, afn, athr);
    };
    split[reluP] = (out, x, d, ptrs, nn, hasBias, hOut) => {
      if (!ffn(dt, false, out, x, d, nn, 0, 0, 0, 0, ptrs, hasBias, hOut)) k[reluP](out, x, d, ptrs, nn, hasBias, hOut);
    };
    split[swP] = (out, x, d, ptrs, nn, hOut, afn, athr) => {
      if (!ffn(dt, true, out, x, d, nn, 0, 0, 0, 0, ptrs, 0, hOut, afn, athr)) k[swP](out, x, d, ptrs, nn, hOut, afn, athr);
    };
    if (typeof k[ga] === 'function' && typeof sk.gate_act_rows === 'function') {
      split[ga] = (out, x, d, nn, gate, stride, afn, athr) => {
        if (closed || !split2(nn * d) || nn < 16) { k[ga](out, x, d, nn, gate, stride, afn, athr); return; }
        const b = seg(rk(dt, 'gate_act_rows').op, 7, 8, nn, 8, nn * d * BPW[dt]!);
        A[b] = dt; A[b + 1] = out; A[b + 2] = x; A[b + 3] = d; A[b + 4] = nn; A[b + 5] = gate; A[b + 6] = stride;
        A[b + 9] = afn; A[b + 10] = athr;
        submit();
      };
    }
    if (typeof k[gp] === 'function' && typeof sk.gated_h === 'function') {
      split[gp] = (out, x, d, ptrs, nn, act, hOut, afn, athr) => {
        if (closed || !split2(2 * nn * d) || (!hOut && nn > limits.maxNeurons) || d < 16) { k[gp](out, x, d, ptrs, nn, act, hOut, afn, athr); return; }
        runJob();
        const h = hOut || hbuf;
        const bytes = nn * d * BPW[dt]!;
        let b = seg(rk(dt, 'gated_h').op, 7, 8, nn, 64, bytes);
        A[b] = dt; A[b + 1] = x; A[b + 2] = d; A[b + 3] = ptrs; A[b + 4] = nn; A[b + 5] = act; A[b + 6] = h;
        A[b + 9] = afn; A[b + 10] = athr;
        runJob();
        b = seg(rk(dt, 'gated_down').op, 6, 7, d, colAlign(dt), bytes, 0, 0, true);
        A[b] = dt; A[b + 1] = out; A[b + 2] = d; A[b + 3] = ptrs; A[b + 4] = nn; A[b + 5] = h;
        runJob();
      };
    }
  }

  // ---- batched (prompt) kernels: each chunk prepares x in its thread's scratch ----
  const batched = limits.batchScratchBytes! > 0;
  const matmul = (dt: number, out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): boolean => {
    if (closed || !batched || !split2(T * rows * cols, 1) || rows < 16) return false;
    const b = seg(OP.matmul_rows, 12, 13, rows, 8, rows * cols * BPW[dt]!, 2, 11);
    A[b] = dt; A[b + 1] = out; A[b + 2] = ldo; A[b + 3] = W; A[b + 4] = scales; A[b + 5] = x; A[b + 6] = ldx; A[b + 7] = bias;
    A[b + 8] = T; A[b + 9] = rows; A[b + 10] = cols; A[b + 11] = scratch;
    submit();
    return true;
  };
  split.matmul_f32 = (out, ldo, W, x, ldx, bias, T, rows, cols, scratch) => {
    if (!matmul(0, out, ldo, W, 0, x, ldx, bias, T, rows, cols, scratch)) k.matmul_f32(out, ldo, W, x, ldx, bias, T, rows, cols, scratch);
  };
  split.matmul_f16 = (out, ldo, W, x, ldx, bias, T, rows, cols, scratch) => {
    if (!matmul(1, out, ldo, W, 0, x, ldx, bias, T, rows, cols, scratch)) k.matmul_f16(out, ldo, W, x, ldx, bias, T, rows, cols, scratch);
  };
  split.matmul_i8 = (out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch) => {
    if (!matmul(2, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch)) k.matmul_i8(out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch);
  };
  split.matmul_q8 = (out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch) => {
    if (!matmul(3, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch)) k.matmul_q8(out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch);
  };
  split.matmul_q4 = (out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch) => {
    if (!matmul(4, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch)) k.matmul_q4(out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch);
  };
  /** Batched FFN in two jobs (activations over neurons into H, then the down pass over columns). */
  /** Runs ffn_batch_act (phase 1 of a batched FFN: activations into H) split over neurons, `bytes` of weights. */
  const batchAct = (code: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, stride: number, H: number, scratch: number, afn: number, athr: number, bytes: number) => {
    const b = seg(OP.ffn_batch_act, 11, 12, n, 64, bytes, 2, 10);
    A[b] = code; A[b + 1] = x; A[b + 2] = ldx; A[b + 3] = T; A[b + 4] = d; A[b + 5] = n; A[b + 6] = gate; A[b + 7] = up; A[b + 8] = stride;
    A[b + 9] = H; A[b + 10] = scratch; A[b + 13] = afn; A[b + 14] = athr;
    runJob();
  };
  const ffnBatch = (dt: number, gated: boolean, out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number, afn = 0, athr = 0): boolean => {
    if (closed || !batched || !split2(T * n * d * (gated ? 3 : 2), 1) || d < 16 || ((dt === DT.i8 || dt === DT.q8 || dt === DT.q4) && d > 32768)) return false;
    runJob();
    const bytes = n * d * BPW[dt]!;
    batchAct(dt | (gated ? 8 : 0) | (hasBias ? 16 : 0), x, ldx, T, d, n, gate, up, stride, H, scratch, afn, athr, (gated ? 2 : 1) * bytes);
    const b = seg(OP.ffn_batch_down, 10, 11, d, colAlign(dt), bytes, 2, 9, true);
    A[b] = dt; A[b + 1] = out; A[b + 2] = ldo; A[b + 3] = T; A[b + 4] = d; A[b + 5] = n; A[b + 6] = down; A[b + 7] = stride;
    A[b + 8] = H; A[b + 9] = scratch;
    runJob();
    return true;
  };
  for (const [name, dt] of Object.entries(DT_BATCH)) {
    const n = name as keyof typeof DT_BATCH;
    const relu = `ffn_relu_${n}_batch` as const, sw = `ffn_swiglu_${n}_batch` as const;
    split[relu] = (out, ldo, x, ldx, T, d, nn, up, down, stride, hasBias, H, scratch) => {
      if (!ffnBatch(dt, false, out, ldo, x, ldx, T, d, nn, 0, up, down, stride, hasBias, H, scratch)) k[relu](out, ldo, x, ldx, T, d, nn, up, down, stride, hasBias, H, scratch);
    };
    split[sw] = (out, ldo, x, ldx, T, d, nn, gate, up, down, stride, H, scratch, afn, athr) => {
      if (!ffnBatch(dt, true, out, ldo, x, ldx, T, d, nn, gate, up, down, stride, 0, H, scratch, afn, athr)) k[sw](out, ldo, x, ldx, T, d, nn, gate, up, down, stride, H, scratch, afn, athr);
    };
  }

  // ---- the rows layout (assembly/rows.ts): activations over neurons, then the down matvec over output rows ----
  const rowsAlign = (t: number) => (t === DT.q8 ? 32 : 8); // q8: a scale group of D's rows
  split.ffn_rows = (t, out, x, d, n, gate, up, stride, D, S, h, afn, athr) => {
    if (closed || !split2(3 * n * d) || d < 16) { k.ffn_rows(t, out, x, d, n, gate, up, stride, D, S, h, afn, athr); return; }
    runJob();
    const bytes = n * d * BPW[t]!;
    let b = seg(OP.rows_act, 8, 9, n, 64, 2 * bytes);
    A[b] = t; A[b + 1] = h; A[b + 2] = x; A[b + 3] = d; A[b + 4] = n; A[b + 5] = gate; A[b + 6] = up; A[b + 7] = stride;
    A[b + 10] = afn; A[b + 11] = athr;
    runJob();
    b = seg(OP.rows_down, 7, 8, d, rowsAlign(t), bytes);
    A[b] = t; A[b + 1] = out; A[b + 2] = d; A[b + 3] = n; A[b + 4] = D; A[b + 5] = S; A[b + 6] = h;
    runJob();
  };
  split.ffn_rows_batch = (t, out, ldo, x, ldx, T, d, n, gate, up, stride, D, S, H, scratch, afn, athr) => {
    if (closed || !batched || !split2(3 * T * n * d, 1) || d < 16) { k.ffn_rows_batch(t, out, ldo, x, ldx, T, d, n, gate, up, stride, D, S, H, scratch, afn, athr); return; }
    runJob();
    const bytes = n * d * BPW[t]!;
    batchAct(t | 8, x, ldx, T, d, n, gate, up, stride, H, scratch, afn, athr, 2 * bytes);
    if (t === DT.i8) sk.rows_fold(H, T, n, S);
    const b = seg(OP.rows_batch_down, 10, 11, d, rowsAlign(t), bytes, 2, 9);
    A[b] = t; A[b + 1] = out; A[b + 2] = ldo; A[b + 3] = T; A[b + 4] = d; A[b + 5] = n; A[b + 6] = D; A[b + 7] = S; A[b + 8] = H; A[b + 9] = scratch;
    runJob();
  };

  const kernels = Object.assign(Object.create(null) as Record<string, unknown>, k, split) as unknown as Kernels;
  oneJob.set(kernels, {
    begin: () => { grouping++; },
    end: () => {
      if (grouping > 0 && --grouping === 0) runJob();
    },
  });

  return {
    kernels,
    threads,
    fallbackReason: null,
    bytes,
    get workers() { return handles.filter((h) => h.alive).length; },
    get jobs() { return jobs; },
    close: async () => {
      if (closed) return;
      closed = true;
      Atomics.store(I, I_QUIT, 1);
      Atomics.add(I, I_GEN, 1);
      Atomics.notify(I, I_GEN);
      await Promise.allSettled(handles.map((h) => h.terminate()));
    },
  };
}

/** The collector of each pool's kernels (see jobGroup). */
const oneJob = new WeakMap<object, JobGroup>();

/** Collects split kernel calls into one job: begin(), the calls, end() (in a finally). */
export interface JobGroup {
  begin(): void;
  /** Runs what was collected since begin() (and stops collecting). */
  end(): void;
}

/**
 * The job collector of a pool's kernels `k` (null for other kernels: nothing to
 * collect). Between begin() and end(), split calls are collected and end() runs
 * them as ONE job: one hand-off to the workers instead of one per call, and one
 * wait. The calls must not read each other's outputs (e.g. the q, k and v
 * projections of one input; note a quantized matvec's scratch is an output: calls
 * sharing it must share x). Calls that are not split run at once on the caller,
 * and the FFN kernels (one job each; batched and gated ones two) run at once after
 * what was collected.
 */
export function jobGroup(k: Kernels): JobGroup | null {
  return oneJob.get(k) ?? null;
}

/** Runs fn's calls as one job on a pool's kernels (jobGroup), or just calls fn. */
export function inOneJob(k: Kernels, fn: () => void): void {
  const g = oneJob.get(k);
  if (!g) return fn();
  g.begin();
  try {
    fn();
  } finally {
    g.end();
  }
}
