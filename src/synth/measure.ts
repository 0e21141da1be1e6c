/**
 * Activation statistics of a model, measured through the engine: a dense
 * forward pass (the Transformer with every FFN section resident) whose FFN
 * kernel writes each token's activations, recorded per layer. It checks what
 * `flashlm synth` promises (sparsity, hot and cold neurons, turnover) and
 * measures the same on converted real models.
 */
import type { FlmFile } from '../format/reader.js';
import { createArena, loadKernels, PROBE_ARENA_BYTES } from '../kernels/load.js';
import { Arena } from '../engine/arena.js';
import { ResidentFfn, type FfnProvider } from '../engine/ffn.js';
import { Transformer, residentSections } from '../engine/transformer.js';

export interface LayerActivity {
  /** Mean over tokens of active neurons ÷ FFN neurons. */
  activeFraction: number;
  /** Per neuron: tokens it was active on. */
  firing: Uint32Array;
  /** Mean over tokens (with `window` predecessors and any active neuron) of: active neurons not active in the `window` tokens before ÷ active neurons. */
  newFraction: number;
  /** Share of all activations that the most active tenth of the neurons account for (0.1 if every neuron fired equally). */
  top10Share: number;
}

export interface ActivityReport {
  tokens: number[];
  window: number;
  layers: LayerActivity[];
}

/**
 * Runs `prompt` (token ids) then `generate` greedy tokens through the dense
 * engine and reports each layer's activity; `window` is the turnover window.
 */
export async function measureActivity(file: FlmFile, prompt: readonly number[], generate: number, window = 5): Promise<ActivityReport> {
  const h = file.header;
  const { ffnDim: n, nLayers: L, vocabSize: V } = h.arch;
  const context = prompt.length + generate;
  const probe = await loadKernels(createArena(PROBE_ARENA_BYTES));
  const resident = residentSections(file).reduce((s, x) => s + x.length, 0);
  const ffn = h.ffn.reduce((s, f) => s + file.section(f.section).length, 0);
  const bytes = probe.heap_base() + resident + ffn + Transformer.workingBytes(file, context, 1, probe) + n * 4 + 4096 * (residentSections(file).length + 2) + (1 << 20);
  const memory = createArena(bytes);
  const k = await loadKernels(memory);
  file.useKernelHasher(k);
  const arena = new Arena(memory, k.heap_base());
  const hPtr = { at: 0 };
  const firing = Array.from({ length: L }, () => new Uint32Array(n));
  const activeSum = new Float64Array(L);
  const newSum = new Float64Array(L);
  const newCount = new Float64Array(L);
  // Per layer, the token index at which each neuron was last active (-inf: never).
  const lastActive = Array.from({ length: L }, () => new Float64Array(n).fill(-Infinity));
  let token = 0;
  let hView: Float32Array = new Float32Array(0);
  const transformer = await Transformer.load(file, k, arena, context, async () => {
    const dense = await ResidentFfn.load(file, k, arena);
    hPtr.at = arena.alloc('measured activations', n * 4);
    hView = arena.f32(hPtr.at, n);
    const provider: FfnProvider = {
      run(layer, x, out) {
        dense.run(layer, x, out, hPtr.at);
        const last = lastActive[layer]!;
        const fire = firing[layer]!;
        let active = 0;
        let fresh = 0;
        for (let j = 0; j < n; j++) {
          if (hView[j] === 0) continue;
          active++;
          fire[j]!++;
          if (token - last[j]! > window) fresh++;
          last[j] = token;
        }
        activeSum[layer]! += active / n;
        if (token >= window && active) {
          newSum[layer]! += fresh / active;
          newCount[layer]!++;
        }
      },
    };
    return provider;
  });
  const ids = [...prompt];
  const mem = () => new Float32Array(memory.buffer);
  for (let pos = 0; pos < context; pos++) {
    token = pos;
    const logits = await transformer.forward(ids[pos]!, pos);
    if (pos + 1 < ids.length || ids.length >= context) continue;
    const lv = mem().subarray(logits / 4, logits / 4 + V);
    let best = 0;
    for (let i = 1; i < V; i++) if (lv[i]! > lv[best]!) best = i;
    ids.push(best);
  }
  return {
    tokens: ids,
    window,
    layers: firing.map((fire, l) => {
      const sorted = Array.from(fire).sort((a, b) => b - a);
      const total = sorted.reduce((s, v) => s + v, 0);
      const top = sorted.slice(0, Math.ceil(n / 10)).reduce((s, v) => s + v, 0);
      return { activeFraction: activeSum[l]! / context, firing: fire, newFraction: newCount[l] ? newSum[l]! / newCount[l]! : 0, top10Share: total ? top / total : 0 };
    }),
  };
}
