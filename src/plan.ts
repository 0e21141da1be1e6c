/**
 * Divides the memory budget (PAPER.md "Hybrid residency", "DRAM management"):
 * what must stay resident, the working set, the read staging area, and what
 * is left becomes the neuron cache. Refuses when the resident part alone does
 * not fit; never plans past the budget.
 */
import { ArgumentError, BudgetError } from './errors.js';
import type { FlmFile } from './format/reader.js';
import type { Kernels } from './kernels/types.js';
import { prefetchOverheadBytes, slotBytes, streamingFixedBytes, type Sparsity } from './flash/streaming.js';
import { MAX_ARENA_BYTES, fmtBytes, sizeOption } from './engine/arena.js';
import { hasRowsLayout, residentFfnBytes } from './engine/ffn.js';
import { DEFAULT_BATCH, Transformer, maxColumns, residentSections, type KvDtype } from './engine/transformer.js';
import { poolBytes } from './kernels/pool.js';

/**
 * The paper's ablation as presets. dense: everything resident (the
 * reference). naive: nothing resident, every weight read every token.
 * hybrid: attention resident, the whole FFN read every token. predictor:
 * only the selected neurons read, no reuse. window: selected neurons plus a
 * sliding-window neuron cache of `window` tokens.
 */
export type Strategy = 'dense' | 'naive' | 'hybrid' | 'predictor' | 'window';
export const STRATEGIES: readonly Strategy[] = ['dense', 'naive', 'hybrid', 'predictor', 'window'];

/** The options that shape the arena (a subset of openModel's; see OpenOptions for each). */
export interface PlanOptions {
  memory?: number | string;
  strategy?: Strategy;
  sparsity?: Sparsity;
  window?: number;
  stagingBytes?: number;
  batchSize?: number;
  /** Threads the kernels run on (resolved: planThreads), each with its own arena scratch. Default 1. */
  threads?: number;
  kvDtype?: KvDtype;
  /**
   * Read the next layer's neurons while this one computes (hybrid: the next
   * layer's first records; predictor and window: its lookahead set, which
   * needs predictors in the file). Default true; false for the ablation.
   */
  prefetch?: boolean;
  /**
   * The dense strategy's FFN layout: 'rows' (default) rearranges SiLU-gated
   * layers at load so their down pass runs as a matvec (faster; its sums round
   * differently from the streamed records'), 'records' keeps the file's neuron
   * records, the bits the streaming strategies give (src/engine/ffn.ts rowsLayout).
   */
  denseLayout?: DenseLayout;
}

export type DenseLayout = 'rows' | 'records';

export interface MemoryPlan {
  strategy: Strategy;
  sparsity: Sparsity;
  /** Window length (window strategy), else null. */
  window: number | null;
  arenaBytes: number;
  /** Weights read once: resident + predictor sections. */
  residentBytes: number;
  /** All FFN bytes of the file. */
  ffnBytes: number;
  /** Activations, KV cache, lists, scratch. */
  workingBytes: number;
  /** Prompt tokens per forward pass (1: token by token). */
  batch: number;
  /** The KV cache's element type. */
  kvDtype: KvDtype;
  /** Kernel threads, and the arena bytes their pool takes (part of workingBytes). */
  threads: number;
  poolBytes: number;
  /** Scratch of one thread's batched kernels (the pool's workers each get this much). */
  batchScratchBytes: number;
  /** dense: the FFN layout its layers load in ('rows' where the file's layers take it: rowsLayout); streaming: null. */
  denseLayout: DenseLayout | null;
  stagingBytes: number;
  /** Staging of the next layer's reads (0: no prefetch), besides its pointer table. */
  prefetchBytes: number;
  /** Cache slots per layer (window), neurons per layer, and the bytes all slots take. */
  capacity: number;
  neurons: number;
  cacheBytes: number;
}

const DEFAULT_STAGING = 16 << 20;
/** Default window cache: 1/4 of each layer's neurons. */
const DEFAULT_CACHE_SHARE = 4;
/** Room for per-region 64-byte alignment of the bump allocator. */
const SLACK = 1 << 16;

export function planMemory(file: FlmFile, k: Kernels, options: PlanOptions, contextLength: number): MemoryPlan {
  const h = file.header;
  const a = h.arch;
  const strategy = options.strategy ?? 'dense';
  if (!STRATEGIES.includes(strategy)) throw new ArgumentError(`unknown strategy ${String(strategy)}`);
  const streamed = strategy === 'predictor' || strategy === 'window';
  // relu-family gated models (arch.gatedAct) need no calibration for gate sparsity: threshold 0 is their exact active set
  const exactGate = a.activation === 'swiglu' && (a.gatedAct ?? 'silu') !== 'silu';
  const sparsity: Sparsity = streamed ? (options.sparsity ?? (h.predictors ? 'predictor' : h.gate || exactGate ? 'gate' : 'oracle')) : 'off';
  if (!['predictor', 'oracle', 'off', 'gate'].includes(sparsity)) throw new ArgumentError(`unknown sparsity ${String(sparsity)}`);
  if (sparsity === 'gate' && !h.gate && !exactGate) throw new ArgumentError('this .flm has no gate thresholds: run `flashlm calibrate` on a gated model, or choose --sparsity oracle|off');
  if (sparsity === 'predictor' && !h.predictors) throw new ArgumentError('this .flm has no predictors: run `flashlm calibrate`, or choose --sparsity oracle|off');
  const window = strategy === 'window' ? (options.window ?? 4) : null;
  if (window !== null && (!Number.isInteger(window) || window < 1 || window > 32)) throw new ArgumentError('window must be an integer in [1, 32]');

  const residentBytes = residentSections(file).reduce((s, x) => s + x.length, 0);
  const ffnSections = h.ffn.map((f) => file.section(f.section));
  const ffnBytes = ffnSections.reduce((s, x) => s + x.length, 0);
  // Prompts run in blocks of `batch` tokens: batched kernels (dense), or one read of the block's neurons (streaming).
  let batch = options.batchSize ?? DEFAULT_BATCH;
  if (!Number.isInteger(batch) || batch < 1 || batch > 1024) throw new ArgumentError(`batchSize must be an integer in [1, 1024], got ${String(options.batchSize)}`);
  const threads = options.threads ?? 1;
  const kvDtype = options.kvDtype ?? 'f32';
  const denseLayout = options.denseLayout ?? 'rows';
  if (denseLayout !== 'rows' && denseLayout !== 'records') throw new ArgumentError(`denseLayout must be rows or records, got ${String(options.denseLayout)}`);
  if (kvDtype !== 'f32' && kvDtype !== 'f16') throw new ArgumentError(`kvDtype must be f32 or f16, got ${String(options.kvDtype)}`);
  const budget = sizeOption(options.memory);
  if (budget !== undefined && (!(budget > 0) || budget > MAX_ARENA_BYTES)) throw new ArgumentError(`memory budget must be in (0, 4 GiB], got ${fmtBytes(budget)}`);
  // dense SiLU-gated models load their FFN in the rows layout (engine/ffn.ts rowsLayout)
  const rows = strategy === 'dense' && denseLayout === 'rows' && hasRowsLayout(file);
  /** Activations, KV cache and scratch at a block size. */
  const working = (batch: number) => {
    const batchScratchBytes = batch > 1 ? k.batch_scratch_bytes(batch, maxColumns(file, rows)) : 0;
    const pool = poolBytes(k, threads, { maxPositions: contextLength, maxNeurons: a.ffnDim, maxDim: a.dModel, batchScratchBytes });
    return { batchScratchBytes, pool, bytes: k.heap_base() + Transformer.workingBytes(file, contextLength, batch, k, kvDtype, rows) + pool + SLACK };
  };
  // The streaming FFN's lists, buffers and (gate mode) resident gate rows: arena bytes outside the cache.
  const streamingFixed = strategy === 'dense' ? 0 : streamingFixedBytes(file, k, window, sparsity);
  let w = working(batch);
  if (strategy !== 'dense' && options.batchSize === undefined && budget !== undefined && batch > 1) {
    // Prompt blocks are a speed-up, not a need: under a budget they may take at most an eighth of the room
    // left for staging and the neuron cache, else prompts go token by token.
    const one = working(1);
    if (w.bytes - one.bytes > (budget - residentBytes - one.bytes - streamingFixed) / 8) w = working((batch = 1));
  }
  const { batchScratchBytes, pool } = w;
  let workingBytes = w.bytes;
  const base = { strategy, sparsity, window, residentBytes, ffnBytes, neurons: a.ffnDim, batch, kvDtype, threads, poolBytes: pool, batchScratchBytes, denseLayout: strategy === 'dense' ? (rows ? 'rows' as const : 'records' as const) : null };

  if (strategy === 'dense') {
    const need = residentBytes + residentFfnBytes(file, { rows }) + workingBytes;
    if (budget !== undefined && need > budget) throw new BudgetError(`the dense strategy keeps the whole model resident: it needs ${fmtBytes(need)}, the budget is ${fmtBytes(budget)}; use a streaming strategy (hybrid, predictor, window)`);
    return { ...base, arenaBytes: budget ?? need, workingBytes, stagingBytes: 0, prefetchBytes: 0, capacity: 0, cacheBytes: 0 };
  }

  workingBytes += streamingFixed;
  const f = h.ffn[0]!;
  // Prefetch needs something that names the next layer's neurons early: all of them (hybrid), or a predictor
  // (lookahead predictors come only with direct ones: the reader refuses them alone).
  const prefetch = options.prefetch !== false && strategy !== 'naive' && sparsity !== 'gate' && (sparsity === 'off' || h.predictors !== undefined);
  const pfOverhead = prefetchOverheadBytes(file, file.source.alignment ?? 1);
  const align = Math.max(64, file.source.alignment ?? 1);
  // A whole record even in gate mode (whose first use reads whole records to load the gate rows).
  const record = f.parts.length * f.partBytes;
  // One record with alignment slack on both ends of every part: the smallest useful staging area.
  const minStaging = Math.ceil((record + 2 * align * f.parts.length) / align) * align;
  const largestLayer = Math.max(...ffnSections.map((s) => s.length)) + 2 * align * f.parts.length;
  let staging = options.stagingBytes ?? Math.max(minStaging, Math.min(DEFAULT_STAGING, largestLayer));
  if (staging < minStaging) throw new ArgumentError(`stagingBytes must be at least ${minStaging} (one neuron record with alignment)`);
  const fixed = residentBytes + workingBytes;
  if (budget !== undefined && fixed + minStaging > budget) {
    throw new BudgetError(
      `the resident part alone does not fit: weights ${fmtBytes(residentBytes)} + working memory ${fmtBytes(workingBytes)} (context ${contextLength}) + staging ${fmtBytes(minStaging)} > budget ${fmtBytes(budget)}`,
    );
  }
  if (budget !== undefined && options.stagingBytes === undefined) {
    // Streaming without a cache may use the whole rest for staging; with a cache, staging gets at most a quarter.
    const rest = budget - fixed;
    staging = Math.max(minStaging, Math.min(staging, window === null ? rest : Math.floor(rest / 4)));
  }
  // The prefetch area (its staging, pointer table and slack) is carved out of staging, so a window cache keeps
  // the capacity it has without prefetch: a staging's worth without sparsity (the next layer's first records, staging
  // doubled where the budget allows), else 1/16 of a layer (a few times a sparse layer's reads).
  let prefetchBytes = 0;
  if (prefetch) {
    const room = budget === undefined ? Infinity : budget - fixed - staging;
    if (sparsity === 'off' && room >= staging + pfOverhead) prefetchBytes = staging;
    else {
      const want = sparsity === 'off' ? staging : Math.ceil(largestLayer / 16 / align) * align;
      const pf = Math.floor(Math.min(want, (staging - pfOverhead) / 2) / align) * align;
      if (pf >= minStaging && staging - pf - pfOverhead >= minStaging) {
        prefetchBytes = pf;
        staging -= pf + pfOverhead;
      }
    }
  }
  // Its pointer table and alignment slack are working memory.
  if (prefetchBytes) workingBytes += pfOverhead;
  const fixedAll = residentBytes + workingBytes;
  let capacity = 0;
  if (window !== null) {
    const perSlot = slotBytes(file, sparsity);
    // Without a budget, a quarter of each layer's neurons: well above a window's working set (PAPER.md: ~2-16%).
    capacity = budget === undefined ? Math.ceil(a.ffnDim / DEFAULT_CACHE_SHARE) : Math.min(a.ffnDim, Math.floor((budget - fixedAll - staging - prefetchBytes) / (perSlot * a.nLayers)));
    if (capacity < 1) throw new BudgetError(`the budget ${fmtBytes(budget!)} leaves no room for the neuron cache after ${fmtBytes(fixedAll + staging + prefetchBytes)} of resident weights, working memory and staging`);
  }
  const cacheBytes = capacity * slotBytes(file, sparsity) * a.nLayers;
  const arenaBytes = budget ?? fixedAll + staging + prefetchBytes + cacheBytes;
  if (fixedAll + staging + prefetchBytes + cacheBytes > arenaBytes) throw new BudgetError(`internal: plan exceeds the budget`);
  return { ...base, arenaBytes, workingBytes, stagingBytes: staging, prefetchBytes, capacity, cacheBytes };
}
