/**
 * HTTP range source for Node on an undici Pool: keep-alive connections, no
 * HTTP/1.1 pipelining (a slow range must not hold up the ones queued behind
 * it), HTTP/2 when an https server offers it (ALPN; then several streams per
 * connection), the body read chunk by chunk into the caller's buffer. Same
 * protocol as the fetch source (http-common.ts); only the transport differs.
 *
 * The pool opens connections as requests need them, up to `connections`
 * (default 64): enough requests in flight to cover a CDN's delay x
 * bandwidth (20 ms x 200 MB/s = 4 MB, i.e. 64 reads of 64 KB).
 */
import type { TLSSocket } from 'node:tls';
import { Client, Pool, buildConnector } from 'undici';
import type { SourceOpener } from '../model.js';
import { SourceError } from '../errors.js';
import { HTTP_HINTS, HttpRangeSource, headersFor, isStaleRedirectStatus, type HttpAnswer, type HttpOptions, type HttpTransport } from './http-common.js';
import { displayUrl, parseUrl } from './http.js';
import type { Source } from './types.js';

export interface NodeHttpSourceOptions extends HttpOptions {
  /**
   * https: certificates to trust (PEM), e.g. a test's self-signed one. They
   * replace Node's bundled CAs for this source only; verification stays on.
   */
  ca?: string | Uint8Array | (string | Uint8Array)[];
  /** https: offer HTTP/2 (ALPN) and use it when the server picks it. Default true. */
  allowH2?: boolean;
  /** HTTP/2: streams per connection (the pool then opens connections / streams connections). Default 8. */
  h2Streams?: number;
}

/** Requests in flight by default (undici opens connections only as they are needed). */
export const NODE_CONNECTIONS = 64;

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

/** What PoolTransport asks of its connections: undici's Pool, or SpreadPool for HTTP/2. */
interface Requester {
  request(options: Parameters<Pool['request']>[0]): Promise<Response>;
  close(): Promise<void>;
}

/**
 * HTTP/2 over `n` connections, each request on the one with the fewest open
 * streams. undici's Pool fills one connection's streams before opening the
 * next, so a few requests in flight would share one connection, which a
 * CDN's per-connection bandwidth limit punishes.
 */
class SpreadPool implements Requester {
  private readonly clients: Client[];
  private readonly open: Int32Array;

  constructor(origin: string, n: number, options: Client.Options) {
    this.clients = Array.from({ length: n }, () => new Client(origin, options));
    this.open = new Int32Array(n);
  }

  async request(options: Parameters<Pool['request']>[0]): Promise<Response> {
    const open = this.open;
    let i = 0;
    for (let j = 1; j < open.length; j++) if (open[j]! < open[i]!) i = j;
    open[i]!++;
    let res: Response;
    try {
      res = await this.clients[i]!.request(options);
    } catch (e) {
      open[i]!--;
      throw e;
    }
    // The stream is open until its body ends or is destroyed.
    res.body.once('close', () => open[i]!--);
    return res;
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }
}

class PoolTransport implements HttpTransport {
  private pool: Requester;
  /** Where requests go: the URL, or the target it last redirected to. */
  private current: URL;
  /** The server chose HTTP/2 (ALPN) on a connection of the current pool. */
  h2 = false;
  /** The current pool multiplexes (pipelining = streams per connection). */
  private h2Pool = false;

  constructor(
    private readonly url: URL,
    private readonly connections: number,
    private readonly tls: { ca?: NodeHttpSourceOptions['ca']; allowH2: boolean; h2Streams: number },
  ) {
    this.current = url;
    this.pool = this.newPool(url);
  }

  private newPool(url: URL): Requester {
    const { allowH2, h2Streams, ca } = this.tls;
    if (url.protocol !== 'https:') return new Pool(url.origin, { connections: this.connections, pipelining: 1 });
    const base = buildConnector({ allowH2, ...(ca ? { ca: ca as string | Buffer | (string | Buffer)[] } : {}) });
    const connect: buildConnector.connector = (opts, cb) =>
      base(opts, (err, socket) => {
        if (!err && (socket as TLSSocket | null)?.alpnProtocol === 'h2') this.h2 = true;
        (cb as (e: Error | null, s: typeof socket) => void)(err, socket);
      });
    // HTTP/2: `pipelining` is the streams one connection carries (undici); HTTP/1.1 stays unpipelined.
    const streams = this.h2Pool ? h2Streams : 1;
    // Browser-sized HTTP/2 windows (Chromium: 6 MB per stream, 15 MB per connection): undici's 256/512 KB would stall a stream every round trip.
    const options = { pipelining: streams, allowH2, connect, initialWindowSize: 4 << 20, connectionWindowSize: 16 << 20 };
    const n = Math.ceil(this.connections / streams);
    return this.h2Pool ? new SpreadPool(url.origin, n, options) : new Pool(url.origin, { connections: n, ...options });
  }

  /** After the first answer: a server that chose HTTP/2 gets a pool that multiplexes. */
  useH2IfOffered(): void {
    if (!this.h2 || this.h2Pool || this.tls.h2Streams <= 1) return;
    this.h2Pool = true;
    const old = this.pool;
    this.pool = this.newPool(this.current);
    void old.close().catch(() => {});
  }

  private retarget(next: URL): void {
    if (next.origin !== this.current.origin) {
      const old = this.pool;
      this.h2 = this.h2Pool = false;
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
    const connections = options.connections ?? NODE_CONNECTIONS;
    if (!Number.isInteger(connections) || connections < 1) throw new SourceError(`connections must be an integer >= 1, got ${connections}`);
    const h2Streams = options.h2Streams ?? 8;
    if (!Number.isInteger(h2Streams) || h2Streams < 1) throw new SourceError(`h2Streams must be an integer >= 1, got ${h2Streams}`);
    const transport = new PoolTransport(u, connections, { ca: options.ca, allowH2: options.allowH2 ?? true, h2Streams });
    const source = new NodeHttpSource(...(await HttpRangeSource.connect(displayUrl(u), transport, options, { ...HTTP_HINTS, parallel: connections })));
    transport.useH2IfOffered();
    source.transportInfo = transport;
    return source;
  }

  private transportInfo: PoolTransport | undefined;

  /** The protocol the server chose: 'h2' or 'http/1.1'. */
  get protocol(): 'h2' | 'http/1.1' {
    return this.transportInfo?.h2 ? 'h2' : 'http/1.1';
  }
}

const isHttp = (input: string | URL) => (typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:');

/** An opener for registerSourceOpener with fixed options (headers, connections, ...). */
export function createNodeHttpOpener(options: NodeHttpSourceOptions = {}): SourceOpener {
  return async (input: string | URL, open): Promise<Source | undefined> => (isHttp(input) ? NodeHttpSource.open(input, { ...options, ...open?.http }) : undefined);
}

/** Opens `http:` and `https:` URLs with undici (Node). */
export const nodeHttpOpener: SourceOpener = createNodeHttpOpener();
