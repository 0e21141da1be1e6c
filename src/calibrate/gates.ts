/**
 * Thresholded activation sparsity for gated (SwiGLU) models, which have no
 * exact zeros: per layer, the threshold on |silu(gate·x)| below which a
 * calibration-text share `sparsity` of the neurons falls. At run time
 * (sparsity 'gate') the gate rows stay resident and only neurons over the
 * threshold have their up and down parts read.
 */
import { ArgumentError } from '../errors.js';
import type { GateSparsity } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import { createTokenizer } from '../tokenizer/index.js';
import { forEachLayer } from './layerwise.js';
import { sampleWindows } from './text.js';

export interface GateCalibrateOptions {
  /** Share of neurons to skip, in [0, 1). Default 0.7. */
  sparsity?: number;
  tokens?: number;
  holdout?: number;
  context?: number;
  /** Kernel threads, the main one included (default: every core). */
  threads?: number;
  signal?: AbortSignal;
  onProgress?: (phase: 'collect', done: number, total: number) => void;
  wasm?: BufferSource | WebAssembly.Module | URL | string;
}

export interface GateLayerReport {
  layer: number;
  threshold: number;
  /** Share of neurons under the threshold on the held-out windows. */
  heldOutSparsity: number;
  /** Share of Σ|silu(gate·x)| the skipped neurons carry on held-out windows (how much gate mass is dropped). */
  heldOutSkippedMass: number;
}

export interface GateCalibration {
  gate: GateSparsity;
  layers: GateLayerReport[];
  trainTokens: number;
  heldOutTokens: number;
  collectSeconds: number;
}

/** The value below which a share `q` of `values` lies (sorts a copy). */
export function quantile(values: Float32Array, q: number): number {
  if (!values.length) return 0;
  const sorted = values.slice().sort();
  const i = Math.min(sorted.length - 1, Math.max(0, Math.floor(q * sorted.length)));
  // The threshold skips |a| <= t: take the largest value that keeps the share at most q.
  return i === 0 ? 0 : sorted[i - 1]!;
}

export async function calibrateGates(file: FlmFile, texts: readonly string[], opts: GateCalibrateOptions = {}): Promise<GateCalibration> {
  const a = file.header.arch;
  if (a.activation !== 'swiglu') throw new ArgumentError('gate thresholds are for gated (SwiGLU) models; ReLU models get predictors');
  if ((a.gatedAct ?? 'silu') !== 'silu') throw new ArgumentError(`gate thresholds are for SiLU-gated models; this ${a.gatedAct} model has exact zeros: use --sparsity gate without calibrating, or calibrate predictors`);
  const sparsity = opts.sparsity ?? 0.7;
  if (!(sparsity >= 0 && sparsity < 1)) throw new ArgumentError('sparsity must be in [0, 1)');
  const holdout = opts.holdout ?? 0.1;
  const context = Math.min(opts.context ?? 256, a.maxSeqLen);
  const tok = await createTokenizer(file.header.tokenizer);
  const windows = sampleWindows(tok, texts, opts.tokens ?? 32768, context);
  const every = Math.max(2, Math.round(1 / holdout));
  const train: number[][] = [];
  const held: number[][] = [];
  windows.forEach((w, i) => (i % every === every - 1 ? held : train).push(w));
  if (!held.length) throw new ArgumentError(`the calibration text is too short: ${windows.length} windows, need at least ${every}`);
  const t0 = performance.now();
  const n = a.ffnDim;
  const trainTokens = train.reduce((s, w) => s + w.length, 0);
  const layers: GateLayerReport[] = [];
  // Layer by layer (each layer's weights read once); only one layer's gate values are held.
  const info = await forEachLayer(file, [...train, ...held], { signal: opts.signal, wasm: opts.wasm, threads: opts.threads, onProgress: (l, d, t) => opts.onProgress?.('collect', l * t + d, a.nLayers * t) }, ({ layer, gate }) => {
    const threshold = quantile(gate.subarray(0, trainTokens * n), sparsity);
    const heldOut = gate.subarray(trainTokens * n);
    let skipped = 0;
    let mass = 0;
    let skippedMass = 0;
    for (let i = 0; i < heldOut.length; i++) {
      const v = heldOut[i]!;
      mass += v;
      if (v <= threshold) {
        skipped++;
        skippedMass += v;
      }
    }
    layers.push({ layer, threshold, heldOutSparsity: heldOut.length ? skipped / heldOut.length : 0, heldOutSkippedMass: mass ? skippedMass / mass : 0 });
  });
  const collectSeconds = (performance.now() - t0) / 1000;
  const acts = { tokens: info.tokens };
  return { gate: { sparsity, thresholds: layers.map((l) => l.threshold) }, layers, trainTokens, heldOutTokens: acts.tokens - trainTokens, collectSeconds };
}
