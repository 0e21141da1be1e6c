/**
 * Run statistics: what was read, how long each phase took, how well the cache
 * and the predictor did. Per token and averaged; the JSON keys are an
 * interface other tools read (see `toJSON`).
 *
 * Memory stays bounded however long the run: the averages come from running
 * sums over every token since open, and only the most recent `capacity`
 * tokens are kept one by one, in a ring of numbers (no object per token).
 */

export interface TokenStats {
  bytesRead: number;
  requests: number;
  ioMs: number;
  unpackMs: number;
  computeMs: number;
  ms: number;
  /** FFN bytes read / all FFN bytes of the model. */
  ffnFraction: number;
  cacheHits: number;
  cacheLookups: number;
  /** Degraded cache: neurons evicted before their window ended (LRU), and active neurons the cache could not hold. */
  cacheLruEvictions: number;
  cacheOverflow: number;
  /** Predictor confusion counts against the true active set, when known. */
  truePositives: number;
  falsePositives: number;
  falseNegatives: number;
  predictorKnown: boolean;
  /** True active neurons over every layer (the oracle's count; exact-zero activations only), when known. */
  trueActive: number;
  activeKnown: boolean;
  /** Neurons read from the source (all layers). */
  neuronsRead: number;
  /** The oracle's time, apart from `ms` (which excludes it). */
  oracleMs: number;
  /** Remote sources: the link model after the token's reads (round trip ms, MB/s per request and in all); linkKnown false without one. */
  linkRttMs: number;
  linkConnMBps: number;
  linkMBps: number;
  linkKnown: boolean;
  /** Window mode: ms of compute that ran while the token's reads were in flight (part of ioMs: the I/O it hid). */
  hiddenIoMs: number;
}

export interface StatsSummary {
  tokens: number;
  bytesPerToken: number;
  requestsPerToken: number;
  meanRequestBytes: number;
  ioMsPerToken: number;
  unpackMsPerToken: number;
  computeMsPerToken: number;
  msPerToken: number;
  cacheHitRate: number | null;
  /** Window cache under pressure: LRU evictions and uncached (overflow) neurons per token; null without a cache. */
  cacheLruEvictionsPerToken: number | null;
  cacheOverflowPerToken: number | null;
  ffnFractionPerToken: number;
  residentBytes: number;
  arenaBytes: number;
  predictorRecall: number | null;
  predictorPrecision: number | null;
  /** True active neurons ÷ FFN neurons (all layers), averaged over the tokens where the oracle knew it; null otherwise. */
  activeFractionPerToken: number | null;
  /** Neurons read from the source ÷ FFN neurons (all layers), per token; null when the FFN size is unknown. */
  newFractionPerToken: number | null;
  /** The oracle's ms per token (measurement, not part of msPerToken). */
  oracleMsPerToken: number;
  /** ms per token of I/O hidden behind compute (counted in ioMsPerToken, not in computeMsPerToken). */
  hiddenIoMsPerToken: number;
  /** The link model (remote sources), averaged over the tokens that had one; absent otherwise. */
  link?: { rttMs: number; connMBps: number; linkMBps: number };
  strategy: string;
  sparsity: string;
  window: number | null;
  layout: string;
  dtype: string;
}

export interface RunStatsInfo {
  residentBytes: number;
  arenaBytes: number;
  ffnBytesTotal: number;
  /** FFN neurons over all layers (nLayers × ffnDim), for the neuron fractions. */
  ffnNeurons?: number;
  strategy: string;
  sparsity: string;
  window: number | null;
  layout: string;
  dtype: string;
}

/** Recent tokens kept one by one (`RunStats.tokens`) unless the constructor says otherwise. */
export const DEFAULT_RECENT_TOKENS = 1024;

// Field slots of one token in the ring and in the running sums.
const BYTES = 0;
const REQUESTS = 1;
const IO_MS = 2;
const UNPACK_MS = 3;
const COMPUTE_MS = 4;
const MS = 5;
const FFN_FRACTION = 6;
const HITS = 7;
const LOOKUPS = 8;
const LRU = 9;
const OVERFLOW = 10;
const TP = 11;
const FP = 12;
const FN = 13;
const KNOWN = 14;
const ACTIVE = 15;
const ACTIVE_KNOWN = 16;
const READ = 17;
const ORACLE_MS = 18;
const LINK_RTT = 19;
const LINK_CONN = 20;
const LINK_BW = 21;
const LINK_KNOWN = 22;
const HIDDEN_MS = 23;
const FIELDS = 24;

function fromSlots(a: Float64Array, at: number): TokenStats {
  return {
    bytesRead: a[at + BYTES]!,
    requests: a[at + REQUESTS]!,
    ioMs: a[at + IO_MS]!,
    unpackMs: a[at + UNPACK_MS]!,
    computeMs: a[at + COMPUTE_MS]!,
    ms: a[at + MS]!,
    ffnFraction: a[at + FFN_FRACTION]!,
    cacheHits: a[at + HITS]!,
    cacheLookups: a[at + LOOKUPS]!,
    cacheLruEvictions: a[at + LRU]!,
    cacheOverflow: a[at + OVERFLOW]!,
    truePositives: a[at + TP]!,
    falsePositives: a[at + FP]!,
    falseNegatives: a[at + FN]!,
    predictorKnown: a[at + KNOWN] === 1,
    trueActive: a[at + ACTIVE]!,
    activeKnown: a[at + ACTIVE_KNOWN] === 1,
    neuronsRead: a[at + READ]!,
    oracleMs: a[at + ORACLE_MS]!,
    linkRttMs: a[at + LINK_RTT]!,
    linkConnMBps: a[at + LINK_CONN]!,
    linkMBps: a[at + LINK_BW]!,
    linkKnown: a[at + LINK_KNOWN] === 1,
    hiddenIoMs: a[at + HIDDEN_MS]!,
  };
}

export class RunStats {
  /** How many recent tokens `tokens` keeps. */
  readonly capacity: number;
  /** The current token's counters (slots as in the ring). */
  private readonly cur = new Float64Array(FIELDS);
  /** Sums over every closed token, added in token order (so averages equal a sum over the tokens). */
  private readonly totals = new Float64Array(FIELDS);
  /** The most recent `capacity` tokens, FIELDS numbers each (token t at slot t % capacity). */
  private readonly ring: Float64Array;
  private closed = 0;
  private ffnBytesThisToken = 0;
  private tokenStart = 0;

  constructor(
    readonly info: RunStatsInfo,
    options: { recent?: number } = {},
  ) {
    const recent = options.recent ?? DEFAULT_RECENT_TOKENS;
    if (!Number.isInteger(recent) || recent < 1) throw new RangeError(`recent must be a positive integer, got ${recent}`);
    this.capacity = recent;
    this.ring = new Float64Array(recent * FIELDS);
  }

  /** Tokens closed since open (all of them count in `summary()`). */
  get count(): number {
    return this.closed;
  }

  /** Index (in `count` terms) of the oldest token `tokens` still holds. */
  get firstRetained(): number {
    return Math.max(0, this.closed - this.capacity);
  }

  /** Tokens held one by one: at most `capacity` (bounded memory in long runs). */
  get retained(): number {
    return Math.min(this.closed, this.capacity);
  }

  /**
   * The most recent tokens (at most `capacity`; all of them in runs up to
   * that length), oldest first, as fresh objects: token `firstRetained + i`
   * is at index i.
   */
  get tokens(): TokenStats[] {
    const n = this.retained;
    const out: TokenStats[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = fromSlots(this.ring, this.slot(this.closed - n + i));
    return out;
  }

  /** Ring offset of token index `t` (which must be retained). */
  private slot(t: number): number {
    return (t % this.capacity) * FIELDS;
  }

  beginToken(): void {
    this.cur.fill(0);
    this.ffnBytesThisToken = 0;
    this.tokenStart = performance.now();
  }

  /**
   * Closes the token: compute time is what I/O and unpacking did not take.
   * Returns the token's numbers as a new object the caller owns (RunStats
   * keeps no reference to it).
   */
  endToken(): TokenStats {
    const c = this.cur;
    // The oracle is measurement apparatus: its time is reported apart, not as the strategy's.
    c[MS] = Math.max(0, performance.now() - this.tokenStart - c[ORACLE_MS]!);
    // Reads measure from issue to use: the compute that ran while they were in flight is inside IO_MS.
    c[COMPUTE_MS] = Math.max(0, c[MS]! - c[IO_MS]! - c[UNPACK_MS]! + c[HIDDEN_MS]!);
    c[FFN_FRACTION] = this.info.ffnBytesTotal ? this.ffnBytesThisToken / this.info.ffnBytesTotal : 0;
    const t = this.closed;
    this.ring.set(c, this.slot(t));
    const s = this.totals;
    for (let f = 0; f < FIELDS; f++) s[f]! += c[f]!;
    this.closed = t + 1;
    return fromSlots(c, 0);
  }

  io(bytes: number, requests: number, ms: number, ffn: boolean): void {
    const c = this.cur;
    c[BYTES]! += bytes;
    c[REQUESTS]! += requests;
    c[IO_MS]! += ms;
    if (ffn) this.ffnBytesThisToken += bytes;
  }

  /** Compute that ran while reads were in flight (window mode: the cached neurons while the new ones load). */
  hidden(ms: number): void {
    this.cur[HIDDEN_MS]! += ms;
  }

  unpack(ms: number): void {
    this.cur[UNPACK_MS]! += ms;
  }

  cache(hits: number, lookups: number, lruEvictions = 0, overflow = 0): void {
    const c = this.cur;
    c[HITS]! += hits;
    c[LOOKUPS]! += lookups;
    c[LRU]! += lruEvictions;
    c[OVERFLOW]! += overflow;
  }

  /** An oracle computation: its time, and the layer's true active count (-1: not an exact count). */
  oracle(ms: number, active: number, _neurons: number): void {
    this.cur[ORACLE_MS]! += ms;
    if (active >= 0) this.trueActive(active);
  }

  /** A layer's true active neurons, from the oracle or a pass that computed every neuron. */
  trueActive(active: number): void {
    const c = this.cur;
    c[ACTIVE]! += active;
    c[ACTIVE_KNOWN] = 1;
  }

  /** The link model as it stands after a read (the token keeps the last one). */
  link(rttMs: number, connMBps: number, linkMBps: number): void {
    const c = this.cur;
    c[LINK_RTT] = rttMs;
    c[LINK_CONN] = connMBps;
    c[LINK_BW] = linkMBps;
    c[LINK_KNOWN] = 1;
  }

  /** Neurons whose records were read from the source. */
  neuronsRead(n: number): void {
    this.cur[READ]! += n;
  }

  predictor(tp: number, fp: number, fn: number): void {
    const c = this.cur;
    c[TP]! += tp;
    c[FP]! += fp;
    c[FN]! += fn;
    c[KNOWN] = 1;
  }

  /**
   * Per-token averages over every token since open, or over a subset
   * (e.g. `stats.tokens.slice(k)`: without the prompt's warm-up).
   */
  summary(tokens?: readonly TokenStats[]): StatsSummary {
    let s = this.totals;
    let n = this.closed;
    if (tokens) {
      // The same sums over the given tokens, in their order.
      s = new Float64Array(FIELDS);
      n = tokens.length;
      for (const t of tokens) {
        s[BYTES]! += t.bytesRead;
        s[REQUESTS]! += t.requests;
        s[IO_MS]! += t.ioMs;
        s[UNPACK_MS]! += t.unpackMs;
        s[COMPUTE_MS]! += t.computeMs;
        s[MS]! += t.ms;
        s[FFN_FRACTION]! += t.ffnFraction;
        s[HITS]! += t.cacheHits;
        s[LOOKUPS]! += t.cacheLookups;
        s[LRU]! += t.cacheLruEvictions;
        s[OVERFLOW]! += t.cacheOverflow;
        s[READ]! += t.neuronsRead;
        s[ORACLE_MS]! += t.oracleMs;
        s[HIDDEN_MS]! += t.hiddenIoMs;
        if (t.linkKnown) {
          s[LINK_RTT]! += t.linkRttMs;
          s[LINK_CONN]! += t.linkConnMBps;
          s[LINK_BW]! += t.linkMBps;
          s[LINK_KNOWN]! += 1;
        }
        if (t.activeKnown) {
          s[ACTIVE]! += t.trueActive;
          s[ACTIVE_KNOWN]! += 1;
        }
        if (t.predictorKnown) {
          s[TP]! += t.truePositives;
          s[FP]! += t.falsePositives;
          s[FN]! += t.falseNegatives;
          s[KNOWN]! += 1;
        }
      }
    }
    const avg = (f: number) => (n ? s[f]! / n : 0);
    const requests = s[REQUESTS]!;
    const lookups = s[LOOKUPS]!;
    const known = s[KNOWN]!;
    // Tokens without predictor counts add zeros to these sums.
    const tp = s[TP]!;
    const fp = s[FP]!;
    const fn = s[FN]!;
    const { residentBytes, arenaBytes, strategy, sparsity, window, layout, dtype, ffnNeurons } = this.info;
    return {
      tokens: n,
      bytesPerToken: avg(BYTES),
      requestsPerToken: avg(REQUESTS),
      meanRequestBytes: requests ? s[BYTES]! / requests : 0,
      ioMsPerToken: avg(IO_MS),
      unpackMsPerToken: avg(UNPACK_MS),
      computeMsPerToken: avg(COMPUTE_MS),
      msPerToken: avg(MS),
      cacheHitRate: lookups ? s[HITS]! / lookups : null,
      cacheLruEvictionsPerToken: window === null ? null : avg(LRU),
      cacheOverflowPerToken: window === null ? null : avg(OVERFLOW),
      ffnFractionPerToken: avg(FFN_FRACTION),
      residentBytes,
      arenaBytes,
      predictorRecall: known && tp + fn ? tp / (tp + fn) : null,
      predictorPrecision: known && tp + fp ? tp / (tp + fp) : null,
      activeFractionPerToken: ffnNeurons && s[ACTIVE_KNOWN]! ? s[ACTIVE]! / s[ACTIVE_KNOWN]! / ffnNeurons : null,
      newFractionPerToken: ffnNeurons ? avg(READ) / ffnNeurons : null,
      oracleMsPerToken: avg(ORACLE_MS),
      hiddenIoMsPerToken: avg(HIDDEN_MS),
      ...(s[LINK_KNOWN]! ? { link: { rttMs: s[LINK_RTT]! / s[LINK_KNOWN]!, connMBps: s[LINK_CONN]! / s[LINK_KNOWN]!, linkMBps: s[LINK_BW]! / s[LINK_KNOWN]! } } : {}),
      strategy,
      sparsity,
      window,
      layout,
      dtype,
    };
  }
}
