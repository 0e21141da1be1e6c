/**
 * `flashlm host DIR` (formerly `flashlm serve DIR`; `serve` is now the
 * OpenAI-compatible API server): a static file server for local development of the
 * browser build. What a model CDN and an isolated page need, and no more:
 * - single-range `Range` requests answered 206 with Content-Range (416 when
 *   unsatisfiable; several ranges get the whole file, as RFC 9110 allows),
 * - a strong ETag (size + mtime) and Last-Modified, `If-Range` (a range only
 *   if the file is unchanged), `If-None-Match` (304),
 * - COOP `same-origin` + COEP `require-corp` on every answer, so pages are
 *   cross-origin isolated (SharedArrayBuffer, precise timers), and
 *   CORP/CORS headers so other origins (and isolated pages) may read models,
 *   with Content-Range and ETag exposed to scripts,
 * - Content-Type by extension (application/wasm for streaming compilation).
 * Listens on 127.0.0.1 unless told otherwise. Symlinks are followed: a
 * folder of links to models and build outputs is a fine DIR.
 */
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';
import { untilStopped } from './terminal.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
};

/** Headers on every answer: isolation (COOP/COEP), embedding (CORP) and cross-origin reads (CORS). */
export const ISOLATION_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
  'cross-origin-resource-policy': 'cross-origin',
  'access-control-allow-origin': '*',
  'access-control-expose-headers': 'Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified',
});

export interface ServeRequest {
  method: string;
  path: string;
  range: string | undefined;
  status: number;
  bytes: number;
}

export interface StaticServerOptions {
  /** Called once per answered request (tests count range requests with it). */
  onRequest?: (r: ServeRequest) => void;
}

export interface StaticServer {
  readonly server: Server;
  readonly port: number;
  /** `http://host:port` */
  readonly origin: string;
  close(): Promise<void>;
}

/** A strong validator for a file version: size and modification time. */
export function etagOf(size: number, mtimeMs: number): string {
  return `"${size.toString(16)}-${Math.floor(mtimeMs * 1000).toString(16)}"`;
}

/** Parses one `bytes=` range against a size: [start, end] inclusive, 'unsatisfiable', or undefined (ignore the header). */
export function parseRange(header: string, size: number): [number, number] | 'unsatisfiable' | undefined {
  const m = /^bytes=(\d*)-(\d*)$/i.exec(header.trim());
  if (!m) return undefined; // several ranges or another unit: answer 200 with the whole file
  const [a, b] = [m[1]!, m[2]!];
  if (a === '' && b === '') return undefined;
  let start: number;
  let end: number;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return undefined; // invalid: ignored
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start >= size || end < start) return 'unsatisfiable';
  return [start, end];
}

function ifRangeMatches(value: string, etag: string, mtimeMs: number): boolean {
  const v = value.trim();
  if (v.startsWith('"') || v.startsWith('W/')) return v === etag; // strong comparison only
  const t = Date.parse(v);
  return !Number.isNaN(t) && Math.floor(mtimeMs / 1000) * 1000 === t;
}

function noneMatch(value: string, etag: string): boolean {
  return value.split(',').some((v) => {
    const s = v.trim();
    return s === '*' || s.replace(/^W\//, '') === etag;
  });
}

/** The file a URL path names under root, or undefined when it escapes root. */
function resolvePath(root: string, urlPath: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (decoded.includes('\0')) return undefined;
  const p = resolve(root, '.' + (decoded.startsWith('/') ? decoded : '/' + decoded));
  if (p !== root && !p.startsWith(root.endsWith(sep) ? root : root + sep)) return undefined;
  return p;
}

async function handle(root: string, req: IncomingMessage, res: ServerResponse, o: StaticServerOptions): Promise<void> {
  const method = req.method ?? 'GET';
  const url = new URL(req.url ?? '/', 'http://localhost');
  const range = req.headers.range;
  let bytes = 0;
  const done = (status: number) => o.onRequest?.({ method, path: url.pathname, range, status, bytes });
  for (const [k, v] of Object.entries(ISOLATION_HEADERS)) res.setHeader(k, v);

  if (method === 'OPTIONS') {
    res.writeHead(204, {
      'access-control-allow-methods': 'GET, HEAD, OPTIONS',
      'access-control-allow-headers': req.headers['access-control-request-headers'] ?? 'Range, If-Range, If-None-Match, Authorization',
      'access-control-max-age': '600',
    });
    res.end();
    return done(204);
  }
  if (method !== 'GET' && method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD, OPTIONS', 'content-type': 'text/plain' });
    res.end('method not allowed\n');
    return done(405);
  }
  const fail = (status: number, text: string) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    res.end(method === 'HEAD' ? undefined : text + '\n');
    done(status);
  };
  let path = resolvePath(root, url.pathname);
  if (!path) return fail(403, 'forbidden');
  let st;
  try {
    st = await stat(path);
    if (st.isDirectory()) {
      if (!url.pathname.endsWith('/')) {
        res.writeHead(301, { location: url.pathname + '/' + url.search });
        res.end();
        return done(301);
      }
      path = join(path, 'index.html');
      st = await stat(path);
    }
  } catch {
    return fail(404, 'not found');
  }
  if (!st.isFile()) return fail(404, 'not found');

  const size = st.size;
  const etag = etagOf(size, st.mtimeMs);
  const headers: Record<string, string> = {
    'content-type': TYPES[extname(path).toLowerCase()] ?? 'application/octet-stream',
    'accept-ranges': 'bytes',
    etag,
    'last-modified': new Date(st.mtimeMs).toUTCString(),
    'cache-control': 'no-cache',
  };
  const inm = req.headers['if-none-match'];
  if (inm && noneMatch(inm, etag) && !range) {
    res.writeHead(304, { etag, 'cache-control': 'no-cache' });
    res.end();
    return done(304);
  }
  let span: [number, number] | undefined;
  const ifRange = req.headers['if-range'] as string | undefined;
  if (range && (ifRange === undefined || ifRangeMatches(ifRange, etag, st.mtimeMs))) {
    const r = parseRange(range, size);
    if (r === 'unsatisfiable') {
      res.writeHead(416, { ...headers, 'content-range': `bytes */${size}`, 'content-length': '0' });
      res.end();
      return done(416);
    }
    span = r;
  }
  const [start, end] = span ?? [0, size - 1];
  const length = size === 0 ? 0 : end - start + 1;
  const status = span ? 206 : 200;
  if (span) headers['content-range'] = `bytes ${start}-${end}/${size}`;
  headers['content-length'] = String(length);
  res.writeHead(status, headers);
  if (method === 'HEAD' || length === 0) {
    res.end();
    return done(status);
  }
  await new Promise<void>((resolveP) => {
    const stream = createReadStream(path, { start, end });
    stream.on('data', (chunk) => (bytes += chunk.length));
    stream.on('error', () => {
      res.destroy();
      resolveP();
    });
    res.on('close', () => {
      stream.destroy();
      resolveP();
    });
    stream.pipe(res);
  });
  done(status);
}

/** Starts the server; resolves once it listens. Port 0 picks a free one. */
export async function startStaticServer(dir: string, options: StaticServerOptions & { port?: number; host?: string } = {}): Promise<StaticServer> {
  const root = await realpath(resolve(dir));
  if (!(await stat(root)).isDirectory()) throw new Error(`${dir}: not a directory`);
  const host = options.host ?? '127.0.0.1';
  const server = createServer((req, res) => {
    handle(root, req, res, options).catch((e: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e) + '\n');
      } else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolveP, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 8080, host, () => {
      server.off('error', reject);
      resolveP();
    });
  });
  const port = (server.address() as { port: number }).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    server,
    port,
    origin: `http://${shown}:${port}`,
    close: () =>
      new Promise<void>((resolveP) => {
        server.close(() => resolveP());
        server.closeAllConnections();
      }),
  };
}

export interface ServeFlags {
  port: number;
  host: string;
  log?: boolean;
}

/** `flashlm host`: runs until SIGINT/SIGTERM. */
export async function runServe(dir: string, flags: ServeFlags): Promise<void> {
  const s = await startStaticServer(dir, {
    port: flags.port,
    host: flags.host,
    onRequest: flags.log ? (r) => process.stderr.write(`${r.status} ${r.method} ${r.path}${r.range ? ` ${r.range}` : ''} ${r.bytes}\n`) : undefined,
  });
  process.stdout.write(`serving ${resolve(dir)} at ${s.origin}/ (Range, ETag, COOP/COEP)\n`);
  await untilStopped(() => s.close());
}
