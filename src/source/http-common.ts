/**
 * The HTTP range protocol, shared by the fetch source (http.ts) and the
 * undici source (http-node.ts); each of those only supplies a transport that
 * sends one GET and hands back status, headers and body chunks.
 *
 * What lives here: learning the size and pinning the validator at open,
 * checking every 206 answer (Content-Range exactly as asked, the length, the
 * validator), telling "the file changed" from "the server ignores Range",
 * the small-file fallback, and the retry policy (backoff with jitter on
 * network errors, truncated bodies, 5xx, 408 and 429; never on other 4xx).
 *
 * Platform-neutral: no `node:` import. Offsets are JS numbers (exact to
 * 2^53); nothing here does 32-bit arithmetic on them.
 */
import { AbortedError, FlashlmError, SourceError } from '../errors.js';
import type { ReadHints, Source } from './types.js';
import { LinkEstimator } from './link.js';

export interface HttpOptions {
  /** Sent with every request (e.g. `authorization`). Range, If-Range and Accept-Encoding are ours. */
  headers?: Record<string, string>;
  /** Aborts open and every read (AbortedError). */
  signal?: AbortSignal;
  /** Retries after the first attempt, per open or read. Default 4. */
  retries?: number;
  /** First backoff; doubles each retry, with jitter (half fixed, half random). Default 200 ms. */
  retryBaseMs?: number;
  /** Longest single wait, also caps Retry-After. Default 5000 ms. */
  retryMaxMs?: number;
  /** An attempt fails (and is retried) when no headers or body bytes arrive for this long. Default 30000 ms. */
  timeoutMs?: number;
  /**
   * Low-speed limit, as curl's --speed-limit/--speed-time: an attempt that
   * receives fewer than `lowSpeedLimit` bytes/s over `lowSpeedTimeMs` fails
   * (and is retried), so a server trickling bytes cannot hold a read forever.
   * Default 1024 bytes/s over 30000 ms; 0 turns it off.
   */
  lowSpeedLimit?: number;
  lowSpeedTimeMs?: number;
  /** A whole open or read, retries and waits included, gives up after this long. Default 300000 ms; 0 = no deadline. */
  deadlineMs?: number;
  /** Told before each retry (what failed, why, and the wait), e.g. to say so on stderr. */
  onRetry?: (event: RetryEvent) => void;
  /** A server that ignores Range is tolerated up to this size: the body is then kept in memory. Default 16 MiB. */
  smallFileBytes?: number;
  /** Overrides of the default read hints. */
  hints?: Partial<ReadHints>;
  /**
   * Requests in flight at most (the default `hints.parallel`): Node opens up
   * to this many keep-alive connections (HTTP/2: streams over fewer
   * connections), as the link needs them. Default: 8 for fetch (browsers
   * queue past 6 per HTTP/1.1 origin), 64 for Node.
   */
  connections?: number;
  /**
   * Multi-range requests (`Range: bytes=a-b,c-d`, multipart/byteranges):
   * 'auto' (default) probes once and uses them only when the server answers
   * them as asked; false never sends them.
   */
  multiRange?: 'auto' | false;
  /**
   * Estimate the link (round trip, bandwidth) from the requests and let the
   * read planner price requests and bytes with it (default true); false
   * keeps the fixed `hints.mergeGap`.
   */
  linkModel?: boolean;
}

/**
 * Default read shape for HTTP, measured by bench/sources.ts against nginx on
 * loopback and through a modeled CDN (20 ms RTT, 20 MB/s per connection,
 * 100 MB/s link). A request costs a round trip: ~21 ms + bytes at 17 MB/s
 * one at a time, ~2.7-3 ms amortized with 8 in flight, so reading through a
 * gap beats a new request up to ~235-255 KiB at 8 in flight (~100-350 KiB on
 * bare loopback): mergeGap 256 KiB. 4 MiB reads reach 86-88 of 100 MB/s at 8
 * in flight where 1 MiB reads reach 75, and one connection needs ~4 MiB to
 * spend <10% of its time on the round trip: maxRead 4 MiB. 8 in flight get
 * within 10% of 16 for large reads (small ones scale with every request in
 * flight, up to the server's patience): parallel 8, the undici pool's
 * connections (browsers keep 6 per HTTP/1.1 host and queue the rest).
 */
export const HTTP_HINTS: Readonly<ReadHints> = Object.freeze({ mergeGap: 256 * 1024, maxRead: 4 * 1024 * 1024, parallel: 8 });

/** Defaults overridden by the caller's defined values. */
export function mergeHints(defaults: Readonly<ReadHints>, over: Partial<ReadHints> | undefined): ReadHints {
  const out = { ...defaults };
  for (const k of ['mergeGap', 'maxRead', 'parallel'] as const) {
    const v = over?.[k];
    if (v !== undefined) {
      if (!Number.isSafeInteger(v) || v < (k === 'mergeGap' ? 0 : 1)) throw new SourceError(`hints.${k} must be an integer >= ${k === 'mergeGap' ? 0 : 1}, got ${v}`);
      out[k] = v;
    }
  }
  return out;
}

/** One HTTP answer, as the protocol needs it. */
export interface HttpAnswer {
  readonly status: number;
  /** A header's value by lower-case name (repeated headers joined with ", "), or undefined. */
  header(name: string): string | undefined;
  /** The body, chunk by chunk, in order (read once). */
  body(): AsyncIterable<Uint8Array>;
  /** Drop the body unread (frees or closes the connection); never throws. */
  discard(): Promise<void>;
}

/**
 * Sends one GET of the source's URL with these (lower-case) headers; throws
 * on network errors. Redirects are followed, and the final URL is used for
 * the next requests (saving a round trip per read); should it answer 401,
 * 403, 404 or 410 (an expired signed URL), the transport goes back to the
 * original URL once, for a fresh redirect.
 */
export interface HttpTransport {
  get(headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer>;
  close(): Promise<void>;
}

/** A retry about to happen (HttpOptions.onRetry). */
export interface RetryEvent {
  source: string;
  /** 'open' or 'read [offset, +length)'. */
  what: string;
  /** The retry this is (1 = the first) and how many are allowed. */
  retry: number;
  retries: number;
  reason: string;
  waitMs: number;
}

/** What a server says a response is a version of. */
export interface Validator {
  etag?: string;
  lastModified?: string;
}

// ---------------------------------------------------------------- parsing

const CONTENT_RANGE = /^bytes[ \t]+(?:(\d{1,16})-(\d{1,16})|\*)\/(\d{1,16}|\*)$/i;

export interface ContentRange {
  /** First and last byte, inclusive; absent for `bytes * /size` (416 answers). */
  start?: number;
  end?: number;
  /** Complete length; absent for `/*`. */
  size?: number;
}

function safeInt(s: string): number | undefined {
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Parses `bytes a-b/size`, `bytes a-b/*` or `bytes * /size` (RFC 9110 14.4); undefined when malformed or past 2^53. */
export function parseContentRange(value: string | undefined): ContentRange | undefined {
  if (value === undefined) return undefined;
  const m = CONTENT_RANGE.exec(value.trim());
  if (!m) return undefined;
  const out: ContentRange = {};
  if (m[3] !== '*') {
    out.size = safeInt(m[3]!);
    if (out.size === undefined) return undefined;
  }
  if (m[1] !== undefined) {
    const start = safeInt(m[1]);
    const end = safeInt(m[2]!);
    if (start === undefined || end === undefined || end < start) return undefined;
    if (out.size !== undefined && end >= out.size) return undefined;
    out.start = start;
    out.end = end;
  } else if (out.size === undefined) {
    return undefined; // "bytes */*" says nothing
  }
  return out;
}

/** `bytes=start-end` (inclusive), for offsets anywhere below 2^53. */
export function formatRange(start: number, end: number): string {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new SourceError(`invalid byte range ${start}-${end}`);
  }
  return `bytes=${start}-${end}`;
}

function contentLength(a: HttpAnswer): number | undefined {
  const v = a.header('content-length')?.trim();
  return v !== undefined && /^\d{1,16}$/.test(v) ? safeInt(v) : undefined;
}

export function validatorOf(a: HttpAnswer): Validator {
  const v: Validator = {};
  const etag = a.header('etag')?.trim();
  const lm = a.header('last-modified')?.trim();
  if (etag) v.etag = etag;
  if (lm) v.lastModified = lm;
  return v;
}

const isWeak = (etag: string) => /^W\//i.test(etag);
const opaque = (etag: string) => etag.replace(/^W\//i, '');

/**
 * The If-Range value for a pinned validator: a strong ETag, else the
 * Last-Modified date. A weak ETag can never match in If-Range (RFC 9110
 * 13.1.5), so it would turn every read into a full 200 body.
 */
export function ifRangeOf(v: Validator): string | undefined {
  if (v.etag && !isWeak(v.etag)) return v.etag;
  return v.lastModified;
}

/**
 * Whether an answer carries a validator that contradicts the pinned one:
 * ETags are compared when both sides have one (weakly: a CDN may add W/),
 * else Last-Modified. A missing validator proves nothing.
 */
export function contradicts(pinned: Validator, got: Validator): string | undefined {
  if (pinned.etag && got.etag) {
    return opaque(pinned.etag) === opaque(got.etag) ? undefined : `ETag ${pinned.etag} -> ${got.etag}`;
  }
  if (pinned.lastModified && got.lastModified && pinned.lastModified !== got.lastModified) {
    return `Last-Modified ${pinned.lastModified} -> ${got.lastModified}`;
  }
  return undefined;
}

function retryAfterMs(a: HttpAnswer): number | undefined {
  const v = a.header('retry-after')?.trim();
  if (!v) return undefined;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - Date.now());
}

// ---------------------------------------------------------------- retry policy

/** An attempt failed in a way worth trying again. */
export class RetryableError extends Error {
  constructor(
    message: string,
    readonly afterMs?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RetryableError';
  }
}

/** The headers to send to `target`: without Authorization once a redirect has left the URL's origin (as fetch does). */
export function headersFor(headers: Record<string, string>, original: URL, target: URL): Record<string, string> {
  if (headers.authorization === undefined || target.origin === original.origin) return headers;
  const { authorization: _, ...rest } = headers;
  return rest;
}

/** Statuses after which a transport that pinned a redirect target goes back to the original URL. */
export function isStaleRedirectStatus(status: number): boolean {
  return status === 401 || status === 403 || status === 404 || status === 410;
}

/** Whether a status is retried: 5xx, 408 Request Timeout, 429 Too Many Requests. */
export function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/** Wait before retry number `attempt` (0 = the first retry): base·2^attempt, capped, half of it random. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const full = Math.min(maxMs, baseMs * 2 ** attempt);
  return full / 2 + random() * (full / 2);
}

/** Why an attempt was cut: no progress, or too little (retried). */
class TimeoutSignal extends Error {}
/** The whole open or read ran past its deadline (not retried). */
class DeadlineSignal extends Error {}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const done = () => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    const t = setTimeout(done, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

// ---------------------------------------------------------------- the source

interface Resolved {
  headers: Record<string, string>;
  signal: AbortSignal | undefined;
  /**
   * A controller linked to the caller's signal. One listener per source on
   * the caller's signal, however many reads are in flight (Node warns past
   * 10 listeners on one AbortSignal).
   */
  link(): { signal: AbortSignal; abort(reason: unknown): void; done(): void };
  /** Drops the listener on the caller's signal. */
  dispose(): void;
  retries: number;
  retryBaseMs: number;
  retryMaxMs: number;
  timeoutMs: number;
  smallFileBytes: number;
  lowSpeedLimit: number;
  lowSpeedTimeMs: number;
  deadlineMs: number;
  onRetry?: (event: RetryEvent) => void;
  multiRange: boolean;
  linkModel: boolean;
}

function resolve(o: HttpOptions): Resolved {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(o.headers ?? {})) headers[k.toLowerCase()] = v;
  const live = new Set<AbortController>();
  const user = o.signal;
  const onAbort = () => {
    for (const c of live) c.abort(user!.reason);
  };
  user?.addEventListener('abort', onAbort, { once: true });
  const r: Resolved = {
    headers,
    signal: user,
    link() {
      const c = new AbortController();
      if (user?.aborted) c.abort(user.reason);
      else live.add(c);
      return { signal: c.signal, abort: (reason) => c.abort(reason), done: () => live.delete(c) };
    },
    dispose() {
      user?.removeEventListener('abort', onAbort);
      live.clear();
    },
    retries: o.retries ?? 4,
    retryBaseMs: o.retryBaseMs ?? 200,
    retryMaxMs: o.retryMaxMs ?? 5000,
    timeoutMs: o.timeoutMs ?? 30_000,
    smallFileBytes: o.smallFileBytes ?? 16 * 1024 * 1024,
    lowSpeedLimit: o.lowSpeedLimit ?? 1024,
    lowSpeedTimeMs: o.lowSpeedTimeMs ?? 30_000,
    deadlineMs: o.deadlineMs ?? 300_000,
    onRetry: o.onRetry,
    multiRange: o.multiRange !== false,
    linkModel: o.linkModel !== false,
  };
  if (o.multiRange !== undefined && o.multiRange !== false && o.multiRange !== 'auto') {
    r.dispose();
    throw new SourceError(`HTTP source option multiRange must be 'auto' or false, got ${String(o.multiRange)}`);
  }
  for (const k of ['retries', 'retryBaseMs', 'retryMaxMs', 'timeoutMs', 'smallFileBytes', 'lowSpeedLimit', 'lowSpeedTimeMs', 'deadlineMs'] as const) {
    if (!(r[k] >= 0) || !Number.isFinite(r[k])) {
      r.dispose();
      throw new SourceError(`HTTP source option ${k} must be a finite number >= 0, got ${r[k]}`);
    }
  }
  return r;
}

/** What open learned: size, pinned validator, and the whole body when the server ignores Range. */
interface Opened {
  size: number;
  pin: Validator;
  whole?: Uint8Array;
}

/**
 * A Source over one URL, for any transport. Subclasses (HttpSource,
 * NodeHttpSource) only build the transport and call `connect`.
 */
export class HttpRangeSource implements Source {
  readonly alignment = 1;
  readonly size: number;
  readonly identity: string;
  readonly hints: ReadHints;
  /** The link as the requests so far measured it (absent with `linkModel: false`). */
  readonly link: LinkEstimator | undefined;
  private readonly pin: Validator;
  private whole: Uint8Array | undefined;
  private closed = false;
  /** Whether the server answers multi-range requests as asked: probed once (multiRange()). */
  private multi: Promise<boolean> | undefined;
  private multiKnown: boolean | undefined;

  protected constructor(
    readonly name: string,
    private readonly transport: HttpTransport,
    private readonly o: Resolved,
    opened: Opened,
    hints: ReadHints,
  ) {
    this.size = opened.size;
    this.pin = opened.pin;
    this.whole = opened.whole;
    this.hints = hints;
    this.link = o.linkModel ? new LinkEstimator(hints.parallel) : undefined;
    if (!o.multiRange) this.multiKnown = false;
    const v = opened.pin.etag ? `etag:${opened.pin.etag}` : opened.pin.lastModified ? `last-modified:${opened.pin.lastModified}` : 'unvalidated';
    this.identity = `http:${opened.size}:${v}`;
  }

  /** True when the server ignored Range and the whole (small) file is served from memory. */
  get inMemory(): boolean {
    return this.whole !== undefined;
  }

  /** Probes `name` through `transport` (closing it on failure) and returns what the constructor needs. */
  protected static async connect(name: string, transport: HttpTransport, options: HttpOptions, defaults: ReadHints): Promise<[string, HttpTransport, Resolved, Opened, ReadHints]> {
    let o: Resolved | undefined;
    try {
      const hints = mergeHints(defaults, options.hints);
      o = resolve(options);
      const opened = await probe(name, transport, o);
      return [name, transport, o, opened, hints];
    } catch (e) {
      o?.dispose();
      await transport.close().catch(() => {});
      throw e;
    }
  }

  /** A range request's headers: the caller's, the range, no content coding, and If-Range on the validator pinned at open. */
  private rangeHeaders(range: string): Record<string, string> {
    const headers: Record<string, string> = { ...this.o.headers, range, 'accept-encoding': 'identity' };
    const ifRange = ifRangeOf(this.pin);
    if (ifRange) headers['if-range'] = ifRange;
    return headers;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const len = into.byteLength;
    if (this.closed) throw new SourceError(`${this.name}: read after close`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > this.size) {
      throw new SourceError(`${this.name}: read [${offset}, +${len}) is outside the ${this.size}-byte file`);
    }
    if (len === 0) return;
    if (this.whole) {
      into.set(this.whole.subarray(offset, offset + len));
      return;
    }
    let got = 0; // bytes already in `into`: a retry after a dropped body asks only for the rest
    await attempt(this.name, `read [${offset}, +${len})`, this.o, async (signal, progress) => {
      const start = offset + got;
      const end = offset + len - 1;
      await this.timedGet(this.rangeHeaders(formatRange(start, end)), signal, progress, async (a, took) => {
        if (a.status === 206) {
          const bad = this.check206(a, start, end);
          if (bad) {
            await a.discard();
            throw bad;
          }
          await fill(this.name, a, into, got, end - start + 1, progress, (n) => ((got += n), took(n)));
          return;
        }
        if (a.status === 200) {
          this.whole = await this.wholeAfter200(a, progress);
          into.set(this.whole.subarray(offset, offset + len));
          return;
        }
        const now = a.status === 416 ? parseContentRange(a.header('content-range'))?.size : undefined;
        if (now !== undefined && now !== this.size) {
          await a.discard();
          throw this.changedError(`size ${this.size} -> ${now}`);
        }
        throw await statusError(this.name, a);
      });
    });
  }

  /**
   * Whether readRanges sends multi-range requests: probed once, with two
   * one-byte ranges; only a 206 multipart/byteranges answer carrying exactly
   * those parts says yes (a server answering the whole file, one range, or
   * an error says no, and readRanges then reads range by range).
   */
  multiRange(): Promise<boolean> {
    if (this.multiKnown !== undefined) return Promise.resolve(this.multiKnown);
    this.multi ??= this.probeMultiRange().then(
      (yes) => (this.multiKnown = yes),
      (e: unknown) => {
        this.multi = undefined; // aborted: the next call probes again
        throw e;
      },
    );
    return this.multi;
  }

  private async probeMultiRange(): Promise<boolean> {
    if (this.whole || this.size < 3) return false;
    const mid = Math.floor(this.size / 2);
    const r = new RangeSet([0, mid], [1, 1], [0, 1], 0, 2);
    try {
      return (await this.multiGet(r, new Uint8Array(2), 'probe')) && r.complete();
    } catch (e) {
      if (e instanceof AbortedError) throw e;
      return false; // a server that errs on a multi-range request is one that does not serve them
    }
  }

  /**
   * Reads ranges `from..to` (ascending, disjoint; range i: [offsets[i],
   * +lengths[i]) into `into` at `ats[i]`) in one multi-range request when
   * the server serves them (multiRange()), else one request per range.
   * A server that stops answering them as asked is noticed: the ranges it
   * left out are read one by one, and later calls read range by range.
   */
  async readRanges(offsets: ArrayLike<number>, lengths: ArrayLike<number>, ats: ArrayLike<number>, from: number, to: number, into: Uint8Array): Promise<void> {
    if (this.closed) throw new SourceError(`${this.name}: read after close`);
    const r = new RangeSet(offsets, lengths, ats, from, to);
    for (let i = 0; i < r.n; i++) {
      const off = r.off[i]!;
      const len = r.len[i]!;
      if (!Number.isSafeInteger(off) || off < 0 || !Number.isSafeInteger(len) || len < 0 || off + len > this.size) {
        throw new SourceError(`${this.name}: read [${off}, +${len}) is outside the ${this.size}-byte file`);
      }
      if (i > 0 && off < r.off[i - 1]! + r.len[i - 1]!) throw new SourceError(`${this.name}: readRanges needs ascending, disjoint ranges (range ${i} at ${off})`);
      if (!(r.at[i]! >= 0 && r.at[i]! + len <= into.byteLength)) throw new RangeError(`readRanges: [${r.at[i]}, +${len}) is outside the ${into.byteLength}-byte buffer`);
    }
    if (r.n > 1 && !this.whole && (await this.multiRange())) {
      const asked = r.n;
      const ok = await attempt(this.name, `read ${asked} ranges [${r.off[0]}, ${r.off[asked - 1]! + r.len[asked - 1]!})`, this.o, (signal, progress) => this.multiGet(r, into, signal, progress));
      if (!ok) this.multiKnown = false; // the server stopped serving them as asked: range by range from now on
    }
    // Whatever is still missing (no multi-range support, or parts the server left out), range by range.
    const rest: Promise<void>[] = [];
    for (let i = 0; i < r.n; i++) if (r.got[i]! < r.len[i]!) rest.push(this.read(r.off[i]!, into.subarray(r.at[i]!, r.at[i]! + r.len[i]!)));
    await Promise.all(rest);
  }

  /**
   * One multi-range GET of the ranges of `r` still missing. True when the
   * answer was multipart/byteranges with exactly the parts asked for; false
   * when the server answered otherwise (a single range is used for what it
   * covers, a whole-file 200 is dropped unread).
   */
  private async multiGet(r: RangeSet, into: Uint8Array, signal: AbortSignal | 'probe', progressIn?: (bytes?: number) => void): Promise<boolean> {
    if (signal === 'probe') return attempt(this.name, 'multi-range probe', { ...this.o, retries: Math.min(1, this.o.retries) }, (sig, progress) => this.multiGet(r, into, sig, progress));
    const progress = progressIn!;
    r.reset(); // a retry asks again for every range not complete
    const spec = r.header();
    if (!spec) return true;
    return this.timedGet(this.rangeHeaders(spec), signal, progress, async (a, took) => {
      if (a.status === 200 || a.status === 206) {
        const changed = contradicts(this.pin, validatorOf(a));
        if (changed) {
          await a.discard();
          throw this.changedError(changed);
        }
      }
      if (a.status === 206) {
        const enc = a.header('content-encoding')?.trim().toLowerCase();
        if (enc && enc !== 'identity') {
          await a.discard();
          throw new SourceError(`${this.name}: server encoded a range answer (Content-Encoding: ${enc}) although asked for identity; disable compression for .flm files`);
        }
        const boundary = byterangesBoundary(a.header('content-type'));
        const put = (pos: number, chunk: Uint8Array) => {
          took(chunk.byteLength);
          progress(chunk.byteLength);
          r.scatter(pos, chunk, into);
        };
        if (boundary === undefined) {
          // One range (a CDN that coalesced them, or answered the first only): use what it covers.
          const cr = parseContentRange(a.header('content-range'));
          if (!cr || cr.start === undefined || (cr.size !== undefined && cr.size !== this.size)) {
            await a.discard();
            if (cr?.size !== undefined && cr.size !== this.size) throw this.changedError(`size ${this.size} -> ${cr.size}`);
            return false;
          }
          await streamPart(this.name, a, cr.start, cr.end! - cr.start + 1, put);
          return false;
        }
        const parts = new Byteranges(this.name, boundary, this.size, put);
        let complete = false;
        try {
          for await (const chunk of a.body()) parts.push(chunk);
          parts.finish();
          complete = true;
        } catch (e) {
          if (e instanceof MalformedMultipart) return false; // not multipart as we read it: range by range from now on
          throw e;
        } finally {
          if (!complete) await a.discard();
        }
        return parts.asked(r);
      }
      if (a.status === 200) {
        const n = contentLength(a);
        await a.discard();
        if (n !== undefined && n !== this.size) throw this.changedError(`size ${this.size} -> ${n}`);
        return false; // the whole file for a multi-range request: never again
      }
      if (isRetryableStatus(a.status)) throw await statusError(this.name, a);
      const now = a.status === 416 ? parseContentRange(a.header('content-range'))?.size : undefined;
      await a.discard();
      if (now !== undefined && now !== this.size) throw this.changedError(`size ${this.size} -> ${now}`);
      return false; // refused (416, 400, ...): range by range
    });
  }

  /**
   * One range request timed for the link model: its first byte, then the body
   * bytes `use` reports through `took`, whether `use` returns or throws.
   */
  private async timedGet<T>(headers: Record<string, string>, signal: AbortSignal, progress: () => void, use: (a: HttpAnswer, took: (n: number) => void) => Promise<T>): Promise<T> {
    const link = this.link;
    const t0 = link?.begin();
    let bytes = 0;
    try {
      const a = await this.transport.get(headers, signal);
      if (t0) link!.firstByte(t0);
      progress();
      return await use(a, (n) => (bytes += n));
    } finally {
      if (t0) link!.end(t0, bytes);
    }
  }

  /** Why a 206 answer for [start, end] cannot be used, or undefined. */
  private check206(a: HttpAnswer, start: number, end: number): Error | undefined {
    const raw = a.header('content-range');
    const cr = parseContentRange(raw);
    if (raw === undefined) return noContentRange(this.name, a);
    if (!cr || cr.start === undefined) return new SourceError(`${this.name}: malformed Content-Range ${JSON.stringify(raw)}`);
    const changed = contradicts(this.pin, validatorOf(a)) ?? (cr.size !== undefined && cr.size !== this.size ? `size ${this.size} -> ${cr.size}` : undefined);
    if (changed) return this.changedError(changed);
    if (cr.start !== start || cr.end !== end) {
      return new SourceError(`${this.name}: server sent Content-Range ${JSON.stringify(raw)} for Range: bytes=${start}-${end}`);
    }
    // Checked before the length: an encoded body's length is the encoding's, which would hide the cause.
    const enc = encodingError(this.name, a);
    if (enc) return enc;
    const n = contentLength(a);
    if (n !== undefined && n !== end - start + 1) {
      return new SourceError(`${this.name}: Content-Length ${n} does not match Content-Range ${JSON.stringify(raw)}`);
    }
    return undefined;
  }

  private changedError(what: string): SourceError {
    return new SourceError(`${this.name}: file changed on the server since it was opened (${what}); reopen the model`);
  }

  /** A 200 to a ranged request: the file changed (If-Range failed), or the server ignores Range. */
  private async wholeAfter200(a: HttpAnswer, progress: (bytes?: number) => void): Promise<Uint8Array> {
    const n = contentLength(a);
    const changed = contradicts(this.pin, validatorOf(a)) ?? (n !== undefined && n !== this.size ? `size ${this.size} -> ${n}` : undefined);
    if (changed) {
      await a.discard();
      throw this.changedError(changed);
    }
    if (this.size > this.o.smallFileBytes) {
      await a.discard();
      throw new SourceError(`${this.name}: server ignored the Range request (answered 200 with the whole file); ranges are required for files over ${this.o.smallFileBytes} bytes`);
    }
    const whole = await readWhole(this.name, a, this.o.smallFileBytes, progress);
    if (whole.byteLength !== this.size) throw new RetryableError(`whole body is ${whole.byteLength} bytes, expected ${this.size}`);
    return whole;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.whole = undefined;
    this.o.dispose();
    await this.transport.close();
  }
}

/**
 * Runs `fn` with retries. `fn` gets an AbortSignal (the caller's signal, or
 * the idle timeout) and a `progress` callback that re-arms the idle timeout.
 * Errors: FlashlmErrors and non-retryable statuses pass through; anything
 * else thrown (network errors, aborted bodies) or a RetryableError is retried.
 */
async function attempt<T>(name: string, what: string, o: Resolved, fn: (signal: AbortSignal, progress: (bytes?: number) => void) => Promise<T>): Promise<T> {
  const aborted = (cause?: unknown) => new AbortedError(`${name}: ${what}: aborted`, { cause: cause ?? o.signal?.reason });
  const started = Date.now();
  const deadline = o.deadlineMs > 0 ? started + o.deadlineMs : Infinity;
  const gaveUp = (last: string) => new SourceError(`${name}: ${what} gave up after ${((Date.now() - started) / 1000).toFixed(1)} s (deadline ${o.deadlineMs / 1000} s): ${last}`);
  for (let n = 0; ; n++) {
    if (o.signal?.aborted) throw aborted();
    const ctl = o.link();
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Low-speed limit: bytes received per window of lowSpeedTimeMs.
    let windowBytes = 0;
    let windowStart = Date.now();
    const speed = o.lowSpeedLimit > 0 && o.lowSpeedTimeMs > 0
      ? setInterval(() => {
          const now = Date.now();
          const rate = (1000 * windowBytes) / Math.max(1, now - windowStart);
          if (rate < o.lowSpeedLimit) ctl.abort(new TimeoutSignal(`slower than ${o.lowSpeedLimit} bytes/s for ${o.lowSpeedTimeMs} ms (${Math.round(rate)} bytes/s)`));
          windowBytes = 0;
          windowStart = now;
        }, o.lowSpeedTimeMs)
      : undefined;
    const end = deadline === Infinity ? undefined : setTimeout(() => ctl.abort(new DeadlineSignal()), Math.max(0, deadline - Date.now()));
    const progress = (bytes = 0) => {
      windowBytes += bytes;
      clearTimeout(timer);
      timer = setTimeout(() => ctl.abort(new TimeoutSignal(`nothing received for ${o.timeoutMs} ms`)), o.timeoutMs);
    };
    progress();
    let failure: RetryableError;
    try {
      return await fn(ctl.signal, progress);
    } catch (e) {
      if (o.signal?.aborted) throw aborted();
      if (e instanceof FlashlmError) throw e;
      const why = ctl.signal.aborted ? ctl.signal.reason : undefined;
      if (why instanceof DeadlineSignal) throw gaveUp('the read was still running');
      if (why instanceof TimeoutSignal) failure = new RetryableError(why.message);
      else if (e instanceof RetryableError) failure = e;
      else failure = new RetryableError(describe(e), undefined, { cause: e });
    } finally {
      clearTimeout(timer);
      clearInterval(speed);
      clearTimeout(end);
      ctl.done();
    }
    if (n >= o.retries) {
      throw new SourceError(`${name}: ${what} failed after ${n + 1} attempt${n ? 's' : ''}: ${failure.message}`, { cause: failure.cause ?? failure });
    }
    const wait = Math.min(o.retryMaxMs, failure.afterMs ?? backoffMs(n, o.retryBaseMs, o.retryMaxMs));
    if (Date.now() + wait >= deadline) throw gaveUp(failure.message);
    o.onRetry?.({ source: name, what, retry: n + 1, retries: o.retries, reason: failure.message, waitMs: wait });
    const pause = o.link();
    try {
      await sleep(wait, pause.signal);
    } catch (e) {
      throw aborted(e);
    } finally {
      pause.done();
    }
  }
}

/** A network error's message, with its cause (fetch says only "fetch failed"). */
function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const c = e.cause;
  const inner = c instanceof Error ? `${(c as { code?: string }).code ?? c.name}: ${c.message}` : '';
  return inner && !e.message.includes(inner) ? `${e.message} (${inner})` : e.message;
}

/** A 206 without Content-Range: a multipart/byteranges answer to a single range, or a cross-origin server hiding the header. */
function noContentRange(name: string, a: HttpAnswer): SourceError {
  const type = a.header('content-type');
  if (type && /^\s*multipart\//i.test(type)) return new SourceError(`${name}: server answered a single range with ${type.split(';')[0]!.trim()}; it must send the bytes with a Content-Range`);
  return new SourceError(`${name}: 206 answer without Content-Range (cross-origin servers must send Access-Control-Expose-Headers: Content-Range, ETag)`);
}

/** An encoded range answer (gzip, br...), named: its length is the encoding's, which would otherwise surface as a length problem. */
function encodingError(name: string, a: HttpAnswer): SourceError | undefined {
  const enc = a.header('content-encoding')?.trim().toLowerCase();
  return enc && enc !== 'identity' ? new SourceError(`${name}: server encoded a range answer (Content-Encoding: ${enc}) although asked for identity; disable compression for .flm files`) : undefined;
}

/** The error for an answer that is neither 200 nor 206 (body discarded). */
async function statusError(name: string, a: HttpAnswer): Promise<Error> {
  await a.discard();
  const s = a.status;
  if (isRetryableStatus(s)) return new RetryableError(`HTTP ${s}`, s === 429 || s === 503 ? retryAfterMs(a) : undefined);
  if (s === 416) return new SourceError(`${name}: HTTP 416 Range Not Satisfiable (Content-Range: ${a.header('content-range') ?? 'none'}); the file may have changed`);
  if (s >= 300 && s < 400) return new SourceError(`${name}: HTTP ${s} redirect to ${a.header('location') ?? '(no Location)'} not followed`);
  const hint = s === 401 || s === 403 ? ' (check the headers option: credentials or a signed URL that expired?)' : '';
  return new SourceError(`${name}: HTTP ${s}${hint}`);
}

/** Streams a 206 body of exactly `want` bytes into `into` at `at`; `took(n)` records progress for resumption. */
async function fill(name: string, a: HttpAnswer, into: Uint8Array, at: number, want: number, progress: (bytes?: number) => void, took: (n: number) => void): Promise<void> {
  let n = 0;
  let complete = false;
  try {
    for await (const chunk of a.body()) {
      if (n + chunk.byteLength > want) {
        throw new SourceError(`${name}: body longer than the ${want} bytes of its Content-Range`);
      }
      into.set(chunk, at + n);
      n += chunk.byteLength;
      took(chunk.byteLength);
      progress(chunk.byteLength);
    }
    complete = true;
  } finally {
    if (!complete) await a.discard();
  }
  if (n < want) throw new RetryableError(`body ended after ${n} of ${want} bytes`);
}

/** Reads a whole 200 body (at most `limit` bytes, else an error naming the server's lack of Range support). */
async function readWhole(name: string, a: HttpAnswer, limit: number, progress: (bytes?: number) => void): Promise<Uint8Array> {
  const declared = contentLength(a);
  const tooBig = () =>
    new SourceError(`${name}: server ignores Range requests (answered 200 with the whole file) and the file is over smallFileBytes (${limit} bytes); use a server or CDN that supports ranges`);
  if (declared !== undefined && declared > limit) {
    await a.discard();
    throw tooBig();
  }
  let buf = new Uint8Array(declared ?? 64 * 1024);
  let n = 0;
  let complete = false;
  try {
    for await (const chunk of a.body()) {
      if (n + chunk.byteLength > limit) throw tooBig();
      if (n + chunk.byteLength > buf.byteLength) {
        if (declared !== undefined) throw new SourceError(`${name}: body longer than its Content-Length ${declared}`);
        const grown = new Uint8Array(Math.min(limit, Math.max(buf.byteLength * 2, n + chunk.byteLength)));
        grown.set(buf.subarray(0, n));
        buf = grown;
      }
      buf.set(chunk, n);
      n += chunk.byteLength;
      progress(chunk.byteLength);
    }
    complete = true;
  } finally {
    if (!complete) await a.discard();
  }
  if (declared !== undefined && n < declared) throw new RetryableError(`body ended after ${n} of ${declared} bytes`);
  return n === buf.byteLength ? buf : buf.slice(0, n);
}

/** Open: `GET Range: bytes=0-0` tells the size (Content-Range) and the validator to pin. */
async function probe(name: string, transport: HttpTransport, o: Resolved): Promise<Opened> {
  return attempt(name, 'open', o, async (signal, progress) => {
    const a = await transport.get({ ...o.headers, range: 'bytes=0-0', 'accept-encoding': 'identity' }, signal);
    progress();
    const pin = validatorOf(a);
    if (a.status === 206) {
      const raw = a.header('content-range');
      const cr = parseContentRange(raw);
      if (raw === undefined) {
        await a.discard();
        throw noContentRange(name, a);
      }
      if (!cr || cr.start !== 0 || cr.end !== 0 || cr.size === undefined) {
        await a.discard();
        throw new SourceError(`${name}: cannot learn the size from Content-Range ${JSON.stringify(raw)} (asked for bytes=0-0)`);
      }
      const enc = encodingError(name, a);
      if (enc) {
        await a.discard();
        throw enc;
      }
      await fill(name, a, new Uint8Array(1), 0, 1, progress, () => {});
      return { size: cr.size, pin };
    }
    if (a.status === 200) {
      const whole = await readWhole(name, a, o.smallFileBytes, progress);
      return { size: whole.byteLength, pin, whole };
    }
    if (a.status === 416) {
      const cr = parseContentRange(a.header('content-range'));
      await a.discard();
      if (cr?.size === 0) return { size: 0, pin }; // an empty file has no byte 0
    }
    throw await statusError(name, a);
  });
}

// ---------------------------------------------------------------- multi-range

/** The boundary of a `multipart/byteranges` Content-Type, or undefined for anything else. */
export function byterangesBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^\s*multipart\/byteranges\s*;/i.test(contentType)) return undefined;
  const m = /;\s*boundary\s*=\s*(?:"([^"]{1,200})"|([^;\s"]{1,200}))/i.exec(contentType);
  return m ? (m[1] ?? m[2]) : undefined;
}

/** The ranges of one readRanges call (copies of the caller's numbers) and how much of each has landed. */
class RangeSet {
  readonly n: number;
  readonly off: Float64Array;
  readonly len: Float64Array;
  readonly at: Float64Array;
  /** Bytes of range i filled from its start on (a contiguous prefix). */
  readonly got: Float64Array;

  constructor(offsets: ArrayLike<number>, lengths: ArrayLike<number>, ats: ArrayLike<number>, from: number, to: number) {
    const n = Math.max(0, to - from);
    this.n = n;
    this.off = new Float64Array(n);
    this.len = new Float64Array(n);
    this.at = new Float64Array(n);
    this.got = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      this.off[i] = offsets[from + i]!;
      this.len[i] = lengths[from + i]!;
      this.at[i] = ats[from + i]!;
    }
  }

  /** Ranges not complete start over (a retry asks for them whole). */
  reset(): void {
    for (let i = 0; i < this.n; i++) if (this.got[i]! < this.len[i]!) this.got[i] = 0;
  }

  complete(): boolean {
    for (let i = 0; i < this.n; i++) if (this.got[i]! < this.len[i]!) return false;
    return true;
  }

  /** `bytes=a-b,c-d,...` of the ranges still missing; '' when none is. */
  header(): string {
    let s = '';
    for (let i = 0; i < this.n; i++) {
      if (this.got[i]! >= this.len[i]!) continue;
      const a = this.off[i]!;
      s += `${s ? ',' : 'bytes='}${a}-${a + this.len[i]! - 1}`;
    }
    return s;
  }

  /** Copies the bytes of `chunk` (file offset `pos`) that fall in the ranges into `into`; bytes between ranges are dropped. */
  scatter(pos: number, chunk: Uint8Array, into: Uint8Array): void {
    const end = pos + chunk.byteLength;
    // First range that ends after pos.
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.off[mid]! + this.len[mid]! <= pos) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.n && this.off[i]! < end; i++) {
      const off = this.off[i]!;
      const s = Math.max(pos, off);
      const e = Math.min(end, off + this.len[i]!);
      if (e <= s) continue;
      into.set(chunk.subarray(s - pos, e - pos), this.at[i]! + (s - off));
      // Only a contiguous prefix counts: a part out of order or overlapping leaves a hole that is read again.
      if (s <= off + this.got[i]! && e > off + this.got[i]!) this.got[i] = e - off;
    }
  }
}

/** A multipart/byteranges answer that does not parse: the source stops sending multi-range requests. */
export class MalformedMultipart extends SourceError {}

/**
 * Streams a multipart/byteranges body (RFC 9110 14.6): each part's
 * Content-Range is checked against the file, its bytes handed to `put`
 * with their file offset. Headers are decoded a bounded slice at a time;
 * part bodies are never copied.
 */
export class Byteranges {
  private head = '';
  private left = 0;
  private pos = 0;
  private lastEnd = -1;
  private closed = false;
  /** Parts in ascending order, none overlapping. */
  ordered = true;
  parts = 0;

  constructor(
    private readonly name: string,
    private readonly boundary: string,
    private readonly size: number,
    private readonly put: (pos: number, chunk: Uint8Array) => void,
  ) {}

  push(chunk: Uint8Array): void {
    const n = chunk.byteLength;
    let i = 0;
    while (i < n) {
      if (this.left > 0) {
        const k = Math.min(this.left, n - i);
        this.put(this.pos, chunk.subarray(i, i + k));
        this.pos += k;
        this.left -= k;
        i += k;
        continue;
      }
      if (this.closed) return; // the epilogue
      const take = Math.min(n - i, 1024);
      const before = this.head.length;
      this.head += String.fromCharCode.apply(null, chunk.subarray(i, i + take) as unknown as number[]);
      const used = this.header();
      if (used < 0) {
        if (this.head.length > 16384) throw new MalformedMultipart(`${this.name}: malformed multipart/byteranges answer (a part header over 16 KiB)`);
        i += take;
      } else {
        i += used - before;
        this.head = '';
      }
    }
  }

  /** Parses the part header (or closing delimiter) at the start of `head`: characters used, or -1 when more are needed. */
  private header(): number {
    const h = this.head;
    let s = 0;
    while (h.startsWith('\r\n', s)) s += 2;
    const close = `--${this.boundary}--`;
    const rest = h.slice(s, s + close.length);
    if (rest === close) {
      this.closed = true;
      return h.length;
    }
    if (close.startsWith(rest)) return -1;
    const e = h.indexOf('\r\n\r\n', s);
    if (e < 0) return -1;
    const lines = h.slice(s, e).split('\r\n');
    if (lines[0]!.trimEnd() !== `--${this.boundary}`) throw new MalformedMultipart(`${this.name}: malformed multipart/byteranges answer (expected the boundary, got ${JSON.stringify(lines[0]!.slice(0, 80))})`);
    let cr: ContentRange | undefined;
    for (let l = 1; l < lines.length; l++) {
      const line = lines[l]!;
      const c = line.indexOf(':');
      if (c > 0 && line.slice(0, c).trim().toLowerCase() === 'content-range') cr = parseContentRange(line.slice(c + 1));
    }
    if (!cr || cr.start === undefined) throw new MalformedMultipart(`${this.name}: multipart/byteranges part without a valid Content-Range`);
    if (cr.size !== undefined && cr.size !== this.size) throw new SourceError(`${this.name}: file changed on the server since it was opened (size ${this.size} -> ${cr.size}); reopen the model`);
    if (cr.start <= this.lastEnd) this.ordered = false;
    this.lastEnd = cr.end!;
    this.pos = cr.start;
    this.left = cr.end! - cr.start + 1;
    this.parts++;
    return e + 4;
  }

  /** The body ended: a part cut short is a truncated answer (retried). */
  finish(): void {
    if (this.left > 0) throw new RetryableError(`multipart body ended inside a part (${this.left} bytes missing)`);
  }

  /** Whether the answer carried every range asked for, in order. */
  asked(r: { complete(): boolean }): boolean {
    return this.ordered && this.parts > 0 && r.complete();
  }
}

/** Streams a single-part 206 body of `want` bytes starting at file offset `start` into `put`. */
async function streamPart(name: string, a: HttpAnswer, start: number, want: number, put: (pos: number, chunk: Uint8Array) => void): Promise<void> {
  let n = 0;
  let complete = false;
  try {
    for await (const chunk of a.body()) {
      if (n + chunk.byteLength > want) throw new SourceError(`${name}: body longer than the ${want} bytes of its Content-Range`);
      put(start + n, chunk);
      n += chunk.byteLength;
    }
    complete = true;
  } finally {
    if (!complete) await a.discard();
  }
}
