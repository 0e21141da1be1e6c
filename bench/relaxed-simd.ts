/**
 * Imported first by the benchmarks that run whole models (bench/decode.ts,
 * bench/native.ts): Node 20 (V8 11.3) validates relaxed SIMD only with
 * --experimental-wasm-relaxed-simd, so this sets that V8 flag before any
 * module is compiled, and flashlm's default (`simd: 'auto'`) then loads the
 * relaxed-SIMD kernels as Node 21+, Deno and Chromium do. `--simd plain`
 * (or `--simd relaxed`) on the benchmark's command line is passed to
 * openModel as `simd` (see simdOption); with `plain` the flag is not set.
 */
import { setFlagsFromString } from 'node:v8';
import { arg } from './args.js';
import type { SimdMode } from '../src/kernels/load.js';

const mode = arg('simd') ?? 'auto';
if (mode !== 'auto' && mode !== 'plain' && mode !== 'relaxed') throw new Error(`--simd must be auto, plain or relaxed, got ${mode}`);
// Node 21+ (V8 >= 11.8) has relaxed SIMD without the flag (which later V8s no longer know)
if (mode !== 'plain' && Number(process.versions.node.split('.')[0]) <= 20) setFlagsFromString('--experimental-wasm-relaxed-simd');

/** openModel's `simd` option from --simd (default auto). */
export const simdOption: SimdMode = mode;
