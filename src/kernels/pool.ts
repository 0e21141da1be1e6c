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
 *   - matvec / gate_act: output rows at multiples of 8 (the dots' 8-row blocks);
 *   - attention: heads (each thread its own scores scratch);
 *   - FFN: (a) activations over neurons at multiples of 64 (the FFN batch) into
 *     hOut or the pool's h buffer, then (b) out's columns at multiples of 8 (q8: 32), each
 *     thread walking the whole h sequence with the same 4-row down queue.
 *
 * Dispatch: a control block in the arena; the caller writes each thread's
 * argument list, bumps a generation counter (Atomics) and runs its own share;
 * workers spin briefly on the counter (jobs are ~10-500 µs), then Atomics.wait;
 * the last one done notifies the caller. The caller blocks (spin, then
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
 *   const probe = await loadKernels(createArena(2 * WASM_PAGE, { shared: tp.shared }), tp.wasm);
 *   const extra = poolBytes(probe, tp.threads, { maxPositions, maxNeurons }); // add to the plan
 *   const memory = createArena(arenaBytes, { shared: tp.shared });
 *   const k = await loadKernels(memory, tp.wasm);
 *   const region = arena.alloc('threads', extra);
 *   const pool = await createPool(k, { threads: tp.threads, region, maxPositions, maxNeurons });
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
  attention_heads(out: number, q: number, kCache: number, vCache: number, nHeads: number, nKvHeads: number, headDim: number, nPos: number, scale: number, scratch: number, h0: number, h1: number, kvF16: number): void;
  ffn_relu_h(t: number, x: number, d: number, n: number, up: number, stride: number, ptrs: number, hasBias: number, h: number, n0: number, n1: number): void;
  ffn_swiglu_h(t: number, x: number, d: number, n: number, gate: number, up: number, stride: number, ptrs: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  ffn_down_cols(t: number, out: number, d: number, n: number, down: number, stride: number, ptrs: number, nParts: number, h: number, j0: number, j1: number): void;
  gate_act_rows(t: number, out: number, x: number, d: number, n: number, gate: number, stride: number, r0: number, r1: number, afn: number, athr: number): void;
  gated_h(t: number, x: number, d: number, ptrs: number, n: number, act: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  gated_down(t: number, out: number, d: number, ptrs: number, n: number, h: number, j0: number, j1: number): void;
  matmul_rows(t: number, out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  ffn_batch_act(code: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, stride: number, H: number, scratch: number, n0: number, n1: number, afn: number, athr: number): void;
  ffn_batch_down(t: number, out: number, ldo: number, T: number, d: number, n: number, down: number, stride: number, H: number, scratch: number, j0: number, j1: number): void;
  // q4 (assembly/q4.ts): matvec_q8's pair, and the FFN / gated range kernels with the same arguments as above (t ignored)
  matvec_q4_prepare(x: number, cols: number, scratch: number): void;
  matvec_q4_rows(out: number, W: number, scales: number, bias: number, rows: number, cols: number, scratch: number, r0: number, r1: number): void;
  q4_ffn_relu_h(t: number, x: number, d: number, n: number, up: number, stride: number, ptrs: number, hasBias: number, h: number, n0: number, n1: number): void;
  q4_ffn_swiglu_h(t: number, x: number, d: number, n: number, gate: number, up: number, stride: number, ptrs: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  q4_ffn_down_cols(t: number, out: number, d: number, n: number, down: number, stride: number, ptrs: number, nParts: number, h: number, j0: number, j1: number): void;
  q4_gate_act_rows(t: number, out: number, x: number, d: number, n: number, gate: number, stride: number, r0: number, r1: number, afn: number, athr: number): void;
  q4_gated_h(t: number, x: number, d: number, ptrs: number, n: number, act: number, h: number, n0: number, n1: number, afn: number, athr: number): void;
  q4_gated_down(t: number, out: number, d: number, ptrs: number, n: number, h: number, j0: number, j1: number): void;
}

/** Job codes: index into OPS (the worker calls exports by these names). */
const OPS = [
  'matvec_f32_rows', 'matvec_f16_rows', 'matvec_i8_rows', 'attention_heads',
  'ffn_relu_h', 'ffn_swiglu_h', 'ffn_down_cols', 'gate_act_rows', 'gated_h', 'gated_down',
  'matmul_rows', 'ffn_batch_act', 'ffn_batch_down', 'matvec_q8_rows',
  'matvec_q4_rows', 'q4_ffn_relu_h', 'q4_ffn_swiglu_h', 'q4_ffn_down_cols', 'q4_gate_act_rows', 'q4_gated_h', 'q4_gated_down',
] as const satisfies readonly (keyof SplitKernels)[];
const OP = Object.fromEntries(OPS.map((n, i) => [n, i])) as Record<(typeof OPS)[number], number>;

/** Sizes the pool's arena region depends on. */
export interface PoolLimits {
  /** Largest nPos attention is called with (the context length): each worker has nPos f32 of scores. */
  maxPositions: number;
  /** Largest n of an FFN call without hOut (the FFN width): the shared activation buffer. */
  maxNeurons: number;
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

// ---- control block layout (Int32 indices; the region starts 64-byte aligned) ----
const I_GEN = 0; // job generation, bumped once per job
const I_DONE = 16; // workers done with the current job (own cache line)
const I_SLEEP = 32; // workers in Atomics.wait on I_GEN
const I_QUIT = 33;
const I_ERR = 34; // first worker error: 1 + worker index
const I_OP = 35;
const HEADER_BYTES = 256;
const SLOT_F64 = 16; // argument slots per thread (f64): A[0..14] a split kernel's arguments, A[15] its run flag
const SLOT_BYTES = SLOT_F64 * 8;

function ctrlBytes(threads: number): number {
  return align64(HEADER_BYTES + threads * SLOT_BYTES);
}

/** Per-worker arena bytes: the module's thread scratch + attention scores + batched-kernel scratch. */
export function perThreadBytes(k: Kernels, limits: PoolLimits): number {
  const scratch = (k as Partial<Kernels>).thread_scratch_bytes?.() ?? 0;
  return align64(scratch >>> 0) + align64(Math.max(1, limits.maxPositions) * 4) + align64(limits.batchScratchBytes ?? 0);
}

/**
 * Arena bytes a pool of `threads` threads needs (0 for one thread): the control
 * block, the shared FFN activation buffer (maxNeurons f32) and, per worker
 * (threads - 1 of them), perThreadBytes(k, limits). The caller's thread keeps the
 * module's default scratch (below heap_base) and the callers' attention scratch.
 */
export function poolBytes(k: Kernels, threads: number, limits: PoolLimits): number {
  if (!(threads > 1)) return 0;
  return ctrlBytes(threads) + align64(Math.max(1, limits.maxNeurons) * 4) + (threads - 1) * perThreadBytes(k, limits);
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
const I_GEN = ${I_GEN}, I_DONE = ${I_DONE}, I_SLEEP = ${I_SLEEP}, I_QUIT = ${I_QUIT}, I_ERR = ${I_ERR}, I_OP = ${I_OP};
const HEADER_BYTES = ${HEADER_BYTES}, SLOT_F64 = ${SLOT_F64};
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
  const A = new Float64Array(buf, d.ctrl + HEADER_BYTES + d.index * SLOT_F64 * 8, SLOT_F64);
  const fns = d.ops.map((n) => ex[n]);
  const workers = d.workers, spinMs = d.spinMs;
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
    try {
      const f = fns[I[I_OP]];
      if (A[15] !== 0) f(A[0], A[1], A[2], A[3], A[4], A[5], A[6], A[7], A[8], A[9], A[10], A[11], A[12], A[13], A[14]);
    } catch (e) {
      Atomics.compareExchange(I, I_ERR, 0, d.index);
    }
    if (Atomics.add(I, I_DONE, 1) === workers - 1) Atomics.notify(I, I_DONE);
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

/**
 * Ranges [lo, hi) of `total` for `threads` threads, flattened: `parts` non-empty
 * ones cut at multiples of `align` (the last takes the tail), then empty ones.
 */
function ranges(total: number, parts: number, align: number, threads: number): number[] {
  const chunk = Math.max(align, Math.ceil(total / parts / align) * align);
  const out: number[] = [];
  for (let t = 0; t < threads; t++) {
    const lo = Math.min(total, t * chunk), hi = Math.min(total, (t + 1) * chunk);
    out.push(lo, hi);
  }
  return out;
}

/** Dtype codes of the split kernels (assembly/batch.ts T_*); q4's one-token range kernels live in assembly/q4.ts. */
const DT_BATCH = { f32: 0, f16: 1, i8: 2, q8: 3, q4: 4 } as const;
const DT = DT_BATCH;
/** Output-column split alignment of the FFN down passes: q8 and q4 down scales cover 32 columns. */
const colAlign = (dt: number) => (dt === DT.q8 || dt === DT.q4 ? 32 : 8);
type RangeKernel = 'ffn_relu_h' | 'ffn_swiglu_h' | 'ffn_down_cols' | 'gate_act_rows' | 'gated_h' | 'gated_down';

/** A pool that runs everything on the caller (threads = 1), with the reason when more were asked for. */
function singlePool(k: Kernels, reason: string | null): KernelPool {
  return { kernels: k, threads: 1, fallbackReason: reason, bytes: 0, workers: 0, close: async () => {} };
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

  const limits: PoolLimits = { maxPositions: Math.max(1, options.maxPositions | 0), maxNeurons: Math.max(1, options.maxNeurons | 0), batchScratchBytes: Math.max(0, options.batchScratchBytes ?? 0) };
  const bytes = poolBytes(k, threads, limits);
  const region = options.region >>> 0;
  if (region % 64 !== 0) throw new RangeError(`pool region must be 64-byte aligned, got ${region}`);
  if (region < k.heap_base() || region + bytes > memory.buffer.byteLength) {
    throw new RangeError(`pool region [${region}, ${region + bytes}) is outside the arena's free part [${k.heap_base()}, ${memory.buffer.byteLength})`);
  }
  const ctrl = region;
  const hbuf = ctrl + ctrlBytes(threads);
  const perThread = perThreadBytes(k, limits);
  const scratch0 = align64(hbuf + limits.maxNeurons * 4);
  const moduleScratch = align64(sk.thread_scratch_bytes() >>> 0);
  const workerScratch = (t: number) => scratch0 + (t - 1) * perThread; // t >= 1
  const workerScores = (t: number) => workerScratch(t) + moduleScratch;
  const workerBatch = (t: number) => workerScores(t) + align64(limits.maxPositions * 4);

  new Uint8Array(memory.buffer, ctrl, ctrlBytes(threads)).fill(0);
  const I = new Int32Array(memory.buffer, ctrl, HEADER_BYTES / 4);
  const A = new Float64Array(memory.buffer, ctrl + HEADER_BYTES, threads * SLOT_F64);
  const nWorkers = threads - 1;
  const spinMs = options.spinMs ?? 0.2;
  const minWork = options.minWork ?? 65536;

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
          w.post({ module: mod, memory, ctrl, index: i + 1, workers: nWorkers, scratch: workerScratch(i + 1), spinMs, ops: OPS });
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

  /**
   * Runs op on every thread: `args(t)` fills thread t's argument slot (returns
   * false when t has nothing to do). The caller runs its own share (t = 0) with
   * `own` while the workers run theirs.
   */
  const dispatch = (op: number, fill: (a: Float64Array, base: number, t: number) => boolean, own: () => void) => {
    if (running) throw new Error('pool: re-entrant kernel call');
    running = true;
    try {
      for (let t = 1; t < threads; t++) A[t * SLOT_F64 + 15] = fill(A, t * SLOT_F64, t) ? 1 : 0;
      I[I_OP] = op;
      Atomics.store(I, I_DONE, 0);
      Atomics.add(I, I_GEN, 1);
      if (Atomics.load(I, I_SLEEP) > 0) Atomics.notify(I, I_GEN);
      let ownError: unknown = null;
      try {
        own();
      } catch (e) {
        ownError = e ?? new Error('kernel failed'); // rethrown once the workers are done with this job
      }
      // wait for the workers: spin (jobs are short), then sleep
      let v: number;
      const t0 = performance.now();
      let spins = 0;
      while ((v = Atomics.load(I, I_DONE)) < nWorkers) {
        if ((++spins & 127) === 0) {
          const el = performance.now() - t0;
          if (el > spinMs) Atomics.wait(I, I_DONE, v, 1000);
          if (el > 60000) throw new Error('pool: a worker stopped responding');
        }
      }
      const err = Atomics.exchange(I, I_ERR, 0);
      if (ownError) throw ownError;
      if (err) throw new Error(`pool: kernel ${OPS[op]} failed on worker ${err}`);
    } finally {
      running = false;
    }
  };

  const parts = (work: number) => (minWork <= 0 ? threads : Math.min(threads, Math.floor(work / minWork)));

  // ---- split kernels ----
  const matvec = (dt: 0 | 1, out: number, W: number, x: number, bias: number, rows: number, cols: number): boolean => {
    const p = parts(rows * cols);
    if (closed || p < 2 || rows < 16) return false;
    const r = ranges(rows, p, 8, threads);
    const op = dt === 0 ? OP.matvec_f32_rows : OP.matvec_f16_rows;
    const fn = dt === 0 ? sk.matvec_f32_rows : sk.matvec_f16_rows;
    dispatch(op, (a, b, t) => {
      a[b] = out; a[b + 1] = W; a[b + 2] = x; a[b + 3] = bias; a[b + 4] = rows; a[b + 5] = cols; a[b + 6] = r[2 * t]!; a[b + 7] = r[2 * t + 1]!;
      return r[2 * t]! < r[2 * t + 1]!;
    }, () => { if (r[0]! < r[1]!) fn(out, W, x, bias, rows, cols, r[0]!, r[1]!); });
    return true;
  };

  /** A quantized matvec split by rows: x quantized once (`prepare`) into the caller's scratch, read by every thread. */
  const quantized = (whole: Kernels['matvec_q8'], prepare: SplitKernels['matvec_i8_prepare'], op: number, rowsKernel: SplitKernels['matvec_q8_rows']): Kernels['matvec_q8'] =>
    (out, W, scales, x, bias, rows, cols, scratch) => {
      const p = parts(rows * cols);
      if (closed || p < 2 || rows < 16) { whole(out, W, scales, x, bias, rows, cols, scratch); return; }
      prepare(x, cols, scratch);
      const r = ranges(rows, p, 8, threads);
      dispatch(op, (a, b, t) => {
        a[b] = out; a[b + 1] = W; a[b + 2] = scales; a[b + 3] = bias; a[b + 4] = rows; a[b + 5] = cols; a[b + 6] = scratch; a[b + 7] = r[2 * t]!; a[b + 8] = r[2 * t + 1]!;
        return r[2 * t]! < r[2 * t + 1]!;
      }, () => { if (r[0]! < r[1]!) rowsKernel(out, W, scales, bias, rows, cols, scratch, r[0]!, r[1]!); });
    };

  const split: Partial<Kernels> = {
    matvec_f32: (out, W, x, bias, rows, cols) => { if (!matvec(0, out, W, x, bias, rows, cols)) k.matvec_f32(out, W, x, bias, rows, cols); },
    matvec_f16: (out, W, x, bias, rows, cols) => { if (!matvec(1, out, W, x, bias, rows, cols)) k.matvec_f16(out, W, x, bias, rows, cols); },
    matvec_i8: quantized(k.matvec_i8, sk.matvec_i8_prepare, OP.matvec_i8_rows, sk.matvec_i8_rows),
    matvec_q8: quantized(k.matvec_q8, sk.matvec_i8_prepare, OP.matvec_q8_rows, sk.matvec_q8_rows), // the same quantized x as int8
    matvec_q4: quantized(k.matvec_q4, sk.matvec_q4_prepare, OP.matvec_q4_rows, sk.matvec_q4_rows),
    attention: (out, q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale, scratch, kvF16) => {
      const p = Math.min(parts(2 * nHeads * nPos * headDim), nHeads);
      if (closed || p < 2 || nPos > limits.maxPositions) {
        k.attention(out, q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale, scratch, kvF16);
        return;
      }
      const r = ranges(nHeads, p, 1, threads);
      dispatch(OP.attention_heads, (a, b, t) => {
        a[b] = out; a[b + 1] = q; a[b + 2] = kc; a[b + 3] = vc; a[b + 4] = nHeads; a[b + 5] = nKvHeads; a[b + 6] = headDim; a[b + 7] = nPos;
        a[b + 8] = scale; a[b + 9] = workerScores(t); a[b + 10] = r[2 * t]!; a[b + 11] = r[2 * t + 1]!; a[b + 12] = kvF16;
        return r[2 * t]! < r[2 * t + 1]!;
      }, () => { if (r[0]! < r[1]!) sk.attention_heads(out, q, kc, vc, nHeads, nKvHeads, headDim, nPos, scale, scratch, r[0]!, r[1]!, kvF16); });
    },
  };

  /** FFN in two phases; returns false (caller runs the whole kernel) when not worth splitting. */
  const ffn = (dt: number, swiglu: boolean, out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, ptrs: number, hasBias: number, hOut: number, afn = 0, athr = 0): boolean => {
    const nParts = swiglu ? 3 : 2;
    const p = parts(n * d * nParts);
    if (closed || p < 2 || (!hOut && n > limits.maxNeurons) || d < 16) return false;
    const h = hOut || hbuf;
    const rn = ranges(n, p, 64, threads);
    if (swiglu) {
      dispatch(rk(dt, 'ffn_swiglu_h').op, (a, b, t) => {
        a[b] = dt; a[b + 1] = x; a[b + 2] = d; a[b + 3] = n; a[b + 4] = gate; a[b + 5] = up; a[b + 6] = stride; a[b + 7] = ptrs; a[b + 8] = h; a[b + 9] = rn[2 * t]!; a[b + 10] = rn[2 * t + 1]!;
        a[b + 11] = afn; a[b + 12] = athr;
        return rn[2 * t]! < rn[2 * t + 1]!;
      }, () => { if (rn[0]! < rn[1]!) rk(dt, 'ffn_swiglu_h').fn(dt, x, d, n, gate, up, stride, ptrs, h, rn[0]!, rn[1]!, afn, athr); });
    } else {
      dispatch(rk(dt, 'ffn_relu_h').op, (a, b, t) => {
        a[b] = dt; a[b + 1] = x; a[b + 2] = d; a[b + 3] = n; a[b + 4] = up; a[b + 5] = stride; a[b + 6] = ptrs; a[b + 7] = hasBias; a[b + 8] = h; a[b + 9] = rn[2 * t]!; a[b + 10] = rn[2 * t + 1]!;
        return rn[2 * t]! < rn[2 * t + 1]!;
      }, () => { if (rn[0]! < rn[1]!) rk(dt, 'ffn_relu_h').fn(dt, x, d, n, up, stride, ptrs, hasBias, h, rn[0]!, rn[1]!); });
    }
    const rd = ranges(d, p, colAlign(dt), threads);
    dispatch(rk(dt, 'ffn_down_cols').op, (a, b, t) => {
      a[b] = dt; a[b + 1] = out; a[b + 2] = d; a[b + 3] = n; a[b + 4] = down; a[b + 5] = stride; a[b + 6] = ptrs; a[b + 7] = nParts; a[b + 8] = h; a[b + 9] = rd[2 * t]!; a[b + 10] = rd[2 * t + 1]!;
      return rd[2 * t]! < rd[2 * t + 1]!;
    }, () => { if (rd[0]! < rd[1]!) rk(dt, 'ffn_down_cols').fn(dt, out, d, n, down, stride, ptrs, nParts, h, rd[0]!, rd[1]!); });
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
        const p = parts(nn * d);
        if (closed || p < 2 || nn < 16) { k[ga](out, x, d, nn, gate, stride, afn, athr); return; }
        const r = ranges(nn, p, 8, threads);
        dispatch(rk(dt, 'gate_act_rows').op, (a, b, t) => {
          a[b] = dt; a[b + 1] = out; a[b + 2] = x; a[b + 3] = d; a[b + 4] = nn; a[b + 5] = gate; a[b + 6] = stride; a[b + 7] = r[2 * t]!; a[b + 8] = r[2 * t + 1]!;
          a[b + 9] = afn; a[b + 10] = athr;
          return r[2 * t]! < r[2 * t + 1]!;
        }, () => { if (r[0]! < r[1]!) rk(dt, 'gate_act_rows').fn(dt, out, x, d, nn, gate, stride, r[0]!, r[1]!, afn, athr); });
      };
    }
    if (typeof k[gp] === 'function' && typeof sk.gated_h === 'function') {
      split[gp] = (out, x, d, ptrs, nn, act, hOut, afn, athr) => {
        const p = parts(2 * nn * d);
        if (closed || p < 2 || (!hOut && nn > limits.maxNeurons) || d < 16) { k[gp](out, x, d, ptrs, nn, act, hOut, afn, athr); return; }
        const h = hOut || hbuf;
        const rn = ranges(nn, p, 64, threads);
        dispatch(rk(dt, 'gated_h').op, (a, b, t) => {
          a[b] = dt; a[b + 1] = x; a[b + 2] = d; a[b + 3] = ptrs; a[b + 4] = nn; a[b + 5] = act; a[b + 6] = h; a[b + 7] = rn[2 * t]!; a[b + 8] = rn[2 * t + 1]!;
          a[b + 9] = afn; a[b + 10] = athr;
          return rn[2 * t]! < rn[2 * t + 1]!;
        }, () => { if (rn[0]! < rn[1]!) rk(dt, 'gated_h').fn(dt, x, d, ptrs, nn, act, h, rn[0]!, rn[1]!, afn, athr); });
        const rd = ranges(d, p, colAlign(dt), threads);
        dispatch(rk(dt, 'gated_down').op, (a, b, t) => {
          a[b] = dt; a[b + 1] = out; a[b + 2] = d; a[b + 3] = ptrs; a[b + 4] = nn; a[b + 5] = h; a[b + 6] = rd[2 * t]!; a[b + 7] = rd[2 * t + 1]!;
          return rd[2 * t]! < rd[2 * t + 1]!;
        }, () => { if (rd[0]! < rd[1]!) rk(dt, 'gated_down').fn(dt, out, d, ptrs, nn, h, rd[0]!, rd[1]!); });
      };
    }
  }

  // ---- batched (prompt) kernels: each thread prepares x in its own scratch ----
  const batched = limits.batchScratchBytes! > 0;
  const matmul = (dt: number, out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): boolean => {
    const p = parts(T * rows * cols);
    if (closed || !batched || p < 2 || rows < 16) return false;
    const r = ranges(rows, p, 8, threads);
    dispatch(OP.matmul_rows, (a, b, t) => {
      a[b] = dt; a[b + 1] = out; a[b + 2] = ldo; a[b + 3] = W; a[b + 4] = scales; a[b + 5] = x; a[b + 6] = ldx; a[b + 7] = bias;
      a[b + 8] = T; a[b + 9] = rows; a[b + 10] = cols; a[b + 11] = workerBatch(t); a[b + 12] = r[2 * t]!; a[b + 13] = r[2 * t + 1]!;
      return r[2 * t]! < r[2 * t + 1]!;
    }, () => { if (r[0]! < r[1]!) sk.matmul_rows(dt, out, ldo, W, scales, x, ldx, bias, T, rows, cols, scratch, r[0]!, r[1]!); });
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
  /** Batched FFN in two phases (activations over neurons into H, then the down pass over columns). */
  const ffnBatch = (dt: number, gated: boolean, out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number, afn = 0, athr = 0): boolean => {
    const p = parts(T * n * d * (gated ? 3 : 2));
    if (closed || !batched || p < 2 || d < 16 || ((dt === DT.i8 || dt === DT.q8 || dt === DT.q4) && d > 32768)) return false;
    const code = dt | (gated ? 8 : 0) | (hasBias ? 16 : 0);
    const rn = ranges(n, p, 64, threads);
    dispatch(OP.ffn_batch_act, (a, b, t) => {
      a[b] = code; a[b + 1] = x; a[b + 2] = ldx; a[b + 3] = T; a[b + 4] = d; a[b + 5] = n; a[b + 6] = gate; a[b + 7] = up; a[b + 8] = stride;
      a[b + 9] = H; a[b + 10] = workerBatch(t); a[b + 11] = rn[2 * t]!; a[b + 12] = rn[2 * t + 1]!; a[b + 13] = afn; a[b + 14] = athr;
      return rn[2 * t]! < rn[2 * t + 1]!;
    }, () => { if (rn[0]! < rn[1]!) sk.ffn_batch_act(code, x, ldx, T, d, n, gate, up, stride, H, scratch, rn[0]!, rn[1]!, afn, athr); });
    const rd = ranges(d, p, colAlign(dt), threads);
    dispatch(OP.ffn_batch_down, (a, b, t) => {
      a[b] = dt; a[b + 1] = out; a[b + 2] = ldo; a[b + 3] = T; a[b + 4] = d; a[b + 5] = n; a[b + 6] = down; a[b + 7] = stride;
      a[b + 8] = H; a[b + 9] = workerBatch(t); a[b + 10] = rd[2 * t]!; a[b + 11] = rd[2 * t + 1]!;
      return rd[2 * t]! < rd[2 * t + 1]!;
    }, () => { if (rd[0]! < rd[1]!) sk.ffn_batch_down(dt, out, ldo, T, d, n, down, stride, H, scratch, rd[0]!, rd[1]!); });
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

  const kernels = Object.assign(Object.create(null) as Record<string, unknown>, k, split) as unknown as Kernels;

  return {
    kernels,
    threads,
    fallbackReason: null,
    bytes,
    get workers() { return handles.filter((h) => h.alive).length; },
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
