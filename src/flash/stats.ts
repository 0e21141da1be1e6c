/**
 * Run statistics: what was read, how long each phase took, how well the cache
 * and the predictor did. Per token and averaged; the JSON keys are an
 * interface other tools read (see `toJSON`).
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
  strategy: string;
  sparsity: string;
  window: number | null;
  layout: string;
  dtype: string;
}

const blank = (): TokenStats => ({ bytesRead: 0, requests: 0, ioMs: 0, unpackMs: 0, computeMs: 0, ms: 0, ffnFraction: 0, cacheHits: 0, cacheLookups: 0, cacheLruEvictions: 0, cacheOverflow: 0, truePositives: 0, falsePositives: 0, falseNegatives: 0, predictorKnown: false });

export class RunStats {
  readonly tokens: TokenStats[] = [];
  private cur: TokenStats = blank();
  private ffnBytesThisToken = 0;
  private tokenStart = 0;

  constructor(
    readonly info: { residentBytes: number; arenaBytes: number; ffnBytesTotal: number; strategy: string; sparsity: string; window: number | null; layout: string; dtype: string },
  ) {}

  beginToken(): void {
    this.cur = blank();
    this.ffnBytesThisToken = 0;
    this.tokenStart = performance.now();
  }

  /** Closes the token: compute time is what I/O and unpacking did not take. */
  endToken(): TokenStats {
    const t = this.cur;
    t.ms = performance.now() - this.tokenStart;
    t.computeMs = Math.max(0, t.ms - t.ioMs - t.unpackMs);
    t.ffnFraction = this.info.ffnBytesTotal ? this.ffnBytesThisToken / this.info.ffnBytesTotal : 0;
    this.tokens.push(t);
    return t;
  }

  io(bytes: number, requests: number, ms: number, ffn: boolean): void {
    this.cur.bytesRead += bytes;
    this.cur.requests += requests;
    this.cur.ioMs += ms;
    if (ffn) this.ffnBytesThisToken += bytes;
  }

  unpack(ms: number): void {
    this.cur.unpackMs += ms;
  }

  cache(hits: number, lookups: number, lruEvictions = 0, overflow = 0): void {
    this.cur.cacheHits += hits;
    this.cur.cacheLookups += lookups;
    this.cur.cacheLruEvictions += lruEvictions;
    this.cur.cacheOverflow += overflow;
  }

  predictor(tp: number, fp: number, fn: number): void {
    this.cur.truePositives += tp;
    this.cur.falsePositives += fp;
    this.cur.falseNegatives += fn;
    this.cur.predictorKnown = true;
  }

  /** Per-token averages over the tokens so far (or a subset, e.g. without prompt warm-up). */
  summary(tokens: readonly TokenStats[] = this.tokens): StatsSummary {
    const n = tokens.length;
    const sum = (f: (t: TokenStats) => number) => tokens.reduce((a, t) => a + f(t), 0);
    const avg = (f: (t: TokenStats) => number) => (n ? sum(f) / n : 0);
    const requests = sum((t) => t.requests);
    const lookups = sum((t) => t.cacheLookups);
    const known = tokens.filter((t) => t.predictorKnown);
    const tp = known.reduce((a, t) => a + t.truePositives, 0);
    const fp = known.reduce((a, t) => a + t.falsePositives, 0);
    const fn = known.reduce((a, t) => a + t.falseNegatives, 0);
    const { residentBytes, arenaBytes, strategy, sparsity, window, layout, dtype } = this.info;
    return {
      tokens: n,
      bytesPerToken: avg((t) => t.bytesRead),
      requestsPerToken: avg((t) => t.requests),
      meanRequestBytes: requests ? sum((t) => t.bytesRead) / requests : 0,
      ioMsPerToken: avg((t) => t.ioMs),
      unpackMsPerToken: avg((t) => t.unpackMs),
      computeMsPerToken: avg((t) => t.computeMs),
      msPerToken: avg((t) => t.ms),
      cacheHitRate: lookups ? sum((t) => t.cacheHits) / lookups : null,
      cacheLruEvictionsPerToken: window === null ? null : avg((t) => t.cacheLruEvictions),
      cacheOverflowPerToken: window === null ? null : avg((t) => t.cacheOverflow),
      ffnFractionPerToken: avg((t) => t.ffnFraction),
      residentBytes,
      arenaBytes,
      predictorRecall: known.length && tp + fn ? tp / (tp + fn) : null,
      predictorPrecision: known.length && tp + fp ? tp / (tp + fp) : null,
      strategy,
      sparsity,
      window,
      layout,
      dtype,
    };
  }
}
