/**
 * Which neurons a token needs (PAPER.md "Predictors"), for one layer at a
 * time: the trained low-rank predictor, the true active set (oracle), all of
 * them, or (gated FFNs) those whose |act_gate(gate·x)| passes the layer's gate
 * threshold with the gate rows resident (relu-family gates: threshold 0 keeps
 * exactly the nonzero ones). Fills the active list in the arena
 * in ascending neuron order, and measures the predictor against the oracle
 * when one is given. Allocates nothing per call.
 */
import type { FlmFile } from '../format/reader.js';
import type { Kernels } from '../kernels/types.js';
import type { Arena } from '../engine/arena.js';
import { matvec } from '../engine/tensor.js';
import { exactZeros, gatedActArgs, type ActArgs } from '../engine/ffn.js';
import type { LayerPredictor, StreamLayer } from './layer.js';
import type { Oracle } from './oracle.js';
import type { RunStats } from './stats.js';

/**
 * Which neurons a token needs: the trained predictor, the true set (oracle),
 * all of them, or (gated FFNs) those whose |silu(gate·x)| passes the file's
 * per-layer gate threshold, with the gate rows resident. On a gated FFN the
 * predictor predicts that set instead ("predicted gates"): whole records
 * (gate, up, down) are read for the predicted neurons only, the others'
 * contributions are dropped.
 */
export type Sparsity = 'predictor' | 'oracle' | 'off' | 'gate';

/** The arena regions the selector fills or uses (from layoutStreaming). */
export interface SelectorRegions {
  active: number;
  logits: number;
  rankBuf: number;
  i8scratch: number;
  /** Gate mode: the selected neurons' gate activations, in list order. */
  actList: number;
}

export class NeuronSelector {
  /** The active list: neuron ids of the last select(), ascending. */
  readonly activeView: Int32Array;
  /** Gate mode: every neuron's silu(gate·x) of the last select(); predictor: its logits. */
  readonly logitsView: Float32Array;
  /** Gate mode: the gate activations of the listed neurons. */
  readonly actListView: Float32Array;
  private readonly n: number;
  private readonly d: number;
  /** The FFN input as a view, made once per input slot (the oracle takes floats). */
  private xPtr = -1;
  private xView: Float32Array = new Float32Array(0);
  /** The gated activation as kernel arguments (arch.gatedAct). */
  private readonly act: ActArgs;

  constructor(
    private readonly file: FlmFile,
    private readonly k: Kernels,
    private readonly arena: Arena,
    private readonly r: SelectorRegions,
    private readonly selection: Sparsity,
    private readonly oracle: Oracle | undefined,
    private readonly stats: RunStats | undefined,
  ) {
    const { ffnDim: n, dModel: d } = file.header.arch;
    this.n = n;
    this.d = d;
    this.act = gatedActArgs(file.header.arch);
    this.activeView = new Int32Array(arena.memory.buffer, r.active, n);
    this.logitsView = arena.f32(r.logits, n);
    this.actListView = selection === 'gate' ? arena.f32(r.actList, n) : new Float32Array(0);
  }

  /** The `d` floats at arena offset `x`. */
  private xFloats(x: number): Float32Array {
    if (x !== this.xPtr || this.xView.buffer !== this.arena.memory.buffer) {
      this.xView = this.arena.f32(x, this.d);
      this.xPtr = x;
    }
    return this.xView;
  }

  /**
   * Deja Vu's lookahead: the neurons layer `next` is predicted to need, from
   * this layer's FFN input x — with its lookahead predictor (trained on that
   * input), else its direct predictor applied to it (the residual stream
   * changes little from one layer to the next). Ids ascending into `out`;
   * returns their count, or -1 when `next` has neither predictor. Uses the
   * logits buffer (free once select() is done with it).
   */
  lookahead(next: StreamLayer, x: number, out: Int32Array): number {
    const p = next.ahead ?? next.pred;
    if (!p) return -1;
    this.logitsOf(p, x);
    const lv = this.logitsView;
    let count = 0;
    for (let j = 0; j < this.n; j++) if (lv[j]! > p.threshold) out[count++] = j;
    return count;
  }

  /** Keeps the ids of `list[0, count)` whose last lookahead logit exceeds its threshold by `margin` (in place, order kept); returns how many. */
  confident(next: StreamLayer, list: Int32Array, count: number, margin: number): number {
    const t = (next.ahead ?? next.pred)!.threshold + margin;
    const lv = this.logitsView;
    let m = 0;
    for (let i = 0; i < count; i++) {
      const j = list[i]!;
      if (lv[j]! > t) list[m++] = j;
    }
    return m;
  }

  /** A low-rank predictor's logits B·(A·x) + bias into the logits buffer. */
  private logitsOf(p: LayerPredictor, x: number): void {
    matvec(this.k, this.r.rankBuf, p.a, x, 0, this.r.i8scratch);
    matvec(this.k, this.r.logits, p.b, this.r.rankBuf, p.bias.ptr, this.r.i8scratch);
  }

  /** Fills the active list for a layer's input x; returns its length. */
  select(layer: StreamLayer, x: number): number {
    const av = this.activeView;
    let count = 0;
    if (this.selection === 'off') {
      for (let j = 0; j < this.n; j++) av[j] = j;
      count = this.n;
    } else if (this.selection === 'gate') {
      // Gate activations of every neuron from the resident gate rows; keep those over the threshold.
      const f = layer.f;
      const g = layer.gate!;
      const act = f.dtype === 'f32' ? this.k.gate_act_f32 : f.dtype === 'f16' ? this.k.gate_act_f16 : f.dtype === 'q8' ? this.k.gate_act_q8 : f.dtype === 'q4' ? this.k.gate_act_q4 : this.k.gate_act_i8;
      act(this.r.logits, x, this.d, this.n, g.ptr, f.partBytes, this.act.afn, this.act.athr);
      const lv = this.logitsView;
      const list = this.actListView;
      for (let j = 0; j < this.n; j++) {
        const v = lv[j]!;
        if (Math.abs(v) > g.threshold) {
          list[count] = v;
          av[count++] = j;
        }
      }
    } else if (this.selection === 'oracle') {
      const h = this.oracle!.activations(layer.f.layer, this.xFloats(x));
      for (let j = 0; j < this.n; j++) if (h[j] !== 0) av[count++] = j;
      // The file's predictor, measured on the way (per layer, next to the lookahead's figures).
      if (layer.pred && this.stats) this.measureOnOracle(layer, x, h, count);
    } else {
      const p = layer.pred!;
      this.logitsOf(p, x);
      const lv = this.logitsView;
      for (let j = 0; j < this.n; j++) if (lv[j]! > p.threshold) av[count++] = j;
      if (this.oracle && this.stats) this.measurePredictor(layer, x, count);
    }
    return count;
  }

  /** Oracle selection with a predictor in the file: its confusion counts against the true set h (count nonzero). */
  private measureOnOracle(layer: StreamLayer, x: number, h: Float32Array, truth: number): void {
    const t0 = performance.now();
    const p = layer.pred!;
    this.logitsOf(p, x);
    const lv = this.logitsView;
    let tp = 0;
    let predicted = 0;
    for (let j = 0; j < this.n; j++) {
      if (lv[j]! > p.threshold) {
        predicted++;
        if (h[j] !== 0) tp++;
      }
    }
    this.stats!.predictor(tp, predicted - tp, truth - tp, layer.f.layer);
    // Measurement, like the oracle: timed apart from the strategy.
    this.stats!.oracle(performance.now() - t0, -1, 0);
  }

  /**
   * Predictor confusion counts against the oracle's true active set (gated
   * FFNs: the neurons whose |silu(gate·x)| passes the file's gate threshold,
   * what a predicted-gate predictor was trained on; not measured without one).
   */
  private measurePredictor(layer: StreamLayer, x: number, count: number): void {
    const oracle = this.oracle!;
    const xs = this.xFloats(x);
    const av = this.activeView;
    let tp = 0;
    let truth = 0;
    const arch = this.file.header.arch;
    if (arch.activation === 'swiglu' && !exactZeros(arch)) {
      const gate = this.file.header.gate;
      if (!gate) return;
      const t = gate.thresholds[layer.f.layer]!;
      const h = oracle.gateActivations(layer.f.layer, xs);
      for (let j = 0; j < this.n; j++) if (Math.abs(h[j]!) > t) truth++;
      for (let i = 0; i < count; i++) if (Math.abs(h[av[i]!]!) > t) tp++;
    } else {
      // active: a nonzero output (ReLU, and the relu-family gated activations: exact zeros)
      const h = oracle.activations(layer.f.layer, xs);
      for (let j = 0; j < this.n; j++) if (h[j] !== 0) truth++;
      for (let i = 0; i < count; i++) if (h[av[i]!] !== 0) tp++;
    }
    this.stats!.predictor(tp, count - tp, truth - tp, layer.f.layer);
  }
}
