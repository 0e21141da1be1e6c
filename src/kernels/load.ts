/**
 * Loads the SIMD WebAssembly kernels (wasm/flashlm.wasm, or its relaxed-SIMD
 * build where the runtime has relaxed SIMD: kernelsUrl) against a host-owned
 * arena. Runtime-neutral: no static `node:` import (Node, Deno, browsers and
 * edge runtimes load this module); `node:fs/promises` is imported dynamically
 * only for a `file:` URL that `fetch` cannot read (Node's fetch rejects file:).
 */

import type { Kernels } from './types.js';
import { KERNEL_NAMES } from './names.js';
import { ArgumentError } from '../errors.js';

/** Bytes per WebAssembly page. */
export const WASM_PAGE = 65536;
/**
 * Arena bytes enough for the kernels' static area alone (~200 KB: heap_base()),
 * for a module loaded only to ask it sizes (batch_scratch_bytes, poolBytes ...).
 */
export const PROBE_ARENA_BYTES = 8 * WASM_PAGE;
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

/**
 * The relaxed-SIMD builds (asconfig "relaxed", "mt-relaxed": the same kernels
 * with fused multiply-adds in their inner loops), loaded instead of the two
 * above where the runtime has relaxed SIMD (Chromium, Deno, Node >= 22).
 */
export const RELAXED_WASM_URL = besideThisModule(() => new URL('../../wasm/flashlm.relaxed.wasm', import.meta.url), 'flashlm.relaxed.wasm');
export const RELAXED_MT_WASM_URL = besideThisModule(() => new URL('../../wasm/flashlm.mt.relaxed.wasm', import.meta.url), 'flashlm.mt.relaxed.wasm');

/** Which kernels build to load: 'auto' (relaxed SIMD where the runtime validates it), or either one forced. */
export type SimdMode = 'auto' | 'plain' | 'relaxed';
/** The build a Kernels object runs (its simd_relaxed() export). */
export type SimdBuild = 'simd' | 'relaxed-simd';

/** A module whose one function returns f32x4.relaxed_madd(splat 0, splat 0, splat 0): validates only with relaxed SIMD. */
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // one function of type 0
  0x0a, 0x13, 0x01, 0x11, 0x00, // code: one body of 17 bytes, no locals
  0x41, 0x00, 0xfd, 0x11, 0x41, 0x00, 0xfd, 0x11, 0x41, 0x00, 0xfd, 0x11, // 3 x i32x4.splat(i32.const 0)
  0xfd, 0x85, 0x02, 0x0b, // f32x4.relaxed_madd (0xfd 0x105), end
]);
let relaxedValid: boolean | undefined;

/** Whether this runtime has relaxed SIMD (checked once, by validating a one-instruction module). */
export function relaxedSimdSupported(): boolean {
  if (relaxedValid === undefined) {
    try {
      relaxedValid = WebAssembly.validate(RELAXED_PROBE);
    } catch {
      relaxedValid = false;
    }
  }
  return relaxedValid;
}

/**
 * The default kernels build: the threads build when `shared`, the relaxed-SIMD
 * one when `simd` is 'relaxed', or 'auto' and the runtime has it.
 */
export function kernelsUrl(shared: boolean, simd: SimdMode = 'auto'): URL {
  if (simd !== 'auto' && simd !== 'plain' && simd !== 'relaxed') throw new ArgumentError(`simd must be 'auto', 'plain' or 'relaxed', got ${String(simd)}`);
  if (simd === 'relaxed' && !relaxedSimdSupported()) throw new ArgumentError('simd: \'relaxed\' asked for, but this runtime has no relaxed SIMD (Node >= 22, Deno and Chromium have it; Node 20 with --experimental-wasm-relaxed-simd)');
  const relaxed = simd === 'relaxed' || (simd === 'auto' && relaxedSimdSupported());
  if (shared) return relaxed ? RELAXED_MT_WASM_URL : DEFAULT_MT_WASM_URL;
  return relaxed ? RELAXED_WASM_URL : DEFAULT_WASM_URL;
}

/** Which build `k` runs: 'relaxed-simd' (fused multiply-adds) or 'simd'. */
export function simdBuild(k: Kernels): SimdBuild {
  return k.simd_relaxed() ? 'relaxed-simd' : 'simd';
}

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
 * resolved against the default location); defaults to kernelsUrl(memory is
 * shared): wasm/flashlm.wasm, or its relaxed-SIMD or threads build.
 */
export async function loadKernels(
  memory: WebAssembly.Memory,
  wasm?: BufferSource | WebAssembly.Module | URL | string,
): Promise<Kernels> {
  let mod: WebAssembly.Module;
  if (wasm === undefined) mod = await compileKernels(kernelsUrl(isSharedMemory(memory)));
  else if (wasm instanceof URL || typeof wasm === 'string') mod = await compileKernels(wasm);
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
