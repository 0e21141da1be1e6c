#!/usr/bin/env node
// The CLI launcher, CommonJS on purpose (bin/package.json): libuv sizes its
// thread pool from UV_THREADPOOL_SIZE when it runs its first job, and loading
// an ES module entry is already one. Node's file reads run on that pool, so
// its size is how many reads are in flight at once (4 by default); set it
// here, before anything reads a file, then load the compiled CLI (dist/).
'use strict';

/** Reads in flight when neither --io-depth nor UV_THREADPOOL_SIZE says (bench/sources.ts --only=depth). */
const DEFAULT_IO_DEPTH = 32;

/** The value of --io-depth N / --io-depth=N before any `--`; the CLI itself validates it. */
function ioDepthArg(argv) {
  let value;
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') break;
    if (a === '--io-depth') value = argv[++i];
    else if (a.startsWith('--io-depth=')) value = a.slice('--io-depth='.length);
  }
  return value;
}

const flag = ioDepthArg(process.argv);
if (flag !== undefined && /^\d+$/.test(flag)) process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, Number(flag)));
else if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(DEFAULT_IO_DEPTH);

import('../dist/cli/main.js').then(({ main }) => main(process.argv));
