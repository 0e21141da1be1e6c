/**
 * Calibration data layer by layer: every calibration token goes through
 * layer 0, then every token through layer 1, and so on, so each layer's
 * weights are read once (the FFN of a 6.7B model does not fit a wasm32 arena
 * whole) and applied to blocks of tokens with the prompt (batched) kernels,
 * split over worker threads. After each layer its FFN inputs and true active
 * sets go to a consumer (which trains that layer's predictors) before the
 * next layer runs, so only a layer or two of data is ever held.
 *
 * The layer is the engine's (src/engine/transformer.ts forwardBlock): the same
 * kernels in the same order, so the FFN inputs are bit-identical to a
 * token-by-token dense run (test/calibrate.test.ts checks it).
 */
import { AbortedError, ArgumentError } from '../errors.js';
import type { FlmFile } from '../format/reader.js';
import type { SectionEntry, TensorEntry } from '../format/layout.js';
import { createArena, loadKernels, PROBE_ARENA_BYTES } from '../kernels/load.js';
import { createPool, planThreads, poolBytes, type KernelPool } from '../kernels/pool.js';
import type { Kernels } from '../kernels/types.js';
import { Arena, WASM_PAGE } from '../engine/arena.js';
import { exactZeros, gatedActArgs, runFfnBatch, runFfnKernel } from '../engine/ffn.js';
import { positionQK, ropeAttentionFactor, ropeFrequencies, ropeVaries } from '../engine/rope.js';
import { matmul, matvec, placeTensor, type Tensor } from '../engine/tensor.js';
import { maxColumns } from '../engine/transformer.js';
import { yieldToEventLoop } from '../util/yield.js';
import { bitsetBytes } from './collect.js';

/** What one layer saw over all calibration tokens (window order). */
export interface LayerData {
  layer: number;
  /** FFN inputs (after the FFN norm), [tokens, dModel]. */
  x: Float32Array;
  /** Exact-zero activations (ReLU, relu-family gates): active sets as bitsets, [tokens, ceil(ffnDim / 8)]; empty for SiLU gates. */
  active: Uint8Array;
  /** SiLU-gated: |silu(gate·x)| per neuron, [tokens, ffnDim]; empty otherwise. */
  gate: Float32Array;
}

export interface LayerwiseOptions {
  signal?: AbortSignal;
  /** Tokens per kernel call (default 64). */
  batch?: number;
  /** Threads including the caller (default: the hardware's). */
  threads?: number;
  /** Progress inside a layer: tokens of this layer done, tokens per layer. */
  onProgress?: (layer: number, done: number, total: number) => void;
  wasm?: BufferSource | WebAssembly.Module | URL | string;
}

export interface LayerwiseInfo {
  tokens: number;
  dModel: number;
  ffnDim: number;
  /** SiLU-gated (labels from |silu(gate·x)|). */
  gated: boolean;
  /** Threads the kernels ran on. */
  threads: number;
}

/** The block range of `section` covering tensors `ts` (values and scales). */
function blockRange(section: SectionEntry, ts: readonly TensorEntry[]): { firstBlock: number; start: number; length: number } {
  let lo = Infinity;
  let hi = 0;
  for (const t of ts) {
    lo = Math.min(lo, t.offset);
    hi = Math.max(hi, t.offset + t.length);
    if (t.scalesOffset !== undefined) {
      const rows = t.shape.length === 2 ? t.shape[0]! : 1;
      const cols = t.shape[t.shape.length - 1]!;
      const bytes = t.dtype === 'int8' ? rows * 4 : t.dtype === 'q8' ? rows * Math.ceil(cols / 32) * 4 : rows * Math.ceil(cols / 32) * 2;
      lo = Math.min(lo, t.scalesOffset);
      hi = Math.max(hi, t.scalesOffset + bytes);
    }
  }
  const bb = section.blockBytes;
  const firstBlock = Math.floor((lo - section.offset) / bb);
  const end = Math.min(section.length, Math.ceil((hi - section.offset) / bb) * bb);
  return { firstBlock, start: section.offset + firstBlock * bb, length: end - firstBlock * bb };
}

/** Resident tensors of `names` read (verified) into `buf`; returns them placed. */
async function loadTensors(file: FlmFile, arena: Arena, buf: number, entries: readonly TensorEntry[]): Promise<Map<string, Tensor>> {
  const s = file.section('resident');
  const r = blockRange(s, entries);
  await file.readSection(s, arena.u8(buf, r.length), r.firstBlock, file.source.hints);
  // placeTensor puts the section's start at sectionPtrs' address: here, where the range's start landed minus its offset.
  const ptrs = new Map([['resident', buf - (r.start - s.offset)]]);
  return new Map(entries.map((e) => [e.name, placeTensor(file, arena, ptrs, e)]));
}

/**
 * Runs `windows` (each from position 0) through the model layer by layer and
 * calls `onLayer` with each layer's data (awaited before the next layer).
 */
export async function forEachLayer(
  file: FlmFile,
  windows: readonly (readonly number[])[],
  opts: LayerwiseOptions,
  onLayer: (data: LayerData) => Promise<void> | void,
): Promise<LayerwiseInfo> {
  const a = file.header.arch;
  const { dModel: d, ffnDim: n, nLayers } = a;
  const gated = a.activation === 'swiglu' && !exactZeros(a);
  const N = windows.reduce((s, w) => s + w.length, 0);
  const context = Math.max(1, ...windows.map((w) => w.length));
  if (context > a.maxSeqLen) throw new ArgumentError(`a window of ${context} tokens exceeds the model's context ${a.maxSeqLen}`);
  for (const w of windows) for (const t of w) if (!(t >= 0 && t < a.vocabSize)) throw new RangeError(`token ${t} outside the vocabulary`);
  const T = Math.max(1, Math.min(opts.batch ?? 64, context));
  const qDim = a.nHeads * a.headDim;
  const kvDim = a.nKvHeads * a.headDim;
  const wide = Math.max(d, a.embedDim, qDim);
  const ld = wide * 4;
  const half = a.headDim / 2;
  const resident = file.section('resident');
  const residentTensors = file.header.tensors.filter((t) => (t.section ?? 'resident') === 'resident');
  const layerEntries = Array.from({ length: nLayers }, (_, l) => residentTensors.filter((t) => t.name.startsWith(`layers.${l}.`)));
  const globalEntries = residentTensors.filter((t) => ['tok_embeddings', 'pos_embeddings', 'project_in'].includes(t.name));
  const maxLayerBytes = Math.max(...layerEntries.map((es) => blockRange(resident, es).length));
  const maxFfnBytes = Math.max(...file.header.ffn.map((f) => file.section(f.section).length));
  const globalBytes = blockRange(resident, globalEntries).length;
  const maxCols = maxColumns(file);

  // Threads need a shared arena and the threads build, decided before the arena exists.
  const tp = opts.wasm === undefined ? await planThreads(opts.threads) : { threads: 1, shared: false, wasm: opts.wasm };
  const probe = await loadKernels(createArena(PROBE_ARENA_BYTES, { shared: tp.shared }), tp.wasm);
  const batchScratch = probe.batch_scratch_bytes(T, maxCols);
  const limits = { maxPositions: context, maxNeurons: n, maxDim: d, batchScratchBytes: batchScratch };
  const regionBytes = tp.threads > 1 ? poolBytes(probe, tp.threads, limits) : 0;
  const rows = (cols: number) => T * cols * 4 + 64;
  const bytes =
    probe.heap_base() +
    Math.max(maxLayerBytes, globalBytes) + 4096 +
    maxFfnBytes + 4096 +
    N * d * 4 + 64 + // the residual stream of every token
    4 * rows(wide) + rows(qDim) + 2 * context * kvDim * 4 + context * 4 + 2 * rows(half) +
    probe.matvec_i8_scratch_bytes(maxCols) + batchScratch + rows(n) + (gated ? rows(n) : 0) +
    regionBytes + 64 * 64 + WASM_PAGE;
  const memory = createArena(bytes, { shared: tp.shared });
  const k0 = await loadKernels(memory, tp.wasm);
  file.useKernelHasher(k0);
  const arena = new Arena(memory, k0.heap_base());
  let pool: KernelPool | undefined;
  try {
    pool = await createPool(k0, { threads: tp.threads, region: regionBytes ? arena.alloc('threads', regionBytes) : 0, ...limits });
    const k = pool.kernels;
    const tensorBuf = arena.alloc('layer weights', Math.max(maxLayerBytes, globalBytes), 4096);
    const ffnBuf = arena.alloc('layer FFN', maxFfnBytes, 4096);
    const H = arena.alloc('residual stream', N * d * 4);
    const xb = arena.alloc('xb', rows(wide));
    const xb2 = arena.alloc('xb2', rows(wide));
    const tmp = arena.alloc('tmp', rows(wide));
    const emb = arena.alloc('emb', rows(wide));
    const q = arena.alloc('q', rows(qDim));
    const kvBytes = kvDim * 4;
    const kCache = arena.alloc('k cache', context * kvBytes);
    const vCache = arena.alloc('v cache', context * kvBytes);
    const att = arena.alloc('attention scores', context * 4);
    const cos = arena.alloc('rope cos', rows(half));
    const sin = arena.alloc('rope sin', rows(half));
    const i8scratch = arena.alloc('int8 scratch', Math.max(16, probe.matvec_i8_scratch_bytes(maxCols)));
    const scratch = arena.alloc('batch scratch', batchScratch);
    const acts = arena.alloc('ffn activations', rows(n));
    const gateOut = gated ? arena.alloc('gate activations', rows(n)) : 0;
    const mem = new Uint8Array(memory.buffer);
    const hRow = (t: number) => H + t * d * 4;

    const mm = (out: number, ldo: number, w: Tensor, x: number, ldx: number, rowsT: number, bias?: Tensor) => {
      if (rowsT === 1) matvec(k, out, w, x, bias ? bias.ptr : 0, i8scratch);
      else matmul(k, out, ldo, w, x, ldx, bias ? bias.ptr : 0, rowsT, scratch);
    };
    const row = (w: Tensor, r: number, dst: number) => {
      if (w.dtype === 'f32') mem.copyWithin(dst, w.ptr + r * w.cols * 4, w.ptr + (r + 1) * w.cols * 4);
      else if (w.dtype === 'f16') k.dequant_f16(dst, w.ptr + r * w.cols * 2, w.cols);
      else if (w.dtype === 'q8') k.dequant_q8(dst, w.ptr + r * w.cols, w.scales + r * Math.ceil(w.cols / 32) * 4, w.cols);
      else if (w.dtype === 'q4') k.dequant_q4(dst, w.ptr + r * Math.ceil(w.cols / 32) * 16, w.scales + r * Math.ceil(w.cols / 32) * 2, w.cols);
      else k.dequant_i8(dst, w.ptr + r * w.cols, w.cols, w.scaleView![r]!);
    };
    const norm = (out: number, ldo: number, x: number, ldx: number, n: number, w: Tensor, bias: Tensor | undefined) => {
      for (let t = 0; t < n; t++) {
        if (a.norm === 'layernorm') k.layernorm(out + t * ldo, x + t * ldx, w.ptr, bias?.ptr ?? 0, d, a.normEps);
        else k.rmsnorm(out + t * ldo, x + t * ldx, w.ptr, d, a.normEps);
      }
    };
    let yielded = performance.now();
    const pause = async () => {
      if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
      // Let signals (Ctrl-C, SIGTERM) and progress through every 50 ms.
      if (performance.now() - yielded > 50) {
        await yieldToEventLoop();
        yielded = performance.now();
        if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
      }
    };

    // Embeddings (+ projection, learned positions) of every token: the residual stream before layer 0.
    {
      const g = await loadTensors(file, arena, tensorBuf, globalEntries);
      const embed = g.get('tok_embeddings')!;
      const projIn = g.get('project_in');
      const posEmbed = a.positions === 'learned' ? g.get('pos_embeddings') : undefined;
      let t0 = 0;
      for (const w of windows) {
        for (let p = 0; p < w.length; p += T) {
          const len = Math.min(T, w.length - p);
          const x = projIn ? emb : hRow(t0 + p);
          const ldx = projIn ? ld : d * 4;
          for (let t = 0; t < len; t++) row(embed, w[p + t]!, x + t * ldx);
          if (projIn) mm(hRow(t0 + p), d * 4, projIn, emb, ld, len);
          if (posEmbed) {
            for (let t = 0; t < len; t++) {
              row(posEmbed, p + t + (a.posOffset ?? 0), tmp);
              k.add(hRow(t0 + p + t), hRow(t0 + p + t), tmp, d);
            }
          }
          await pause();
        }
        t0 += w.length;
      }
    }

    const scale = Math.fround(1 / Math.sqrt(a.headDim));
    const act = gatedActArgs(a);
    const bs = bitsetBytes(n);
    const hView = new Float32Array(memory.buffer, acts, T * n);
    const gView = gated ? new Float32Array(memory.buffer, gateOut, n) : undefined;
    const ropeFreqs = a.positions === 'rope' ? ropeFrequencies(a) : undefined;
    const cosView = new Float32Array(memory.buffer, cos, T * half);
    const sinView = new Float32Array(memory.buffer, sin, T * half);
    const varies = ropeVaries(a);
    const mscale = ropeAttentionFactor(a);
    for (let l = 0; l < nLayers; l++) {
      const t = await loadTensors(file, arena, tensorBuf, layerEntries[l]!);
      const p = `layers.${l}.`;
      const need = (name: string) => t.get(p + name) ?? (() => { throw new ArgumentError(`model has no tensor ${p + name}`); })();
      const L = {
        attnNorm: need('attn_norm.weight'), attnNormBias: t.get(p + 'attn_norm.bias'),
        wq: need('wq'), wk: need('wk'), wv: need('wv'), wo: need('wo'),
        bq: t.get(p + 'bq'), bk: t.get(p + 'bk'), bv: t.get(p + 'bv'), bo: t.get(p + 'bo'),
        qNorm: t.get(p + 'q_norm'), kNorm: t.get(p + 'k_norm'),
        ffnNorm: need('ffn_norm.weight'), ffnNormBias: t.get(p + 'ffn_norm.bias'), downBias: t.get(p + 'ffn_down_bias'),
      };
      const window = a.slidingWindow !== undefined && l >= (a.slidingWindowStart ?? 0) ? a.slidingWindow : Infinity;
      const f = file.header.ffn[l]!;
      const fs = file.section(f.section);
      await file.readSection(fs, arena.u8(ffnBuf, fs.length), 0, file.source.hints);
      const partPtrs = f.partOffsets.map((o) => ffnBuf + o);
      const gatePtr = gated ? ffnBuf + f.partOffsets[f.parts.indexOf('gate')]! : 0;
      const gateAct = f.dtype === 'f32' ? k.gate_act_f32 : f.dtype === 'f16' ? k.gate_act_f16 : f.dtype === 'q8' ? k.gate_act_q8 : f.dtype === 'q4' ? k.gate_act_q4 : k.gate_act_i8;
      const data: LayerData = { layer: l, x: new Float32Array(N * d), active: new Uint8Array(gated ? 0 : N * bs), gate: new Float32Array(gated ? N * n : 0) };
      let t0 = 0;
      for (const w of windows) {
        for (let pos = 0; pos < w.length; pos += T) {
          const len = Math.min(T, w.length - pos);
          const x = hRow(t0 + pos);
          const lx = d * 4;
          // Attention block.
          let xin = x;
          let ldin = lx;
          if (a.preNorm) {
            norm(xb, ld, x, lx, len, L.attnNorm, L.attnNormBias);
            xin = xb;
            ldin = ld;
          }
          if (a.positions === 'rope') {
            for (let i = 0; i < len; i++) {
              // LongRoPE: short factors unless the window is longer than originalMaxPos (then long ones throughout, as for a long sequence).
              const rs = a.ropeScaling;
              const seqLen = rs?.type === 'longrope' ? (w.length > rs.originalMaxPos ? rs.originalMaxPos + 1 : 0) : pos + i + 1;
              const freqs = varies ? ropeFrequencies(a, seqLen) : ropeFreqs!;
              for (let j = 0; j < half; j++) {
                const v = Math.fround((pos + i) * freqs[j]!);
                cosView[i * half + j] = mscale === 1 ? Math.cos(v) : Math.fround(Math.fround(Math.cos(v)) * mscale);
                sinView[i * half + j] = mscale === 1 ? Math.sin(v) : Math.fround(Math.fround(Math.sin(v)) * mscale);
              }
            }
          }
          mm(q, qDim * 4, L.wq, xin, ldin, len, L.bq);
          mm(kCache + pos * kvBytes, kvBytes, L.wk, xin, ldin, len, L.bk);
          mm(vCache + pos * kvBytes, kvBytes, L.wv, xin, ldin, len, L.bv);
          await pause();
          for (let i = 0; i < len; i++) {
            const qi = q + i * qDim * 4;
            const kRow = kCache + (pos + i) * kvBytes;
            positionQK(k, a, L.qNorm, L.kNorm, qi, kRow, cos + i * half * 4, sin + i * half * 4);
            const seen = pos + i + 1;
            const first = Math.max(0, seen - window);
            k.attention(xb2 + i * ld, qi, kCache + first * kvBytes, vCache + first * kvBytes, a.nHeads, a.nKvHeads, a.headDim, seen - first, scale, att, 0, 0);
          }
          mm(tmp, ld, L.wo, xb2, ld, len, L.bo);
          for (let i = 0; i < len; i++) k.add(x + i * lx, x + i * lx, tmp + i * ld, d);
          if (!a.preNorm) norm(x, lx, x, lx, len, L.attnNorm, L.attnNormBias);
          await pause();

          // FFN block: its input is the predictors' x.
          xin = x;
          ldin = lx;
          if (a.preNorm) {
            norm(xb, ld, x, lx, len, L.ffnNorm, L.ffnNormBias);
            xin = xb;
            ldin = ld;
          }
          for (let i = 0; i < len; i++) data.x.set(new Float32Array(memory.buffer, xin + i * ldin, d), (t0 + pos + i) * d);
          if (len === 1) runFfnKernel(k, f, tmp, xin, f.neurons, partPtrs, f.stride, acts, act);
          else runFfnBatch(k, f, tmp, ld, xin, ldin, len, f.neurons, partPtrs, f.stride, acts, scratch, act);
          if (!gated) {
            for (let i = 0; i < len; i++) {
              const off = (t0 + pos + i) * bs;
              const h = i * n;
              for (let j = 0; j < n; j++) if (hView[h + j] !== 0) data.active[off + (j >> 3)]! |= 1 << (j & 7);
            }
          } else {
            for (let i = 0; i < len; i++) {
              gateAct(gateOut, xin + i * ldin, d, n, gatePtr, f.stride, act.afn, act.athr);
              const out = data.gate.subarray((t0 + pos + i) * n, (t0 + pos + i + 1) * n);
              for (let j = 0; j < n; j++) out[j] = Math.abs(gView![j]!);
            }
          }
          if (L.downBias) for (let i = 0; i < len; i++) k.add(tmp + i * ld, tmp + i * ld, L.downBias.ptr, d);
          for (let i = 0; i < len; i++) k.add(x + i * lx, x + i * lx, tmp + i * ld, d);
          if (!a.preNorm) norm(x, lx, x, lx, len, L.ffnNorm, L.ffnNormBias);
          opts.onProgress?.(l, t0 + pos + len, N);
          await pause();
        }
        t0 += w.length;
      }
      await onLayer(data);
    }
    return { tokens: N, dModel: d, ffnDim: n, gated, threads: pool.threads };
  } finally {
    await pool?.close();
  }
}
