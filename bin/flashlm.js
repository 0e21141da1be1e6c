#!/usr/bin/env node
// The CLI launcher, CommonJS on purpose (bin/package.json): libuv sizes its
// thread pool from UV_THREADPOOL_SIZE when it runs its first job, and loading
// an ES module entry is already one. Node's file reads run on that pool, so
// its size is how many reads are in flight at once (4 by default); set it
// here, before anything reads a file, and V8's relaxed-SIMD flag on Node 20,
// then load the compiled CLI (dist/).
'use strict';

/** Reads in flight when neither --io-depth nor UV_THREADPOOL_SIZE says (bench/sources.ts --only=depth). */
const DEFAULT_IO_DEPTH = 32;

/** The value of --name N / --name=N before any `--`; the CLI itself validates it. */
function optionArg(argv, name) {
  let value;
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') break;
    if (a === name) value = argv[++i];
    else if (a.startsWith(name + '=')) value = a.slice(name.length + 1);
  }
  return value;
}

const flag = optionArg(process.argv, '--io-depth');
if (flag !== undefined && /^\d+$/.test(flag)) process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, Number(flag)));
else if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(DEFAULT_IO_DEPTH);

// Node 20's V8 validates relaxed SIMD only behind this flag (Node 22's has it on): set before any module
// compiles, `--simd auto` then loads the relaxed kernels (fused multiply-add; f16 10-15% faster) as in Deno
// and browsers. V8 flags are process-wide, so the library never sets it; the CLI owns its process.
if (Number(process.versions.node.split('.')[0]) <= 20 && optionArg(process.argv, '--simd') !== 'plain') {
  require('node:v8').setFlagsFromString('--experimental-wasm-relaxed-simd');
}

import('../dist/cli/main.js').then(({ main }) => main(process.argv));
