/**
 * Next-token choice from the logits in the arena: greedy (temperature 0) in
 * the argmax kernel; otherwise softmax with temperature in WebAssembly, then
 * nucleus (top-p) selection here with a seeded generator, as llama2.c does.
 *
 * Optional, all off by default (and then the path above is unchanged, token
 * for token): penalties on the logits before anything else — llama.cpp's
 * repeat penalty over the last `repeatLastN` tokens (prompt included), and
 * OpenAI's presence and frequency penalties over the generated tokens — then,
 * after temperature, top-k, top-p (over the top-k mass) and min-p, in that
 * order (Hugging Face's warper order), sampling from what is left.
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
  /** Keep only the k most probable tokens; 0 disables. Default 0. */
  topK?: number;
  /** Drop tokens less probable than minP × the most probable one's probability; 0 disables. Default 0. */
  minP?: number;
  /**
   * llama.cpp's repeat penalty: every token seen in the last `repeatLastN`
   * tokens (prompt and generated) has its logit divided by this when positive,
   * multiplied when negative. 1 disables. Default 1.
   */
  repeatPenalty?: number;
  /** Window of the repeat penalty, in tokens. Default 64 (llama.cpp's). */
  repeatLastN?: number;
  /** OpenAI's: subtracted once from the logit of every token generated so far. Default 0. */
  presencePenalty?: number;
  /** OpenAI's: subtracted from a token's logit once per time it was generated so far. Default 0. */
  frequencyPenalty?: number;
}

/** Checks the sampling options' ranges; returns a message for the first bad one. */
export function samplingOptionsError(o: SamplingOptions): string | undefined {
  const num = (v: unknown) => v === undefined || (typeof v === 'number' && Number.isFinite(v));
  for (const k of ['temperature', 'topP', 'seed', 'topK', 'minP', 'repeatPenalty', 'repeatLastN', 'presencePenalty', 'frequencyPenalty'] as const) {
    if (!num(o[k])) return `${k} must be a finite number`;
  }
  if (o.temperature !== undefined && o.temperature < 0) return 'temperature must be >= 0';
  if (o.topP !== undefined && (o.topP < 0 || o.topP > 1)) return 'topP must be in [0, 1]';
  if (o.topK !== undefined && (!Number.isInteger(o.topK) || o.topK < 0)) return 'topK must be a non-negative integer';
  if (o.minP !== undefined && (o.minP < 0 || o.minP > 1)) return 'minP must be in [0, 1]';
  if (o.repeatPenalty !== undefined && o.repeatPenalty <= 0) return 'repeatPenalty must be > 0';
  if (o.repeatLastN !== undefined && (!Number.isInteger(o.repeatLastN) || o.repeatLastN < 0)) return 'repeatLastN must be a non-negative integer';
  return undefined;
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
  private readonly topK: number;
  private readonly minP: number;
  private readonly repeatPenalty: number;
  private readonly presence: number;
  private readonly frequency: number;
  /** Candidate token ids: a heap while selecting, the popped (sorted) ones at the end. */
  private readonly order: Int32Array;
  /** Probability mass of the ids the last popRanked() popped. */
  private poppedMass = 0;
  /** The repeat penalty's window: a ring of the last repeatLastN tokens. */
  private readonly ring: Int32Array;
  private ringLen = 0;
  private ringAt = 0;
  /** Times each token was generated (presence/frequency), when those penalties are on. */
  private readonly counts: Int32Array | undefined;
  /** Distinct generated tokens, in order of first appearance. */
  private readonly generated: number[] = [];
  /** Per-token stamp so each distinct token is penalised once per step. */
  private readonly stamp: Int32Array | undefined;
  private step = 0;

  /** `history`: the tokens before the first sampled one (the prompt), for the repeat penalty's window. */
  constructor(
    private readonly k: Kernels,
    private readonly vocab: number,
    opts: SamplingOptions = {},
    history: readonly number[] = [],
  ) {
    this.temperature = opts.temperature ?? 0;
    this.topP = opts.topP ?? 0.9;
    this.topK = opts.topK && opts.topK < vocab ? opts.topK : 0;
    this.minP = opts.minP ?? 0;
    this.repeatPenalty = opts.repeatPenalty ?? 1;
    this.presence = opts.presencePenalty ?? 0;
    this.frequency = opts.frequencyPenalty ?? 0;
    const s = BigInt.asUintN(64, BigInt(Math.floor(opts.seed ?? Date.now()))) || 0x2545f4914f6cdd1dn;
    this.hi = Number(s >> 32n);
    this.lo = Number(s & 0xffffffffn);
    this.order = new Int32Array(vocab);
    const lastN = this.repeatPenalty !== 1 ? (opts.repeatLastN ?? 64) : 0;
    this.ring = new Int32Array(lastN);
    if (this.presence !== 0 || this.frequency !== 0) this.counts = new Int32Array(vocab);
    if (lastN > 0 || this.counts) this.stamp = new Int32Array(vocab);
    for (const t of history.slice(Math.max(0, history.length - lastN))) this.pushRing(t);
  }

  private pushRing(token: number): void {
    const n = this.ring.length;
    if (n === 0) return;
    this.ring[this.ringAt] = token;
    this.ringAt = (this.ringAt + 1) % n;
    if (this.ringLen < n) this.ringLen++;
  }

  /** Records the token chosen (the caller's, after sample()): it joins the penalties' history. */
  accept(token: number): void {
    this.pushRing(token);
    if (this.counts) {
      if (this.counts[token]++ === 0) this.generated.push(token);
    }
  }

  /** Applies the repeat, presence and frequency penalties to the logits in place. */
  private penalize(view: Float32Array): void {
    const stamp = this.stamp;
    if (!stamp) return;
    const st = ++this.step;
    if (this.ringLen > 0) {
      const rp = this.repeatPenalty;
      for (let i = 0; i < this.ringLen; i++) {
        const t = this.ring[i]!;
        if (stamp[t] === st) continue;
        stamp[t] = st;
        const l = view[t]!;
        view[t] = l <= 0 ? l * rp : l / rp;
      }
    }
    const counts = this.counts;
    if (counts) {
      for (const t of this.generated) view[t] = view[t]! - (counts[t]! * this.frequency + this.presence);
    }
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

  /** Chooses the next token; the logits (at `logits`, seen through `view`) are overwritten. Call accept() with it when penalties are on. */
  sample(logits: number, view: Float32Array): number {
    this.penalize(view);
    if (this.temperature <= 0) return this.k.argmax(logits, this.vocab);
    this.k.softmax_temp(logits, this.vocab, 1 / this.temperature);
    const coin = this.nextF32();
    if (this.topK > 0 || this.minP > 0) return this.sampleFiltered(view, coin);
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
    const size = this.popRanked(view, n, n, this.topP);
    // The nucleus is h[n-1] (most probable) down to h[size].
    return pickRanked(h, n, size, view, coin * this.poppedMass);
  }

  /**
   * Pops the heap order[0..n) in rank order, at most `limit` ids or until their
   * probability mass passes `massCap`; popped ids collect at order[n-1],
   * order[n-2], ... Returns the heap's new size; the mass is in poppedMass.
   */
  private popRanked(view: Float32Array, n: number, limit: number, massCap: number): number {
    const h = this.order;
    let size = n;
    let mass = 0;
    while (size > n - limit) {
      const top = h[0]!;
      size--;
      h[0] = h[size]!;
      h[size] = top;
      if (size > 1) siftDown(h, 0, size, view);
      mass += view[top]!;
      if (mass > massCap) break;
    }
    this.poppedMass = mass;
    return size;
  }

  /**
   * Top-k, then top-p over the top-k mass, then min-p, over probabilities in
   * `view`; samples from what is left, most probable first (as above).
   */
  private sampleFiltered(view: Float32Array, coin: number): number {
    const V = this.vocab;
    const h = this.order;
    let n = 0;
    if (this.topK === 0) {
      // Without top-k nothing below the min-p threshold can be kept: heap only the rest.
      let pmax = 0;
      for (let i = 0; i < V; i++) if (view[i]! > pmax) pmax = view[i]!;
      const floor = this.minP * pmax;
      for (let i = 0; i < V; i++) if (view[i]! >= floor) h[n++] = i;
    } else {
      for (let i = 0; i < V; i++) h[i] = i;
      n = V;
    }
    for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(h, i, n, view);
    const topP = this.topP > 0 && this.topP < 1 ? this.topP : 1;
    // Pop in rank order: the first k (all with no top-k), or until the mass passes top-p.
    const limit = this.topK > 0 ? Math.min(this.topK, n) : n;
    const size = this.popRanked(view, n, limit, this.topK === 0 ? topP : Infinity);
    const mass = this.poppedMass;
    // Ranked candidates: h[n-1] (most probable) down to h[size].
    let last = size;
    if (this.topK > 0 && topP < 1) {
      const target = topP * mass;
      let cum = 0;
      for (let i = n - 1; i >= size; i--) {
        cum += view[h[i]!]!;
        if (cum > target) {
          last = i;
          break;
        }
      }
    }
    if (this.minP > 0) {
      const floor = this.minP * view[h[n - 1]!]!;
      while (last < n - 1 && view[h[last]!]! < floor) last++;
    }
    let kept = 0;
    for (let i = n - 1; i >= last; i--) kept += view[h[i]!]!;
    return pickRanked(h, n, last, view, coin * kept);
  }
}

/** The first ranked candidate h[n-1], h[n-2], ..., h[last] (most probable first) whose cumulative probability passes r. */
function pickRanked(h: Int32Array, n: number, last: number, view: Float32Array, r: number): number {
  let cdf = 0;
  for (let i = n - 1; i >= last; i--) {
    cdf += view[h[i]!]!;
    if (r < cdf) return h[i]!;
  }
  return h[last]!;
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
