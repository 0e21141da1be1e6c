import { readFile } from 'node:fs/promises';
import { ArgumentError } from '../errors.js';
import { openFlm } from '../format/reader.js';
import { writeWithPredictors } from '../format/rewrite.js';
import { FileSink, FileSource } from '../source/file-node.js';
import { calibrate, type CalibrationResult } from '../calibrate/calibrate.js';
import { calibrateGates, type GateCalibration } from '../calibrate/gates.js';
import type { InitMethod } from '../calibrate/train.js';
import { fmtBytes } from '../engine/arena.js';
import { interruptSignal, progressBar } from './terminal.js';
import { checkOutput, namedWriteError } from './output.js';

export interface CalibrateFlags {
  text: string[];
  output: string;
  rank?: number;
  rankPerLayer?: number[];
  tokens: number;
  recall: number;
  margin: number;
  holdout: number;
  epochs: number;
  context: number;
  init: InitMethod;
  seed: number;
  gateSparsity: number;
  /** Gated models: keep the gate rows resident (thresholds only) or train predictors of the thresholded set. */
  gateMode?: 'resident' | 'predicted';
  /** Train lookahead predictors (default true; --no-lookahead). */
  lookahead?: boolean;
  /** Kernel threads, the main one included (default: every core). */
  threads?: number;
  json?: boolean;
  /** Replace an existing file that is not a .flm. */
  force?: boolean;
}

/**
 * `flashlm calibrate`: trains the predictors and writes a copy of the model
 * with them (temp name + rename: Ctrl-C or an error leaves no file behind).
 * Gated models: gate thresholds only (`--gate-mode resident`, the default),
 * or thresholds plus predictors of the set over them (`--gate-mode predicted`).
 */
export async function runCalibrate(modelPath: string, flags: CalibrateFlags): Promise<void> {
  if (flags.rank !== undefined && flags.rankPerLayer) throw new ArgumentError('give --rank or --rank-per-layer, not both');
  const texts = await Promise.all(flags.text.map((f) => readFile(f, 'utf8')));
  await checkOutput(flags.output, [modelPath, ...flags.text], { force: flags.force });
  const source = await FileSource.open(modelPath);
  const interrupt = interruptSignal();
  const bar = progressBar('{phase} [{bar}] {percentage}% {value}/{total} eta {eta_formatted}');
  let phase = '';
  const progress = (p: string, done: number, total: number) => {
    if (!bar) return;
    if (p !== phase) {
      if (bar.isActive) bar.stop();
      phase = p;
      bar.start(total, 0, { phase: p.padEnd(9) });
    }
    bar.update(done);
  };
  let sink: FileSink | undefined;
  const t0 = performance.now();
  try {
    const file = await openFlm(source);
    // SiLU-gated: no exact zeros (gate thresholds); relu-family gated models get predictors on their exact zeros, as ReLU
    const gated = file.header.arch.activation === 'swiglu' && (file.header.arch.gatedAct ?? 'silu') === 'silu';
    if (gated && flags.gateMode !== 'predicted') {
      // Gated model: no exact zeros, so per-layer thresholds on |silu(gate·x)| instead of predictors.
      if (!bar) process.stderr.write(`calibrating gate thresholds of ${modelPath} for ${(100 * flags.gateSparsity).toFixed(0)}% sparsity over ${flags.tokens} tokens\n`);
      const g = await calibrateGates(file, texts, {
        sparsity: flags.gateSparsity,
        tokens: flags.tokens,
        holdout: flags.holdout,
        context: flags.context,
        threads: flags.threads,
        signal: interrupt.signal,
        onProgress: (_p, done, total) => progress('tokens', done, total),
      });
      sink = await FileSink.create(flags.output);
      const header = await writeWithPredictors(file, [], sink, {
        signal: interrupt.signal,
        gate: g.gate,
        meta: { calibration: `gate thresholds for ${g.gate.sparsity} sparsity on ${g.trainTokens} tokens` },
        onProgress: (done, total) => progress('writing', done, total),
      });
      sink = undefined;
      bar?.stop();
      if (flags.json) process.stdout.write(JSON.stringify({ ...g, seconds: (performance.now() - t0) / 1000, output: flags.output }) + '\n');
      else process.stdout.write(formatGates(g));
      process.stderr.write(`wrote ${flags.output}: ${fmtBytes(header.integrity.offset + header.integrity.length)}; ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      return;
    }
    if (!bar) {
      const what = gated ? ` of |silu(gate·x)| over the ${(100 * flags.gateSparsity).toFixed(0)}%-sparsity thresholds` : '';
      const ahead = flags.lookahead !== false ? ' (and lookahead predictors)' : '';
      process.stderr.write(`calibrating ${modelPath}: ${flags.tokens} tokens through the model layer by layer, training each layer's predictor${ahead}${what} as it goes\n`);
    }
    const result = await calibrate(file, texts, {
      rank: flags.rankPerLayer ?? flags.rank,
      tokens: flags.tokens,
      recall: Math.min(1, flags.recall + flags.margin),
      holdout: flags.holdout,
      epochs: flags.epochs,
      context: flags.context,
      init: flags.init,
      seed: flags.seed,
      gateSparsity: flags.gateSparsity,
      lookahead: flags.lookahead !== false,
      threads: flags.threads,
      signal: interrupt.signal,
      onProgress: (p, done, total) => progress(p === 'collect' ? 'tokens' : p === 'train' ? 'training' : 'layers', done, total),
    });
    sink = await FileSink.create(flags.output);
    const labels = result.gate ? `, predicted gates for ${result.gate.sparsity} sparsity` : '';
    const header = await writeWithPredictors(file, result.predictors, sink, {
      signal: interrupt.signal,
      lookahead: result.lookahead,
      // Gated: the thresholds the labels came from are stored too (recall is measured against them; --sparsity gate stays available).
      gate: result.gate,
      meta: { calibration: `${result.trainTokens} train / ${result.tuneTokens} tune / ${result.heldOutTokens} held-out tokens, recall target ${flags.recall}, init ${flags.init}${labels}` },
      onProgress: (done, total) => progress('writing', done, total),
    });
    sink = undefined;
    bar?.stop();
    const seconds = (performance.now() - t0) / 1000;
    const size = header.integrity.offset + header.integrity.length;
    const predictorBytes = header.sections.find((s) => s.name === 'predictor')!.length;
    if (flags.json) process.stdout.write(JSON.stringify({ ...summary(result), seconds, output: flags.output }) + '\n');
    else process.stdout.write((result.gate ? `labels: |silu(gate·x)| over per-layer thresholds for ${(100 * result.gate.sparsity).toFixed(0)}% sparsity\n` : '') + formatCalibration(result, flags.recall));
    process.stderr.write(
      `wrote ${flags.output}: ${fmtBytes(size)}, predictors ${fmtBytes(predictorBytes)}; ${seconds.toFixed(1)} s (dense model ${result.collectSeconds.toFixed(1)} s, training ${result.trainSeconds.toFixed(1)} s)\n`,
    );
  } catch (e) {
    bar?.stop();
    await sink?.abort();
    throw namedWriteError(e, flags.output);
  } finally {
    interrupt.release();
    await source.close();
  }
}

function summary(r: CalibrationResult) {
  const { predictors: _p, lookahead: _l, ...rest } = r;
  return rest;
}

/** Gate thresholds per layer with the held-out sparsity they give. */
export function formatGates(g: GateCalibration): string {
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  const rows = [['layer', 'threshold |silu(g)|', 'held-out sparsity', 'skipped gate mass']];
  for (const l of g.layers) rows.push([String(l.layer), l.threshold.toPrecision(4), pct(l.heldOutSparsity), pct(l.heldOutSkippedMass)]);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) => row.map((v, c) => (c === 0 ? v.padEnd(w[c]!) : v.padStart(w[c]!))).join('  '));
  return `gate sparsity target ${pct(g.gate.sparsity)}; held-out: ${g.heldOutTokens} tokens (thresholds from ${g.trainTokens})\n` + lines.join('\n') + '\n';
}

/** The per-layer table: held-out recall, precision, predicted and true active fractions. */
export function formatCalibration(r: CalibrationResult, target: number): string {
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  const ahead = new Map(r.lookaheadLayers.map((l) => [l.layer, l]));
  const withAhead = ahead.size > 0;
  const rows = [['layer', 'rank', 'threshold', 'recall', 'precision', 'predicted', 'true active', 'pred/true', 'loss before→after', ...(withAhead ? ['lookahead recall', 'precision', 'predicted'] : [])]];
  for (const l of r.layers) {
    const la = ahead.get(l.layer);
    rows.push([
      String(l.layer),
      String(l.rank),
      l.threshold.toFixed(2),
      pct(l.recall),
      pct(l.precision),
      pct(l.predictedFraction),
      pct(l.trueFraction),
      (l.predictedFraction / Math.max(1e-12, l.trueFraction)).toFixed(2),
      `${l.heldOutLossBefore.toFixed(1)}→${l.heldOutLossAfter.toFixed(1)}`,
      ...(withAhead ? (la ? [pct(la.recall), pct(la.precision), pct(la.predictedFraction)] : ['-', '-', '-']) : []),
    ]);
  }
  const mean = (f: (l: (typeof r.layers)[number]) => number, ls = r.layers) => ls.reduce((s, l) => s + f(l), 0) / ls.length;
  const la = r.lookaheadLayers;
  rows.push([
    'mean', '', '', pct(mean((l) => l.recall)), pct(mean((l) => l.precision)), pct(mean((l) => l.predictedFraction)), pct(mean((l) => l.trueFraction)), '', '',
    ...(withAhead ? [pct(mean((l) => l.recall, la)), pct(mean((l) => l.precision, la)), pct(mean((l) => l.predictedFraction, la))] : []),
  ]);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) => row.map((v, c) => (c === 0 ? v.padEnd(w[c]!) : v.padStart(w[c]!))).join('  '));
  return (
    `held-out: ${r.heldOutTokens} tokens (fitted on ${r.trainTokens}, thresholds tuned on ${r.tuneTokens}); recall target ${pct(target)}` +
    (withAhead ? `; lookahead: layer L's neurons from layer L-1's FFN input` : '') + '\n' + lines.join('\n') + '\n'
  );
}
