/**
 * A modelled CDN for tests and benchmarks: a TCP proxy in front of a local
 * server (nginx) that adds a round trip to every request and paces answers
 * per connection and for the whole link. TCP-level, so it models HTTP/1.1,
 * HTTP/2 and TLS alike (handshakes pay their round trips too).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface CdnOptions {
  /**
   * Connections open at once; more are closed as they arrive (a server's
   * connection limit; `refused` counts them). Default: no limit.
   */
  maxConnections?: number;
}

export interface CdnProxy {
  readonly port: number;
  /** Client connections accepted so far, the most open at once, and those closed at once for the limit. */
  readonly connections: number;
  readonly maxOpen: number;
  readonly refused: number;
  /** Client connections open now. */
  readonly open: number;
  close(): Promise<void>;
}

/**
 * Every client->server chunk (a request) is held for `rttMs` before it is
 * forwarded, and answers are paced at `connMBps` per connection and
 * `linkMBps` for all connections together (MB/s = 1e6 bytes/s).
 */
export async function cdnProxy(targetPort: number, rttMs: number, connMBps: number, linkMBps: number, options: CdnOptions = {}): Promise<CdnProxy> {
  const sockets = new Set<Socket>();
  const limit = options.maxConnections ?? Infinity;
  let linkNext = 0;
  let open = 0;
  let accepted = 0;
  let maxOpen = 0;
  let refused = 0;

  const serve = (client: Socket) => {
    const upstream = connect(targetPort, '127.0.0.1');
    upstream.setNoDelay(true);
    sockets.add(upstream);
    let connNext = 0;
    client.on('data', (d) => void setTimeout(() => upstream.write(d), rttMs));
    client.on('end', () => void setTimeout(() => upstream.end(), rttMs));
    // A chunk reaches the client when both its connection and the link have carried it (store and forward):
    // no burst passes unpaced, however many connections start at once.
    let sent = Promise.resolve();
    upstream.on('data', (d: Buffer) => {
      const now = performance.now();
      connNext = Math.max(now, connNext) + d.length / (connMBps * 1e3);
      linkNext = Math.max(now, linkNext) + d.length / (linkMBps * 1e3);
      const wait = Math.max(connNext, linkNext) - now;
      if (wait <= 1) {
        client.write(d);
        return;
      }
      upstream.pause();
      sent = new Promise((done) =>
        setTimeout(() => {
          client.write(d);
          upstream.resume();
          done();
        }, wait),
      );
    });
    upstream.on('end', () => void sent.then(() => client.end()));
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.resume();
  };

  const server: Server = createServer({ pauseOnConnect: true }, (client) => {
    client.on('error', () => client.destroy());
    if (open >= limit) {
      refused++;
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    sockets.add(client);
    accepted++;
    maxOpen = Math.max(maxOpen, ++open);
    client.once('close', () => {
      open--;
      sockets.delete(client);
    });
    serve(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    get connections() {
      return accepted;
    },
    get maxOpen() {
      return maxOpen;
    },
    get refused() {
      return refused;
    },
    get open() {
      return open;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** The same proxy in a child process (see cdn-proxy-main.ts); close() ends it. */
export async function cdnProxyProcess(targetPort: number, rttMs: number, connMBps: number, linkMBps: number): Promise<{ port: number; close(): Promise<void> }> {
  const { spawn } = await import('node:child_process');
  const main = new URL('./cdn-proxy-main.ts', import.meta.url).pathname;
  const child = spawn(process.execPath, ['--import=tsx', main, String(targetPort), String(rttMs), String(connMBps), String(linkMBps)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`cdn proxy exited (${code}) before listening`)));
  });
  return {
    port,
    close: async () => {
      child.stdin!.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

