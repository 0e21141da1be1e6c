/**
 * The kernels' in-place xxh64 (assembly/xxh64.ts) against xxhash-wasm, the
 * library the writer hashes with: the two must be the same function, or files
 * the writer makes would not verify. And FlmFile.verify through the kernel.
 */
import test from 'ava';
import fc from 'fast-check';
import xxhash from 'xxhash-wasm';
import { IntegrityError } from '../src/errors.js';
import { ArenaHasher, getHasher, type XxhKernels } from '../src/format/hash.js';
import { openFlm } from '../src/format/reader.js';
import { writeFlm } from '../src/format/writer.js';
import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { openModel, type Strategy } from '../src/node.js';
import { STORIES_BIN, STORIES_TOK, convertToBytes } from './helpers/models.js';
import { syntheticArch, syntheticCheckpoint } from './helpers/synthetic.js';

const ARENA = 16 << 20;
let k: Kernels;
let base: number;
let api: Awaited<ReturnType<typeof xxhash>>;

test.before(async () => {
  k = await loadKernels(createArena(ARENA));
  base = k.heap_base();
  api = await xxhash();
});

/** The kernel's xxh64 of `bytes` placed at arena offset `at`, with a u64 seed. */
function kernelHash(bytes: Uint8Array, at: number, seed = 0n): bigint {
  new Uint8Array(k.memory.buffer, at, bytes.byteLength).set(bytes);
  const out = base + ARENA / 2 + 3; // unaligned on purpose
  k.xxh64(at, bytes.byteLength, Number(seed & 0xffffffffn), Number(seed >> 32n), out);
  return new DataView(k.memory.buffer).getBigUint64(out, true);
}

const ascii = (s: string) => new TextEncoder().encode(s);

test('reference vectors (docs/FORMAT.md §9)', (t) => {
  t.is(kernelHash(new Uint8Array(0), base), 0xef46db3751d8e999n);
  t.is(kernelHash(ascii('abc'), base + 1), 0x44bc2cf5ad770999n);
  // Longer than a stripe, and with seeds: equal to the library.
  const fox = ascii('The quick brown fox jumps over the lazy dog');
  for (const seed of [0n, 1n, 0xffffffffn, 0x100000000n, 0x9e3779b185ebca87n, 0xffffffffffffffffn]) {
    t.is(kernelHash(fox, base + 5, seed), api.h64Raw(fox, seed), `seed ${seed}`);
    t.is(kernelHash(new Uint8Array(0), base, seed), api.h64Raw(new Uint8Array(0), seed), `empty, seed ${seed}`);
  }
});

test('every length 0..300 at every offset mod 8 equals h64Raw (all stripe and tail paths)', (t) => {
  const bytes = new Uint8Array(300);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 167 + 13) & 0xff;
  for (let len = 0; len <= 300; len++) {
    const v = bytes.subarray(0, len);
    const want = api.h64Raw(v);
    for (let off = 0; off < 8; off++) {
      if (kernelHash(v, base + off) !== want) return t.fail(`len ${len} offset ${off}`);
    }
  }
  t.pass();
});

test('random bytes, lengths 0..5000, unaligned offsets and random seeds equal h64Raw', (t) => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 5000 }),
      fc.integer({ min: 0, max: 63 }),
      fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
      fc.boolean(),
      (bytes, off, seed, zeroSeed) => {
        const s = zeroSeed ? 0n : seed;
        return kernelHash(bytes, base + 4096 + off, s) === api.h64Raw(bytes, s);
      },
    ),
    { numRuns: 400 },
  );
  t.pass();
});

test('large blocks (1 MiB + 13) and bytes ending at the very top of the memory', (t) => {
  const big = new Uint8Array((1 << 20) + 13);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  t.is(kernelHash(big, base + 7), api.h64Raw(big));
  // The last byte of the hashed range is the last byte of the memory.
  for (const len of [0, 1, 3, 4, 8, 31, 32, 33, 64, 100, 4096]) {
    const v = big.subarray(0, len);
    t.is(kernelHash(v, ARENA - len), api.h64Raw(v), `len ${len} at the top`);
  }
});

test('ArenaHasher: in place on arena views, seeds, and it refuses a wrong kernel', async (t) => {
  const reference = await getHasher();
  const h = new ArenaHasher(k, reference);
  const view = new Uint8Array(k.memory.buffer, base + 1001, 777);
  for (let i = 0; i < view.length; i++) view[i] = i ^ 0x5a;
  t.true(h.owns(view));
  t.false(h.owns(view.slice()));
  t.is(h.u64(view), api.h64Raw(view.slice()));
  t.is(h.u64(view, 0xdeadbeefcafef00dn), api.h64Raw(view.slice(), 0xdeadbeefcafef00dn));
  t.throws(() => h.u64(view.slice()), { instanceOf: RangeError });
  const want = api.h64Raw(view.slice());
  t.true(h.matches(view.byteOffset, view.length, Number(want & 0xffffffffn), Number(want >> 32n)));
  t.false(h.matches(view.byteOffset, view.length, Number(want & 0xffffffffn) ^ 1, Number(want >> 32n)));
  const broken: XxhKernels = { memory: k.memory, xxh64_slot: () => k.xxh64_slot(), xxh64: () => {} };
  t.throws(() => new ArenaHasher(broken, reference), { message: /does not match xxhash-wasm/ });
});

async function build(layout: 'bundled' | 'split') {
  const sink = new MemorySink();
  await writeFlm(syntheticCheckpoint(syntheticArch('llama'), 11), sink, { dtype: 'f16', layout });
  return sink.bytes().slice();
}

for (const layout of ['bundled', 'split'] as const) {
  test(`FlmFile.verify through the kernel (${layout}): good blocks pass, a flipped byte is an IntegrityError`, async (t) => {
    const bytes = await build(layout);
    const file = await openFlm(new MemorySource(bytes));
    const memory = createArena(4 << 20);
    const kernels = await loadKernels(memory);
    let calls = 0;
    const counting = { memory, xxh64_slot: kernels.xxh64_slot, xxh64: (...a: Parameters<Kernels['xxh64']>) => (calls++, kernels.xxh64(...a)) };
    t.true(file.useKernelHasher(counting));
    t.true(file.useKernelHasher(counting), 'a second call for the same memory is a no-op');
    let at = kernels.heap_base() + 3; // unaligned views
    for (const s of file.header.sections) {
      const view = new Uint8Array(memory.buffer, at, s.length);
      const before = calls;
      await file.readSection(s, view);
      t.is(calls - before, s.blockCount, `${s.name}: one kernel call per block`);
      // Any block-aligned sub-range verifies too.
      const b = Math.floor(s.blockCount / 2);
      file.verify(s, b, view.subarray(b * s.blockBytes));
      // A flipped byte in block b is caught, naming the block; its neighbours still verify.
      const flip = b * s.blockBytes + Math.floor(Math.min(s.blockBytes, s.length - b * s.blockBytes) / 2);
      view[flip] = view[flip]! ^ 0x10;
      t.throws(() => file.verify(s, 0, view), { instanceOf: IntegrityError, message: new RegExp(`${s.name} block ${b} `) });
      if (b > 0) file.verify(s, b - 1, view.subarray((b - 1) * s.blockBytes, b * s.blockBytes));
      // Bytes outside the arena still go through xxhash-wasm, with the same verdicts.
      const copy = view.slice();
      const beforeCopy = calls;
      t.throws(() => file.verify(s, 0, copy), { instanceOf: IntegrityError, message: new RegExp(`${s.name} block ${b} `) });
      copy[flip] = copy[flip]! ^ 0x10;
      file.verify(s, 0, copy);
      t.is(calls, beforeCopy, 'no kernel calls for bytes outside the arena');
      at += s.length + 1;
    }
  });
}

test('useKernelHasher: a kernels build without xxh64 leaves verification to xxhash-wasm', async (t) => {
  const file = await openFlm(new MemorySource(await build('bundled')));
  t.false(file.useKernelHasher({ memory: createArena(65536) }));
  const s = file.section('resident');
  await t.notThrowsAsync(file.readSection(s, new Uint8Array(s.length)));
});

test('the engine (arena hashed in place) rejects a flipped byte in a streamed FFN record or a resident section', async (t) => {
  const good = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK, dtype: 'f32', layout: 'bundled' });
  const { header } = await openFlm(new MemorySource(good));
  const flipped = (name: string) => {
    const s = header.sections.find((x) => x.name === name)!;
    const bad = good.slice();
    bad[s.offset + Math.floor(s.length / 3)]! ^= 0x01;
    return bad;
  };
  const run = async (bytes: Uint8Array, strategy: Strategy) => {
    const model = await openModel(new MemorySource(bytes), { strategy, sparsity: 'off', contextLength: 16 });
    try {
      for await (const _ of model.generate('', { maxTokens: 2, temperature: 0 })) void _;
    } finally {
      await model.close();
    }
  };
  // Count in-place hashes to show the engine's reads take the kernel path.
  const matches = ArenaHasher.prototype.matches;
  let inPlace = 0;
  ArenaHasher.prototype.matches = function (...a) {
    inPlace++;
    return matches.apply(this, a);
  };
  t.teardown(() => void (ArenaHasher.prototype.matches = matches));
  for (const strategy of ['hybrid', 'window', 'naive'] as const) {
    const before = inPlace;
    await t.notThrowsAsync(run(good, strategy), strategy);
    t.true(inPlace - before >= header.ffn.length * header.arch.ffnDim, `${strategy}: FFN records hashed in place`);
    await t.throwsAsync(run(flipped('ffn.1'), strategy), { instanceOf: IntegrityError, message: /ffn\.1 block \d+/ }, strategy);
  }
  await t.throwsAsync(run(flipped('resident'), 'hybrid'), { instanceOf: IntegrityError, message: /resident block \d+/ });
  await t.throwsAsync(run(flipped('ffn.0'), 'dense'), { instanceOf: IntegrityError, message: /ffn\.0 block \d+/ });
});
