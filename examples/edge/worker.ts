/**
 * The edge handler as a Cloudflare Worker. Workers compile no WebAssembly
 * from bytes at run time and give bundled modules no URL to find files
 * beside them, so the kernels come in as a module import; bundle with the
 * `workerd` condition (xxhash-wasm then imports its own .wasm module too).
 * test/workerd-edge.test.ts runs this file in workerd, Cloudflare's runtime.
 *
 *   wrangler.toml: main = "examples/edge/worker.ts"
 *                  [vars] FLASHLM_MODEL_URL = "https://cdn.example/model.flm"
 */
// @ts-expect-error -- a WebAssembly module import: the Workers bundler makes it a WebAssembly.Module
import wasm from 'flashlm/wasm/flashlm.wasm';
import { createHandler } from './handler.ts';

export default createHandler({ wasm: wasm as WebAssembly.Module });
