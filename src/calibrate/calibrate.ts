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
import type { LayerPredictor, LookaheadPredictor } from '../format/rewrite.js';
import { createTokenizer } from '../tokenizer/index.js';
import { bitsetBytes, type Activations } from './collect.js';
import { forEachLayer } from './layerwise.js';
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
  /**
   * Also train lookahead predictors (Deja Vu's asynchronous lookahead): layer
   * L's active neurons from layer L-1's FFN input, so layer L's reads can
   * start before layer L-1's FFN has run. Default true.
   */
  lookahead?: boolean;
  /** Threads for the model and the training products (default: the hardware's). */
  threads?: number;
  signal?: AbortSignal;
  /** Progress: phase ('layers': the model and training, layer by layer), units done, units total. */
  onProgress?: (phase: 'collect' | 'train' | 'layers', done: number, total: number) => void;
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
  /** Lookahead predictors of layers 1.. (from layer L-1's FFN input), and their held-out reports (`layer` = the predicted layer L). */
  lookahead: LookaheadPredictor[];
  lookaheadLayers: LayerReport[];
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
  const trainCount = train.reduce((s, w) => s + w.length, 0);
  const tuneCount = tune.reduce((s, w) => s + w.length, 0);
  const ordered = [...train, ...tune, ...held];
  const total = ordered.reduce((s, w) => s + w.length, 0);
  const heldCount = total - trainCount - tuneCount;
  const lookahead = opts.lookahead ?? true;
  const epochs = opts.epochs ?? 4;
  const batch = opts.batch ?? 256;
  const stepsPerLayer = epochs * Math.ceil(trainCount / batch);
  // Progress units per layer: its tokens through the model, then the training steps (each about a token's worth of work per batch token / 8).
  const trainUnits = (lookahead ? 2 : 1) * stepsPerLayer * Math.max(1, Math.round(batch / 8));
  const perLayer = total + trainUnits;
  const progress = (done: number) => opts.onProgress?.('layers', done, a.nLayers * perLayer);
  const trainers = new Map<number, PredictorTrainer>();
  const trainerFor = async (rank: number) => {
    let t = trainers.get(rank);
    if (!t) {
      t = await PredictorTrainer.create(a.dModel, a.ffnDim, rank, total, batch, opts.wasm, opts.threads ?? 0);
      trainers.set(rank, t);
    }
    return t;
  };
  const predictors: LayerPredictor[] = [];
  const layers: LayerReport[] = [];
  const lookaheads: LookaheadPredictor[] = [];
  const lookaheadLayers: LayerReport[] = [];
  const thresholds: number[] = [];
  let prevX: Float32Array | undefined;
  let collectMs = 0;
  let trainMs = 0;
  let mark = performance.now();
  try {
    await forEachLayer(file, ordered, { signal: opts.signal, wasm: opts.wasm, threads: opts.threads, onProgress: (l, done) => progress(l * perLayer + done) }, async (data) => {
      const l = data.layer;
      const now = performance.now();
      collectMs += now - mark;
      mark = now;
      let active = data.active;
      if (gated) {
        const g = gateLayerLabels(data.gate, total, a.ffnDim, trainCount, gateSparsity);
        thresholds.push(g.threshold);
        active = g.active;
      }
      const trainer = await trainerFor(ranks[l]!);
      let steps = 0;
      const common = { ...opts, epochs, batch, target, gateThreshold: gated ? thresholds[l] : undefined };
      const onStep = (s: number) => progress(l * perLayer + total + Math.round(((steps + s) / ((lookahead ? 2 : 1) * stepsPerLayer)) * trainUnits));
      const direct = await trainLayer(trainer, file, data.x, active, l, ranks[l]!, trainCount, tuneCount, { ...common, onStep });
      predictors.push(direct.predictor);
      layers.push(direct.report);
      if (lookahead && prevX) {
        steps = stepsPerLayer;
        // Layer L's active sets from layer L-1's FFN inputs, starting from the direct predictor's initialisation.
        const ahead = await trainLayer(trainer, file, prevX, active, l, ranks[l]!, trainCount, tuneCount, { ...common, onStep, initParams: direct.initParams });
        lookaheads.push({ layer: l, ...ahead.predictor });
        lookaheadLayers.push(ahead.report);
      }
      prevX = lookahead ? data.x : undefined;
      trainMs += performance.now() - mark;
      mark = performance.now();
    });
  } finally {
    await Promise.all([...trainers.values()].map((t) => t.close()));
  }
  const result: CalibrationResult = {
    predictors,
    layers,
    lookahead: lookaheads,
    lookaheadLayers,
    trainTokens: trainCount,
    tuneTokens: tuneCount,
    heldOutTokens: heldCount,
    collectSeconds: collectMs / 1000,
    trainSeconds: trainMs / 1000,
  };
  if (gated) result.gate = { sparsity: gateSparsity, thresholds };
  return result;
}

/**
 * One layer of a gated model: the |silu(gate·x)| threshold under which a share
 * `sparsity` of the first `trainCount` tokens' neurons lies, and the labels
 * "over the threshold" as bitsets.
 */
export function gateLayerLabels(gate: Float32Array, tokens: number, n: number, trainCount: number, sparsity: number): { threshold: number; active: Uint8Array } {
  const bs = bitsetBytes(n);
  const threshold = quantile(gate.subarray(0, trainCount * n), sparsity);
  const active = new Uint8Array(tokens * bs);
  for (let t = 0; t < tokens; t++) {
    const row = t * n;
    for (let j = 0; j < n; j++) if (gate[row + j]! > threshold) active[t * bs + (j >> 3)]! |= 1 << (j & 7);
  }
  return { threshold, active };
}

/**
 * Gated models: per layer, the |silu(gate·x)| threshold under which a share
 * `sparsity` of the first `trainCount` tokens' neurons lies, and the labels
 * "over the threshold" as the layer's active bitsets (the gate values are
 * dropped afterwards).
 */
export function gateLabels(acts: Activations, trainCount: number, sparsity: number): GateSparsity {
  const thresholds = acts.layers.map((L) => {
    const g = gateLayerLabels(L.gate, acts.tokens, acts.ffnDim, trainCount, sparsity);
    L.active = g.active;
    L.gate = new Float32Array(0);
    return g.threshold;
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
 * One predictor of layer `l`'s active sets `active` from inputs `x` (the
 * layer's own FFN inputs, or layer l-1's for a lookahead predictor): fits on
 * tokens [0, trainCount), tunes the threshold on the next `tuneCount`, reports
 * on the rest. `initParams` (the direct predictor's initialisation) skips the
 * initialisation from the up rows; the parameters it started from are returned.
 */
export async function trainLayer(
  trainer: PredictorTrainer,
  file: FlmFile,
  x: Float32Array,
  active: Uint8Array,
  l: number,
  rank: number,
  trainCount: number,
  tuneCount: number,
  opts: CalibrateOptions & { target: number; epochs: number; batch: number; onStep?: (step: number) => void; gateThreshold?: number; initParams?: Params },
): Promise<{ predictor: LayerPredictor; report: LayerReport; initParams: Params }> {
  const { d, n } = trainer;
  const tokens = x.length / d;
  if (trainer.rank !== rank) throw new ArgumentError(`trainer of rank ${trainer.rank} for rank ${rank}`);
  // Training tokens shuffled (consecutive tokens are alike), then the held-out ones.
  const order = new Int32Array(tokens);
  for (let i = 0; i < tokens; i++) order[i] = i;
  const rand = rng((opts.seed ?? 1) * 7919 + l);
  for (let i = trainCount - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  trainer.load(x, active, order);
  const init = opts.init ?? 'data';
  const arch = file.header.arch;
  const seed = opts.seed ?? 1;
  if (opts.initParams) trainer.setParams(opts.initParams.a, opts.initParams.b, opts.initParams.bias);
  else if (init === 'random') trainer.initRandom(seed);
  else if (arch.activation === 'swiglu' && !exactZeros(arch)) {
    // Gated: the label is |silu(gate·x)| > t, mostly gate·x > silu⁻¹(t): start from the gate rows' low-rank subspace, biased by -silu⁻¹(t).
    const t = opts.gateThreshold ?? 0;
    await trainer.initFromUp(await readFfnPart(file, l, 'gate'), new Float32Array(n).fill(-siluInverse(t)), init, seed, undefined, opts.signal);
  } else if (arch.activation === 'swiglu') {
    // relu-family gates: active needs gate·x > 0 (fatrelu: > T): the gate rows' subspace, biased by -T
    const t = arch.gatedAct === 'fatrelu' ? arch.gatedActThreshold ?? 0 : 0;
    await trainer.initFromUp(await readFfnPart(file, l, 'gate'), new Float32Array(n).fill(-t), init, seed, undefined, opts.signal);
  } else await trainer.initFromUp(await readFfnPart(file, l, 'up'), await readUpBias(file, l), init, seed, undefined, opts.signal);
  const initParams = opts.initParams ?? trainer.params();
  let positives = 0;
  {
    // positives among the training tokens only
    const bs = Math.ceil(n / 8);
    for (let t = 0; t < trainCount; t++) for (let b = 0; b < bs; b++) positives += popcount(active[t * bs + b]!);
  }
  const negatives = trainCount * n - positives;
  const posWeight = opts.posWeight ?? Math.sqrt(negatives / Math.max(1, positives));
  const heldStart = trainCount + tuneCount;
  if (init !== 'random') trainer.scaleLogits(trainCount, posWeight);
  const heldOutLossBefore = trainer.loss(heldStart, tokens, posWeight);
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
  const heldOutLossAfter = trainer.loss(heldStart, tokens, posWeight);
  const hTune = trainer.histogram(trainCount, heldStart, HIST.lo, HIST.hi, HIST.bins);
  const { threshold, bin } = thresholdForRecall(hTune, opts.target);
  const hTrain = trainer.histogram(0, trainCount, HIST.lo, HIST.hi, HIST.bins);
  const hHeld = trainer.histogram(heldStart, tokens, HIST.lo, HIST.hi, HIST.bins);
  const m = metrics(confusionAtBin(hHeld, bin));
  const p = best.params;
  return {
    predictor: { rank, threshold, a: p.a, b: p.b, bias: p.bias },
    report: { layer: l, rank, threshold, ...m, trainRecall: metrics(confusionAtBin(hTrain, bin)).recall, heldOutLossBefore, heldOutLossAfter, posWeight, bestEpoch: best.epoch },
    initParams,
  };
}

type Params = { a: Float32Array; b: Float32Array; bias: Float32Array };

function popcount(v: number): number {
  let c = 0;
  while (v) {
    v &= v - 1;
    c++;
  }
  return c;
}
