/**
 * HTTP range source for Node on an undici Pool: keep-alive connections, no
 * pipelining (a slow range must not hold up the ones queued behind it), the
 * body read chunk by chunk into the caller's buffer. Same protocol as the
 * fetch source (http-common.ts); only the transport differs.
 */
import { Pool } from 'undici';
import type { SourceOpener } from '../model.js';
import { SourceError } from '../errors.js';
import { HTTP_HINTS, HttpRangeSource, type HttpAnswer, type HttpOptions, type HttpTransport } from './http-common.js';
import { displayUrl } from './http.js';
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
  private url: URL;

  constructor(
    url: URL,
    private readonly connections: number,
  ) {
    this.url = url;
    this.pool = this.newPool(url);
  }

  private newPool(url: URL): Pool {
    return new Pool(url.origin, { connections: this.connections, pipelining: 1 });
  }

  /** Follows redirects (the first answer after open usually settles where the file lives) and stays there. */
  async get(headers: Record<string, string>, signal: AbortSignal): Promise<HttpAnswer> {
    for (let hop = 0; ; hop++) {
      const res = await this.pool.request({ method: 'GET', path: this.url.pathname + this.url.search, headers, signal });
      const location = res.headers.location;
      if (res.statusCode >= 300 && res.statusCode < 400 && res.statusCode !== 304 && typeof location === 'string' && hop < MAX_REDIRECTS) {
        await new UndiciAnswer(res).discard();
        const next = new URL(location, this.url);
        if (next.protocol !== 'http:' && next.protocol !== 'https:') throw new SourceError(`${displayUrl(this.url)}: redirect to unsupported ${next.protocol} URL`);
        if (next.origin !== this.url.origin) {
          const old = this.pool;
          this.pool = this.newPool(next);
          void old.close().catch(() => {});
          if (headers.authorization !== undefined) {
            headers = { ...headers };
            delete headers.authorization; // as fetch does: credentials do not follow a cross-origin redirect
          }
        }
        this.url = next;
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
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new SourceError(`${displayUrl(u)}: not an http(s) URL`);
    const connections = options.connections ?? 8;
    if (!Number.isInteger(connections) || connections < 1) throw new SourceError(`connections must be an integer >= 1, got ${connections}`);
    const transport = new PoolTransport(u, connections);
    return new NodeHttpSource(...(await HttpRangeSource.connect(displayUrl(u), transport, options, { ...HTTP_HINTS, parallel: connections })));
  }
}

const isHttp = (input: string | URL) => (typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:');

/** An opener for registerSourceOpener with fixed options (headers, connections, ...). */
export function createNodeHttpOpener(options: NodeHttpSourceOptions = {}): SourceOpener {
  return async (input: string | URL): Promise<Source | undefined> => (isHttp(input) ? NodeHttpSource.open(input, options) : undefined);
}

/** Opens `http:` and `https:` URLs with undici (Node). */
export const nodeHttpOpener: SourceOpener = createNodeHttpOpener();
