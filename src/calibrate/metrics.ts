/** Predictor quality: confusion counts, recall and precision, and threshold choice for a recall target. */

export interface Confusion {
  truePositives: number;
  falsePositives: number;
  falseNegatives: number;
  /** Everything counted (tokens × neurons). */
  total: number;
}

export interface PredictorMetrics {
  /** Of the truly active neurons, the share predicted active (1 when none were active). */
  recall: number;
  /** Of the predicted neurons, the share truly active (1 when none were predicted). */
  precision: number;
  /** Predicted-active neurons / all neurons, per token on average. */
  predictedFraction: number;
  /** Truly active neurons / all neurons. */
  trueFraction: number;
}

export function metrics(c: Confusion): PredictorMetrics {
  const truth = c.truePositives + c.falseNegatives;
  const predicted = c.truePositives + c.falsePositives;
  return {
    recall: truth ? c.truePositives / truth : 1,
    precision: predicted ? c.truePositives / predicted : 1,
    predictedFraction: c.total ? predicted / c.total : 0,
    trueFraction: c.total ? truth / c.total : 0,
  };
}

/** Confusion of two 0/1 masks of equal length (predicted, true). */
export function confusion(predicted: ArrayLike<number | boolean>, truth: ArrayLike<number | boolean>): Confusion {
  if (predicted.length !== truth.length) throw new RangeError(`masks differ in length: ${predicted.length} vs ${truth.length}`);
  let tp = 0;
  let fp = 0;
  let fn = 0;
  for (let i = 0; i < predicted.length; i++) {
    const p = !!predicted[i];
    const t = !!truth[i];
    if (p && t) tp++;
    else if (p) fp++;
    else if (t) fn++;
  }
  return { truePositives: tp, falsePositives: fp, falseNegatives: fn, total: predicted.length };
}

export function addConfusion(a: Confusion, b: Confusion): Confusion {
  return {
    truePositives: a.truePositives + b.truePositives,
    falsePositives: a.falsePositives + b.falsePositives,
    falseNegatives: a.falseNegatives + b.falseNegatives,
    total: a.total + b.total,
  };
}

/** Logit histograms of positives and negatives: bin b covers [lo + b·width, lo + (b+1)·width). */
export interface LogitHistogram {
  pos: ArrayLike<number>;
  neg: ArrayLike<number>;
  lo: number;
  width: number;
}

/** Confusion when neurons in bins >= `bin` are predicted active (threshold lo + bin·width). */
export function confusionAtBin(h: LogitHistogram, bin: number): Confusion {
  let tp = 0;
  let fp = 0;
  let pos = 0;
  let neg = 0;
  for (let b = 0; b < h.pos.length; b++) {
    pos += h.pos[b]!;
    neg += h.neg[b]!;
    if (b >= bin) {
      tp += h.pos[b]!;
      fp += h.neg[b]!;
    }
  }
  return { truePositives: tp, falsePositives: fp, falseNegatives: pos - tp, total: pos + neg };
}

/**
 * The highest threshold (a bin edge) whose recall on the histogram is at
 * least `recall`: predicting `logit > threshold` then keeps that recall.
 */
export function thresholdForRecall(h: LogitHistogram, recall: number): { threshold: number; bin: number } {
  let pos = 0;
  for (let b = 0; b < h.pos.length; b++) pos += h.pos[b]!;
  const need = recall * pos;
  let kept = 0;
  for (let b = h.pos.length - 1; b >= 0; b--) {
    kept += h.pos[b]!;
    if (kept >= need) return { threshold: h.lo + b * h.width, bin: b };
  }
  return { threshold: h.lo, bin: 0 };
}
