/**
 * Trains one layer's low-rank neuron predictor (PAPER.md "Low-rank
 * predictor"): logits = B·(A·x) + bias, fitted to the true active sets with a
 * class-weighted logistic loss (active neurons are a few percent) by Adam,
 * every product in the WebAssembly kernels (assembly/train.ts) on an arena of
 * its own. The decision threshold is then tuned for a recall target.
 */
import { AbortedError, ArgumentError } from '../errors.js';
import { createArena, loadKernels, PROBE_ARENA_BYTES } from '../kernels/load.js';
import { createPool, planThreads, poolBytes, type KernelPool } from '../kernels/pool.js';
import type { Kernels } from '../kernels/types.js';
import { Arena, WASM_PAGE } from '../engine/arena.js';
import { bitsetBytes } from './collect.js';

export type InitMethod = 'data' | 'svd' | 'random';

export interface TrainOptions {
  rank: number;
  /** Passes over the training tokens. Default 4. */
  epochs?: number;
  /** Tokens per step. Default 256. */
  batch?: number;
  /** Adam learning rate (cosine-decayed to a tenth). Default 2e-3. */
  lr?: number;
  /** Weight of the positive (active) class. Default: sqrt(negatives / positives). */
  posWeight?: number;
  /** Initialisation: 'data' = the rank-r subspace that best keeps W_up·x on the data, 'svd' = truncated SVD of W_up, 'random'. Default 'data'. */
  init?: InitMethod;
  seed?: number;
  signal?: AbortSignal;
  /** After every step: steps done, steps total, the step's mean loss per token. */
  onStep?: (step: number, total: number, loss: number) => void;
}

export interface TrainedPredictor {
  rank: number;
  a: Float32Array;
  b: Float32Array;
  bias: Float32Array;
  /** Mean loss per token of the first and the last epoch. */
  firstLoss: number;
  lastLoss: number;
  posWeight: number;
}

import { rng } from '../util/random.js';
import { yieldToEventLoop } from '../util/yield.js';

export { rng };

/**
 * The training arena of one layer: tokens (x, labels) for training and for
 * evaluation, the parameters, Adam state and the per-step scratch.
 */
export class PredictorTrainer {
  private readonly mem: Uint8Array;
  private readonly x: number;
  private readonly y: number;
  private readonly p: number;
  private readonly g: number;
  private readonly m: number;
  private readonly v: number;
  private readonly z: number;
  private readonly lg: number;
  private readonly lgT: number;
  private readonly zT: number;
  private readonly xT: number;
  private readonly bT: number;
  private readonly dz: number;
  private readonly dzT: number;
  private readonly scratch: number;
  private readonly hist: number;
  /** Scratch of the prompt (batched) kernel that does the products (mm). */
  private readonly mmScratch: number;
  private tokens = 0;
  readonly nParams: number;
  /** The kernels the products run on: split over the pool's threads when there is one. */
  private k: Kernels;
  private pool?: KernelPool;

  private constructor(
    private readonly k1: Kernels,
    private readonly arena: Arena,
    readonly d: number,
    readonly n: number,
    readonly rank: number,
    readonly capacity: number,
    readonly batch: number,
  ) {
    this.k = k1;
    const f32 = (name: string, count: number) => arena.alloc(name, count * 4);
    const r = rank;
    const T = batch;
    this.mem = new Uint8Array(arena.memory.buffer);
    this.x = f32('x', capacity * d);
    this.y = arena.alloc('labels', capacity * n);
    this.nParams = r * d + n * r + n;
    this.p = f32('params', this.nParams);
    this.g = f32('grads', this.nParams);
    this.m = f32('adam m', this.nParams);
    this.v = f32('adam v', this.nParams);
    this.z = f32('z', T * r);
    this.lg = f32('logits', T * n);
    this.lgT = f32('logits T', T * n);
    this.zT = f32('z T', T * r);
    this.xT = f32('x T', T * d);
    this.bT = f32('B T', r * n);
    this.dz = f32('dz', T * r);
    this.dzT = f32('dz T', T * r);
    this.scratch = f32('init scratch', initScratchFloats(d, n, r));
    this.hist = arena.alloc('histograms', 2 * MAX_BINS * 8);
    this.mmScratch = arena.alloc('product scratch', mmScratchBytes(k1, d, n, rank, batch));
  }

  /**
   * A trainer for up to `capacity` tokens of a layer with model width d and n
   * neurons. `threads` other than 1 (0: every core; no `wasm` given) splits the products over
   * worker threads on a shared arena (call close() when done).
   */
  static async create(d: number, n: number, rank: number, capacity: number, batch = 256, wasm?: BufferSource | WebAssembly.Module | URL | string, threads = 1): Promise<PredictorTrainer> {
    if (!Number.isInteger(rank) || rank < 1) throw new ArgumentError('rank must be a positive integer');
    // threads 0: every core (planThreads' default), as calibrate passes it.
    const tp = wasm === undefined && threads !== 1 ? await planThreads(threads) : { threads: 1, shared: false, wasm };
    const T = batch;
    const probe = await loadKernels(createArena(PROBE_ARENA_BYTES, { shared: tp.shared }), tp.wasm);
    const floats = capacity * d + 4 * (rank * d + n * rank + n) + T * (3 * rank + 2 * n + d + 2 * rank) + rank * n + initScratchFloats(d, n, rank);
    const scratch = mmScratchBytes(probe, d, n, rank, batch);
    const poolRegion = tp.threads > 1 ? poolBytes(probe, tp.threads, { maxPositions: 1, maxNeurons: 1, batchScratchBytes: scratch }) : 0;
    const bytes = floats * 4 + capacity * n + 2 * MAX_BINS * 8 + scratch + poolRegion + 64 * 32 + WASM_PAGE;
    const memory = createArena(bytes + probe.heap_base(), { shared: tp.shared });
    const k = await loadKernels(memory, tp.wasm);
    const trainer = new PredictorTrainer(k, new Arena(memory, k.heap_base()), d, n, rank, capacity, T);
    if (tp.threads > 1) {
      const pool = await createPool(k, { threads: tp.threads, region: trainer.arena.alloc('threads', poolRegion), maxPositions: 1, maxNeurons: 1, batchScratchBytes: scratch });
      trainer.pool = pool;
      trainer.k = pool.kernels;
    }
    return trainer;
  }

  /** Threads the products run on. */
  get threads(): number {
    return this.pool?.threads ?? 1;
  }

  /** Stops the worker threads (idempotent); the trainer keeps working on one thread. */
  async close(): Promise<void> {
    this.k = this.k1;
    await this.pool?.close();
    this.pool = undefined;
  }

  /**
   * C[M,N] = A[M,K] · B[N,K]ᵀ with the prompt kernel (B's rows as the weight
   * rows, A's rows as the tokens): faster than mm_nt and split over the threads.
   */
  private mm(C: number, A: number, B: number, M: number, N: number, K: number): void {
    for (let i = 0; i < M; i += MM_ROWS) {
      const m = Math.min(MM_ROWS, M - i);
      this.k.matmul_f32(C + i * N * 4, N * 4, B, A + i * K * 4, K * 4, 0, m, N, K, this.mmScratch);
    }
  }

  get aPtr(): number {
    return this.p;
  }
  get bPtr(): number {
    return this.p + this.rank * this.d * 4;
  }
  get biasPtr(): number {
    return this.p + (this.rank * this.d + this.n * this.rank) * 4;
  }
  private f32(ptr: number, count: number): Float32Array {
    return new Float32Array(this.arena.memory.buffer, ptr, count);
  }

  /**
   * Loads tokens [t0, t1) of a layer's data (x [tokens, d], bitsets), in the
   * order `order` gives (a permutation of the range, or undefined = as is).
   */
  load(x: Float32Array, active: Uint8Array, order: ArrayLike<number>): void {
    const { d, n } = this;
    const count = order.length;
    if (count > this.capacity) throw new ArgumentError(`${count} tokens exceed the trainer's capacity ${this.capacity}`);
    const xs = this.f32(this.x, count * d);
    const bs = bitsetBytes(n);
    const ys = this.mem.subarray(this.y, this.y + count * n);
    ys.fill(0);
    for (let i = 0; i < count; i++) {
      const t = order[i]!;
      xs.set(x.subarray(t * d, (t + 1) * d), i * d);
      const off = t * bs;
      const row = i * n;
      for (let byte = 0; byte < bs; byte++) {
        let v = active[off + byte]!;
        while (v) {
          const bit = 31 - Math.clz32(v & -v);
          ys[row + byte * 8 + bit] = 1;
          v &= v - 1;
        }
      }
    }
    this.tokens = count;
  }

  /** Positives among the loaded labels. */
  positives(): number {
    let s = 0;
    const ys = this.mem.subarray(this.y, this.y + this.tokens * this.n);
    for (let i = 0; i < ys.length; i++) s += ys[i]!;
    return s;
  }

  /** Sets the parameters (A [r,d], B [n,r], bias [n]) and clears the optimizer. */
  setParams(a: Float32Array, b: Float32Array, bias: Float32Array): void {
    this.f32(this.aPtr, a.length).set(a);
    this.f32(this.bPtr, b.length).set(b);
    this.f32(this.biasPtr, bias.length).set(bias);
    this.f32(this.m, this.nParams).fill(0);
    this.f32(this.v, this.nParams).fill(0);
  }

  params(): { a: Float32Array; b: Float32Array; bias: Float32Array } {
    const { d, n, rank: r } = this;
    return { a: this.f32(this.aPtr, r * d).slice(), b: this.f32(this.bPtr, n * r).slice(), bias: this.f32(this.biasPtr, n).slice() };
  }

  /**
   * Initial parameters from the up projection W [n, d] and its bias: B·A is a
   * rank-r approximation of W, so the first logits are (nearly) the true
   * pre-activations. 'data' picks the subspace that best keeps W·x over the
   * loaded tokens (top eigenvectors of W·C·Wᵀ, C = E[x xᵀ], by subspace
   * iteration); 'svd' the plain truncated SVD (C = I).
   */
  async initFromUp(w: Float32Array, upBias: Float32Array, method: 'data' | 'svd', seed = 1, iterations = INIT_ITERATIONS, signal?: AbortSignal): Promise<void> {
    const { k, d, n, rank: r } = this;
    if (r >= Math.min(n, d) + 1) throw new ArgumentError(`rank ${r} exceeds min(ffnDim, dModel) = ${Math.min(n, d)}`);
    let at = this.scratch;
    const scratch = (count: number) => {
      const p = at;
      at += count * 4;
      return p;
    };
    const W = scratch(n * d);
    const WT = scratch(n * d);
    const C = scratch(d * d);
    const QT = scratch(r * n);
    const P = scratch(r * d);
    const S = scratch(r * d);
    this.f32(W, n * d).set(w);
    const cv = this.f32(C, d * d);
    if (method === 'svd') {
      cv.fill(0);
      for (let i = 0; i < d; i++) cv[i * d + i] = 1;
    } else {
      // C = XᵀX / N over (up to) 2048 loaded tokens (at most ffnDim: their transpose borrows Wᵀ's room before Wᵀ is made).
      const N = Math.max(1, Math.min(this.tokens, 2048, n));
      k.transpose(WT, this.x, N, d);
      this.mm(C, WT, WT, d, d, N);
      for (let i = 0; i < d * d; i++) cv[i] = cv[i]! / N;
    }
    k.transpose(WT, W, n, d);
    const q = this.f32(QT, r * n);
    const rand = rng(seed);
    for (let i = 0; i < r * n; i++) q[i] = rand() - 0.5;
    orthonormalizeRows(q, r, n);
    for (let it = 0; it < iterations; it++) {
      if (signal?.aborted) throw new AbortedError('aborted', { cause: signal.reason });
      this.mm(P, QT, WT, r, d, n); // P = Qᵀ W   [r, d]
      this.mm(S, P, C, r, d, d); // S = Qᵀ W C  (C symmetric)
      this.mm(QT, S, W, r, n, d); // Qᵀ ← Qᵀ W C Wᵀ  [r, n]
      orthonormalizeRows(this.f32(QT, r * n), r, n);
      await yieldToEventLoop();
    }
    this.mm(P, QT, WT, r, d, n); // A = Qᵀ W
    this.f32(this.aPtr, r * d).set(this.f32(P, r * d));
    k.transpose(this.bPtr, QT, r, n); // B = Q
    this.f32(this.biasPtr, n).set(upBias);
    this.f32(this.m, this.nParams).fill(0);
    this.f32(this.v, this.nParams).fill(0);
  }

  /** Small random parameters (A, B ~ U(±1/sqrt(fan-in))) and bias = log odds of the base rate. */
  initRandom(seed = 1): void {
    const { d, n, rank: r } = this;
    const rand = rng(seed);
    const av = this.f32(this.aPtr, r * d);
    for (let i = 0; i < av.length; i++) av[i] = (rand() * 2 - 1) / Math.sqrt(d);
    const bv = this.f32(this.bPtr, n * r);
    for (let i = 0; i < bv.length; i++) bv[i] = (rand() * 2 - 1) / Math.sqrt(r);
    const rate = Math.min(0.5, Math.max(1e-4, this.positives() / Math.max(1, this.tokens * n)));
    this.f32(this.biasPtr, n).fill(Math.log(rate / (1 - rate)));
    this.f32(this.m, this.nParams).fill(0);
    this.f32(this.v, this.nParams).fill(0);
  }

  /**
   * Rescales the logits (B and bias by α) to the α of a log-spaced grid with the
   * lowest loss on the first `count` tokens: the up projection's
   * pre-activations are small numbers, which the logistic loss reads as
   * "unsure"; at the right scale training starts from what they already rank well.
   */
  scaleLogits(count: number, posWeight: number): number {
    const { k, n, rank: r } = this;
    const b = this.f32(this.bPtr, n * r);
    const bias = this.f32(this.biasPtr, n);
    const bias0 = bias.slice();
    const alphas: number[] = [];
    for (let alpha = 1; alpha <= 4096; alpha *= 2) alphas.push(alpha);
    const losses = new Float64Array(alphas.length);
    // Logits scale with B and the bias: one forward pass per batch, then the loss at every scale
    // on a scaled copy (lgT is free here), with the bias scaled alike (in the bias' own slot).
    const sample = Math.min(count, 2048);
    for (let s = 0; s < sample; s += this.batch) {
      const T = Math.min(this.batch, sample - s);
      this.forward(s, T);
      alphas.forEach((alpha, i) => {
        this.mem.copyWithin(this.lgT, this.lg, this.lg + T * n * 4);
        k.scale(this.lgT, T * n, alpha);
        for (let j = 0; j < n; j++) bias[j] = bias0[j]! * alpha;
        losses[i] += k.bce_grad(this.lgT, this.y + s * n, this.biasPtr, T, n, posWeight, 0);
      });
    }
    let best = 0;
    for (let i = 1; i < alphas.length; i++) if (losses[i]! < losses[best]!) best = i;
    const alpha = alphas[best]!;
    for (let i = 0; i < b.length; i++) b[i] = b[i]! * alpha;
    for (let j = 0; j < n; j++) bias[j] = bias0[j]! * alpha;
    return alpha;
  }

  /** Forward pass: logits (without the bias) of tokens [t0, t0+T) into the logits buffer. */
  private forward(t0: number, T: number): void {
    const { k, d, n, rank: r } = this;
    this.mm(this.z, this.x + t0 * d * 4, this.aPtr, T, r, d);
    this.mm(this.lg, this.z, this.bPtr, T, n, r);
  }

  /** One Adam step on tokens [t0, t0+T); returns the summed loss. */
  step(t0: number, T: number, posWeight: number, lr: number, t: number): number {
    const { k, d, n, rank: r } = this;
    this.forward(t0, T);
    const loss = k.bce_grad(this.lg, this.y + t0 * n, this.biasPtr, T, n, posWeight, 1 / T);
    const gA = this.g;
    const gB = this.g + r * d * 4;
    const gBias = this.g + (r * d + n * r) * 4;
    k.colsum(gBias, this.lg, T, n, 0);
    k.transpose(this.lgT, this.lg, T, n); // dLᵀ [n, T]
    k.transpose(this.zT, this.z, T, r); // Zᵀ [r, T]
    this.mm(gB, this.lgT, this.zT, n, r, T); // dB = dLᵀ Z
    k.transpose(this.bT, this.bPtr, n, r); // Bᵀ [r, n]
    this.mm(this.dz, this.lg, this.bT, T, r, n); // dZ = dL B
    k.transpose(this.dzT, this.dz, T, r); // dZᵀ [r, T]
    k.transpose(this.xT, this.x + t0 * d * 4, T, d); // Xᵀ [d, T]
    this.mm(gA, this.dzT, this.xT, r, d, T); // dA = dZᵀ X
    const b1 = 0.9;
    const b2 = 0.999;
    k.adam_step(this.p, this.g, this.m, this.v, this.nParams, lr, b1, b2, 1e-8, 1 - Math.pow(b1, t), 1 - Math.pow(b2, t));
    return loss;
  }

  /** Trains on the first `count` loaded tokens. */
  async train(count: number, opts: Omit<TrainOptions, 'rank' | 'init' | 'seed'> & { posWeight: number; onEpoch?: (epoch: number) => void }): Promise<{ firstLoss: number; lastLoss: number }> {
    const epochs = opts.epochs ?? 4;
    const T = Math.min(this.batch, opts.batch ?? this.batch);
    const lr0 = opts.lr ?? 2e-3;
    const perEpoch = Math.ceil(count / T);
    const total = epochs * perEpoch;
    let step = 0;
    let yielded = performance.now();
    let firstLoss = NaN;
    let lastLoss = NaN;
    for (let e = 0; e < epochs; e++) {
      let sum = 0;
      for (let b = 0; b < perEpoch; b++) {
        if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
        const t0 = b * T;
        const len = Math.min(T, count - t0);
        const lr = lr0 * (0.1 + 0.9 * 0.5 * (1 + Math.cos((Math.PI * step) / Math.max(1, total))));
        const loss = this.step(t0, len, opts.posWeight, lr, step + 1);
        sum += loss;
        step++;
        opts.onStep?.(step, total, loss / len);
        // Let signals and progress through every 50 ms: a step of a big layer takes a good part of a second.
        if (performance.now() - yielded > 50) {
          await yieldToEventLoop();
          yielded = performance.now();
        }
      }
      if (e === 0) firstLoss = sum / count;
      lastLoss = sum / count;
      opts.onEpoch?.(e + 1);
    }
    return { firstLoss, lastLoss };
  }

  /** Mean loss per token over tokens [t0, t1) without training. */
  loss(t0: number, t1: number, posWeight: number): number {
    let sum = 0;
    for (let s = t0; s < t1; s += this.batch) {
      const T = Math.min(this.batch, t1 - s);
      this.forward(s, T);
      sum += this.k.bce_grad(this.lg, this.y + s * this.n, this.biasPtr, T, this.n, posWeight, 0);
    }
    return sum / Math.max(1, t1 - t0);
  }

  /**
   * Histograms of the logits (with bias) of positives and negatives over
   * tokens [t0, t1): `bins` bins over [lo, hi).
   */
  histogram(t0: number, t1: number, lo: number, hi: number, bins: number): { pos: Float64Array; neg: Float64Array; lo: number; width: number } {
    const { k, n } = this;
    const a = this.arena;
    if (!(bins >= 1 && bins <= MAX_BINS)) throw new ArgumentError(`bins must be in [1, ${MAX_BINS}]`);
    const ph = this.hist;
    const nh = this.hist + MAX_BINS * 8;
    new Float64Array(a.memory.buffer, ph, bins).fill(0);
    new Float64Array(a.memory.buffer, nh, bins).fill(0);
    const width = (hi - lo) / bins;
    for (let s = t0; s < t1; s += this.batch) {
      const T = Math.min(this.batch, t1 - s);
      this.forward(s, T);
      k.logit_histogram(this.lg, this.y + s * n, this.biasPtr, T, n, lo, 1 / width, bins, ph, nh);
    }
    const pos = new Float64Array(a.memory.buffer, ph, bins).slice();
    const neg = new Float64Array(a.memory.buffer, nh, bins).slice();
    return { pos, neg, lo, width };
  }
}

/** Most histogram bins of a threshold sweep. */
export const MAX_BINS = 8192;

/** Subspace iterations of the 'data' / 'svd' initialisation (each costs 2·rank·ffnDim·dModel multiply-adds). */
export const INIT_ITERATIONS = 6;

/** Rows of A per call of the prompt kernel in mm (bounds its scratch). */
const MM_ROWS = 64;

/** Scratch of the prompt kernel for mm's widest product (K up to max(dModel, ffnDim, rank, batch, 2048)). */
function mmScratchBytes(k: Kernels, d: number, n: number, r: number, batch: number): number {
  return k.batch_scratch_bytes(MM_ROWS, Math.max(d, n, r, batch, 2048));
}

/** f32 scratch of initFromUp: W, Wᵀ, C, Qᵀ, P, S. */
const initScratchFloats = (d: number, n: number, r: number) => 2 * n * d + d * d + r * n + 2 * r * d;

/** Modified Gram-Schmidt on the rows of q [rows, cols], twice for stability. */
function orthonormalizeRows(q: Float32Array, rows: number, cols: number): void {
  const row = new Float64Array(cols);
  for (let pass = 0; pass < 2; pass++) {
    for (let i = 0; i < rows; i++) {
      for (let c = 0; c < cols; c++) row[c] = q[i * cols + c]!;
      for (let j = 0; j < i; j++) {
        let dot = 0;
        for (let c = 0; c < cols; c++) dot += row[c]! * q[j * cols + c]!;
        for (let c = 0; c < cols; c++) row[c] = row[c]! - dot * q[j * cols + c]!;
      }
      let norm = 0;
      for (let c = 0; c < cols; c++) norm += row[c]! * row[c]!;
      norm = Math.sqrt(norm) || 1;
      for (let c = 0; c < cols; c++) q[i * cols + c] = row[c]! / norm;
    }
  }
}
