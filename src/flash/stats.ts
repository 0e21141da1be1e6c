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
  /** The least request size (bytes) the tuner prefers for rounds of reads like the token's last (link.ts RoundTuner); 0: as many requests as fill the link (also without multi-range, and for rounds too large to tune). */
  linkRequestBytes: number;
  linkKnown: boolean;
  /** ms of I/O hidden behind compute (part of ioMs): window mode's cached neurons computed while the new ones load, and prefetched reads that landed while the engine computed. */
  hiddenIoMs: number;
  /** Prefetch: neurons read ahead for a later layer, and how many of them that layer used. */
  prefetchedNeurons: number;
  prefetchUsed: number;
  /** A cache tier in front of the source (memory, OPFS): bytes it served this token, and bytes it fetched from the network. */
  tierHitBytes: number;
  tierNetworkBytes: number;
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
  /** Neurons read ahead per token (prefetch), and the share of them the next layer used; null without prefetch. */
  prefetchedNeuronsPerToken: number;
  prefetchUseRate: number | null;
  /** The lookahead predictions (next layer's neurons from this layer's FFN input) against the neurons the next layer selected, over every token since open; null without them. */
  lookaheadRecall: number | null;
  lookaheadPrecision: number | null;
  /** A cache tier in front of the source (memory, OPFS): the share of its bytes served locally rather than fetched from the network; null without a tier or reads. */
  tierHitRate: number | null;
  /**
   * Per layer, over every token since open (null where unknown): the direct
   * predictor's recall against the true active set, and the lookahead's
   * recall and precision against the layer's selected set.
   */
  layers?: { predictorRecall: (number | null)[]; lookaheadRecall: (number | null)[]; lookaheadPrecision: (number | null)[] };
  /** The link model (remote sources), averaged over the tokens that had one; absent otherwise. */
  link?: { rttMs: number; connMBps: number; linkMBps: number; requestBytes: number };
  strategy: string;
  sparsity: string;
  window: number | null;
  layout: string;
  dtype: string;
  /** The kernels build that ran: 'relaxed-simd' (fused multiply-adds) or 'simd' (absent when RunStatsInfo did not say). */
  kernels?: string;
}

export interface RunStatsInfo {
  residentBytes: number;
  arenaBytes: number;
  ffnBytesTotal: number;
  /** FFN neurons over all layers (nLayers × ffnDim), for the neuron fractions. */
  ffnNeurons?: number;
  /** Layers, for the per-layer predictor figures. */
  nLayers?: number;
  strategy: string;
  sparsity: string;
  window: number | null;
  layout: string;
  dtype: string;
  /** The kernels build (load.ts simdBuild). */
  kernels?: string;
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
const PF_READ = 24;
const PF_USED = 25;
const TIER_HIT = 26;
const TIER_NET = 27;
const LINK_REQUEST = 28;
const FIELDS = 29;
// Per-layer counters (since open): direct predictor tp/fp/fn, lookahead tp/predicted/selected.
const L_TP = 0;
const L_FP = 1;
const L_FN = 2;
const LA_TP = 3;
const LA_PRED = 4;
const LA_SEL = 5;
const LAYER_FIELDS = 6;

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
    linkRequestBytes: a[at + LINK_REQUEST]!,
    linkKnown: a[at + LINK_KNOWN] === 1,
    hiddenIoMs: a[at + HIDDEN_MS]!,
    prefetchedNeurons: a[at + PF_READ]!,
    prefetchUsed: a[at + PF_USED]!,
    tierHitBytes: a[at + TIER_HIT]!,
    tierNetworkBytes: a[at + TIER_NET]!,
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
  /** Per-layer counters since open (LAYER_FIELDS each). */
  private readonly perLayer: Float64Array;
  /** The blocked clock: ms the engine spent waiting on reads since open, and since when it waits now (nesting depth). */
  private blockedMs = 0;
  private blockedSince = 0;
  private blockDepth = 0;

  constructor(
    readonly info: RunStatsInfo,
    options: { recent?: number } = {},
  ) {
    const recent = options.recent ?? DEFAULT_RECENT_TOKENS;
    if (!Number.isInteger(recent) || recent < 1) throw new RangeError(`recent must be a positive integer, got ${recent}`);
    this.capacity = recent;
    this.ring = new Float64Array(recent * FIELDS);
    this.perLayer = new Float64Array((info.nLayers ?? 0) * LAYER_FIELDS);
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

  /** The engine starts waiting on reads (nests). */
  blockStart(): void {
    if (this.blockDepth++ === 0) this.blockedSince = performance.now();
  }

  blockEnd(): void {
    if (this.blockDepth > 0 && --this.blockDepth === 0) this.blockedMs += performance.now() - this.blockedSince;
  }

  /** ms spent waiting on reads since open, as of now: a background read's overlap with waits is the difference of two readings. */
  blockedClock(): number {
    return this.blockedMs + (this.blockDepth ? performance.now() - this.blockedSince : 0);
  }

  /**
   * A prefetch, when its layer took it: `aheadMs` of reads in flight while
   * the engine computed (hidden; also I/O), then `waitMs` the layer waited
   * for the rest to land (I/O not hidden); `neurons` read, `used` by the layer.
   */
  prefetch(aheadMs: number, waitMs: number, neurons: number, used: number): void {
    const c = this.cur;
    c[HIDDEN_MS]! += aheadMs;
    c[IO_MS]! += aheadMs + waitMs;
    c[PF_READ]! += neurons;
    c[PF_USED]! += used;
  }

  /** The lookahead prediction for `layer` (made one layer early): hits among the `selected` neurons, of `predicted`. */
  lookahead(layer: number, hits: number, predicted: number, selected: number): void {
    const at = layer * LAYER_FIELDS;
    if (at >= this.perLayer.length) return;
    const p = this.perLayer;
    p[at + LA_TP]! += hits;
    p[at + LA_PRED]! += predicted;
    p[at + LA_SEL]! += selected;
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
  link(rttMs: number, connMBps: number, linkMBps: number, requestBytes: number): void {
    const c = this.cur;
    c[LINK_RTT] = rttMs;
    c[LINK_CONN] = connMBps;
    c[LINK_BW] = linkMBps;
    c[LINK_REQUEST] = requestBytes;
    c[LINK_KNOWN] = 1;
  }

  /** Bytes a cache tier served locally and fetched from the network during this token. */
  tier(hitBytes: number, networkBytes: number): void {
    this.cur[TIER_HIT]! += hitBytes;
    this.cur[TIER_NET]! += networkBytes;
  }

  /** Neurons whose records were read from the source. */
  neuronsRead(n: number): void {
    this.cur[READ]! += n;
  }

  /** The direct predictor against the true active set; `layer` < 0: not counted per layer. */
  predictor(tp: number, fp: number, fn: number, layer = -1): void {
    const c = this.cur;
    c[TP]! += tp;
    c[FP]! += fp;
    c[FN]! += fn;
    c[KNOWN] = 1;
    const at = layer * LAYER_FIELDS;
    if (layer < 0 || at >= this.perLayer.length) return;
    const p = this.perLayer;
    p[at + L_TP]! += tp;
    p[at + L_FP]! += fp;
    p[at + L_FN]! += fn;
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
        s[PF_READ]! += t.prefetchedNeurons;
        s[PF_USED]! += t.prefetchUsed;
        s[TIER_HIT]! += t.tierHitBytes;
        s[TIER_NET]! += t.tierNetworkBytes;
        if (t.linkKnown) {
          s[LINK_RTT]! += t.linkRttMs;
          s[LINK_CONN]! += t.linkConnMBps;
          s[LINK_BW]! += t.linkMBps;
          s[LINK_REQUEST]! += t.linkRequestBytes;
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
    const pl = this.perLayer;
    const nl = pl.length / LAYER_FIELDS;
    const ratio = (a: number, b: number) => (b ? a / b : null);
    const perLayer = (f: (at: number) => number | null) => Array.from({ length: nl }, (_, l) => f(l * LAYER_FIELDS));
    let laTp = 0;
    let laPred = 0;
    let laSel = 0;
    for (let at = 0; at < pl.length; at += LAYER_FIELDS) {
      laTp += pl[at + LA_TP]!;
      laPred += pl[at + LA_PRED]!;
      laSel += pl[at + LA_SEL]!;
    }
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
      prefetchedNeuronsPerToken: avg(PF_READ),
      prefetchUseRate: ratio(s[PF_USED]!, s[PF_READ]!),
      lookaheadRecall: ratio(laTp, laSel),
      lookaheadPrecision: ratio(laTp, laPred),
      tierHitRate: ratio(s[TIER_HIT]!, s[TIER_HIT]! + s[TIER_NET]!),
      ...(nl && (laSel || pl.some((v) => v !== 0))
        ? {
            layers: {
              predictorRecall: perLayer((at) => ratio(pl[at + L_TP]!, pl[at + L_TP]! + pl[at + L_FN]!)),
              lookaheadRecall: perLayer((at) => ratio(pl[at + LA_TP]!, pl[at + LA_SEL]!)),
              lookaheadPrecision: perLayer((at) => ratio(pl[at + LA_TP]!, pl[at + LA_PRED]!)),
            },
          }
        : {}),
      ...(s[LINK_KNOWN]! ? { link: { rttMs: s[LINK_RTT]! / s[LINK_KNOWN]!, connMBps: s[LINK_CONN]! / s[LINK_KNOWN]!, linkMBps: s[LINK_BW]! / s[LINK_KNOWN]!, requestBytes: s[LINK_REQUEST]! / s[LINK_KNOWN]! } } : {}),
      strategy,
      sparsity,
      window,
      layout,
      dtype,
      ...(this.info.kernels ? { kernels: this.info.kernels } : {}),
    };
  }
}
