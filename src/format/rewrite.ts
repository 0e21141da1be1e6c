/**
 * Writes a copy of a .flm with a (new) predictor section: the resident and
 * FFN sections are copied byte for byte (verified as they are read), only the
 * header, the predictor section and the integrity table are new.
 */
import { AbortedError, ArgumentError } from '../errors.js';
import type { Sink } from '../source/types.js';
import { getHasher } from './hash.js';
import { RESIDENT_BLOCK_BYTES, TENSOR_ALIGN, alignUp, type FlmHeader, type GateSparsity, type PredictorEntry, type SectionEntry, type TensorEntry } from './layout.js';
import type { FlmFile } from './reader.js';
import { BlockStream, finishFile, placeSections, type SectionSize } from './writer.js';

export interface LayerPredictor {
  rank: number;
  /** Logit threshold: neuron j is predicted active when (B·A·x + bias)_j > threshold. */
  threshold: number;
  /** A [rank, dModel], B [ffnDim, rank], bias [ffnDim], row-major f32. */
  a: Float32Array;
  b: Float32Array;
  bias: Float32Array;
}

/** A lookahead predictor: layer `layer`'s active neurons from layer `layer` - 1's FFN input. */
export interface LookaheadPredictor extends LayerPredictor {
  layer: number;
}

export interface RewriteOptions {
  /** Gate thresholds to store (gated models); the file's own are kept when absent. */
  gate?: GateSparsity;
  /** Lookahead predictors (layers 1 .. nLayers-1, each at most once; needs the per-layer predictors). None by default. */
  lookahead?: readonly LookaheadPredictor[];
  meta?: Record<string, string>;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/** Bytes copied per read while copying sections. */
const COPY_CHUNK = 16 << 20;

export async function writeWithPredictors(file: FlmFile, predictors: readonly LayerPredictor[], sink: Sink, opts: RewriteOptions = {}): Promise<FlmHeader> {
  const old = file.header;
  const { dModel, ffnDim, nLayers } = old.arch;
  // No predictors: the copy has none (a gated model's gate thresholds need no section).
  if (predictors.length !== nLayers && predictors.length !== 0) throw new ArgumentError(`expected ${nLayers} layer predictors (or none), got ${predictors.length}`);
  predictors.forEach((p, l) => {
    if (p.a.length !== p.rank * dModel || p.b.length !== ffnDim * p.rank || p.bias.length !== ffnDim) throw new ArgumentError(`predictor ${l}: shapes do not match rank ${p.rank}`);
  });
  const hasher = await getHasher();
  const oldResident = file.section('resident');

  // Tensors relative to their sections: the resident ones as they were, the predictors appended.
  const rel: TensorEntry[] = old.tensors
    .filter((t) => (t.section ?? 'resident') === 'resident')
    .map((t) => {
      const r: TensorEntry = { ...t, offset: t.offset - oldResident.offset };
      if (t.scalesOffset !== undefined) r.scalesOffset = t.scalesOffset - oldResident.offset;
      return r;
    });
  const entries: PredictorEntry[] = [];
  const values = new Map<string, Float32Array>();
  let at = 0;
  const add = (name: string, shape: number[], v: Float32Array) => {
    at = alignUp(at, TENSOR_ALIGN);
    rel.push({ name, dtype: 'f32', shape, offset: at, length: v.byteLength, section: 'predictor' });
    values.set(name, v);
    at += v.byteLength;
  };
  predictors.forEach((p, layer) => {
    const n = `layers.${layer}.pred_`;
    add(n + 'a', [p.rank, dModel], p.a);
    add(n + 'b', [ffnDim, p.rank], p.b);
    add(n + 'bias', [ffnDim], p.bias);
    entries.push({ layer, rank: p.rank, threshold: p.threshold, a: n + 'a', b: n + 'b', bias: n + 'bias' });
  });
  const ahead = opts.lookahead ?? [];
  if (ahead.length && !predictors.length) throw new ArgumentError('lookahead predictors need the per-layer predictors');
  const seen = new Set<number>();
  const lookahead: PredictorEntry[] = [];
  for (const p of ahead) {
    if (!Number.isInteger(p.layer) || p.layer < 1 || p.layer >= nLayers || seen.has(p.layer)) throw new ArgumentError(`lookahead predictor for layer ${p.layer}: expected distinct layers in [1, ${nLayers - 1}]`);
    seen.add(p.layer);
    if (p.a.length !== p.rank * dModel || p.b.length !== ffnDim * p.rank || p.bias.length !== ffnDim) throw new ArgumentError(`lookahead predictor ${p.layer}: shapes do not match rank ${p.rank}`);
    const n = `predictor.lookahead.${p.layer}.`;
    add(n + 'a', [p.rank, dModel], p.a);
    add(n + 'b', [ffnDim, p.rank], p.b);
    add(n + 'bias', [ffnDim], p.bias);
    lookahead.push({ layer: p.layer, rank: p.rank, threshold: p.threshold, a: n + 'a', b: n + 'b', bias: n + 'bias' });
  }
  const predictorLength = alignUp(at, TENSOR_ALIGN);

  const copied = old.sections.filter((s) => s.name !== 'predictor');
  const sizes: SectionSize[] = copied.map((s) => ({ name: s.name, length: s.length, blockBytes: s.blockBytes, blockCount: s.blockCount }));
  if (entries.length) sizes.splice(1, 0, { name: 'predictor', length: predictorLength, blockBytes: RESIDENT_BLOCK_BYTES, blockCount: Math.ceil(predictorLength / RESIDENT_BLOCK_BYTES) });
  const header: FlmHeader = { ...old, tensors: [], sections: [], predictors: entries, meta: { ...old.meta, ...opts.meta } };
  if (!entries.length) delete header.predictors;
  // Only files with lookahead predictors carry the key (the others stay byte-identical to before it existed).
  if (lookahead.length) header.lookahead = lookahead;
  else delete header.lookahead;
  if (opts.gate) header.gate = opts.gate;
  const { headerLength, fileSize } = placeSections(header, sizes, rel);

  let done = 0;
  const progress = (n: number) => {
    done += n;
    opts.onProgress?.(done, fileSize);
  };
  const blockHashes: string[] = [];
  const oldHash = (s: SectionEntry, b: number) => file.blockHashes[s.firstBlock + b]!.toString(16).padStart(16, '0');
  for (const target of header.sections) {
    if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
    if (target.name === 'predictor') {
      const stream = new BlockStream(sink, target.offset, RESIDENT_BLOCK_BYTES, hasher, progress);
      for (const t of header.tensors.filter((x) => x.section === 'predictor')) {
        await stream.padTo(t.offset - target.offset);
        const v = values.get(t.name)!;
        await stream.push(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      }
      await stream.end(target.length);
      blockHashes.push(...stream.hashes);
      continue;
    }
    // Same bytes, new place: copy in verified whole-block chunks; the block hashes carry over.
    const src = file.section(target.name);
    const blocksPerChunk = Math.max(1, Math.floor(COPY_CHUNK / src.blockBytes));
    for (let b = 0; b < src.blockCount; b += blocksPerChunk) {
      if (opts.signal?.aborted) throw new AbortedError('aborted', { cause: opts.signal.reason });
      const start = b * src.blockBytes;
      const buf = new Uint8Array(Math.min(blocksPerChunk * src.blockBytes, src.length - start));
      await file.readSection(src, buf, b);
      await sink.write(target.offset + start, buf);
      progress(buf.byteLength);
    }
    for (let b = 0; b < src.blockCount; b++) blockHashes.push(oldHash(src, b));
  }
  progress(await finishFile(sink, header, headerLength, blockHashes, hasher));
  await sink.finish(fileSize);
  return header;
}
