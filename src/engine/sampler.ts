/**
 * Next-token choice from the logits in the arena: greedy (temperature 0) in
 * the argmax kernel; otherwise softmax with temperature in WebAssembly, then
 * nucleus (top-p) selection here with a seeded generator, as llama2.c does.
 *
 * Nothing is allocated per token: the generator runs on two u32 halves (no
 * BigInt), and the nucleus is found with a binary heap in a preallocated
 * index array, popping the most probable candidates only until their mass
 * passes top-p, instead of sorting every candidate with a comparator.
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

/** xorshift64*'s multiplier, as u32 halves. */
const MUL_HI = 0x2545f491;
const MUL_LO = 0x4f6cdd1d;

/** High 32 bits of the 64-bit product of two u32 (exact, in doubles). */
function mulHi32(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const lo = a0 * b0; // < 2^32
  const mid1 = a1 * b0 + (lo >>> 16); // < 2^32 + 2^16
  const mid2 = a0 * b1 + (mid1 % 65536); // < 2^32 + 2^16
  return (a1 * b1 + Math.floor(mid1 / 65536) + Math.floor(mid2 / 65536)) >>> 0;
}

export class Sampler {
  /** xorshift64* state (llama2.c's generator) as u32 halves, never 0. */
  private hi: number;
  private lo: number;
  private readonly temperature: number;
  private readonly topP: number;
  /** Candidate token ids: a heap while selecting, the popped (sorted) ones at the end. */
  private readonly order: Int32Array;

  constructor(
    private readonly k: Kernels,
    private readonly vocab: number,
    opts: SamplingOptions = {},
  ) {
    this.temperature = opts.temperature ?? 0;
    this.topP = opts.topP ?? 0.9;
    const s = BigInt.asUintN(64, BigInt(Math.floor(opts.seed ?? Date.now()))) || 0x2545f4914f6cdd1dn;
    this.hi = Number(s >> 32n);
    this.lo = Number(s & 0xffffffffn);
    this.order = new Int32Array(vocab);
  }

  /** The next xorshift64* output's high 32 bits (the same numbers as the BigInt form, see test/sampler.test.ts). */
  private nextU32(): number {
    let hi = this.hi;
    let lo = this.lo;
    // s ^= s >> 12
    lo = (lo ^ ((lo >>> 12) | (hi << 20))) >>> 0;
    hi = (hi ^ (hi >>> 12)) >>> 0;
    // s ^= s << 25 (mod 2^64)
    hi = (hi ^ ((hi << 25) | (lo >>> 7))) >>> 0;
    lo = (lo ^ (lo << 25)) >>> 0;
    // s ^= s >> 27
    lo = (lo ^ ((lo >>> 27) | (hi << 5))) >>> 0;
    hi = (hi ^ (hi >>> 27)) >>> 0;
    this.hi = hi;
    this.lo = lo;
    // high half of (s * multiplier) mod 2^64
    return (mulHi32(lo, MUL_LO) + Math.imul(hi, MUL_LO) + Math.imul(lo, MUL_HI)) >>> 0;
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
    // Only tokens above this cutoff can be in the nucleus: heap just those.
    const cutoff = (1 - this.topP) / (this.vocab - 1);
    const h = this.order;
    let n = 0;
    for (let i = 0; i < this.vocab; i++) if (view[i]! >= cutoff) h[n++] = i;
    if (n === 0) {
      // (a flat distribution over a small vocabulary can sit below the cutoff: take every token)
      for (let i = 0; i < this.vocab; i++) h[i] = i;
      n = this.vocab;
    }
    // Max-heap by probability, then lower id: the order a descending sort with id tie-break gives.
    for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(h, i, n, view);
    // Pop the most probable until the mass passes top-p; popped ids collect at h[n-1], h[n-2], ...
    let size = n;
    let mass = 0;
    while (size > 0) {
      const top = h[0]!;
      size--;
      h[0] = h[size]!;
      h[size] = top;
      if (size > 1) siftDown(h, 0, size, view);
      mass += view[top]!;
      if (mass > this.topP) break;
    }
    // The nucleus is h[n-1] (most probable) down to h[last].
    const last = size;
    const r = coin * mass;
    let cdf = 0;
    for (let i = n - 1; i >= last; i--) {
      cdf += view[h[i]!]!;
      if (r < cdf) return h[i]!;
    }
    return h[last]!;
  }
}

/** True when token a ranks before token b (more probable, or as probable with a lower id). */
function before(a: number, b: number, p: Float32Array): boolean {
  const pa = p[a]!;
  const pb = p[b]!;
  return pa > pb || (pa === pb && a < b);
}

function siftDown(h: Int32Array, i: number, n: number, p: Float32Array): void {
  const x = h[i]!;
  for (;;) {
    let c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && before(h[c + 1]!, h[c]!, p)) c++;
    if (!before(h[c]!, x, p)) break;
    h[i] = h[c]!;
    i = c;
  }
  h[i] = x;
}
