/**
 * Calibration data: runs the dense model over token windows and records, per
 * layer and token, the FFN input x (after the FFN norm, what the predictor
 * sees) and the true active set (ReLU and the relu-family gated activations:
 * exactly non-zero outputs), or, for a SiLU-gated FFN, |silu(gate·x)| of every neuron.
 */
import { AbortedError } from '../errors.js';
import type { FlmFile } from '../format/reader.js';
import { createArena, loadKernels, PROBE_ARENA_BYTES } from '../kernels/load.js';
import type { Kernels } from '../kernels/types.js';
import { Arena } from '../engine/arena.js';
import { ResidentFfn, exactZeros, type FfnProvider } from '../engine/ffn.js';
import { planMemory } from '../plan.js';
import { Transformer } from '../engine/transformer.js';
import { readFfnPart } from './weights.js';
import { yieldToEventLoop } from '../util/yield.js';

/** What one layer saw over the collected tokens. */
export interface LayerActivations {
  /** FFN inputs, [tokens, dModel]. */
  x: Float32Array;
  /** ReLU: true active sets as bitsets, [tokens, ceil(ffnDim / 8)] (bit j of token t = neuron j active). */
  active: Uint8Array;
  /** Gated: |silu(gate·x)| per neuron, [tokens, ffnDim] (empty for ReLU). */
  gate: Float32Array;
}

export interface Activations {
  tokens: number;
  dModel: number;
  ffnDim: number;
  gated: boolean;
  layers: LayerActivations[];
}

export const bitsetBytes = (n: number): number => Math.ceil(n / 8);

/** Whether neuron j of token t is active in a bitset of `n` neurons per token. */
export function isActive(bits: Uint8Array, n: number, t: number, j: number): boolean {
  return (bits[t * bitsetBytes(n) + (j >> 3)]! & (1 << (j & 7))) !== 0;
}

/** A dense FFN that also reports each layer's input and activations. */
class CapturingFfn implements FfnProvider {
  constructor(
    private readonly inner: ResidentFfn,
    private readonly h: number,
    private readonly onLayer: (layer: number, x: number, h: number) => void,
  ) {}
  run(layer: number, x: number, out: number): void {
    this.inner.run(layer, x, out, this.h);
    this.onLayer(layer, x, this.h);
  }
}

/** A dense engine over `file` with a hook on every FFN call. */
export async function denseWithHook(
  file: FlmFile,
  contextLength: number,
  onLayer: (layer: number, x: Float32Array, h: Float32Array) => void,
  wasm?: BufferSource | WebAssembly.Module | URL | string,
): Promise<{ transformer: Transformer; kernels: Kernels; arena: Arena }> {
  const { dModel: d, ffnDim: n } = file.header.arch;
  const probe = await loadKernels(createArena(PROBE_ARENA_BYTES), wasm);
  const plan = planMemory(file, probe, { strategy: 'dense' }, contextLength);
  const memory = createArena(plan.arenaBytes + n * 4 + 4096);
  const kernels = await loadKernels(memory, wasm);
  const arena = new Arena(memory, kernels.heap_base());
  const h = arena.alloc('captured activations', n * 4);
  const transformer = await Transformer.load(file, kernels, arena, contextLength, async () => {
    const inner = await ResidentFfn.load(file, kernels, arena);
    return new CapturingFfn(inner, h, (layer, x) => onLayer(layer, arena.f32(x, d), arena.f32(h, n)));
  });
  return { transformer, kernels, arena };
}

export interface CollectOptions {
  signal?: AbortSignal;
  /** Called after every window with the tokens done so far. */
  onProgress?: (done: number, total: number) => void;
  wasm?: BufferSource | WebAssembly.Module | URL | string;
}

/**
 * Runs every window (from position 0) through the dense model and returns the
 * per-layer data of all their tokens, in window order.
 */
export async function collectActivations(file: FlmFile, windows: readonly (readonly number[])[], opts: CollectOptions = {}): Promise<Activations> {
  const a = file.header.arch;
  const { dModel: d, ffnDim: n, nLayers } = a;
  // gated: labels from |silu(gate·x)| (no exact zeros); relu-family gates are labelled by their exact zeros, as ReLU
  const gated = a.activation === 'swiglu' && !exactZeros(a);
  const total = windows.reduce((s, w) => s + w.length, 0);
  const contextLength = Math.max(1, ...windows.map((w) => w.length));
  const bs = bitsetBytes(n);
  const layers: LayerActivations[] = Array.from({ length: nLayers }, () => ({
    x: new Float32Array(total * d),
    active: new Uint8Array(gated ? 0 : total * bs),
    gate: new Float32Array(gated ? total * n : 0),
  }));
  // Gated: the gate rows of every layer, to compute silu(gate·x) for all neurons.
  const gates = gated ? await gateMatrices(file) : [];
  let t = 0;
  const { transformer } = await denseWithHook(
    file,
    contextLength,
    (layer, x, h) => {
      const L = layers[layer]!;
      L.x.set(x, t * d);
      if (!gated) {
        const off = t * bs;
        for (let j = 0; j < n; j++) if (h[j] !== 0) L.active[off + (j >> 3)]! |= 1 << (j & 7);
      } else {
        const g = gates[layer]!;
        const out = L.gate.subarray(t * n, (t + 1) * n);
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let c = 0; c < d; c++) s += g[j * d + c]! * x[c]!;
          out[j] = Math.abs(s / (1 + Math.exp(-s)));
        }
      }
    },
    opts.wasm,
  );
  let yielded = performance.now();
  for (const w of windows) {
    for (let pos = 0; pos < w.length; pos++) {
      if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
      await transformer.forward(w[pos]!, pos);
      t++;
      // Let signals (Ctrl-C, SIGTERM) and progress through every 50 ms: a window of a big model takes half a minute.
      if (performance.now() - yielded > 50) {
        opts.onProgress?.(t, total);
        await yieldToEventLoop();
        yielded = performance.now();
      }
    }
  }
  opts.onProgress?.(t, total);
  return { tokens: total, dModel: d, ffnDim: n, gated, layers };
}

/** Every layer's gate rows as f32 [ffnDim, dModel] (gated FFNs only). */
export async function gateMatrices(file: FlmFile): Promise<Float32Array[]> {
  return Promise.all(file.header.ffn.map((f) => readFfnPart(file, f.layer, 'gate')));
}
