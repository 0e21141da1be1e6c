/**
 * Run by test/relaxed.test.ts in a child Node (with or without
 * --experimental-wasm-relaxed-simd): opens the shared fixtures with each
 * kernels build and prints one JSON line of what the test checks — which
 * build `simd: 'auto'` picked, plain vs relaxed greedy tokens and logits, and
 * inside the relaxed build batched prefill vs token by token and 1 vs 2
 * threads, bit for bit.
 */
import { openModel, type Model, type OpenOptions } from '../../src/model.js';
import { MemorySource } from '../../src/source/memory.js';
import { compileKernels, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL, RELAXED_MT_WASM_URL, RELAXED_WASM_URL, relaxedSimdSupported } from '../../src/kernels/load.js';
import { convertToBytes, OPT_DIR, optReference, STORIES_BIN, STORIES_TOK } from './models.js';

interface Engine {
  batch: number;
  logitsView: Float32Array;
  forwardBlock(tokens: ArrayLike<number>, pos: number, from?: number, T?: number): Promise<number> | number;
}

const open = (bytes: Uint8Array, o: OpenOptions) => openModel(new MemorySource(bytes), { contextLength: 128, ...o });
const engine = (m: Model) => (m as unknown as { transformer: Engine }).transformer;
const bitsEqual = (a: Float32Array, b: Float32Array) => Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

/** Logits after every position, one token at a time. */
async function decodeLogits(m: Model, ids: number[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  await m.forwardTokens(ids, (_, l) => out.push(l.slice()));
  return out;
}

/** The logits after position `last`, the prompt run in the engine's blocks (batched prefill). */
async function prefillLogits(m: Model, ids: number[], last: number): Promise<Float32Array> {
  const e = engine(m);
  for (let pos = 0; pos <= last; pos += e.batch) await e.forwardBlock(ids, pos, pos, Math.min(e.batch, last + 1 - pos));
  return e.logitsView.slice();
}

async function greedy(m: Model, prompt: string, n: number): Promise<number[]> {
  const ids: number[] = [];
  for await (const s of m.steps(prompt, { maxTokens: n, temperature: 0 })) if (s.token >= 0) ids.push(s.token);
  return ids;
}

const auto = await open(await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK }), { threads: 1 });
const report: Record<string, unknown> = { supported: relaxedSimdSupported(), auto: auto.simd, autoStats: auto.stats.summary().kernels };
await auto.close();

if (report.supported) {
  // the relaxed builds are the same module interface as the plain ones (names, kinds, imports)
  const iface = async (u: URL) => {
    const m = await compileKernels(u);
    return JSON.stringify([WebAssembly.Module.exports(m), WebAssembly.Module.imports(m)]);
  };
  report.sameInterface = [
    (await iface(DEFAULT_WASM_URL)) === (await iface(RELAXED_WASM_URL)),
    (await iface(DEFAULT_MT_WASM_URL)) === (await iface(RELAXED_MT_WASM_URL)),
  ];
  const cases = [
    ['stories f32', STORIES_BIN, { tokenizer: STORIES_TOK }, 'Once upon a time'],
    ['stories f16', STORIES_BIN, { tokenizer: STORIES_TOK, dtype: 'f16' as const }, 'Once upon a time'],
    ['opt f16', OPT_DIR, { dtype: 'f16' as const }, optReference().ref.prompt],
    ['opt f32', OPT_DIR, {}, optReference().ref.prompt],
  ] as const;
  const results: Record<string, unknown>[] = [];
  for (const [name, input, conv, prompt] of cases) {
    const bytes = await convertToBytes(input, conv);
    const plain = await open(bytes, { simd: 'plain', threads: 1, batchSize: 1 });
    const relaxed = await open(bytes, { simd: 'relaxed', threads: 1, batchSize: 1 });
    const ids = relaxed.tokenizer.encode(prompt.repeat(4));
    const lp = await decodeLogits(plain, ids);
    const lr = await decodeLogits(relaxed, ids);
    let maxDiff = 0, maxAbs = 0;
    lp.forEach((p, i) => p.forEach((v, j) => {
      maxDiff = Math.max(maxDiff, Math.abs(v - lr[i]![j]!));
      maxAbs = Math.max(maxAbs, Math.abs(v));
    }));
    // as many tokens as the browser tests compare with Node's (test/browser.test.ts)
    const tokensPlain = await greedy(plain, prompt, 64);
    const tokensRelaxed = await greedy(relaxed, prompt, 64);
    // inside the relaxed build: blocks of 5 on 1 thread, and token by token / blocks of 5 on 2 threads
    const blocks = await open(bytes, { simd: 'relaxed', threads: 1, batchSize: 5 });
    const two = await open(bytes, { simd: 'relaxed', threads: 2, batchSize: 5 });
    const lastPositions = [4, 11, ids.length - 1];
    const prefillSame = [];
    for (const p of lastPositions) prefillSame.push(bitsEqual(await prefillLogits(blocks, ids, p), lr[p]!));
    const two1 = await decodeLogits(two, ids);
    const twoDecodeSame = two1.every((l, i) => bitsEqual(l, lr[i]!));
    const twoPrefillSame = [];
    for (const p of lastPositions) twoPrefillSame.push(bitsEqual(await prefillLogits(two, ids, p), lr[p]!));
    results.push({
      name, builds: [plain.simd, relaxed.simd, blocks.simd, two.simd], threads: two.threading.threads,
      maxDiff, maxAbs, tokensPlain, tokensRelaxed, prefillSame, twoDecodeSame, twoPrefillSame,
      // the plain build reproduces itself exactly (the comparison above measures the build, not noise)
      plainStable: (await decodeLogits(plain, ids)).every((l, i) => bitsEqual(l, lp[i]!)),
    });
    for (const m of [plain, relaxed, blocks, two]) await m.close();
  }
  report.cases = results;
}
process.stdout.write(JSON.stringify(report) + '\n');
