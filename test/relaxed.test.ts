/**
 * The relaxed-SIMD build (wasm/flashlm.relaxed.wasm, flashlm.mt.relaxed.wasm:
 * fused multiply-adds in the dot kernels), feature-detected at load. Node 20
 * validates relaxed SIMD only with --experimental-wasm-relaxed-simd, so the
 * relaxed half runs test/helpers/relaxed-run.ts in a child Node with that
 * flag: `simd: 'auto'` picks the relaxed build and the stats say so, greedy
 * tokens equal the plain build's and logits stay within a small tolerance,
 * and inside the relaxed build batched prefill and 2 threads give the same
 * bits as token by token on 1 (what the plain build's tests require of it).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createArena, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL, kernelsUrl, loadKernels, RELAXED_MT_WASM_URL, RELAXED_WASM_URL, relaxedSimdSupported, simdBuild } from '../src/kernels/load.js';
import { ArgumentError } from '../src/errors.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));

interface Case {
  name: string;
  builds: string[];
  threads: number;
  maxDiff: number;
  maxAbs: number;
  tokensPlain: number[];
  tokensRelaxed: number[];
  prefillSame: boolean[];
  twoDecodeSame: boolean;
  twoPrefillSame: boolean[];
  plainStable: boolean;
}
interface Report { supported: boolean; auto: string; autoStats: string; sameInterface?: boolean[]; cases?: Case[] }

async function child(flags: string[]): Promise<Report> {
  const { stdout } = await run(process.execPath, [...flags, '--import=tsx', 'test/helpers/relaxed-run.ts'], { cwd: root, maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Report;
}

/** Node 20 (V8 11.3) has relaxed SIMD behind a flag; Node 21+ (V8 11.8+) by default. */
const needsFlag = process.versions.node.split('.').map(Number)[0]! <= 20;

test('both builds are the same kernels: each says which it is', async (t) => {
  const plain = await loadKernels(createArena(1 << 20), DEFAULT_WASM_URL);
  t.is(simdBuild(plain), 'simd');
  const mt = await loadKernels(createArena(1 << 20, { shared: true }), DEFAULT_MT_WASM_URL);
  t.is(simdBuild(mt), 'simd');
  // the relaxed files compile only where the runtime has relaxed SIMD
  if (relaxedSimdSupported()) {
    t.is(simdBuild(await loadKernels(createArena(1 << 20), RELAXED_WASM_URL)), 'relaxed-simd');
    t.is(simdBuild(await loadKernels(createArena(1 << 20, { shared: true }), RELAXED_MT_WASM_URL)), 'relaxed-simd');
  } else {
    await t.throwsAsync(loadKernels(createArena(1 << 20), RELAXED_WASM_URL), { instanceOf: WebAssembly.CompileError });
  }
});

test('kernelsUrl: plain forced, relaxed forced (refused where unsupported), auto follows the runtime', (t) => {
  t.is(kernelsUrl(false, 'plain').href, DEFAULT_WASM_URL.href);
  t.is(kernelsUrl(true, 'plain').href, DEFAULT_MT_WASM_URL.href);
  t.is(kernelsUrl(false, 'auto').href, (relaxedSimdSupported() ? RELAXED_WASM_URL : DEFAULT_WASM_URL).href);
  t.is(kernelsUrl(true, 'auto').href, (relaxedSimdSupported() ? RELAXED_MT_WASM_URL : DEFAULT_MT_WASM_URL).href);
  if (relaxedSimdSupported()) t.is(kernelsUrl(true, 'relaxed').href, RELAXED_MT_WASM_URL.href);
  else t.throws(() => kernelsUrl(false, 'relaxed'), { instanceOf: ArgumentError, message: /no relaxed SIMD/ });
  t.throws(() => kernelsUrl(false, 'fast' as 'auto'), { instanceOf: ArgumentError, message: /simd must be/ });
});

test('without relaxed SIMD the plain build runs and the stats say so', async (t) => {
  // on Node 20 (no flag) the plain build; newer Nodes have relaxed SIMD, so auto must pick it there
  const r = await child([]);
  t.is(r.supported, !needsFlag, needsFlag ? 'Node 20 without --experimental-wasm-relaxed-simd has no relaxed SIMD' : 'relaxed SIMD by default');
  t.is(r.auto, r.supported ? 'relaxed-simd' : 'simd');
  t.is(r.autoStats, r.auto, 'stats.summary().kernels');
});

test('relaxed build: chosen by auto; same greedy tokens as plain, close logits; bit-identical over batch sizes and threads', async (t) => {
  const r = await child(needsFlag ? ['--experimental-wasm-relaxed-simd'] : []);
  t.true(r.supported, 'relaxed SIMD validates');
  t.is(r.auto, 'relaxed-simd');
  t.is(r.autoStats, 'relaxed-simd', 'stats.summary().kernels');
  t.deepEqual(r.sameInterface, [true, true], 'flashlm(.mt).relaxed.wasm export and import what flashlm(.mt).wasm does');
  t.is(r.cases?.length, 4);
  for (const c of r.cases ?? []) {
    t.log(`${c.name}: max |relaxed - plain| logit ${c.maxDiff.toExponential(2)} (max |logit| ${c.maxAbs.toFixed(1)})`);
    t.deepEqual(c.builds, ['simd', 'relaxed-simd', 'relaxed-simd', 'relaxed-simd'], `${c.name}: builds`);
    t.is(c.threads, 2, `${c.name}: 2 threads ran`);
    t.true(c.plainStable, `${c.name}: plain build reproduces itself`);
    t.true(c.maxDiff <= 1e-3 * Math.max(1, c.maxAbs), `${c.name}: logits within tolerance (${c.maxDiff})`);
    t.true(c.tokensRelaxed.length >= 24, `${c.name}: ${c.tokensRelaxed.length} tokens`);
    t.deepEqual(c.tokensRelaxed, c.tokensPlain, `${c.name}: greedy tokens`);
    t.deepEqual(c.prefillSame, [true, true, true], `${c.name}: batched prefill = token by token`);
    t.true(c.twoDecodeSame, `${c.name}: 2 threads = 1 thread, token by token`);
    t.deepEqual(c.twoPrefillSame, [true, true, true], `${c.name}: 2 threads batched prefill = 1 thread token by token`);
  }
});

test('the CLI turns relaxed SIMD on in its own process (Node 20: the V8 flag): auto runs the relaxed kernels, --simd plain the plain ones', async (t) => {
  const { convertToBytes, STORIES_BIN, STORIES_TOK } = await import('./helpers/models.js');
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'flashlm-relaxed-cli-'));
  try {
    const file = join(dir, 'stories.flm');
    writeFileSync(file, await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK }));
    const kernels = async (extra: string[]) => {
      const { stderr } = await run(process.execPath, ['bin/flashlm.js', 'run', file, '-p', 'Once', '-n', '4', '--stats', 'json', ...extra], { cwd: root, maxBuffer: 1 << 20 });
      return (JSON.parse(stderr.trim().split('\n').pop()!) as { kernels: string }).kernels;
    };
    t.is(await kernels([]), 'relaxed-simd');
    t.is(await kernels(['--simd', 'plain']), 'simd');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
