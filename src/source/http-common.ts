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
  };
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
  private readonly pin: Validator;
  private whole: Uint8Array | undefined;
  private closed = false;

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
      const headers: Record<string, string> = { ...this.o.headers, range: formatRange(start, end), 'accept-encoding': 'identity' };
      const ifRange = ifRangeOf(this.pin);
      if (ifRange) headers['if-range'] = ifRange;
      const a = await this.transport.get(headers, signal);
      progress();
      if (a.status === 206) {
        const bad = this.check206(a, start, end);
        if (bad) {
          await a.discard();
          throw bad;
        }
        await fill(this.name, a, into, got, end - start + 1, progress, (n) => (got += n));
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
  }

  /** Why a 206 answer for [start, end] cannot be used, or undefined. */
  private check206(a: HttpAnswer, start: number, end: number): Error | undefined {
    const raw = a.header('content-range');
    const cr = parseContentRange(raw);
    if (raw === undefined) {
      return new SourceError(`${this.name}: 206 answer without Content-Range (cross-origin servers must send Access-Control-Expose-Headers: Content-Range, ETag)`);
    }
    if (!cr || cr.start === undefined) return new SourceError(`${this.name}: malformed Content-Range ${JSON.stringify(raw)}`);
    const changed = contradicts(this.pin, validatorOf(a)) ?? (cr.size !== undefined && cr.size !== this.size ? `size ${this.size} -> ${cr.size}` : undefined);
    if (changed) return this.changedError(changed);
    if (cr.start !== start || cr.end !== end) {
      return new SourceError(`${this.name}: server sent Content-Range ${JSON.stringify(raw)} for Range: bytes=${start}-${end}`);
    }
    // Checked before the length: an encoded body's length is the encoding's, which would hide the cause.
    const enc = a.header('content-encoding')?.trim().toLowerCase();
    if (enc && enc !== 'identity') return new SourceError(`${this.name}: server encoded a range answer (Content-Encoding: ${enc}) although asked for identity; disable compression for .flm files`);
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
        throw new SourceError(`${name}: 206 answer without Content-Range (cross-origin servers must send Access-Control-Expose-Headers: Content-Range, ETag)`);
      }
      if (!cr || cr.start !== 0 || cr.end !== 0 || cr.size === undefined) {
        await a.discard();
        throw new SourceError(`${name}: cannot learn the size from Content-Range ${JSON.stringify(raw)} (asked for bytes=0-0)`);
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
