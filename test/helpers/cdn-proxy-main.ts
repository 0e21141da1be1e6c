/**
 * The modelled CDN in a process of its own (benchmarks: the client's CPU
 * must not slow the "network"): `node --import=tsx test/helpers/cdn-proxy-main.ts
 * <targetPort> <rttMs> <connMBps> <linkMBps> [listeners]` prints `ports N ...` and serves
 * until its stdin closes.
 */
import { cdnProxy } from './cdn-proxy.js';

const [target, rtt, conn, link, listeners] = process.argv.slice(2).map(Number);
const proxy = await cdnProxy(target!, rtt!, conn!, link!, { listeners: listeners || 1 });
process.stdout.write(`ports ${proxy.ports.join(' ')}\n`);
process.stdin.resume();
process.stdin.on('end', () => void proxy.close().then(() => process.exit(0)));
