/**
 * Runs the edge handler locally under Deno.serve (what Deno Deploy does with
 * `export default { fetch }`):
 *
 *   FLASHLM_MODEL_URL=http://127.0.0.1:8080/models/stories260K.flm \
 *     deno run -A examples/edge/serve.ts [--port 8787]
 *   curl -N 'http://127.0.0.1:8787/?prompt=Once%20upon%20a%20time&n=64'
 *
 * Prints `listening on http://127.0.0.1:PORT/` once it accepts requests.
 * GET /_memory answers Deno.memoryUsage() (after a full GC when the isolate
 * runs with --v8-flags=--expose-gc), the process's peak resident set
 * (Linux) and the model's arena, for checking the 128 MB budget.
 */
import handler from './handler.ts';

const i = Deno.args.indexOf('--port');
const port = i >= 0 ? Number(Deno.args[i + 1]) : 8787;

async function memory(): Promise<Response> {
  // With --v8-flags=--expose-gc, collect first, twice with a pause between (array buffers are freed by a
  // background sweeper after a GC): heap and external then hold what is live, not what GC has not reached yet.
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; gc && i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50));
  }
  let peak: number | null = null;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync('/proc/self/status'));
    if (m) peak = Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return Response.json({ ...Deno.memoryUsage(), peakRss: peak, arenaBytes: handler.arenaBytes() ?? null });
}

const server = Deno.serve(
  {
    port,
    hostname: '127.0.0.1',
    onListen: ({ port }) => console.log(`listening on http://127.0.0.1:${port}/`),
  },
  (req) => (new URL(req.url).pathname === '/_memory' ? memory() : handler.fetch(req)),
);
Deno.addSignalListener('SIGTERM', () => void server.shutdown());
await server.finished;
