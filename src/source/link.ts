/**
 * A model of the network link behind a remote source, estimated online from
 * the requests themselves (a CDN's latency and throughput change while a
 * model runs): the time to an answer's first byte (the round trip plus the
 * server's time), what one request's body gets, and what all of them get
 * together. The read planner prices a request and a byte with it (planner.ts
 * `LinkCosts`); stats report it per token.
 *
 * The round trip and the link's rate are bounds every sample approaches
 * from one side (a first byte comes no sooner than the round trip; a busy
 * period carries no more than the link can), so they follow envelopes of
 * their samples (fast towards the bound, slowly back). A connection's rate
 * is measured only on requests that never shared a full link (else they
 * measure their share). A first sample replaces the prior. Platform-neutral;
 * one small object per request.
 */

/** What the link looks like now. MB/s = 1e6 bytes per second = 1e3 bytes per ms. */
export interface LinkEstimate {
  /** Request sent to first body byte, ms (the low envelope: queueing excluded). */
  rttMs: number;
  /** One request's body throughput (per connection or stream), MB/s. */
  connMBps: number;
  /** All requests together over a busy period (less one round trip), MB/s (>= connMBps). */
  linkMBps: number;
  /** Requests the source can have in flight at once (connections x streams). */
  maxInFlight: number;
  /** Requests measured so far. */
  samples: number;
}

export interface LinkPrior {
  rttMs: number;
  connMBps: number;
  linkMBps: number;
}

/** Before any request completes: the modeled CDN of bench/sources.ts (20 ms, 20 MB/s per connection, 100 MB/s link). */
export const LINK_PRIOR: Readonly<LinkPrior> = Object.freeze({ rttMs: 20, connMBps: 20, linkMBps: 100 });

/** Requests and busy periods shorter than this say more about chunking than about bandwidth: no bandwidth sample. */
const MIN_REQUEST_SAMPLE = 64 * 1024;
const MIN_BUSY_SAMPLE = 256 * 1024;

/**
 * Link samples are lower bounds (a period that did not fill the link carries
 * less than it can): the estimate follows their upper envelope, rising fast
 * and falling slowly, so it still follows a link that got slower.
 */
function envelope(x: number, n: number, sample: number): number {
  if (n === 0) return sample;
  return x + (sample > x ? 0.5 : 0.05) * (sample - x);
}

/** The same from below, for the round trip: a first byte later than the link's delay waited in a queue (bytes ahead of it, a busy host). */
function floorEnvelope(x: number, n: number, sample: number): number {
  if (n === 0) return sample;
  return x + (sample < x ? 0.5 : 0.05) * (sample - x);
}

/** One request being measured (LinkEstimator.begin). */
export interface LinkRequest {
  readonly started: number;
  /** The most requests in flight at once during its life. */
  peak: number;
}

/**
 * The least bytes a request of a round of reads may carry (RoundTuner): 0 cuts the round into as many requests as
 * fill the link; the others into fewer, larger ones (never more than that count).
 */
export const ROUND_REQUEST_BYTES: readonly number[] = Object.freeze([0, 64 * 1024, 128 * 1024, 256 * 1024]);
/**
 * A choice is tried with weight exp(-(its time per byte / the best's - 1) / TEMPERATURE): one 5% slower than the
 * best about a third as often, one twice as slow almost never (trying it costs a whole slow round), and each at least
 * EXPLORE_FLOOR of the rounds (a link and a client change while a model runs).
 */
const TEMPERATURE = 0.05;
const EXPLORE_FLOOR = 0.01;
/** What a round's sample keeps of the choice's earlier ones: about the last ten rounds count. */
const ROUND_DECAY = 0.9;

/** Rounds are told apart by size: below 256 KiB, then each doubling up to 4 MiB and above (RoundTuner). */
const ROUND_BUCKETS = 6;
const SMALLEST_BUCKET = 256 * 1024;

/** The size class of a round of `bytes`. */
function bucketOf(bytes: number): number {
  return bytes < SMALLEST_BUCKET ? 0 : Math.min(ROUND_BUCKETS - 1, 1 + Math.floor(Math.log2(bytes / SMALLEST_BUCKET)));
}

/**
 * How many requests a round of reads (a layer's) is cut into, learned from
 * the rounds themselves. A client pays per request what the link model does
 * not see: a browser's fetch goes through its network process (measured
 * ~2 ms a request on a 2-core machine, against Node's ~0.2: bench/README,
 * "One round of reads"), so fewer, larger requests can end a round sooner
 * than as many as fill the link. Each round takes a least request size
 * (ROUND_REQUEST_BYTES), drawn at random with those that took the least time
 * per byte so far far likelier (weights above). Rounds are compared only
 * with rounds of their size class (the cost per request weighs less against
 * more bytes: a prompt's rounds are many times a token's); within one, a
 * round's bytes do not depend on the choice it drew, so time per byte
 * compares choices fairly. A round too large for the choices to differ (it
 * fills the link with requests of the largest size) is not tuned:
 * exploring there would cost seconds of a bandwidth-bound read (hybrid's).
 * Deterministic (its own random sequence); allocates nothing per round.
 */
export class RoundTuner {
  /** Per size class and choice (index bucket * choices + choice): decayed sums of ms and bytes, and rounds. */
  private readonly ms = new Float64Array(ROUND_BUCKETS * ROUND_REQUEST_BYTES.length);
  private readonly bytes = new Float64Array(ROUND_BUCKETS * ROUND_REQUEST_BYTES.length);
  private readonly n = new Uint32Array(ROUND_BUCKETS * ROUND_REQUEST_BYTES.length);
  private readonly weights = new Float64Array(ROUND_REQUEST_BYTES.length);
  private seed = 0x2545f491;

  /** Whether the choices differ for a round of about `bytes` where `fill` requests fill the link (else it is not tuned). */
  static tunes(bytes: number, fill: number): boolean {
    return Math.ceil(bytes / ROUND_REQUEST_BYTES[ROUND_REQUEST_BYTES.length - 1]!) < fill;
  }

  /** The choice (an index of ROUND_REQUEST_BYTES) for the next round, of about `bytes`. */
  next(bytes: number): number {
    const k = ROUND_REQUEST_BYTES.length;
    const at = bucketOf(bytes) * k;
    // Every choice has two rounds of the class before any is preferred.
    for (let i = 0; i < k; i++) if (this.n[at + i]! < 2) return i;
    const best = this.best(bytes);
    const bestRate = this.ms[at + best]! / this.bytes[at + best]!;
    const w = this.weights;
    let sum = 0;
    for (let i = 0; i < k; i++) sum += w[i] = Math.exp(-(this.ms[at + i]! / this.bytes[at + i]! / bestRate - 1) / TEMPERATURE);
    let u = this.random();
    for (let i = 0; i < k; i++) {
      const p = Math.max(EXPLORE_FLOOR, w[i]! / sum);
      if (u < p) return i;
      u -= p;
    }
    return best;
  }

  /** The choice with the least time per byte so far for rounds of about `bytes` (0 before any). */
  best(bytes: number): number {
    const at = bucketOf(bytes) * ROUND_REQUEST_BYTES.length;
    let best = 0;
    for (let i = 1; i < ROUND_REQUEST_BYTES.length; i++) {
      if (this.n[at + i]! > 0 && (this.n[at + best] === 0 || this.ms[at + i]! / this.bytes[at + i]! < this.ms[at + best]! / this.bytes[at + best]!)) best = i;
    }
    return best;
  }

  /** A round of about `planned` bytes (what next() was told) at choice `i` read `bytes` in `ms`. */
  done(i: number, planned: number, bytes: number, ms: number): void {
    if (!(bytes > 0 && ms >= 0)) return;
    const j = bucketOf(planned) * ROUND_REQUEST_BYTES.length + i;
    this.ms[j] = this.ms[j]! * ROUND_DECAY + ms;
    this.bytes[j] = this.bytes[j]! * ROUND_DECAY + bytes;
    this.n[j]!++;
  }

  /** xorshift32 in [0, 1). */
  private random(): number {
    let x = this.seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.seed = x >>> 0;
    return this.seed / 2 ** 32;
  }
}

export class LinkEstimator {
  /** The request count of the rounds the model waits on (fetch.ts): learned per source, as the link is. */
  readonly rounds = new RoundTuner();

  private rtt: number;
  private conn: number;
  private link: number;
  private nRtt = 0;
  private nConn = 0;
  private nLink = 0;
  /** Requests sent and not finished. */
  private active = 0;
  private readonly live = new Set<LinkRequest>();
  /** The current busy period (some request active): when it began and its bytes. */
  private busyStart = 0;
  private busyBytes = 0;
  /** Busy periods since the last link sample: their bytes and transfer time (each period's length less a round trip). */
  private accBytes = 0;
  private accMs = 0;

  constructor(
    readonly maxInFlight: number,
    prior: LinkPrior = LINK_PRIOR,
    /** The clock, ms (tests drive a modelled link with their own). */
    private readonly now: () => number = () => performance.now(),
  ) {
    this.rtt = prior.rttMs;
    this.conn = prior.connMBps;
    this.link = Math.max(prior.linkMBps, prior.connMBps);
  }

  /** A request is sent: pass what this returns to firstByte and end. */
  begin(): LinkRequest {
    const now = this.now();
    if (this.active++ === 0) {
      this.busyStart = now;
      this.busyBytes = 0;
    }
    const r: LinkRequest = { started: now, peak: 0 };
    this.live.add(r);
    for (const x of this.live) if (x.peak < this.active) x.peak = this.active;
    return r;
  }

  /** Its headers arrived: a round-trip sample. */
  firstByte(r: LinkRequest): void {
    this.rtt = floorEnvelope(this.rtt, this.nRtt++, this.now() - r.started);
  }

  /** The request finished (or failed) after `bytes` body bytes. */
  end(r: LinkRequest, bytes: number): void {
    const now = this.now();
    this.live.delete(r);
    // Its transfer time is what the round trip does not explain.
    const transfer = now - r.started - this.rtt;
    // Only a request that never shared a full link measures a connection's rate (else: its share of the link).
    if (bytes >= MIN_REQUEST_SAMPLE && transfer > Math.max(1, this.rtt / 2) && r.peak * this.conn <= this.linkMBps) {
      const mbps = bytes / transfer / 1e3;
      this.conn = this.nConn++ === 0 ? mbps : this.conn + 0.3 * (mbps - this.conn);
    }
    this.busyBytes += bytes;
    if (--this.active === 0) {
      this.accBytes += this.busyBytes;
      this.accMs += Math.max(0, now - this.busyStart - this.rtt);
      // Short periods are mostly round trip: a sample once the transfer time summed over periods outweighs one.
      if (this.accBytes >= MIN_BUSY_SAMPLE && this.accMs > Math.max(2, 2 * this.rtt)) {
        this.link = envelope(this.link, this.nLink++, this.accBytes / this.accMs / 1e3);
        this.accBytes = 0;
        this.accMs = 0;
      }
    }
  }

  estimate(): LinkEstimate {
    return { rttMs: this.rtt, connMBps: this.conn, linkMBps: this.linkMBps, maxInFlight: this.maxInFlight, samples: this.nRtt };
  }

  get rttMs(): number {
    return this.rtt;
  }
  get connMBps(): number {
    return this.conn;
  }
  get linkMBps(): number {
    return Math.max(this.link, this.conn);
  }
  get samples(): number {
    return this.nRtt;
  }
}
