/**
 * HTTP range source for Node on an undici Pool: keep-alive connections, no
 * pipelining (a slow range must not hold up the ones queued behind it), the
 * body read chunk by chunk into the caller's buffer. Same protocol as the
 * fetch source (http-common.ts); only the transport differs.
 */
import { Pool } from 'undici';
import type { SourceOpener } from '../model.js';
import { SourceError } from '../errors.js';
import { HTTP_HINTS, HttpRangeSource, headersFor, isStaleRedirectStatus, type HttpAnswer, type HttpOptions, type HttpTransport } from './http-common.js';
import { displayUrl, parseUrl } from './http.js';
import type { Source } from './types.js';

export interface NodeHttpSourceOptions extends HttpOptions {
  /** Keep-alive connections to the server (and the default `hints.parallel`). Default 8. */
  connections?: number;
}

const MAX_REDIRECTS = 5;

type Response = Awaited<ReturnType<Pool['request']>>;

class UndiciAnswer implements HttpAnswer {
  constructor(private readonly res: Response) {}

  get status(): number {
    return this.res.statusCode;
  }

  header(name: string): string | undefined {
    const v = this.res.headers[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }

  async *body(): AsyncIterable<Uint8Array> {
    for await (const chunk of this.res.body) yield chunk as Uint8Array;
  }

  async discard(): Promise<void> {
    try {
      // Reads a short remainder to keep the connection; destroys it otherwise.
      await this.res.body.dump({ limit: 64 * 1024 });
    } catch {
      // already destroyed
    }
  }
}

class PoolTransport implements HttpTransport {
  private pool: Pool;
  /** Where requests go: the URL, or the target it last redirected to. */
  private current: URL;

  constructor(
    private readonly url: URL,
    private readonly connections: number,
  ) {
    this.current = url;
    this.pool = this.newPool(url);
  }

  private newPool(url: URL): Pool {
    return new Pool(url.origin, { connections: this.connections, pipelining: 1 });
  }

  private retarget(next: URL): void {
    if (next.origin !== this.current.origin) {
      const old = this.pool;
      this.pool = this.newPool(next);
      void old.close().catch(() => {});
    }
    this.current = next;
  }

  async get(headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer> {
    let wentBack = false;
    for (let hop = 0; ; hop++) {
      const target = this.current;
      const res = await this.pool.request({ method: 'GET', path: target.pathname + target.search, headers: headersFor(headers, this.url, target), signal });
      const location = res.headers.location;
      if (res.statusCode >= 300 && res.statusCode < 400 && res.statusCode !== 304 && typeof location === 'string' && hop < MAX_REDIRECTS) {
        await new UndiciAnswer(res).discard();
        const next = new URL(location, target);
        if (next.protocol !== 'http:' && next.protocol !== 'https:') throw new SourceError(`${displayUrl(target)}: redirect to unsupported ${next.protocol} URL`);
        this.retarget(next);
        continue;
      }
      if (target.href !== this.url.href && isStaleRedirectStatus(res.statusCode) && !wentBack) {
        await new UndiciAnswer(res).discard();
        wentBack = true;
        this.retarget(this.url);
        continue;
      }
      return new UndiciAnswer(res);
    }
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

export class NodeHttpSource extends HttpRangeSource {
  /**
   * Opens `url` with one `GET Range: bytes=0-0` (size from Content-Range,
   * ETag or Last-Modified pinned and sent as If-Range with every read).
   */
  static async open(url: string | URL, options: NodeHttpSourceOptions = {}): Promise<NodeHttpSource> {
    const u = parseUrl(url);
    const connections = options.connections ?? 8;
    if (!Number.isInteger(connections) || connections < 1) throw new SourceError(`connections must be an integer >= 1, got ${connections}`);
    const transport = new PoolTransport(u, connections);
    return new NodeHttpSource(...(await HttpRangeSource.connect(displayUrl(u), transport, options, { ...HTTP_HINTS, parallel: connections })));
  }
}

const isHttp = (input: string | URL) => (typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:');

/** An opener for registerSourceOpener with fixed options (headers, connections, ...). */
export function createNodeHttpOpener(options: NodeHttpSourceOptions = {}): SourceOpener {
  return async (input: string | URL, open): Promise<Source | undefined> => (isHttp(input) ? NodeHttpSource.open(input, { ...options, ...open?.http }) : undefined);
}

/** Opens `http:` and `https:` URLs with undici (Node). */
export const nodeHttpOpener: SourceOpener = createNodeHttpOpener();
