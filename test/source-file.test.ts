import test from 'ava';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SourceError } from '../src/errors.js';
import { DIRECT_ALIGNMENT, FILE_HINTS, FileSource, directHints, threadPoolSize } from '../src/source/file-node.js';
import { convertToBytes, STORIES_BIN, STORIES_TOK } from './helpers/models.js';
import { rng } from './helpers/synthetic.js';

const A = DIRECT_ALIGNMENT;
const TMPFS = 0x01021994;
const RAMFS = 0x858458f6;

/**
 * A directory on a real disk: O_DIRECT means nothing on tmpfs. os.tmpdir()
 * when it is a disk, else the repo's git-ignored tmp/.
 */
async function diskDir(): Promise<string> {
  let base = tmpdir();
  const t = (await statfs(base)).type;
  if (t === TMPFS || t === RAMFS) {
    base = join(dirname(fileURLToPath(import.meta.url)), '..', 'tmp');
    await mkdir(base, { recursive: true });
  }
  return mkdtemp(join(base, 'flashlm-file-'));
}

/** A view of `bytes` bytes at `at` in a fresh WebAssembly.Memory (page-aligned base, like the arena). */
function wasmView(at: number, bytes: number, fill = 0xee): Uint8Array {
  const mem = new WebAssembly.Memory({ initial: Math.ceil((at + bytes) / 65536) + 1 });
  const v = new Uint8Array(mem.buffer, at, bytes);
  v.fill(fill);
  return v;
}

let dir: string;
/** 3 MiB + 1234: larger than the 1 MiB bounce buffer, and an end of file off the 4096 grid. */
const SIZE = 3 * 1024 * 1024 + 1234;
const data = randomBytes(SIZE);
let path: string;

test.before(async () => {
  dir = await diskDir();
  path = join(dir, 'data.bin');
  await writeFile(path, data);
});

test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const same = (t: { true: (c: boolean, m?: string) => void }, got: Uint8Array, off: number, what: string) =>
  t.true(Buffer.compare(Buffer.from(got.buffer, got.byteOffset, got.byteLength), data.subarray(off, off + got.byteLength)) === 0, what);

test('buffered: random reads match the file; size, identity, default hints', async (t) => {
  const s = await FileSource.open(path);
  try {
    t.is(s.size, SIZE);
    t.regex(s.identity, new RegExp(`^file:${SIZE}:`));
    t.is(s.alignment, undefined);
    t.false(s.direct);
    t.deepEqual(s.hints, { ...FILE_HINTS });
    const r = rng(7);
    for (let i = 0; i < 200; i++) {
      const off = Math.floor(r() * SIZE);
      const len = Math.min(SIZE - off, 1 + Math.floor(r() * 100_000));
      const into = new Uint8Array(len);
      await s.read(off, into);
      same(t, into, off, `read [${off}, +${len})`);
    }
    const last = new Uint8Array(10);
    await s.read(SIZE - 10, last);
    same(t, last, SIZE - 10, 'the last bytes');
  } finally {
    await s.close();
  }
});

test('buffered: read past the end and missing files are SourceErrors', async (t) => {
  const s = await FileSource.open(path, { hints: { parallel: 2 } });
  try {
    t.is(s.hints.parallel, 2);
    t.is(s.hints.maxRead, FILE_HINTS.maxRead);
    const e = await t.throwsAsync(s.read(SIZE - 5, new Uint8Array(10)), { instanceOf: SourceError });
    t.regex(e!.message, /unexpected end of file/);
    await t.throwsAsync(s.read(-1, new Uint8Array(1)), { instanceOf: SourceError });
  } finally {
    await s.close();
  }
  const e = await t.throwsAsync(FileSource.open(join(dir, 'nope.bin')), { instanceOf: SourceError });
  t.regex(e!.message, /cannot open/);
  t.is((e as SourceError).code, 'SOURCE');
});

test('direct: aligned reads into wasm memory go straight to the buffer and match', async (t) => {
  const s = await FileSource.open(path, { direct: true });
  try {
    t.true(s.direct);
    t.is(s.alignment, 4096);
    t.is(s.size, SIZE);
    const r = rng(11);
    const reads: Promise<void>[] = [];
    const checks: [Uint8Array, number][] = [];
    for (let i = 0; i < 64; i++) {
      const blocks = Math.floor(SIZE / A);
      const off = Math.floor(r() * blocks) * A;
      const len = Math.min(blocks * A - off, (1 + Math.floor(r() * 64)) * A);
      const into = wasmView(A * Math.floor(r() * 4), len);
      checks.push([into, off]);
      reads.push(s.read(off, into));
    }
    await Promise.all(reads);
    for (const [into, off] of checks) same(t, into, off, `direct read at ${off}`);
    t.is(s.stats.direct, 64);
    t.is(s.stats.bounced, 0);
  } finally {
    await s.close();
  }
});

test('direct: an aligned read running past the end fills up to EOF and leaves the rest untouched', async (t) => {
  const s = await FileSource.open(path, { direct: true });
  try {
    const lastBlock = Math.floor(SIZE / A) * A;
    const into = wasmView(0, 3 * A, 0xee);
    await s.read(lastBlock, into);
    const tail = SIZE - lastBlock;
    same(t, into.subarray(0, tail), lastBlock, 'bytes before EOF');
    t.true(into.subarray(tail).every((b) => b === 0xee), 'bytes past EOF untouched');
    // Wholly past the end: nothing to read, nothing touched.
    const beyond = wasmView(0, A, 0xab);
    await s.read(lastBlock + 2 * A, beyond);
    t.true(beyond.every((b) => b === 0xab));
    // Whole blocks before EOF go direct, the block holding EOF through the bounce buffer.
    const across = wasmView(0, 4 * A, 0xcd);
    await s.read(lastBlock - 2 * A, across);
    same(t, across.subarray(0, 2 * A + tail), lastBlock - 2 * A, 'bytes before EOF');
    t.true(across.subarray(2 * A + tail).every((b) => b === 0xcd), 'bytes past EOF untouched');
    t.is(s.stats.direct, 1);
    t.is(s.stats.bounced, 2);
  } finally {
    await s.close();
  }
});

test('direct: unaligned buffers fall back to the bounce buffer (wasm view at +100, plain ArrayBuffer)', async (t) => {
  const s = await FileSource.open(path, { direct: true });
  try {
    const a = wasmView(100, 5 * A);
    await s.read(2 * A, a);
    same(t, a, 2 * A, 'wasm view at byteOffset 100');
    t.is(s.stats.bounced, 1);
    // An aligned view of the same memory still goes direct.
    const b = new Uint8Array(a.buffer, 2 * A, A);
    await s.read(0, b);
    same(t, b, 0, 'aligned view of the same memory');
    t.is(s.stats.direct, 1);
    // byteOffset 0 but a malloc'ed base: the kernel says EINVAL, the source bounces and remembers the buffer.
    const plain = new Uint8Array(2 * 1024 * 1024 + A);
    await s.read(A, plain);
    same(t, plain, A, 'plain Uint8Array, larger than the bounce buffer');
    await s.read(8 * A, plain.subarray(0, A));
    same(t, plain.subarray(0, A), 8 * A, 'the same buffer again');
    t.true(s.stats.bounced >= 2);
    // A plain buffer at EOF: same short-read rule as the direct path.
    const lastBlock = Math.floor(SIZE / A) * A;
    const end = new Uint8Array(2 * A).fill(0xee);
    await s.read(lastBlock, end);
    same(t, end.subarray(0, SIZE - lastBlock), lastBlock, 'bounced bytes before EOF');
    t.true(end.subarray(SIZE - lastBlock).every((b) => b === 0xee));
  } finally {
    await s.close();
  }
});

test('direct: unaligned offsets and lengths are served correctly, concurrently with aligned ones', async (t) => {
  const s = await FileSource.open(path, { direct: true });
  try {
    const r = rng(5);
    const jobs: Promise<void>[] = [];
    const checks: [Uint8Array, number][] = [];
    for (let i = 0; i < 60; i++) {
      const aligned = i % 3 === 0;
      const off = aligned ? Math.floor(r() * (SIZE / A - 4)) * A : Math.floor(r() * (SIZE - 1));
      const len = aligned ? A * (1 + Math.floor(r() * 3)) : Math.min(SIZE - off, 1 + Math.floor(r() * 300_000));
      const into = wasmView(0, len);
      checks.push([into, off]);
      jobs.push(s.read(off, into));
    }
    // one unaligned read spanning several bounce-buffer loads
    const big = wasmView(0, SIZE - 777 - 5);
    checks.push([big, 777]);
    jobs.push(s.read(777, big));
    await Promise.all(jobs);
    for (const [into, off] of checks) same(t, into, off, `read at ${off} (+${into.byteLength})`);
    t.true(s.stats.bounced >= 40);
    t.true(s.stats.direct >= 20);
    // The last byte, unaligned.
    const one = new Uint8Array(1);
    await s.read(SIZE - 1, one);
    t.is(one[0], data[SIZE - 1]);
    // Unaligned reads may not run past the end.
    const e = await t.throwsAsync(s.read(SIZE - 10, new Uint8Array(20)), { instanceOf: SourceError });
    t.regex(e!.message, /past the end/);
  } finally {
    await s.close();
  }
});

test('direct: offsets past 4 GiB (sparse 7 GiB file), direct and bounced', async (t) => {
  const big = join(dir, 'sparse.bin');
  const fh = await open(big, 'w');
  const at = 6.5 * 2 ** 30 + 3 * A; // past 2^32, and past 2^31 mod 2^32 (negative under `| 0`)
  const mark = randomBytes(3 * A);
  try {
    await fh.truncate(7 * 2 ** 30);
    await fh.write(mark, 0, mark.length, at);
  } finally {
    await fh.close();
  }
  try {
    const s = await FileSource.open(big, { direct: true });
    try {
      t.is(s.size, 7 * 2 ** 30);
      const into = wasmView(0, 4 * A);
      await s.read(at - A, into);
      t.true(into.subarray(0, A).every((b) => b === 0), 'the hole before reads as zeros');
      t.deepEqual(Buffer.from(into.subarray(A)), mark);
      const odd = new Uint8Array(100);
      await s.read(at + 5, odd);
      t.deepEqual(Buffer.from(odd), mark.subarray(5, 105));
      // An offset that differs from `at` by exactly 4 GiB must not alias it.
      const alias = wasmView(0, A);
      await s.read(at - 2 ** 32, alias);
      t.true(alias.every((b) => b === 0));
    } finally {
      await s.close();
    }
    const b = await FileSource.open(big);
    try {
      const into = new Uint8Array(50);
      await b.read(at + 1000, into);
      t.deepEqual(Buffer.from(into), mark.subarray(1000, 1050));
    } finally {
      await b.close();
    }
  } finally {
    await rm(big, { force: true });
  }
});

test('direct: an empty file opens (no probe read) and aligned reads leave the buffer untouched', async (t) => {
  const empty = join(dir, 'empty.bin');
  await writeFile(empty, new Uint8Array(0));
  const s = await FileSource.open(empty, { direct: true });
  try {
    t.is(s.size, 0);
    const into = wasmView(0, A, 0x5a);
    await s.read(0, into);
    t.true(into.every((b) => b === 0x5a));
  } finally {
    await s.close();
  }
});

test('direct: where O_DIRECT is unavailable the open fails with a clear SourceError', async (t) => {
  // tmpfs: newer kernels accept the flag but it is the page cache itself; refused by name.
  t.true(existsSync('/dev/shm'), '/dev/shm (tmpfs) is needed for this test');
  const shm = await mkdtemp('/dev/shm/flashlm-');
  try {
    const p = join(shm, 'x.bin');
    await writeFile(p, new Uint8Array(8192));
    t.is((await statfs(p)).type, TMPFS, '/dev/shm is tmpfs');
    const e = await t.throwsAsync(FileSource.open(p, { direct: true }), { instanceOf: SourceError });
    t.regex(e!.message, /tmpfs.*page cache/);
    // The same file without `direct` is fine.
    const s = await FileSource.open(p);
    await s.close();
  } finally {
    await rm(shm, { recursive: true, force: true });
  }
  // procfs refuses O_DIRECT at open with EINVAL.
  const e = await t.throwsAsync(FileSource.open('/proc/self/status', { direct: true }), { instanceOf: SourceError });
  t.regex(e!.message, /does not support direct I\/O/);
  const missing = await t.throwsAsync(FileSource.open(join(dir, 'missing.bin'), { direct: true }), { instanceOf: SourceError });
  t.regex(missing!.message, /cannot open/);
});

test('direct: reads in flight default to the size of libuv\'s pool (UV_THREADPOOL_SIZE read as libuv reads it), at least 8', async (t) => {
  t.is(threadPoolSize({}), 4);
  t.is(threadPoolSize({ UV_THREADPOOL_SIZE: '16' }), 16);
  t.is(threadPoolSize({ UV_THREADPOOL_SIZE: '0' }), 1);
  t.is(threadPoolSize({ UV_THREADPOOL_SIZE: 'many' }), 1);
  t.is(threadPoolSize({ UV_THREADPOOL_SIZE: '5000' }), 1024);
  t.deepEqual(directHints({ UV_THREADPOOL_SIZE: '32' }), { ...FILE_HINTS, parallel: 32 });
  // Libuv's default 4 threads: still 8 in flight, the extra ones queued so that a thread never waits for the main one.
  t.deepEqual(directHints({}), { ...FILE_HINTS, parallel: 8 });
  const s = await FileSource.open(path, { direct: true });
  try {
    t.deepEqual(s.hints, directHints(process.env));
  } finally {
    await s.close();
  }
  const o = await FileSource.open(path, { direct: true, hints: { parallel: 3, mergeGap: 0 } });
  try {
    t.deepEqual(o.hints, { ...directHints(process.env), parallel: 3, mergeGap: 0 });
  } finally {
    await o.close();
  }
});

const BIN = fileURLToPath(new URL('../bin/flashlm.js', import.meta.url));

/**
 * Starts the real launcher as a user does (`node bin/flashlm.js ...`) with
 * exactly `env` beyond PATH, waits for its "serving ... at" line, and
 * returns its thread count (Linux /proc): libuv starts its whole pool at once,
 * so two runs of one command differ by exactly the difference of their pools.
 */
async function launchedThreads(args: string[], env: Record<string, string> = {}): Promise<number> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (/serving .* at /.test(out)) resolve();
      });
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      child.once('exit', (code) => reject(new Error(`flashlm ${args.join(' ')} exited (${code}) before serving:\n${out}`)));
    });
    return readdirSync(`/proc/${child.pid}/task`).length;
  } finally {
    child.kill('SIGKILL');
  }
}

(process.platform === 'linux' ? test : test.skip)('launcher: bin/flashlm.js sizes libuv\'s pool before Node starts it: its default, else UV_THREADPOOL_SIZE, --io-depth over both', async (t) => {
  const def = Number(/const DEFAULT_IO_DEPTH = (\d+);/.exec(readFileSync(BIN, 'utf8'))?.[1]);
  t.true(def > 4, 'the launcher states a default above libuv\'s 4');
  // `host` takes no model options: the environment decides.
  const unset = await launchedThreads(['host', dir, '--port', '0']);
  const five = await launchedThreads(['host', dir, '--port', '0'], { UV_THREADPOOL_SIZE: '5' });
  t.is(unset - five, def - 5);
  // `serve` takes --io-depth, which wins over the environment.
  const model = join(dir, 'stories.flm');
  await writeFile(model, await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK }));
  const serve = (depth: number) => launchedThreads(['serve', model, '--port', '0', '-t', '1', '--direct', '--io-depth', String(depth)], { UV_THREADPOOL_SIZE: '5' });
  const seven = await serve(7);
  const twentyThree = await serve(23);
  t.is(twentyThree - seven, 16);
});
