/**
 * Loads the SIMD WebAssembly kernels (wasm/flashlm.wasm) against a host-owned
 * arena. Runtime-neutral: no static `node:` import (Node, Deno, browsers and
 * edge runtimes load this module); `node:fs/promises` is imported dynamically
 * only for a `file:` URL that `fetch` cannot read (Node's fetch rejects file:).
 */

import type { Kernels } from './types.js';
import { KERNEL_NAMES } from './names.js';
import { ArgumentError } from '../errors.js';

/** Bytes per WebAssembly page. */
export const WASM_PAGE = 65536;
/** Largest wasm32 memory: 65536 pages = 4 GiB. */
export const MAX_PAGES = 65536;

/** Scheme of a default kernels URL where the runtime gives modules no base URL (see besideThisModule). */
const NO_BASE = 'flashlm-no-base:';

/**
 * `find()` (a `new URL('…', import.meta.url)`, written out literally so that
 * bundlers see the asset), or where the runtime gives bundled modules no
 * usable import.meta.url (Cloudflare Workers) a placeholder that
 * compileKernels refuses with the way out: importing must not throw there.
 */
function besideThisModule(find: () => URL, file: string): URL {
  try {
    return find();
  } catch {
    return new URL(NO_BASE + file);
  }
}

/** Where the release build lives, relative to this file (src/kernels/ or dist/kernels/). */
export const DEFAULT_WASM_URL = besideThisModule(() => new URL('../../wasm/flashlm.wasm', import.meta.url), 'flashlm.wasm');

/**
 * The threads build (assembly/index.mt.ts: same kernels on a shared memory,
 * plus the split kernels src/kernels/pool.ts runs on its workers).
 */
export const DEFAULT_MT_WASM_URL = besideThisModule(() => new URL('../../wasm/flashlm.mt.wasm', import.meta.url), 'flashlm.mt.wasm');

/** Compiled modules by URL, so many models (arenas) share one compilation. */
const moduleCache = new Map<string, Promise<WebAssembly.Module>>();

/**
 * A fixed-size arena: initial = maximum = ceil(bytes / 64 KiB) pages (at most
 * 4 GiB). Fixed so the ArrayBuffer never detaches under the host's typed views.
 * Offsets above 2 GiB come back from wasm as negative i32: read returned
 * pointers with `>>> 0`.
 */
export function createArena(bytes: number, options: { shared?: boolean } = {}): WebAssembly.Memory {
  if (!Number.isFinite(bytes) || bytes < 0) throw new RangeError(`arena size must be a non-negative number of bytes, got ${bytes}`);
  const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
  if (pages > MAX_PAGES) throw new RangeError(`arena of ${bytes} bytes exceeds the 4 GiB wasm32 limit`);
  // shared: a SharedArrayBuffer-backed memory for the threads build (wasm/flashlm.mt.wasm), which
  // declares a shared memory of up to 4 GiB, so any fixed arena of at most 4 GiB can be imported
  if (options.shared) return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true } as WebAssembly.MemoryDescriptor);
  return new WebAssembly.Memory({ initial: pages, maximum: pages });
}

/** True when `memory` is backed by a SharedArrayBuffer (createArena(bytes, { shared: true })). */
export function isSharedMemory(memory: WebAssembly.Memory): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
}

/** The compiled module behind each loadKernels result (the pool instantiates it on its workers). */
const modules = new WeakMap<object, WebAssembly.Module>();

/** The WebAssembly.Module a Kernels object was instantiated from (undefined for hand-made objects). */
export function kernelsModule(k: Kernels): WebAssembly.Module | undefined {
  return modules.get(k);
}

function isModule(x: unknown): x is WebAssembly.Module {
  return typeof WebAssembly.Module === 'function' && x instanceof WebAssembly.Module;
}

function isBufferSource(x: unknown): x is BufferSource {
  return ArrayBuffer.isView(x) || x instanceof ArrayBuffer ||
    (typeof SharedArrayBuffer !== 'undefined' && x instanceof SharedArrayBuffer);
}

/** Reads the bytes behind a URL: fetch first, node:fs for file: URLs fetch can't read. */
async function readUrl(url: URL): Promise<ArrayBuffer | Uint8Array> {
  if (url.protocol === 'file:') {
    // Deno's (and browsers' extension) fetch can read file:; Node 20's throws.
    try {
      const res = await fetch(url);
      if (res.ok) return await res.arrayBuffer();
    } catch {
      // fall through to node:fs
    }
    const spec = 'node:fs/promises';
    const fs = (await import(/* @vite-ignore */ spec)) as typeof import('node:fs/promises');
    return await fs.readFile(url);
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot load kernels from ${url.href}: HTTP ${res.status}`);
  return await res.arrayBuffer();
}

async function compileUrl(url: URL): Promise<WebAssembly.Module> {
  if (url.protocol !== 'file:' && typeof WebAssembly.compileStreaming === 'function') {
    try {
      // streaming compile needs Content-Type: application/wasm; fall back if the server doesn't say so
      return await WebAssembly.compileStreaming(fetch(url));
    } catch {
      // retry below with plain bytes
    }
  }
  return WebAssembly.compile(await readUrl(url) as BufferSource);
}

/** The compiled module for a URL, compiled once per URL (failed compilations are not cached). */
export function compileKernels(where: URL | string = DEFAULT_WASM_URL): Promise<WebAssembly.Module> {
  const url = typeof where === 'string' ? new URL(where, DEFAULT_WASM_URL) : where;
  if (url.protocol === NO_BASE) {
    return Promise.reject(new ArgumentError(`this runtime gives modules no URL to find ${url.pathname} beside them: pass the kernels as the \`wasm\` option (e.g. import wasm from 'flashlm/wasm/flashlm.wasm')`));
  }
  const key = url.href;
  let p = moduleCache.get(key);
  if (!p) {
    p = compileUrl(url);
    moduleCache.set(key, p);
    p.catch(() => moduleCache.delete(key));
  }
  return p;
}

/** Every kernel of the contract (generated from types.ts): a module without one of them is rejected. */
const REQUIRED = KERNEL_NAMES;

/**
 * Instantiates the kernels on `memory` (the arena; see createArena).
 * `wasm`: the module's bytes, a compiled module, or its URL (string paths are
 * resolved against the default location); defaults to wasm/flashlm.wasm.
 */
export async function loadKernels(
  memory: WebAssembly.Memory,
  wasm?: BufferSource | WebAssembly.Module | URL | string,
): Promise<Kernels> {
  let mod: WebAssembly.Module;
  if (wasm === undefined || wasm instanceof URL || typeof wasm === 'string') mod = await compileKernels(wasm);
  else if (isModule(wasm)) mod = wasm;
  else if (isBufferSource(wasm)) mod = await WebAssembly.compile(wasm);
  else throw new TypeError('loadKernels: wasm must be bytes, a WebAssembly.Module, a URL or a string');

  let instance: WebAssembly.Instance;
  try {
    instance = await WebAssembly.instantiate(mod, { env: { memory } });
  } catch (e) {
    const memShared = isSharedMemory(memory);
    const modShared = WebAssembly.Module.imports(mod).some((i) => i.kind === 'memory') && isSharedModule(mod);
    if (e instanceof WebAssembly.LinkError && memShared !== modShared) {
      throw new WebAssembly.LinkError(`${(e as Error).message}: the ${modShared ? 'threads build (flashlm.mt.wasm) needs a shared arena: createArena(bytes, { shared: true })' : 'single-threaded build (flashlm.wasm) needs an unshared arena'}`);
    }
    throw e;
  }
  const ex = instance.exports as Record<string, unknown>;
  for (const name of REQUIRED) {
    if (typeof ex[name] !== 'function') throw new ArgumentError(`kernels module lacks export ${name}: an old or foreign build (rebuild with npm run build:wasm, or pass the matching flashlm.wasm)`);
  }
  const heapBase = ((ex.heap_base as () => number)() >>> 0);
  if (memory.buffer.byteLength < heapBase) {
    throw new RangeError(`arena of ${memory.buffer.byteLength} bytes is smaller than the kernels' static area (${heapBase} bytes)`);
  }
  const k: Record<string, unknown> = { memory };
  for (const [name, value] of Object.entries(ex)) if (typeof value === 'function') k[name] = value;
  // pointers/sizes returned by wasm are i32: unsigned view for the host
  k.heap_base = () => heapBase;
  modules.set(k, mod);
  return k as unknown as Kernels;
}

/** Whether a kernels module imports a shared memory (the threads build exports the split kernels). */
function isSharedModule(mod: WebAssembly.Module): boolean {
  return WebAssembly.Module.exports(mod).some((e) => e.name === 'matvec_f32_rows');
}
