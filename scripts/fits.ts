/**
 * What fits in wasm32's 4 GiB arena (README "What fits"): for the OPT
 * 1.3B/6.7B/13B and Llama-2-7B shapes, the resident part's bytes per dtype,
 * the KV cache per 1k tokens, and the smallest --memory each strategy runs
 * with — from the writer's own layout (planHeader) and the engine's planner
 * (planMemory), so the figures are what flashlm would do; no file is written.
 *
 *   node --import=tsx scripts/fits.ts [--context 2048]
 */
import { parseArgs } from 'node:util';
import { SynthCheckpoint } from '../src/synth/checkpoint.js';
import { shapeArch, type ShapeName } from '../src/synth/shapes.js';
import { planHeader } from '../src/format/writer.js';
import { FlmFile } from '../src/format/reader.js';
import type { DType } from '../src/format/types.js';
import type { Source } from '../src/source/types.js';
import { createArena, loadKernels } from '../src/kernels/load.js';
import { planMemory, type Strategy } from '../src/plan.js';
import { MAX_ARENA_BYTES, fmtBytes } from '../src/engine/arena.js';

const { values } = parseArgs({ options: { context: { type: 'string', default: '2048' } } });
const context = Number(values.context);
const k = await loadKernels(createArena(1 << 20));
const GiB = 2 ** 30;
const gb = (n: number) => `${(n / GiB).toFixed(2)} GiB`;

/** The header of a shape's file (FFN f16, resident `resident`), as a file the planner can read (never read from). */
function planned(shape: ShapeName, resident: DType): FlmFile {
  const arch = shapeArch(shape);
  const ckpt = new SynthCheckpoint({ arch, tokenizer: { kind: 'hf', json: '{}' }, tokenizerVocab: arch.vocabSize, seed: 1, name: shape });
  const header = planHeader(ckpt, { dtype: 'f16', residentDtype: resident, layout: 'bundled' });
  // O_DIRECT alignment, as bench:scale runs it; the planner only reads sizes.
  const source = { name: shape, size: header.integrity.offset + header.integrity.length, identity: shape, alignment: 4096, read: () => Promise.reject(new Error('not a file')), close: async () => {} } as Source;
  return new FlmFile(source, header, new BigUint64Array(0), undefined as never);
}

/** Smallest budget (to 16 MiB) the planner accepts; window also wants 10% of each layer's neurons cached. */
function smallest(file: FlmFile, strategy: Strategy, kvDtype: 'f32' | 'f16'): number | null {
  const ok = (m: number) => {
    try {
      const p = planMemory(file, k, { strategy, memory: m, kvDtype, sparsity: strategy === 'window' ? 'oracle' : undefined, window: 5 }, context);
      return strategy !== 'window' || p.capacity >= file.header.arch.ffnDim / 10;
    } catch {
      return false;
    }
  };
  if (!ok(MAX_ARENA_BYTES)) return null;
  let lo = 0, hi = MAX_ARENA_BYTES;
  while (hi - lo > 16 << 20) {
    const mid = Math.floor((lo + hi) / 2);
    if (ok(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

const rows: string[] = [];
const json: Record<string, unknown>[] = [];
for (const shape of ['opt-1.3b', 'opt-6.7b', 'opt-13b', 'llama-7b'] as const) {
  const resident: Record<string, number> = {};
  for (const dt of ['f16', 'q8', 'q4'] as const) resident[dt] = planned(shape, dt).section('resident').length;
  for (const dt of ['q8', 'q4'] as const) {
    const file = planned(shape, dt);
    const a = file.header.arch;
    const ffn = file.header.ffn.reduce((s, f) => s + file.section(f.section).length, 0);
    const kv1k = 2 * a.nLayers * 1024 * a.nKvHeads * a.headDim;
    const fit = (s: Strategy, kv: 'f32' | 'f16') => smallest(file, s, kv);
    const r = { shape, residentDtype: dt, residentF16: resident.f16!, residentQ8: resident.q8!, residentQ4: resident.q4!, ffnF16: ffn, kvPer1kF32: kv1k * 4, kvPer1kF16: kv1k * 2, dense: fit('dense', 'f16'), hybrid: fit('hybrid', 'f16'), hybridKvF32: fit('hybrid', 'f32'), window: fit('window', 'f16') };
    json.push(r);
    const show = (b: number | null) => (b === null ? 'does not fit' : gb(b));
    const first = dt === 'q8' ? `${shape} | ${gb(r.residentF16)} / ${gb(r.residentQ8)} / ${gb(r.residentQ4)} | ${gb(ffn)} | ${fmtBytes(r.kvPer1kF32)} / ${fmtBytes(r.kvPer1kF16)}` : ' | | |';
    rows.push(`| ${first} | ${dt === 'q8' ? 'int8' : 'q4'} | ${show(r.dense)} | ${show(r.hybrid)} (f32 KV: ${show(r.hybridKvF32)}) | ${show(r.window)} |`);
  }
}
console.log(`context ${context} tokens; FFN at f16; smallest --memory with an f16 KV cache (and f32 where said)`);
console.log('| shape | resident f16 / int8 / q4 | FFN (f16) | KV per 1k tokens f32 / f16 | resident at | dense | hybrid | window (10% of neurons cached) |');
console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(r);
console.log(JSON.stringify({ context, shapes: json }));
