/**
 * A synthetic checkpoint: random weights of a real model's shape whose FFN
 * activations have the statistics of trained sparse ReLU models, arising from
 * the weights themselves. Every value is a pure function of (seed, tensor,
 * row), made on demand by a fast PRNG, so `writeFlm` streams it to disk in
 * bounded memory like any converter input.
 *
 * The design (docs: `flashlm synth` in the README):
 *  - The residual stream is dominated by the token embedding (random per
 *    token), with small position, attention and FFN terms, so the FFN input x
 *    of a token is close to an independent random direction from the one of a
 *    different token: activations turn over from token to token.
 *  - After LayerNorm, x has mean 0 and unit variance, |x|² = d; an up row u_j
 *    of unit norm gives u_j·x ≈ N(0, 1) over tokens. With the bias
 *    b_j = Φ⁻¹(p_j), neuron j fires (u_j·x + b_j > 0) with probability p_j.
 *  - p_j follows a power law over the neurons (hot and cold neurons):
 *    p(q) = min(P_MAX, c·(q + Q0)^-ALPHA) for q uniform in [0, 1), c set so
 *    the mean is ACTIVE (3%: 97% of the neurons are zero per token).
 *  - Llama (RMSNorm, no biases, ReLU-gated FFN): every embedding carries one
 *    constant vector c·1 of the same size as its random part, which RMSNorm
 *    keeps; gate row j = w_j (zero mean, unit norm) + κ_j·1 with
 *    κ_j = Φ⁻¹(p_j)/d, so gate_j·x ≈ (N(0, 1) + Φ⁻¹(p_j))/√2: the bias
 *    arrives through the residual stream, as in models without FFN biases.
 *  - Greedy text must not fall into short loops (a loop shorter than the
 *    window would make the window's job easy): OPT's position embeddings
 *    (0.7 of the token's) make the next token depend on the position, and
 *    OPT's tied head sees the final LayerNorm with random ±1 weights (a
 *    symmetric E·Eᵀ would pair tokens into 2-cycles); Llama's head rows have
 *    zero mean (blind to the constant direction, which would favour the same
 *    few tokens everywhere).
 *  - Logits have a standard deviation of about 4 (sampling is meaningful);
 *    the stop token's embedding (and head row) is nearly zero so generation
 *    does not stop early; vocabulary rows beyond the tokenizer's are zero
 *    (their logit is 0, below the best real ones).
 */
import type { Checkpoint } from '../convert/types.js';
import { ConvertError } from '../errors.js';
import type { ArchConfig, TokenizerSpec } from '../format/types.js';

/** Mean firing probability of a neuron: 3% active, 97% zero per token (the paper's OPT 6.7B). */
export const ACTIVE = 0.03;
/** Power-law exponent and cap of the firing probabilities (p = min(P_MAX, c·(q + Q0)^-ALPHA)). */
export const ALPHA = 1;
export const P_MAX = 0.5;
export const Q0 = 1e-3;
/** Logit standard deviation. */
const LOGIT_STD = 4;
/** Each layer's attention and FFN output, relative to the embedding, times √L (kept small: tokens stay distinct). */
const MIX = 0.3;
/** Position embedding, relative to the token embedding. */
const POS = 0.7;
/** Scale of the stop token's embedding and head row. */
const STOP_SCALE = 0.01;
/** Llama: |c|² / |random part|² of an embedding (the constant "bias" direction). */
const BETA = 1;

/** 32-bit integer hash (murmur3's finalizer). */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

/** A seed for row `r` of a tensor (never 0: xorshift would stay at 0). */
const rowSeed = (tensorSeed: number, r: number): number => fmix32(tensorSeed + Math.imul(r + 1, 0x9e3779b9)) || 1;

/** A uniform number in [0, 1) from a hash. */
const unit = (h: number): number => (h >>> 0) / 4294967296;

/**
 * Fills out[at, at + n) with values uniform in [-amp, amp) from xorshift32
 * seeded with `seed` (variance amp²/3): a few ns per value, the writer's pace.
 */
export function fillUniform(out: Float32Array, at: number, n: number, seed: number, amp: number): void {
  let s = seed | 0 || 1;
  const k = amp / 2147483648;
  for (let i = at, end = at + n; i < end; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s * k;
  }
}

/** Uniform amplitude with standard deviation `std`. */
const amp = (std: number): number => std * Math.sqrt(3);

/** Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9). */
export function probit(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  if (p > 1 - lo) return -probit(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) / (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

/** The power law's scale c such that the mean of min(P_MAX, c·(q + Q0)^-ALPHA) over q in [0, 1) is `mean` (bisection on a midpoint grid). */
function powerLawScale(mean: number): number {
  const N = 1 << 16;
  const avg = (c: number) => {
    let s = 0;
    for (let i = 0; i < N; i++) s += Math.min(P_MAX, c * ((i + 0.5) / N + Q0) ** -ALPHA);
    return s / N;
  };
  let lo = 1e-9;
  let hi = 1;
  for (let it = 0; it < 80; it++) {
    const c = Math.sqrt(lo * hi);
    if (avg(c) > mean) hi = c;
    else lo = c;
  }
  return Math.sqrt(lo * hi);
}

export interface SynthOptions {
  arch: ArchConfig;
  tokenizer: TokenizerSpec;
  /** Ids the tokenizer itself has (rows from here to vocabSize are padding). */
  tokenizerVocab: number;
  seed: number;
  /** For error messages and meta. */
  name: string;
}

/** What a tensor's rows are made of. */
type Gen = (out: Float32Array, at: number, row: number, cols: number) => void;

export class SynthCheckpoint implements Checkpoint {
  readonly path: string;
  readonly arch: ArchConfig;
  readonly tokenizer: TokenizerSpec;
  readonly tensors: ReadonlyMap<string, readonly number[]>;
  private readonly gens = new Map<string, Gen>();
  private readonly seed: number;
  /** The power law's scale (see powerLawScale). */
  private readonly plScale: number;

  constructor(o: SynthOptions) {
    const a = o.arch;
    this.path = `synthetic ${o.name}`;
    this.arch = a;
    this.tokenizer = o.tokenizer;
    this.seed = fmix32(o.seed ^ 0x5f3759df);
    this.plScale = powerLawScale(ACTIVE);
    const shapes = new Map<string, number[]>();
    const { dModel: d, ffnDim: F, vocabSize: V, nLayers: L } = a;
    const llama = a.type === 'llama';
    const qDim = a.nHeads * a.headDim;
    const kvDim = a.nKvHeads * a.headDim;
    const embStd = LOGIT_STD / Math.sqrt(d);
    const mix = MIX / Math.sqrt(L);
    const cEntry = llama ? embStd * Math.sqrt(BETA) : 0;
    const add = (name: string, shape: number[], gen: Gen) => {
      shapes.set(name, shape);
      this.gens.set(name, gen);
    };
    const stop = new Set(a.stopIds);
    const random = (name: string, std: number): Gen => {
      const ts = this.tensorSeed(name);
      return (out, at, row, cols) => fillUniform(out, at, cols, rowSeed(ts, row), amp(std));
    };
    const constant = (v: number): Gen => (out, at, _row, cols) => out.fill(v, at, at + cols);
    const vector = (v: (i: number) => number): Gen => (out, at, row) => {
      out[at] = v(row);
    };

    // Token rows: random (plus Llama's constant), the stop token's nearly zero, padding rows zero (Llama: the constant).
    const embRandom = random('tok_embeddings', embStd);
    add('tok_embeddings', [V, d], (out, at, row, cols) => {
      if (row < o.tokenizerVocab) embRandom(out, at, row, cols);
      else out.fill(0, at, at + cols);
      if (stop.has(row)) for (let i = at; i < at + cols; i++) out[i]! *= STOP_SCALE;
      if (cEntry) for (let i = at; i < at + cols; i++) out[i]! += cEntry;
    });
    if (a.positions === 'learned') add('pos_embeddings', [a.maxSeqLen + (a.posOffset ?? 0), d], random('pos_embeddings', POS * embStd));
    const downStd = (mix * embStd) / Math.sqrt(ACTIVE * F * 0.5);
    for (let l = 0; l < L; l++) {
      const p = `layers.${l}.`;
      add(p + 'attn_norm.weight', [d], constant(1));
      if (!llama) add(p + 'attn_norm.bias', [d], constant(0));
      // Scores q·k/√hd of unit variance; values of unit variance; the output `mix` of the embedding's size.
      add(p + 'wq', [qDim, d], random(p + 'wq', 1 / Math.sqrt(d)));
      add(p + 'wk', [kvDim, d], random(p + 'wk', 1 / Math.sqrt(d)));
      add(p + 'wv', [kvDim, d], random(p + 'wv', 1 / Math.sqrt(d)));
      add(p + 'wo', [d, qDim], random(p + 'wo', (mix * embStd) / Math.sqrt(qDim)));
      if (a.attnBias) {
        add(p + 'bq', [qDim], constant(0));
        add(p + 'bk', [kvDim], constant(0));
        add(p + 'bv', [kvDim], constant(0));
        add(p + 'bo', [d], constant(0));
      }
      add(p + 'ffn_norm.weight', [d], constant(1));
      if (!llama) add(p + 'ffn_norm.bias', [d], constant(0));
      const upSeed = this.tensorSeed(p + 'ffn_up');
      if (llama) {
        // Gate rows carry the firing threshold along the constant direction; up rows are plain unit rows.
        const gateSeed = this.tensorSeed(p + 'ffn_gate');
        add(p + 'ffn_gate', [F, d], (out, at, row, cols) => {
          fillUniform(out, at, cols, rowSeed(gateSeed, row), 1);
          unitRow(out, at, cols, true);
          const kappa = probit(this.firing(l, row)) / (cols * Math.sqrt(BETA));
          for (let i = at; i < at + cols; i++) out[i]! += kappa;
        });
        add(p + 'ffn_up', [F, d], (out, at, row, cols) => {
          fillUniform(out, at, cols, rowSeed(upSeed, row), 1);
          unitRow(out, at, cols, false);
        });
      } else {
        add(p + 'ffn_up', [F, d], (out, at, row, cols) => {
          fillUniform(out, at, cols, rowSeed(upSeed, row), 1);
          unitRow(out, at, cols, false);
        });
        add(p + 'ffn_up_bias', [F], vector((j) => probit(this.firing(l, j))));
      }
      // Stored by columns (one per neuron): readColumns makes neuron j's column from its own seed.
      add(p + 'ffn_down', [d, F], random(p + 'ffn_down', downStd));
      if (a.ffnBias) add(p + 'ffn_down_bias', [d], constant(0));
    }
    if (llama) add('final_norm.weight', [d], constant(1));
    else {
      // Random signs: with the tied head, a token's own embedding no longer wins its logits.
      const fs = this.tensorSeed('final_norm.weight');
      add('final_norm.weight', [d], vector((i) => (fmix32(fs + i) & 1 ? 1 : -1)));
      add('final_norm.bias', [d], constant(0));
    }
    if (!a.tiedEmbeddings) {
      const head = random('lm_head', LOGIT_STD / Math.sqrt(d));
      add('lm_head', [V, d], (out, at, row, cols) => {
        if (row < o.tokenizerVocab) {
          head(out, at, row, cols);
          // Zero mean: orthogonal to Llama's constant direction, which would otherwise favour the same few tokens after every token.
          unitRow(out, at, cols, true, LOGIT_STD);
        } else out.fill(0, at, at + cols);
        if (stop.has(row)) for (let i = at; i < at + cols; i++) out[i]! *= STOP_SCALE;
      });
    }
    this.tensors = shapes;
  }

  private tensorSeed(name: string): number {
    return fmix32(fnv1a(name) ^ this.seed);
  }

  /** Neuron j of layer l fires with this probability over tokens (the power law, q from a hash). */
  firing(l: number, j: number): number {
    const q = unit(fmix32(fmix32(this.seed + Math.imul(l + 1, 0x27d4eb2f)) + Math.imul(j + 1, 0x165667b1)));
    return Math.min(P_MAX, this.plScale * (q + Q0) ** -ALPHA);
  }

  private gen(name: string): Gen {
    const g = this.gens.get(name);
    if (!g) throw new ConvertError(this.path, name, 'no such tensor');
    return g;
  }

  async readRows(name: string, start: number, count: number): Promise<Float32Array> {
    const shape = this.tensors.get(name)!;
    const g = this.gen(name);
    if (shape.length === 1) {
      // A vector: elements [start, start + count).
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) g(out, i, start + i, 1);
      return out;
    }
    const cols = shape[1]!;
    const out = new Float32Array(count * cols);
    for (let r = 0; r < count; r++) g(out, r * cols, start + r, cols);
    return out;
  }

  async readColumns(name: string, start: number, count: number): Promise<Float32Array> {
    const shape = this.tensors.get(name)!;
    if (shape.length !== 2) throw new ConvertError(this.path, name, 'not a matrix');
    const g = this.gen(name);
    const rows = shape[0]!;
    const out = new Float32Array(count * rows);
    for (let c = 0; c < count; c++) g(out, c * rows, start + c, rows);
    return out;
  }

  async close(): Promise<void> {}
}

/** Scales out[at, at + n) to norm `norm` (after removing its mean when `zeroMean`). */
function unitRow(out: Float32Array, at: number, n: number, zeroMean: boolean, norm = 1): void {
  const end = at + n;
  if (zeroMean) {
    let s = 0;
    for (let i = at; i < end; i++) s += out[i]!;
    const m = s / n;
    for (let i = at; i < end; i++) out[i]! -= m;
  }
  let ss = 0;
  for (let i = at; i < end; i++) ss += out[i]! * out[i]!;
  const k = ss > 0 ? norm / Math.sqrt(ss) : 0;
  for (let i = at; i < end; i++) out[i]! *= k;
}
