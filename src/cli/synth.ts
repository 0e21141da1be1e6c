/**
 * `flashlm synth`: a model file of a real model's shape with random weights
 * whose ReLU activations are as sparse, skewed and changing as a trained
 * sparse model's (src/synth/checkpoint.ts), written by the converter's writer
 * (temp file + rename, progress bar, Ctrl-C leaves nothing behind).
 */
import type { Layout } from '../format/layout.js';
import { writeFlm, type WriteOptions } from '../format/writer.js';
import { FileSink } from '../source/file-node.js';
import type { Sink } from '../source/types.js';
import { fmtBytes } from '../engine/arena.js';
import { ArgumentError } from '../errors.js';
import { ACTIVE, ALPHA, P_MAX, SynthCheckpoint } from '../synth/checkpoint.js';
import { SHAPE_NAMES, shapeArch, type ShapeName } from '../synth/shapes.js';
import { loadSynthTokenizer } from '../synth/tokenizer.js';
import { fileDType, type ConvertFlags } from './convert.js';
import { interruptSignal, progressBar } from './terminal.js';
import { checkOutput } from './output.js';

/**
 * Lets the writer go on while its last few chunks are written (the writer
 * hands over a fresh buffer per write and never touches it again): making
 * the next chunk overlaps the disk instead of waiting for it. A failed write
 * surfaces at a later write or at finish.
 */
export class WriteBehindSink implements Sink {
  private pending: Promise<void>[] = [];
  constructor(
    private readonly inner: FileSink,
    private readonly depth = 4,
  ) {}

  async write(offset: number, bytes: Uint8Array): Promise<void> {
    if (this.pending.length >= this.depth) await this.pending.shift();
    const p = this.inner.write(offset, bytes);
    p.catch(() => {}); // awaited (and rethrown) later; not an unhandled rejection meanwhile
    this.pending.push(p);
  }

  private async drain(): Promise<void> {
    const all = this.pending;
    this.pending = [];
    await Promise.all(all);
  }

  async finish(size: number): Promise<void> {
    await this.drain();
    await this.inner.finish(size);
  }

  async abort(): Promise<void> {
    await this.drain().catch(() => {});
    await this.inner.abort();
  }
}

export interface SynthFlags {
  shape: ShapeName;
  output: string;
  dtype: ConvertFlags['dtype'];
  residentDtype?: ConvertFlags['dtype'];
  layout: Layout;
  seed: number;
  layers?: number;
  tokenizer?: string;
  force?: boolean;
}

/** The header's meta for a synthetic file: `synthetic: "true"` is what inspect and other tools look for. */
export function synthMeta(flags: Pick<SynthFlags, 'shape' | 'seed'>, layers: number): Record<string, string> {
  return {
    source: 'flashlm synth',
    synthetic: 'true',
    'synth.shape': flags.shape,
    'synth.seed': String(flags.seed),
    'synth.layers': String(layers),
    'synth.activeFraction': String(ACTIVE),
    'synth.firing': `power law p = min(${P_MAX}, c*(q + 0.001)^-${ALPHA}) over the neurons, mean ${ACTIVE}`,
  };
}

export async function runSynth(flags: SynthFlags): Promise<void> {
  if (!SHAPE_NAMES.includes(flags.shape)) throw new ArgumentError(`--shape must be one of ${SHAPE_NAMES.join(', ')}`);
  await checkOutput(flags.output, [flags.tokenizer], { force: flags.force });
  const base = shapeArch(flags.shape);
  if (flags.layers !== undefined && (flags.layers < 1 || flags.layers > base.nLayers)) throw new ArgumentError(`--layers must be in [1, ${base.nLayers}] for ${flags.shape}`);
  const tok = await loadSynthTokenizer(base.vocabSize, flags.tokenizer);
  const arch = { ...base, nLayers: flags.layers ?? base.nLayers, bosId: tok.bosId, eosId: tok.eosId, stopIds: [tok.eosId] };
  const ckpt = new SynthCheckpoint({ arch, tokenizer: tok.spec, tokenizerVocab: tok.vocab, seed: flags.seed, name: flags.shape });
  const opts: WriteOptions = { dtype: fileDType(flags.dtype), layout: flags.layout, meta: synthMeta(flags, arch.nLayers) };
  if (flags.residentDtype !== undefined) opts.residentDtype = fileDType(flags.residentDtype);
  const interrupt = interruptSignal();
  let sink: WriteBehindSink | undefined;
  const bar = progressBar('synth [{bar}] {percentage}% {written} / {size} {rate} eta {eta_formatted}');
  const t0 = performance.now();
  try {
    sink = new WriteBehindSink(await FileSink.create(flags.output));
    const header = await writeFlm(ckpt, sink, {
      ...opts,
      signal: interrupt.signal,
      onProgress: (done, total) => {
        if (!bar) return;
        if (!bar.isActive) bar.start(total, 0, { size: fmtBytes(total), written: '0 B', rate: '' });
        const s = (performance.now() - t0) / 1000;
        bar.update(done, { written: fmtBytes(done), rate: s > 0 ? `${fmtBytes(done / s)}/s` : '' });
      },
    });
    bar?.stop();
    const size = header.integrity.offset + header.integrity.length;
    const s = (performance.now() - t0) / 1000;
    process.stderr.write(`wrote ${flags.output}: synthetic ${flags.shape} (${arch.nLayers} layers), ${header.dtype}, ${header.layout}, ${fmtBytes(size)} in ${s.toFixed(1)} s (${fmtBytes(size / s)}/s)\n`);
  } catch (e) {
    bar?.stop();
    await sink?.abort();
    throw e;
  } finally {
    interrupt.release();
  }
}
