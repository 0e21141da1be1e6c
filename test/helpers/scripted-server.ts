/**
 * A node:http server on 127.0.0.1 that serves one virtual file with range
 * support and misbehaves on cue: ignore Range, drop the connection
 * mid-body, answer 5xx/429, stall, send a wrong Content-Range, change its
 * ETag. It records every request. Content is generated from the offset, so
 * it can claim sizes past 4 GiB without holding them.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { gzipSync } from 'node:zlib';

/** The byte at absolute position p (exact for any p < 2^53; differs between p and p + 2^32). */
export function patternByte(p: number): number {
  return ((p % 251) + Math.floor(p / 65536) * 7) % 256;
}

export function patternBytes(offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = patternByte(offset + i);
  return out;
}

export type Fault =
  /** Answer with this status (and headers), a short text body. */
  | { status: number; headers?: Record<string, string> }
  /** Send the right headers, then this many body bytes, then cut the connection. */
  | { drop: number }
  /** A 206 with this Content-Range header instead of the right one (same body). */
  | { contentRange: string }
  /** A 200 with the whole file, as a server that ignores Range. */
  | { ignoreRange: true }
  /** Send the headers, then nothing for this long, then cut the connection. */
  | { stallMs: number }
  /** A 206 without Content-Length (chunked) whose body has one byte more than its Content-Range says. */
  | { extraByte: true }
  /** A 206 without Content-Length (chunked) that ends cleanly after this many bytes. */
  | { short: number }
  /** A correct 206 sent in 8 pieces with this pause between them. */
  | { trickleMs: number }
  /** A 206 whose body is gzip-compressed (Content-Encoding: gzip, Content-Length of the compressed body), as a misconfigured CDN sends. */
  | { gzip: true }
  /** Accept the request and never answer (no headers; the connection stays open until the client or stop() ends it). */
  | { never: true }
  /** Wait this long before the headers (a slow first byte), then answer correctly. */
  | { delayMs: number }
  /** A 206 multipart/byteranges answer (the asked range as its one part), which a client asking for one range must not take as the bytes. */
  | { multipart: true };

export interface Recorded {
  /** Path and query. */
  url: string;
  range: string | undefined;
  ifRange: string | undefined;
  headers: IncomingHttpHeaders;
}

export interface ScriptedOptions {
  size: number;
  /** Bytes at [offset, offset + length). Default: patternBytes. */
  content?: (offset: number, length: number) => Uint8Array;
  etag?: string;
  lastModified?: string;
  /** Fault for the n-th request (1-based), or undefined to answer correctly. */
  fault?: (n: number, req: Recorded) => Fault | undefined;
  /** Requests answered before the server refuses everything with 500 (a bound on runaway loops). Default 2000. */
  maxRequests?: number;
}

export interface ScriptedServer {
  readonly url: string;
  readonly requests: Recorded[];
  /** Current validators; change them to simulate a new version of the file. */
  etag: string | undefined;
  lastModified: string | undefined;
  fault: ScriptedOptions['fault'];
  stop(): Promise<void>;
}

const RANGE = /^bytes=(\d+)-(\d*)$/;
const CHUNK = 64 * 1024;

export async function startScripted(o: ScriptedOptions): Promise<ScriptedServer> {
  const content = o.content ?? patternBytes;
  const max = o.maxRequests ?? 2000;
  const state: ScriptedServer = {
    url: '',
    requests: [],
    etag: o.etag,
    lastModified: o.lastModified,
    fault: o.fault,
    stop: async () => {},
  };

  const server: Server = createServer((req, res) => handle(req, res));
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const rec: Recorded = { url: req.url ?? '', range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined, headers: req.headers };
    state.requests.push(rec);
    const n = state.requests.length;
    if (n > max) {
      res.writeHead(500, { connection: 'close' }).end('request limit reached');
      return;
    }
    const fault = state.fault?.(n, rec);
    const answer = (f: Fault | undefined) => answerWith(req, res, rec, f);

    if (fault && 'never' in fault) return;
    if (fault && 'delayMs' in fault) {
      const { delayMs } = fault;
      setTimeout(() => answer(undefined), delayMs);
      return;
    }
    answer(fault);
  };

  const answerWith = (req: IncomingMessage, res: ServerResponse, rec: Recorded, fault: Fault | undefined) => {
    const validators: Record<string, string> = {};
    if (state.etag !== undefined) validators.etag = state.etag;
    if (state.lastModified !== undefined) validators['last-modified'] = state.lastModified;

    if (fault && 'status' in fault) {
      res.writeHead(fault.status, { ...validators, 'content-type': 'text/plain', ...fault.headers }).end(`scripted ${fault.status}`);
      return;
    }

    /** Streams [start, end] with backpressure; `cutAfter` bytes then destroy, if given. */
    const send = (status: number, headers: Record<string, string | number>, start: number, end: number, cutAfter?: number, extra = 0) => {
      const length: Record<string, number> = extra > 0 ? {} : { 'content-length': end - start + 1 };
      res.writeHead(status, { ...validators, 'accept-ranges': 'bytes', ...length, ...headers });
      let at = start;
      const limit = cutAfter === undefined ? end + 1 : Math.min(end + 1, start + cutAfter);
      const pump = () => {
        while (at < limit) {
          const n = Math.min(CHUNK, limit - at);
          const chunk = content(at, n);
          at += n;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        if (extra > 0) {
          res.end(new Uint8Array(extra));
        } else if (cutAfter !== undefined && limit <= end) {
          res.write(new Uint8Array(0), () => res.socket?.destroy());
        } else {
          res.end();
        }
      };
      pump();
    };

    const m = RANGE.exec(req.headers.range ?? '');
    const ifRange = rec.ifRange;
    const ifRangeOk = ifRange === undefined || ifRange === state.etag || ifRange === state.lastModified;
    if (!m || !ifRangeOk || (fault && 'ignoreRange' in fault)) {
      send(200, {}, 0, o.size - 1);
      return;
    }
    const start = Number(m[1]);
    const end = m[2] === '' ? o.size - 1 : Math.min(Number(m[2]), o.size - 1);
    if (start >= o.size || end < start) {
      res.writeHead(416, { ...validators, 'content-range': `bytes */${o.size}` }).end();
      return;
    }
    const cr = fault && 'contentRange' in fault ? fault.contentRange : `bytes ${start}-${end}/${o.size}`;
    if (fault && 'short' in fault) {
      res.writeHead(206, { ...validators, 'content-range': cr });
      res.end(content(start, Math.min(fault.short, end - start + 1)));
      return;
    }
    if (fault && 'trickleMs' in fault) {
      res.writeHead(206, { ...validators, 'content-range': cr, 'content-length': end - start + 1 });
      const piece = Math.ceil((end - start + 1) / 8);
      let at = start;
      const next = () => {
        const n = Math.min(piece, end + 1 - at);
        res.write(content(at, n));
        at += n;
        if (at > end) res.end();
        else setTimeout(next, fault.trickleMs);
      };
      next();
      return;
    }
    if (fault && 'multipart' in fault) {
      const boundary = 'flashlm-scripted';
      const head = new TextEncoder().encode(`--${boundary}\r\ncontent-type: application/octet-stream\r\ncontent-range: ${cr}\r\n\r\n`);
      const tail = new TextEncoder().encode(`\r\n--${boundary}--\r\n`);
      const body = content(start, end - start + 1);
      res.writeHead(206, { ...validators, 'content-type': `multipart/byteranges; boundary=${boundary}`, 'content-length': head.byteLength + body.byteLength + tail.byteLength });
      res.write(head);
      res.write(body);
      res.end(tail);
      return;
    }
    if (fault && 'gzip' in fault) {
      const body = gzipSync(content(start, end - start + 1));
      res.writeHead(206, { ...validators, 'content-range': cr, 'content-encoding': 'gzip', 'content-length': body.byteLength });
      res.end(body);
      return;
    }
    if (fault && 'stallMs' in fault) {
      res.writeHead(206, { ...validators, 'content-range': cr, 'content-length': end - start + 1 });
      res.flushHeaders();
      setTimeout(() => res.socket?.destroy(), fault.stallMs);
      return;
    }
    send(206, { 'content-range': cr }, start, end, fault && 'drop' in fault ? fault.drop : undefined, fault && 'extraByte' in fault ? 1 : 0);
  };
  server.keepAliveTimeout = 10_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  (state as { url: string }).url = `http://127.0.0.1:${port}/model.flm`;
  state.stop = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return state;
}
