/** A modelled CDN for the benchmarks: loopback plus a round trip per request and paced bandwidth. */
import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy modeling a CDN over a WAN: every client->server chunk (a
 * request) is held for `rttMs`, and answers are paced at `connMBps` per
 * connection and `linkMBps` for all connections together.
 */
export async function cdnProxy(targetPort: number, rttMs: number, connMBps: number, linkMBps: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let linkNext = 0;
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    sockets.add(client).add(upstream);
    let connNext = 0;
    client.on('data', (d) => void setTimeout(() => upstream.write(d), rttMs));
    client.on('end', () => void setTimeout(() => upstream.end(), rttMs));
    upstream.on('data', (d: Buffer) => {
      const now = performance.now();
      connNext = Math.max(now, connNext) + d.length / (connMBps * 1e3);
      linkNext = Math.max(now, linkNext) + d.length / (linkMBps * 1e3);
      client.write(d);
      const wait = Math.max(connNext, linkNext) - now;
      if (wait > 1) {
        upstream.pause();
        setTimeout(() => upstream.resume(), wait);
      }
    });
    upstream.on('end', () => client.end());
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
