/**
 * HTTP range source on `fetch`: browsers, Deno, edge workers and Node alike
 * (no `node:` import, no undici). The protocol (size and validator at open,
 * If-Range, strict 206 checks, retries) lives in http-common.ts.
 *
 * Cross-origin use in browsers needs the server to allow the `Range` and
 * `If-Range` request headers and to expose `Content-Range` and `ETag`
 * (Access-Control-Expose-Headers), or sizes and validators cannot be read.
 */
import type { SourceOpener } from '../model.js';
import { SourceError } from '../errors.js';
import { HTTP_HINTS, HttpRangeSource, contradicts, headersFor, isStaleRedirectStatus, parseContentRange, validatorOf, type HttpAnswer, type HttpOptions, type HttpTransport } from './http-common.js';
import type { Source } from './types.js';

export { HTTP_HINTS, parseContentRange, type HttpOptions, type RetryEvent } from './http-common.js';

export interface HttpSourceOptions extends HttpOptions {
  /** The fetch to use (a wrapped or polyfilled one). Default: globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
  /**
   * Extra RequestInit fields (credentials, mode, cache, ...). Setting
   * `credentials` turns off the second connection pool (see `open`).
   */
  init?: Omit<RequestInit, 'headers' | 'signal' | 'method' | 'body'>;
  /**
   * Other URLs of the same file (a CDN's other hostnames): reads go round
   * the URL and these in turn. A browser keeps one HTTP/2 connection per
   * origin, so N origins are N connections' worth of bandwidth where a CDN
   * paces each connection. Same bytes and validator required (If-Range
   * guards every read); cross-origin ones need CORS (Range and If-Range
   * allowed, Content-Range and ETag exposed). Chromium skips its preflight
   * cache for `init.cache: 'no-store'` (a preflight per read): keep the
   * default mode and have the server send Cache-Control: no-store.
   */
  mirrors?: (string | URL)[];
}

class FetchAnswer implements HttpAnswer {
  constructor(private readonly res: Response) {}

  get status(): number {
    return this.res.status;
  }

  header(name: string): string | undefined {
    return this.res.headers.get(name) ?? undefined;
  }

  async *body(): AsyncIterable<Uint8Array> {
    if (!this.res.body) return;
    const reader = this.res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        yield value;
      }
    } finally {
      reader.releaseLock();
    }
  }

  async discard(): Promise<void> {
    try {
      await this.res.body?.cancel();
    } catch {
      // already errored or cancelled
    }
  }
}

class FetchTransport implements HttpTransport {
  /** Where requests go: the URL, or the target it last redirected to. */
  private current: URL;

  get target(): URL {
    return this.current;
  }

  /** Requests sent so far: the round over the URL and its mirrors. */
  private turn = 0;

  /**
   * Per target (the URL, then each mirror): the credentials modes its reads
   * alternate between, each a connection pool of its own in a browser;
   * empty: the init's own mode only.
   */
  pools: RequestCredentials[][] = [];

  constructor(
    private readonly url: URL,
    private readonly fetchImpl: typeof globalThis.fetch,
    private readonly init: HttpSourceOptions['init'],
    private readonly mirrors: URL[] = [],
  ) {
    this.current = url;
  }

  async get(headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer> {
    const turn = this.turn++;
    const targets = this.mirrors.length + 1;
    const k = turn % targets;
    // Each target's turns alternate over its pools, so every pool of every origin gets its share.
    const modes = this.pools[k];
    const init = modes?.length ? { ...this.init, credentials: modes[Math.floor(turn / targets) % modes.length] } : this.init;
    // A mirror is the caller's own choice: its headers go as they are, redirects are fetch's.
    if (k > 0) return new FetchAnswer(await this.fetchImpl(this.mirrors[k - 1]!.href, { ...init, method: 'GET', headers, signal }));
    const target = this.current;
    const res = await this.fetchImpl(target.href, { ...init, method: 'GET', headers: headersFor(headers, this.url, target), signal });
    if (target !== this.url && isStaleRedirectStatus(res.status)) {
      await new FetchAnswer(res).discard();
      this.current = this.url;
      this.turn--; // the retry takes this turn's place
      return this.get(headers, signal);
    }
    if (res.redirected && /^https?:/i.test(res.url)) this.current = new URL(res.url);
    return new FetchAnswer(res);
  }

  async close(): Promise<void> {}
}

/**
 * The credentials mode that puts a request to `target` in the other
 * connection pool from the default ('same-origin'): a browser keys its
 * connections on whether a request carries credentials (Fetch, "obtain a
 * connection"). Same origin: 'omit'; cross-origin: 'include', which the
 * server must allow (Access-Control-Allow-Credentials). Undefined outside
 * a page or worker (no `location`: Node, Deno, where fetch has no such pools).
 */
function otherPoolMode(target: URL): RequestCredentials | undefined {
  const here = (globalThis as { location?: { origin?: string } }).location?.origin;
  if (!here || here === 'null') return undefined;
  return target.origin === here ? 'omit' : 'include';
}

/** What a server answered a one-byte read with the other credentials mode: its size and validator, or undefined (refused, failed). */
interface OtherPoolAnswer {
  mode: RequestCredentials;
  size: number | undefined;
  validator: ReturnType<typeof validatorOf>;
}

/**
 * Asks `target` for byte 0 with the other credentials mode (sent alongside
 * the open probe, so it costs no round trip of its own). A cookie-guarded
 * file refused without cookies, or a CDN whose CORS refuses credentials (a
 * network error here), keeps its reads in the one pool.
 */
async function probeOtherPool(fetchImpl: typeof globalThis.fetch, target: URL, init: RequestInit | undefined): Promise<OtherPoolAnswer | undefined> {
  const mode = otherPoolMode(target);
  if (!mode) return undefined;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10_000);
  try {
    const res = await fetchImpl(target.href, { ...init, credentials: mode, method: 'GET', headers: { range: 'bytes=0-0', 'accept-encoding': 'identity' }, signal: ctl.signal });
    const a = new FetchAnswer(res);
    const answer = res.status === 206 ? { mode, size: parseContentRange(a.header('content-range'))?.size, validator: validatorOf(a) } : undefined;
    await a.discard();
    return answer;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

/** An http(s) URL, or a SourceError. */
export function parseUrl(url: string | URL): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch (e) {
    throw new SourceError(`not a valid URL: ${String(url)}`, { cause: e });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new SourceError(`${displayUrl(u)}: not an http(s) URL`);
  return u;
}

/** A URL for messages: no credentials, no query string (signed URLs carry secrets there). */
export function displayUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}${url.search ? '?…' : ''}`;
}

/** Requests in flight by default where the probe went over HTTP/2 or 3 (streams, not the 6 connections of HTTP/1.1): Node's pool size. */
export const MULTIPLEXED_CONNECTIONS = 64;

/** Connections a browser opens per HTTP/1.1 origin (Chromium, Firefox and Safari: 6). */
export const BROWSER_H1_CONNECTIONS = 6;

/**
 * The protocol a request for `hrefs` went over, as Resource Timing tells it
 * (`nextHopProtocol`: 'h2', 'h3', 'http/1.1'), or undefined where the
 * runtime keeps no entry (Deno, a full buffer, a cross-origin server that
 * hides it). Browsers add the entry a task after the body ends.
 */
async function protocolOf(hrefs: string[]): Promise<string | undefined> {
  const perf = globalThis.performance as Performance | undefined;
  if (typeof perf?.getEntriesByName !== 'function' || typeof globalThis.PerformanceResourceTiming !== 'function') return undefined;
  // The entry comes with the loader's completion message, which may trail the body's end: a few short waits (50 ms at most).
  for (let tries = 0; tries < 10; tries++) {
    for (const href of hrefs) {
      // the newest entry that has a protocol (a probe of the second pool that CORS refused has none)
      const e = (perf.getEntriesByName(href, 'resource') as PerformanceResourceTiming[]).filter((x) => x.nextHopProtocol).at(-1);
      if (e) return e.nextHopProtocol;
    }
    await new Promise((r) => setTimeout(r, tries ? 5 : 0));
  }
  return undefined;
}

export class HttpSource extends HttpRangeSource {
  /**
   * Opens `url` with one `GET Range: bytes=0-0`: the size comes from
   * Content-Range, the ETag (else Last-Modified) is pinned as identity and
   * sent as If-Range with every read. Throws SourceError (AbortedError when
   * `signal` fires).
   *
   * Without `connections` (or `hints.parallel`): 64 requests in flight when
   * the probe went over HTTP/2 or 3, 6 per connection pool over HTTP/1.1
   * (Resource Timing tells which), else 8.
   * `mirrors` share the reads in turn (the probe goes to `url`).
   *
   * Two connection pools per origin, in browsers: a browser keeps apart the
   * connections of requests with and without credentials (cookies), so reads
   * alternate between the two modes: 2 HTTP/2 connections per origin instead
   * of 1, 12 HTTP/1.1 ones instead of 6, where a CDN paces each connection.
   * Each origin is probed first with the other mode and keeps one pool if it
   * answers differently (a file behind cookies, a cross-origin CDN that does
   * not allow credentials). `init.credentials` set: that mode only.
   */
  static async open(url: string | URL, options: HttpSourceOptions = {}): Promise<HttpSource> {
    const u = parseUrl(url);
    const fetchImpl = options.fetch ?? globalThis.fetch;
    const mirrors = (options.mirrors ?? []).map(parseUrl);
    const transport = new FetchTransport(u, fetchImpl.bind(globalThis), options.init, mirrors);
    const parallel = options.connections ?? HTTP_HINTS.parallel;
    if (!Number.isInteger(parallel) || parallel < 1) throw new SourceError(`connections must be an integer >= 1, got ${parallel}`);
    const others = options.init?.credentials === undefined ? [u, ...mirrors].map((t) => probeOtherPool(fetchImpl.bind(globalThis), t, options.init)) : [];
    const args = await HttpRangeSource.connect(displayUrl(u), transport, options, { ...HTTP_HINTS, parallel });
    const protocol = await protocolOf([u.href, transport.target.href]);
    const opened = args[3];
    // A pool is added where the other mode saw the same file: same size, a validator that agrees.
    const alike = (a: OtherPoolAnswer | undefined) => a !== undefined && a.size === opened.size && (a.validator.etag !== undefined || a.validator.lastModified !== undefined) && !contradicts(opened.pin, a.validator);
    if (!opened.whole && others.length) transport.pools = (await Promise.all(others)).map((a): RequestCredentials[] => (alike(a) ? ['same-origin', a!.mode] : []));
    const pools = transport.pools.reduce((n, m) => n + Math.max(1, m.length), 0) || 1 + mirrors.length;
    if (options.connections === undefined && options.hints?.parallel === undefined) {
      // HTTP/1.1 in a browser: as many requests as it opens connections (6 per pool), so the
      // planner merges for the requests that really go out together instead of queueing some
      if (protocol === 'h2' || protocol === 'h3') args[4] = { ...args[4], parallel: MULTIPLEXED_CONNECTIONS };
      else if (protocol === 'http/1.1') args[4] = { ...args[4], parallel: BROWSER_H1_CONNECTIONS * pools };
    }
    const source = new HttpSource(...args);
    source.protocol = protocol;
    source.connectionPools = pools;
    return source;
  }

  /** The protocol the open probe went over ('h2', 'h3', 'http/1.1'), where the runtime tells it (Resource Timing). */
  protocol: string | undefined;

  /** Connection pools the reads go round: one per origin (the URL and each mirror), two where both credentials modes answer alike (browsers). */
  connectionPools = 1;
}

const isHttp = (input: string | URL) => (typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:');

/** An opener for registerSourceOpener with fixed options (e.g. an authorization header). */
export function createHttpOpener(options: HttpSourceOptions = {}): SourceOpener {
  return async (input: string | URL, open): Promise<Source | undefined> => (isHttp(input) ? HttpSource.open(input, { ...options, ...open?.http }) : undefined);
}

/** Opens `http:` and `https:` URLs (strings or URL objects) with fetch; other inputs are left to other openers. */
export const httpOpener: SourceOpener = createHttpOpener();
