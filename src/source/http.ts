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
import { HTTP_HINTS, HttpRangeSource, headersFor, isStaleRedirectStatus, type HttpAnswer, type HttpOptions, type HttpTransport } from './http-common.js';
import type { Source } from './types.js';

export { HTTP_HINTS, parseContentRange, type HttpOptions, type RetryEvent } from './http-common.js';

export interface HttpSourceOptions extends HttpOptions {
  /** The fetch to use (a wrapped or polyfilled one). Default: globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
  /** Extra RequestInit fields (credentials, mode, cache, ...). */
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

  constructor(
    private readonly url: URL,
    private readonly fetchImpl: typeof globalThis.fetch,
    private readonly init: HttpSourceOptions['init'],
    private readonly mirrors: URL[] = [],
  ) {
    this.current = url;
  }

  async get(headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer> {
    const k = this.mirrors.length ? this.turn++ % (this.mirrors.length + 1) : 0;
    // A mirror is the caller's own choice: its headers go as they are, redirects are fetch's.
    if (k > 0) return new FetchAnswer(await this.fetchImpl(this.mirrors[k - 1]!.href, { ...this.init, method: 'GET', headers, signal }));
    const target = this.current;
    const res = await this.fetchImpl(target.href, { ...this.init, method: 'GET', headers: headersFor(headers, this.url, target), signal });
    if (target !== this.url && isStaleRedirectStatus(res.status)) {
      await new FetchAnswer(res).discard();
      this.current = this.url;
      return this.get(headers, signal);
    }
    if (res.redirected && /^https?:/i.test(res.url)) this.current = new URL(res.url);
    return new FetchAnswer(res);
  }

  async close(): Promise<void> {}
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
      const e = perf.getEntriesByName(href, 'resource').at(-1) as PerformanceResourceTiming | undefined;
      if (e) return e.nextHopProtocol || undefined;
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
   * the probe went over HTTP/2 or 3, 6 per origin over HTTP/1.1 (Resource
   * Timing tells which), else 8.
   * `mirrors` share the reads in turn (the probe goes to `url`).
   */
  static async open(url: string | URL, options: HttpSourceOptions = {}): Promise<HttpSource> {
    const u = parseUrl(url);
    const fetchImpl = options.fetch ?? globalThis.fetch;
    const transport = new FetchTransport(u, fetchImpl.bind(globalThis), options.init, (options.mirrors ?? []).map(parseUrl));
    const parallel = options.connections ?? HTTP_HINTS.parallel;
    if (!Number.isInteger(parallel) || parallel < 1) throw new SourceError(`connections must be an integer >= 1, got ${parallel}`);
    const args = await HttpRangeSource.connect(displayUrl(u), transport, options, { ...HTTP_HINTS, parallel });
    const protocol = await protocolOf([u.href, transport.target.href]);
    if (options.connections === undefined && options.hints?.parallel === undefined) {
      // HTTP/1.1 in a browser: as many requests as it opens connections (6 per origin), so the
      // planner merges for the requests that really go out together instead of queueing some
      if (protocol === 'h2' || protocol === 'h3') args[4] = { ...args[4], parallel: MULTIPLEXED_CONNECTIONS };
      else if (protocol === 'http/1.1') args[4] = { ...args[4], parallel: BROWSER_H1_CONNECTIONS * (1 + (options.mirrors?.length ?? 0)) };
    }
    const source = new HttpSource(...args);
    source.protocol = protocol;
    return source;
  }

  /** The protocol the open probe went over ('h2', 'h3', 'http/1.1'), where the runtime tells it (Resource Timing). */
  protocol: string | undefined;
}

const isHttp = (input: string | URL) => (typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:');

/** An opener for registerSourceOpener with fixed options (e.g. an authorization header). */
export function createHttpOpener(options: HttpSourceOptions = {}): SourceOpener {
  return async (input: string | URL, open): Promise<Source | undefined> => (isHttp(input) ? HttpSource.open(input, { ...options, ...open?.http }) : undefined);
}

/** Opens `http:` and `https:` URLs (strings or URL objects) with fetch; other inputs are left to other openers. */
export const httpOpener: SourceOpener = createHttpOpener();
