/**
 * One build for every runtime: the package's `exports` give each runtime its
 * entry (resolved by the real resolvers: Node's, esbuild's as a browser or
 * edge bundler, Deno's), the browser graph has no `node:` module and no
 * undici, the browser bundle finds the kernels next to itself, and kernels
 * passed in as bytes or a compiled Module work where a bundler moved the file.
 */
import test from 'ava';
import { build, type Metafile } from 'esbuild';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openModel, MemorySource } from '../src/node.js';
import { STORIES_BIN, STORIES_TOK, convertToBytes } from './helpers/models.js';
import { ROOT, findDeno, run } from './helpers/processes.js';

/** Bundles `import * from 'flashlm'` as a consumer with these conditions would; returns the graph. */
async function graph(platform: 'browser' | 'neutral', conditions?: string[]): Promise<Metafile> {
  const r = await build({
    stdin: { contents: "export * from 'flashlm';", resolveDir: ROOT, loader: 'js' },
    bundle: true,
    write: false,
    format: 'esm',
    platform,
    conditions,
    mainFields: ['module', 'main'],
    // workerd builds import .wasm modules (wrangler's loader); the graph is what matters here.
    external: ['*.wasm'],
    metafile: true,
    logLevel: 'silent',
  });
  return r.metafile;
}

function assertPortable(t: import('ava').ExecutionContext, meta: Metafile, entry: string) {
  const inputs = Object.keys(meta.inputs);
  t.true(inputs.includes(entry), `entry ${entry}; inputs: ${inputs.filter((i) => i.startsWith('dist/') && !i.includes('/', 5)).join(', ')}`);
  t.false(inputs.some((i) => /undici|node_modules\/msgpackr-extract|dist\/(node|deno)\.js|file-node|http-node|convert\//.test(i)), inputs.join('\n'));
  const imports = Object.values(meta.inputs).flatMap((i) => i.imports.map((x) => x.path));
  t.false(imports.some((p) => p.startsWith('node:') || /^(fs|path|os|url|child_process|net|http|https|stream)$/.test(p)), imports.filter((p) => !p.startsWith('dist/') && !p.startsWith('node_modules/')).join(', '));
  // Node-only globals used bare (not as globalThis.x, not behind a typeof check) fail in browsers and edge isolates.
  const nodeOnly = /(?<![.\w'"-])(setImmediate(?=\s*\()|process(?=\.)|Buffer(?=\.)|__dirname|__filename|require(?=\s*\())/g;
  const offenders: string[] = [];
  for (const file of inputs.filter((i) => i.startsWith('dist/'))) {
    readFileSync(join(ROOT, file), 'utf8').split('\n').forEach((line, n) => {
      if (/^\s*(\/\/|\*|\/\*)/.test(line)) return; // comments
      for (const m of line.matchAll(nodeOnly)) if (!line.includes(`typeof ${m[1]}`)) offenders.push(`${file}:${n + 1}: ${line.trim()}`);
    });
  }
  t.deepEqual(offenders, [], 'Node-only globals in a portable graph');
}

test('browsers resolve dist/browser.js, and its graph has no node: module and no undici', async (t) => {
  assertPortable(t, await graph('browser'), 'dist/browser.js');
});

test('edge bundlers (workerd, worker, edge-light) get a portable entry', async (t) => {
  for (const c of [['workerd', 'worker', 'browser'], ['edge-light', 'worker', 'browser']]) assertPortable(t, await graph('neutral', c), 'dist/browser.js');
  assertPortable(t, await graph('neutral', []), 'dist/index.js');
});

test('Node resolves dist/node.js (files, undici, converters)', (t) => {
  t.is(fileURLToPath(import.meta.resolve('flashlm')), ROOT + 'dist/node.js');
  t.is(fileURLToPath(import.meta.resolve('flashlm/bundle')), ROOT + 'dist/bundle/flashlm.js');
  t.is(fileURLToPath(import.meta.resolve('flashlm/wasm/flashlm.wasm')), ROOT + 'wasm/flashlm.wasm');
});

test('Deno resolves dist/deno.js (Deno.open for paths, fetch for URLs)', async (t) => {
  const r = await run(findDeno(), ['eval', "const f = await import('flashlm'); console.log(import.meta.resolve('flashlm'), typeof f.DenoFileSource, typeof f.FileSource)"], {
    env: { DENO_NO_UPDATE_CHECK: '1' },
  });
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.trim(), `file://${ROOT}dist/deno.js function undefined`);
});

test('the browser bundle: one file, no static node: import, kernels found next to it', (t) => {
  const file = ROOT + 'dist/bundle/flashlm.js';
  const js = readFileSync(file, 'utf8');
  t.false(/\bfrom\s*["']node:|\brequire\(\s*["']node:|\bimport\s*["']node:/.test(js), 'no static node: import');
  t.false(/undici/.test(js));
  // The one dynamic `node:fs/promises` import (a file: URL in Node) takes a variable specifier: never resolved by a bundler or run in a browser.
  t.true(js.includes('new URL("../../wasm/flashlm.wasm", import.meta.url)'));
  t.true(existsSync(fileURLToPath(new URL('../../wasm/flashlm.wasm', `file://${file}`))), 'dist/bundle/../../wasm/flashlm.wasm exists');
});

test('kernels passed in as bytes or as a compiled WebAssembly.Module give the same text', async (t) => {
  const bytes = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  const wasmBytes = readFileSync(ROOT + 'wasm/flashlm.wasm');
  const texts: string[] = [];
  for (const wasm of [undefined, new Uint8Array(wasmBytes), await WebAssembly.compile(wasmBytes)]) {
    const m = await openModel(new MemorySource(bytes), { wasm, strategy: 'window', sparsity: 'oracle' });
    texts.push(await m.complete('Once upon a time', { maxTokens: 24 }));
    await m.close();
  }
  t.is(texts[1], texts[0]);
  t.is(texts[2], texts[0]);
});
