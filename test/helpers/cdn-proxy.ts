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
  /**
   * Ports to listen on (127.0.0.1), all one CDN: the link and the connection
   * limit are shared. Each port is an origin of its own (a CDN's other
   * hostnames, for clients that keep one connection per origin). Default 1.
   */
  listeners?: number;
}

export interface CdnProxy {
  readonly port: number;
  /** Every port it listens on (`port` first). */
  readonly ports: number[];
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

  const accept = (client: Socket) => {
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
  };
  const servers: Server[] = [];
  for (let i = 0; i < Math.max(1, options.listeners ?? 1); i++) {
    const server = createServer({ pauseOnConnect: true }, accept);
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  }
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  return {
    port: ports[0]!,
    ports,
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
    close: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((server) => new Promise<void>((r) => server.close(() => r()))));
    },
  };
}

/** The same proxy in a child process (see cdn-proxy-main.ts); close() ends it. */
export async function cdnProxyProcess(targetPort: number, rttMs: number, connMBps: number, linkMBps: number, listeners = 1): Promise<{ port: number; ports: number[]; close(): Promise<void> }> {
  const { spawn } = await import('node:child_process');
  const main = new URL('./cdn-proxy-main.ts', import.meta.url).pathname;
  const child = spawn(process.execPath, ['--import=tsx', main, String(targetPort), String(rttMs), String(connMBps), String(linkMBps), String(listeners)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const ports = await new Promise<number[]>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ports? ([\d ]+)\n/.exec(out);
      if (m) resolve(m[1]!.trim().split(' ').map(Number));
    });
    child.once('exit', (code) => reject(new Error(`cdn proxy exited (${code}) before listening`)));
  });
  return {
    port: ports[0]!,
    ports,
    close: async () => {
      child.stdin!.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

