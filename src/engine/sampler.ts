/**
 * Next-token choice from the logits in the arena: greedy (temperature 0) in
 * the argmax kernel; otherwise softmax with temperature in WebAssembly, then
 * nucleus (top-p) selection here with a seeded generator, as llama2.c does.
 */
import type { Kernels } from '../kernels/types.js';

export interface SamplingOptions {
  /** 0 = greedy (deterministic). Default 0. */
  temperature?: number;
  /** Nucleus sampling mass in (0, 1]; 1 disables it. Default 0.9. */
  topP?: number;
  /** Seed for reproducible sampling. Default: time-based. */
  seed?: number;
}

export class Sampler {
  private state: bigint;
  private readonly temperature: number;
  private readonly topP: number;
  private order: Int32Array;

  constructor(
    private readonly k: Kernels,
    private readonly vocab: number,
    opts: SamplingOptions = {},
  ) {
    this.temperature = opts.temperature ?? 0;
    this.topP = opts.topP ?? 0.9;
    // xorshift64* (llama2.c's generator), never seeded with 0
    this.state = BigInt.asUintN(64, BigInt(Math.floor(opts.seed ?? Date.now())) || 0x2545f4914f6cdd1dn);
    this.order = new Int32Array(vocab);
  }

  private nextU32(): number {
    let s = this.state;
    s ^= s >> 12n;
    s ^= BigInt.asUintN(64, s << 25n);
    s ^= s >> 27n;
    this.state = s;
    return Number(BigInt.asUintN(64, s * 0x2545f4914f6cdd1dn) >> 32n);
  }

  /** A float in [0, 1). */
  private nextF32(): number {
    return (this.nextU32() >>> 8) / 16777216;
  }

  sample(logits: number, view: Float32Array): number {
    if (this.temperature <= 0) return this.k.argmax(logits, this.vocab);
    this.k.softmax_temp(logits, this.vocab, 1 / this.temperature);
    const coin = this.nextF32();
    if (this.topP <= 0 || this.topP >= 1) {
      let cdf = 0;
      for (let i = 0; i < this.vocab; i++) {
        cdf += view[i]!;
        if (coin < cdf) return i;
      }
      return this.vocab - 1;
    }
    // Only tokens above this cutoff can be in the nucleus: sort just those.
    const cutoff = (1 - this.topP) / (this.vocab - 1);
    let n = 0;
    for (let i = 0; i < this.vocab; i++) if (view[i]! >= cutoff) this.order[n++] = i;
    const cand = this.order.subarray(0, n).sort((a, b) => view[b]! - view[a]! || a - b);
    let mass = 0;
    let last = n - 1;
    for (let i = 0; i < n; i++) {
      mass += view[cand[i]!]!;
      if (mass > this.topP) {
        last = i;
        break;
      }
    }
    const r = coin * mass;
    let cdf = 0;
    for (let i = 0; i <= last; i++) {
      cdf += view[cand[i]!]!;
      if (r < cdf) return cand[i]!;
    }
    return cand[last]!;
  }
}
