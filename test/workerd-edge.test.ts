/**
 * The edge handler in workerd, Cloudflare Workers' own runtime (the npm
 * package `workerd`, a devDependency): examples/edge/worker.ts bundled by
 * esbuild with the `workerd` condition as a Workers bundler does, the
 * kernels passed in as a WebAssembly module, the model read by HTTP range
 * from `flashlm host` on 127.0.0.1. It must stream Node's greedy text and
 * answer the OpenAI API (the openai client) with Node's chat answer.
 * Bundles the build in dist/: scripts/test.sh builds first.
 */
import test from 'ava';
import { build } from 'esbuild';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySource, openModel } from '../src/node.js';
import { optChatBytes, optReference } from './helpers/models.js';
import { checkOpenAiApi } from './helpers/openai-api.js';
import { ROOT, startService, type Service } from './helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'flashlm-workerd-'));
let cdn: Service | undefined;
let edge: Service | undefined;
let model: Uint8Array;
let edgeUrl = '';

/** A port free right now on 127.0.0.1 (workerd takes a fixed address from its config). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

test.before(async () => {
  model = await optChatBytes(); // for /v1/chat/completions
  mkdirSync(join(dir, 'models'));
  writeFileSync(join(dir, 'models', 'optchat.flm'), model);
  cdn = await startService(process.execPath, [ROOT + 'bin/flashlm.js', 'host', join(dir, 'models'), '--port', '0'], /serving .* at (http:\/\/127\.0\.0\.1:\d+)\//);

  // Bundle as a Workers build does: .wasm imports stay module imports, embedded by the config below.
  const app = join(dir, 'app');
  await build({
    entryPoints: [ROOT + 'examples/edge/worker.ts'],
    absWorkingDir: ROOT,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    conditions: ['workerd', 'worker', 'browser'],
    external: ['*.wasm'],
    outfile: join(app, 'worker.js'),
    logLevel: 'warning',
  });
  mkdirSync(join(app, 'flashlm', 'wasm'), { recursive: true });
  cpSync(ROOT + 'wasm/flashlm.wasm', join(app, 'flashlm', 'wasm', 'flashlm.wasm'));
  cpSync(ROOT + 'node_modules/xxhash-wasm/workerd/xxhash.wasm', join(app, 'xxhash.wasm'));
  const port = await freePort();
  writeFileSync(
    join(app, 'config.capnp'),
    `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .flashlm),
    # the model is on 127.0.0.1: outbound fetches may reach local addresses
    (name = "loopback", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:${port}", http = (), service = "main") ],
);
const flashlm :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
    (name = "flashlm/wasm/flashlm.wasm", wasm = embed "flashlm/wasm/flashlm.wasm"),
    (name = "xxhash.wasm", wasm = embed "xxhash.wasm"),
  ],
  compatibilityDate = "2024-09-23",
  globalOutbound = "loopback",
  bindings = [ (name = "FLASHLM_MODEL_URL", text = "${cdn.url}/optchat.flm") ],
);
`,
  );
  // workerd prints nothing once it listens: ready when /v1/models answers (which also opens the model).
  edge = await startService(ROOT + 'node_modules/.bin/workerd', ['serve', join(app, 'config.capnp')], `http://127.0.0.1:${port}/v1/models`, { timeoutMs: 60_000 });
  edgeUrl = edge.url;
});

test.after.always(async () => {
  await edge?.stop();
  await cdn?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test.serial('workerd: the handler streams Node\'s greedy text (GET), chunk by chunk', async (t) => {
  const { prompt } = optReference().ref;
  const node = await openModel(new MemorySource(model), { strategy: 'dense' });
  const want = await node.complete(prompt, { maxTokens: 32, temperature: 0 });
  await node.close();
  const res = await fetch(`${edgeUrl}/?prompt=${encodeURIComponent(prompt)}&n=32`);
  t.is(res.status, 200, edge!.output());
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  let chunks = 0;
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    chunks++;
    text += dec.decode(r.value, { stream: true });
  }
  t.is(text, want);
  t.true(chunks > 1, `streamed in ${chunks} chunks`);
});

test.serial('workerd: the handler answers the OpenAI API (openai client): completions and streamed chat equal Node\'s', async (t) => {
  await checkOpenAiApi(t, edgeUrl, model, 'optchat', optReference().ref.prompt, 24);
});
