/**
 * `flashlm calibrate` as a library call: run the dense model over calibration
 * text, train one low-rank predictor per layer on its FFN inputs and true
 * active sets, tune each layer's threshold for a recall target, and measure
 * recall/precision on held-out windows of the same text.
 *
 * Gated (SwiGLU) models have no exact zeros: their "active" set is the
 * neurons whose |silu(gate·x)| passes a per-layer threshold calibrated for a
 * target sparsity (as for the resident-gate mode, calibrateGates), and the
 * predictor learns that set, so that no gate row needs to stay resident.
 */
import { ArgumentError } from '../errors.js';
import type { FlmFile } from '../format/reader.js';
import type { GateSparsity } from '../format/layout.js';
import type { LayerPredictor } from '../format/rewrite.js';
import { createTokenizer } from '../tokenizer/index.js';
import { bitsetBytes, collectActivations, type Activations } from './collect.js';
import { quantile } from './gates.js';
import { confusionAtBin, metrics, thresholdForRecall, type PredictorMetrics } from './metrics.js';
import { sampleWindows } from './text.js';
import { PredictorTrainer, rng, type InitMethod } from './train.js';
import { readFfnPart, readUpBias } from './weights.js';
import { exactZeros } from '../engine/ffn.js';

export interface CalibrateOptions {
  /** Predictor rank: one for all layers, or one per layer. Default defaultRank(dModel). */
  rank?: number | readonly number[];
  /** Calibration tokens (training + held out). Default 32768. */
  tokens?: number;
  /** Share of the windows held out for the report. Default 0.1. */
  holdout?: number;
  /** Recall target of the tuned thresholds. Default 0.95. */
  recall?: number;
  /** Window length in tokens. Default min(256, model context). */
  context?: number;
  epochs?: number;
  lr?: number;
  posWeight?: number;
  batch?: number;
  init?: InitMethod;
  seed?: number;
  /**
   * Gated (SwiGLU) models: the share of neurons to skip. Each layer's
   * threshold on |silu(gate·x)| is the fitting tokens' quantile; the
   * predictor is trained on "over the threshold". Default 0.7.
   */
  gateSparsity?: number;
  signal?: AbortSignal;
  /** Progress: phase, units done, units total. */
  onProgress?: (phase: 'collect' | 'train', done: number, total: number) => void;
  wasm?: BufferSource | WebAssembly.Module | URL | string;
}

export interface LayerReport extends PredictorMetrics {
  layer: number;
  rank: number;
  threshold: number;
  /** Recall on the training tokens at the tuned threshold. */
  trainRecall: number;
  /** Mean loss per token on held-out tokens before and after training. */
  heldOutLossBefore: number;
  heldOutLossAfter: number;
  posWeight: number;
  /** The epoch kept (0 = the initialisation was best on the tuning tokens). */
  bestEpoch: number;
}

export interface CalibrationResult {
  predictors: LayerPredictor[];
  layers: LayerReport[];
  /** Tokens the predictors were fitted on, that tuned the thresholds, and held out for the report. */
  trainTokens: number;
  tuneTokens: number;
  heldOutTokens: number;
  /** Seconds spent running the dense model, and training. */
  collectSeconds: number;
  trainSeconds: number;
  /** Gated models: the per-layer |silu(gate·x)| thresholds that defined the labels (stored with the predictors). */
  gate?: GateSparsity;
}

/** dModel/8 within [16, 128] (the paper's 128 for dModel 4096), at most min(dModel, ffnDim). */
export function defaultRank(dModel: number, ffnDim: number): number {
  return Math.min(dModel, ffnDim, Math.max(16, Math.min(128, Math.round(dModel / 8))));
}

/** Threshold sweep range and resolution (logits outside land in the edge bins). */
const HIST = { lo: -40, hi: 40, bins: 8192 };

export async function calibrate(file: FlmFile, texts: readonly string[], opts: CalibrateOptions = {}): Promise<CalibrationResult> {
  const a = file.header.arch;
  // SiLU-gated: labels are |silu(gate·x)| over per-layer thresholds; relu-family gates have exact zeros (labels as ReLU)
  const gated = a.activation === 'swiglu' && !exactZeros(a);
  const gateSparsity = opts.gateSparsity ?? 0.7;
  if (gated && !(gateSparsity >= 0 && gateSparsity < 1)) throw new ArgumentError('gate sparsity must be in [0, 1)');
  const tokens = opts.tokens ?? 32768;
  const holdout = opts.holdout ?? 0.1;
  const target = opts.recall ?? 0.95;
  if (!(holdout > 0 && holdout < 1)) throw new ArgumentError('holdout must be in (0, 1)');
  if (!(target > 0 && target <= 1)) throw new ArgumentError('recall must be in (0, 1]');
  const context = Math.min(opts.context ?? 256, a.maxSeqLen);
  const ranks = Array.from({ length: a.nLayers }, (_, l) => {
    const r = typeof opts.rank === 'number' ? opts.rank : (opts.rank?.[l] ?? defaultRank(a.dModel, a.ffnDim));
    if (!Number.isInteger(r) || r < 1 || r > Math.min(a.dModel, a.ffnDim)) throw new ArgumentError(`layer ${l}: rank must be an integer in [1, ${Math.min(a.dModel, a.ffnDim)}]`);
    return r;
  });
  if (Array.isArray(opts.rank) && opts.rank.length !== a.nLayers) throw new ArgumentError(`--rank-per-layer needs ${a.nLayers} ranks, got ${opts.rank.length}`);

  const tok = await createTokenizer(file.header.tokenizer);
  const windows = sampleWindows(tok, texts, tokens, context);
  if (windows.length < 2) throw new ArgumentError('the calibration text is too short: need at least two windows of tokens');
  // Every k-th window is held out for the report, the one before it tunes the
  // thresholds (tokens the predictor was not fitted on); both come from all over the corpus.
  const every = Math.max(3, Math.round(1 / holdout));
  const train: number[][] = [];
  const tune: number[][] = [];
  const held: number[][] = [];
  windows.forEach((w, i) => (i % every === every - 1 ? held : i % every === every - 2 ? tune : train).push(w));
  if (!held.length || !tune.length) throw new ArgumentError(`the calibration text is too short: ${windows.length} windows of ${context} tokens, need at least ${every}`);
  const t0 = performance.now();
  const acts = await collectActivations(file, [...train, ...tune, ...held], {
    signal: opts.signal,
    wasm: opts.wasm,
    onProgress: (done, total) => opts.onProgress?.('collect', done, total),
  });
  const collectSeconds = (performance.now() - t0) / 1000;
  const trainCount = train.reduce((s, w) => s + w.length, 0);
  const tuneCount = tune.reduce((s, w) => s + w.length, 0);
  const heldCount = acts.tokens - trainCount - tuneCount;
  const gate = gated ? gateLabels(acts, trainCount, gateSparsity) : undefined;

  const t1 = performance.now();
  const predictors: LayerPredictor[] = [];
  const layers: LayerReport[] = [];
  const epochs = opts.epochs ?? 4;
  const batch = opts.batch ?? 256;
  const stepsPerLayer = epochs * Math.ceil(trainCount / batch);
  for (let l = 0; l < a.nLayers; l++) {
    const { predictor, report } = await trainLayer(file, acts, l, ranks[l]!, trainCount, tuneCount, {
      ...opts,
      epochs,
      batch,
      target,
      gateThresholds: gate?.thresholds,
      onStep: (s) => opts.onProgress?.('train', l * stepsPerLayer + s, a.nLayers * stepsPerLayer),
    });
    predictors.push(predictor);
    layers.push(report);
  }
  const result: CalibrationResult = { predictors, layers, trainTokens: trainCount, tuneTokens: tuneCount, heldOutTokens: heldCount, collectSeconds, trainSeconds: (performance.now() - t1) / 1000 };
  if (gate) result.gate = gate;
  return result;
}

/**
 * Gated models: per layer, the |silu(gate·x)| threshold under which a share
 * `sparsity` of the first `trainCount` tokens' neurons lies, and the labels
 * "over the threshold" as the layer's active bitsets (the gate values are
 * dropped afterwards).
 */
export function gateLabels(acts: Activations, trainCount: number, sparsity: number): GateSparsity {
  const n = acts.ffnDim;
  const bs = bitsetBytes(n);
  const thresholds = acts.layers.map((L) => {
    const threshold = quantile(L.gate.subarray(0, trainCount * n), sparsity);
    const active = new Uint8Array(acts.tokens * bs);
    for (let t = 0; t < acts.tokens; t++) {
      const row = t * n;
      for (let j = 0; j < n; j++) if (L.gate[row + j]! > threshold) active[t * bs + (j >> 3)]! |= 1 << (j & 7);
    }
    L.active = active;
    L.gate = new Float32Array(0);
    return threshold;
  });
  return { sparsity, thresholds };
}

/** The s > 0 with silu(s) = t (t >= 0), by bisection: where the gate pre-activation crosses a threshold. */
export function siluInverse(t: number): number {
  let lo = 0;
  let hi = Math.max(1, 2 * t + 2);
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (mid / (1 + Math.exp(-mid)) < t) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * Layer `l`: fits on tokens [0, trainCount) of `acts`, tunes the threshold on
 * the next `tuneCount`, reports on the rest.
 */
export async function trainLayer(
  file: FlmFile,
  acts: Activations,
  l: number,
  rank: number,
  trainCount: number,
  tuneCount: number,
  opts: CalibrateOptions & { target: number; epochs: number; batch: number; onStep?: (step: number) => void; gateThresholds?: readonly number[] },
): Promise<{ predictor: LayerPredictor; report: LayerReport }> {
  const { dModel: d, ffnDim: n } = acts;
  const L = acts.layers[l]!;
  const trainer = await PredictorTrainer.create(d, n, rank, acts.tokens, opts.batch, opts.wasm);
  // Training tokens shuffled (consecutive tokens are alike), then the held-out ones.
  const order = new Int32Array(acts.tokens);
  for (let i = 0; i < acts.tokens; i++) order[i] = i;
  const rand = rng((opts.seed ?? 1) * 7919 + l);
  for (let i = trainCount - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  trainer.load(L.x, L.active, order);
  const init = opts.init ?? 'data';
  if (init === 'random') trainer.initRandom(opts.seed ?? 1);
  else if (acts.gated) {
    // Gated: the label is |silu(gate·x)| > t, mostly gate·x > silu⁻¹(t): start from the gate rows' low-rank subspace, biased by -silu⁻¹(t).
    const t = opts.gateThresholds?.[l] ?? 0;
    trainer.initFromUp(await readFfnPart(file, l, 'gate'), new Float32Array(n).fill(-siluInverse(t)), init, opts.seed ?? 1);
  } else if (file.header.arch.activation === 'swiglu') {
    // relu-family gates: active needs gate·x > 0 (fatrelu: > T): the gate rows' subspace, biased by -T
    const arch = file.header.arch;
    const t = arch.gatedAct === 'fatrelu' ? arch.gatedActThreshold ?? 0 : 0;
    trainer.initFromUp(await readFfnPart(file, l, 'gate'), new Float32Array(n).fill(-t), init, opts.seed ?? 1);
  } else trainer.initFromUp(await readFfnPart(file, l, 'up'), await readUpBias(file, l), init, opts.seed ?? 1);
  let positives = 0;
  {
    // positives among the training tokens only
    const bs = Math.ceil(n / 8);
    for (let t = 0; t < trainCount; t++) for (let b = 0; b < bs; b++) positives += popcount(L.active[t * bs + b]!);
  }
  const negatives = trainCount * n - positives;
  const posWeight = opts.posWeight ?? Math.sqrt(negatives / Math.max(1, positives));
  const heldStart = trainCount + tuneCount;
  if (init !== 'random') trainer.scaleLogits(trainCount, posWeight);
  const heldOutLossBefore = trainer.loss(heldStart, acts.tokens, posWeight);
  // Model selection on the tuning tokens: keep the epoch (0 = the initialisation)
  // that predicts the fewest neurons at the target recall.
  const tuneScore = () => {
    const h = trainer.histogram(trainCount, heldStart, HIST.lo, HIST.hi, HIST.bins);
    return metrics(confusionAtBin(h, thresholdForRecall(h, opts.target).bin)).predictedFraction;
  };
  let best = { epoch: 0, score: tuneScore(), params: trainer.params() };
  await trainer.train(trainCount, {
    epochs: opts.epochs,
    batch: opts.batch,
    lr: opts.lr,
    posWeight,
    signal: opts.signal,
    onStep: opts.onStep,
    onEpoch: (epoch) => {
      const score = tuneScore();
      if (score < best.score) best = { epoch, score, params: trainer.params() };
    },
  });
  trainer.setParams(best.params.a, best.params.b, best.params.bias);
  const heldOutLossAfter = trainer.loss(heldStart, acts.tokens, posWeight);
  const hTune = trainer.histogram(trainCount, heldStart, HIST.lo, HIST.hi, HIST.bins);
  const { threshold, bin } = thresholdForRecall(hTune, opts.target);
  const hTrain = trainer.histogram(0, trainCount, HIST.lo, HIST.hi, HIST.bins);
  const hHeld = trainer.histogram(heldStart, acts.tokens, HIST.lo, HIST.hi, HIST.bins);
  const m = metrics(confusionAtBin(hHeld, bin));
  const p = trainer.params();
  return {
    predictor: { rank, threshold, a: p.a, b: p.b, bias: p.bias },
    report: { layer: l, rank, threshold, ...m, trainRecall: metrics(confusionAtBin(hTrain, bin)).recall, heldOutLossBefore, heldOutLossAfter, posWeight, bestEpoch: best.epoch },
  };
}

function popcount(v: number): number {
  let c = 0;
  while (v) {
    v &= v - 1;
    c++;
  }
  return c;
}
