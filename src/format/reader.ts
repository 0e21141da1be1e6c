/**
 * Reads and validates a .flm file through any Source (file, HTTP range,
 * memory). Every failure is a FormatError or IntegrityError: the header is
 * untrusted input, so nothing in it is used before it has been checked
 * against the file's size and the architecture.
 */
import { Unpackr } from 'msgpackr';
import { FormatError, IntegrityError } from '../errors.js';
import { rowBytes } from '../kernels/quant.js';
import type { ReadHints, Source } from '../source/types.js';
import { runBounded } from '../util/bounded.js';
import { ArenaHasher, getHasher, hex64, type Hasher, type XxhKernels } from './hash.js';
import {
  READ_VERSIONS,
  MAGIC,
  archV2Keys,
  MAX_HEADER_BYTES,
  PREAMBLE_BYTES,
  RESIDENT_BLOCK_BYTES,
  SECTION_ALIGN,
  TENSOR_ALIGN,
  ffnParts,
  partGeometry,
  scaleBytes,
  type FfnEntry,
  type FlmHeader,
  type GateSparsity,
  type PredictorEntry,
  type SectionEntry,
  type TensorEntry,
} from './layout.js';
import type { ArchConfig, RopeScaling, TokenizerSpec } from './types.js';

/** Typed arrays use the platform's byte order; a BigUint64Array seen as u32 pairs is [lo, hi] only on little-endian ones. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export interface Preamble {
  version: number;
  headerLength: number;
  headerHash: bigint;
}

export function parsePreamble(bytes: Uint8Array, fileSize: number): Preamble {
  if (fileSize < PREAMBLE_BYTES || bytes.byteLength < PREAMBLE_BYTES) throw new FormatError(`file too small for a .flm (${fileSize} bytes)`);
  for (let i = 0; i < MAGIC.length; i++) if (bytes[i] !== MAGIC[i]) throw new FormatError('not a .flm file (bad magic)');
  const v = new DataView(bytes.buffer, bytes.byteOffset, PREAMBLE_BYTES);
  const version = v.getUint32(8, true);
  if (!READ_VERSIONS.includes(version)) throw new FormatError(`unsupported .flm version ${version} (this flashlm reads ${READ_VERSIONS.join(' and ')})`);
  const headerLength = v.getUint32(12, true);
  if (headerLength === 0 || headerLength > MAX_HEADER_BYTES || PREAMBLE_BYTES + headerLength > fileSize) {
    throw new FormatError(`header length ${headerLength} does not fit a ${fileSize}-byte file`);
  }
  return { version, headerLength, headerHash: v.getBigUint64(16, true) };
}

/** Decodes and validates header bytes whose hash is already known to match. */
export function decodeHeader(bytes: Uint8Array, fileSize: number): FlmHeader {
  let raw: unknown;
  try {
    raw = unpackr.unpack(bytes);
  } catch (e) {
    throw new FormatError(`header is not valid msgpack: ${(e as Error).message}`, { cause: e });
  }
  try {
    return validateHeader(raw, fileSize, PREAMBLE_BYTES + bytes.byteLength);
  } catch (e) {
    if (e instanceof FormatError) throw e;
    throw new FormatError(`malformed header: ${(e as Error).message}`, { cause: e });
  }
}

// ---- schema checks: each returns the checked value or throws FormatError naming the field ----

const fail = (path: string, what: string): never => {
  throw new FormatError(`header field ${path}: ${what}`);
};
const obj = (v: unknown, path: string): Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) ? (v as Record<string, unknown>) : fail(path, 'expected a map');
const int = (v: unknown, path: string, min = 0, max = Number.MAX_SAFE_INTEGER): number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max ? v : fail(path, `expected an integer in [${min}, ${max}], got ${String(v)}`);
const num = (v: unknown, path: string): number => (typeof v === 'number' && Number.isFinite(v) ? v : fail(path, 'expected a finite number'));
const bool = (v: unknown, path: string): boolean => (typeof v === 'boolean' ? v : fail(path, 'expected a boolean'));
const str = (v: unknown, path: string, max = 1 << 30): string => (typeof v === 'string' && v.length <= max ? v : fail(path, 'expected a string'));
const oneOf = <T extends string>(v: unknown, path: string, options: readonly T[]): T =>
  options.includes(v as T) ? (v as T) : fail(path, `expected one of ${options.join(', ')}`);
const arr = (v: unknown, path: string, maxLength: number): unknown[] =>
  Array.isArray(v) && v.length <= maxLength ? v : fail(path, `expected an array of at most ${maxLength} items`);
const hash = (v: unknown, path: string): string => (typeof v === 'string' && /^[0-9a-f]{16}$/.test(v) ? v : fail(path, 'expected 16 hex digits'));
const DTYPES = ['f32', 'f16', 'int8', 'q8', 'q4'] as const;

function validateArch(v: unknown): ArchConfig {
  const a = obj(v, 'arch');
  const type = oneOf(a.type, 'arch.type', ['opt', 'llama'] as const);
  const M = 1 << 20; // far above any real dimension, low enough that products stay exact
  const nHeads = int(a.nHeads, 'arch.nHeads', 1, 4096);
  const nKvHeads = int(a.nKvHeads, 'arch.nKvHeads', 1, nHeads);
  if (nHeads % nKvHeads) fail('arch.nKvHeads', 'must divide nHeads');
  const arch: ArchConfig = {
    type,
    dModel: int(a.dModel, 'arch.dModel', 1, M),
    nLayers: int(a.nLayers, 'arch.nLayers', 1, 4096),
    nHeads,
    nKvHeads,
    headDim: int(a.headDim, 'arch.headDim', 2, 4096),
    ffnDim: int(a.ffnDim, 'arch.ffnDim', 1, 4 * M),
    vocabSize: int(a.vocabSize, 'arch.vocabSize', 1, 16 * M),
    maxSeqLen: int(a.maxSeqLen, 'arch.maxSeqLen', 1, 16 * M),
    norm: oneOf(a.norm, 'arch.norm', ['layernorm', 'rmsnorm'] as const),
    normEps: num(a.normEps, 'arch.normEps'),
    activation: oneOf(a.activation, 'arch.activation', ['relu', 'swiglu'] as const),
    positions: oneOf(a.positions, 'arch.positions', ['learned', 'rope'] as const),
    preNorm: bool(a.preNorm, 'arch.preNorm'),
    attnBias: bool(a.attnBias, 'arch.attnBias'),
    ffnBias: bool(a.ffnBias, 'arch.ffnBias'),
    tiedEmbeddings: bool(a.tiedEmbeddings, 'arch.tiedEmbeddings'),
    embedDim: int(a.embedDim, 'arch.embedDim', 1, M),
    bosId: int(a.bosId, 'arch.bosId'),
    eosId: int(a.eosId, 'arch.eosId'),
    stopIds: arr(a.stopIds, 'arch.stopIds', 64).map((x, i) => int(x, `arch.stopIds[${i}]`)),
  };
  if (arch.headDim % 2) fail('arch.headDim', 'must be even');
  if (a.posOffset !== undefined) arch.posOffset = int(a.posOffset, 'arch.posOffset', 0, 1024);
  if (a.ropeStyle !== undefined) arch.ropeStyle = oneOf(a.ropeStyle, 'arch.ropeStyle', ['interleaved', 'half'] as const);
  if (a.ropeTheta !== undefined) arch.ropeTheta = num(a.ropeTheta, 'arch.ropeTheta');
  if (arch.positions === 'rope' && !arch.ropeStyle) fail('arch.ropeStyle', 'required with rotary positions');
  if (arch.positions === 'learned' && arch.posOffset === undefined) fail('arch.posOffset', 'required with learned positions');
  if (a.ropeScaling !== undefined) {
    if (arch.positions !== 'rope') fail('arch.ropeScaling', 'needs rotary positions');
    const rs = validateRopeScaling(a.ropeScaling);
    if (rs.type === 'longrope' && (rs.shortFactor.length !== arch.headDim / 2 || rs.longFactor.length !== arch.headDim / 2)) {
      fail('arch.ropeScaling', `shortFactor and longFactor must have headDim / 2 = ${arch.headDim / 2} items`);
    }
    arch.ropeScaling = rs;
  }
  if (a.qkNorm !== undefined) {
    arch.qkNorm = bool(a.qkNorm, 'arch.qkNorm');
    if (arch.qkNorm && arch.norm !== 'rmsnorm') fail('arch.qkNorm', 'needs norm rmsnorm');
  }
  if (a.slidingWindow !== undefined) arch.slidingWindow = int(a.slidingWindow, 'arch.slidingWindow', 1, 16 * M);
  if (a.slidingWindowStart !== undefined) {
    if (arch.slidingWindow === undefined) fail('arch.slidingWindowStart', 'needs slidingWindow');
    arch.slidingWindowStart = int(a.slidingWindowStart, 'arch.slidingWindowStart', 0, arch.nLayers - 1);
  }
  if (a.gatedAct !== undefined) {
    if (arch.activation !== 'swiglu') fail('arch.gatedAct', 'only with a gated (swiglu) FFN');
    arch.gatedAct = oneOf(a.gatedAct, 'arch.gatedAct', ['silu', 'relu', 'fatrelu', 'drelu'] as const);
  }
  if (a.gatedActThreshold !== undefined) {
    if (arch.gatedAct !== 'fatrelu') fail('arch.gatedActThreshold', "only with gatedAct 'fatrelu'");
    arch.gatedActThreshold = num(a.gatedActThreshold, 'arch.gatedActThreshold');
  } else if (arch.gatedAct === 'fatrelu') fail('arch.gatedActThreshold', "required with gatedAct 'fatrelu'");
  return arch;
}

function validateRopeScaling(v: unknown): RopeScaling {
  const r = obj(v, 'arch.ropeScaling');
  const p = 'arch.ropeScaling.';
  const type = oneOf(r.type, p + 'type', ['linear', 'dynamic', 'llama3', 'longrope'] as const);
  if (type === 'longrope') {
    const factors = (key: string) =>
      arr(r[key], p + key, 2048).map((x, i) => {
        const v = num(x, `${p}${key}[${i}]`);
        return v > 0 ? v : fail(`${p}${key}[${i}]`, 'must be > 0');
      });
    const shortFactor = factors('shortFactor');
    const longFactor = factors('longFactor');
    const originalMaxPos = int(r.originalMaxPos, p + 'originalMaxPos', 1, 16 * (1 << 20));
    const attentionFactor = num(r.attentionFactor, p + 'attentionFactor');
    if (!(attentionFactor > 0)) fail(p + 'attentionFactor', 'must be > 0');
    return { type, shortFactor, longFactor, originalMaxPos, attentionFactor };
  }
  const factor = num(r.factor, p + 'factor');
  if (!(factor >= 1)) fail(p + 'factor', 'must be >= 1');
  if (type === 'linear') return { type, factor };
  const originalMaxPos = int(r.originalMaxPos, p + 'originalMaxPos', 1, 16 * (1 << 20));
  if (type === 'dynamic') return { type, factor, originalMaxPos };
  const lowFreqFactor = num(r.lowFreqFactor, p + 'lowFreqFactor');
  const highFreqFactor = num(r.highFreqFactor, p + 'highFreqFactor');
  if (!(lowFreqFactor > 0 && highFreqFactor > lowFreqFactor)) fail(p + 'highFreqFactor', 'must exceed lowFreqFactor, which must be > 0');
  return { type, factor, lowFreqFactor, highFreqFactor, originalMaxPos };
}

function validateTokenizer(v: unknown): TokenizerSpec {
  const t = obj(v, 'tokenizer');
  if (t.kind === 'hf') {
    const spec: TokenizerSpec = { kind: 'hf', json: str(t.json, 'tokenizer.json') };
    if (t.config !== undefined) spec.config = str(t.config, 'tokenizer.config');
    if (t.chatTemplate !== undefined) spec.chatTemplate = str(t.chatTemplate, 'tokenizer.chatTemplate', 1 << 20);
    return spec;
  }
  if (t.kind === 'llama2c') {
    if (!(t.data instanceof Uint8Array)) fail('tokenizer.data', 'expected bytes');
    return { kind: 'llama2c', data: t.data as Uint8Array };
  }
  return fail('tokenizer.kind', 'expected hf or llama2c');
}

/** `headerEnd`: first byte after the header; sections must start at or after it. */
export function validateHeader(raw: unknown, fileSize: number, headerEnd = PREAMBLE_BYTES): FlmHeader {
  const h = obj(raw, 'header');
  if (h.format !== 'flashlm') fail('format', "expected 'flashlm'");
  const version = int(h.version, 'version');
  if (!READ_VERSIONS.includes(version)) fail('version', `expected ${READ_VERSIONS.join(' or ')}`);
  const arch = validateArch(h.arch);
  // A version-1 reader would ignore these keys and run the model wrong: they come only with version 2.
  const v2 = archV2Keys(arch);
  if (v2.length && version < 2) fail(`arch.${v2[0]}`, 'needs version 2');
  const dtype = oneOf(h.dtype, 'dtype', DTYPES);
  const layout = oneOf(h.layout, 'layout', ['bundled', 'split'] as const);
  const within = (offset: number, length: number, path: string) => {
    if (offset + length > fileSize) fail(path, `[${offset}, +${length}) runs past the end of the ${fileSize}-byte file`);
  };

  // Integrity table: 8 bytes per block, every section's blocks inside it.
  const ig = obj(h.integrity, 'integrity');
  oneOf(ig.algorithm, 'integrity.algorithm', ['xxh64'] as const);
  const integrity = { algorithm: 'xxh64' as const, offset: int(ig.offset, 'integrity.offset'), length: int(ig.length, 'integrity.length'), hash: hash(ig.hash, 'integrity.hash') };
  within(integrity.offset, integrity.length, 'integrity');
  if (integrity.offset < headerEnd) fail('integrity.offset', 'overlaps the header');
  if (integrity.length % 8) fail('integrity.length', 'not a multiple of 8');
  // FORMAT.md §4: the file ends exactly where the integrity table ends.
  if (integrity.offset + integrity.length !== fileSize) fail('integrity', `the file must end where the table ends (byte ${integrity.offset + integrity.length}); it has ${fileSize - integrity.offset - integrity.length} more bytes`);
  const totalBlocks = integrity.length / 8;

  const sections: SectionEntry[] = arr(h.sections, 'sections', 1 << 16).map((v, i) => {
    const p = `sections[${i}]`;
    const s = obj(v, p);
    const e: SectionEntry = {
      name: str(s.name, `${p}.name`, 256),
      offset: int(s.offset, `${p}.offset`),
      length: int(s.length, `${p}.length`, 1),
      blockBytes: int(s.blockBytes, `${p}.blockBytes`, 1),
      firstBlock: int(s.firstBlock, `${p}.firstBlock`),
      blockCount: int(s.blockCount, `${p}.blockCount`, 1),
      hash: hash(s.hash, `${p}.hash`),
    };
    if (e.offset % SECTION_ALIGN) fail(`${p}.offset`, `not aligned to ${SECTION_ALIGN}`);
    if (e.offset < headerEnd) fail(`${p}.offset`, 'overlaps the header');
    within(e.offset, e.length, p);
    if (Math.ceil(e.length / e.blockBytes) !== e.blockCount) fail(`${p}.blockCount`, 'does not match length / blockBytes');
    if (e.firstBlock + e.blockCount > totalBlocks) fail(`${p}.firstBlock`, 'outside the integrity table');
    return e;
  });
  const byName = new Map(sections.map((s) => [s.name, s]));
  if (byName.size !== sections.length) fail('sections', 'duplicate names');
  const resident = byName.get('resident') ?? fail('sections', "no 'resident' section");
  if (resident.blockBytes !== RESIDENT_BLOCK_BYTES) fail('sections.resident.blockBytes', `expected ${RESIDENT_BLOCK_BYTES}`);
  const predictorSection = byName.get('predictor');
  if (predictorSection && predictorSection.blockBytes !== RESIDENT_BLOCK_BYTES) fail('sections.predictor.blockBytes', `expected ${RESIDENT_BLOCK_BYTES}`);
  const integrityRange = { name: 'integrity', offset: integrity.offset, length: integrity.length };
  const sorted = [...sections, integrityRange].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i - 1]!.offset + sorted[i - 1]!.length > sorted[i]!.offset) fail('sections', `${sorted[i - 1]!.name} overlaps ${sorted[i]!.name}`);
  }
  // The sections' blocks tile the integrity table exactly: no shared or orphan hashes.
  const byBlock = [...sections].sort((a, b) => a.firstBlock - b.firstBlock);
  let nextBlock = 0;
  for (const s of byBlock) {
    if (s.firstBlock !== nextBlock) fail('sections', `${s.name} blocks do not follow on from the previous section's`);
    nextBlock += s.blockCount;
  }
  if (nextBlock !== totalBlocks) fail('integrity.length', 'does not match the sections\' block counts');

  const tensors: TensorEntry[] = arr(h.tensors, 'tensors', 1 << 20).map((v, i) => {
    const p = `tensors[${i}]`;
    const t = obj(v, p);
    const e: TensorEntry = {
      name: str(t.name, `${p}.name`, 256),
      dtype: oneOf(t.dtype, `${p}.dtype`, DTYPES),
      shape: arr(t.shape, `${p}.shape`, 2).map((x, j) => int(x, `${p}.shape[${j}]`, 1, 1 << 26)),
      offset: int(t.offset, `${p}.offset`),
      length: int(t.length, `${p}.length`),
    };
    if (e.shape.length === 0) fail(`${p}.shape`, 'empty');
    // The kernels read vectors (norms, biases) as f32, and int8 scales are per row.
    if (e.shape.length === 1 && e.dtype !== 'f32') fail(`${p}.dtype`, 'vectors must be f32');
    const count = e.shape.reduce((a, b) => a * b, 1);
    if (e.length !== (count / e.shape[e.shape.length - 1]!) * rowBytes(e.dtype, e.shape[e.shape.length - 1]!)) fail(`${p}.length`, 'does not match shape and dtype');
    if (t.section !== undefined) e.section = str(t.section, `${p}.section`, 256);
    const home = byName.get(e.section ?? 'resident');
    if (!home || home.name.startsWith('ffn.')) fail(`${p}.section`, 'not a resident or predictor section');
    const inSection = (off: number, len: number, what: string) => {
      if (off < home!.offset || off + len > home!.offset + home!.length) fail(what, `outside section ${home!.name}`);
    };
    if (e.offset % TENSOR_ALIGN) fail(`${p}.offset`, `not aligned to ${TENSOR_ALIGN}`);
    inSection(e.offset, e.length, `${p}.offset`);
    if (e.dtype === 'int8' || e.dtype === 'q8' || e.dtype === 'q4') {
      e.scalesOffset = int(t.scalesOffset, `${p}.scalesOffset`);
      if (e.scalesOffset % TENSOR_ALIGN) fail(`${p}.scalesOffset`, `not aligned to ${TENSOR_ALIGN}`);
      inSection(e.scalesOffset, scaleBytes(e.dtype, e.shape), `${p}.scalesOffset`);
    }
    return e;
  });
  // No two tensors (values or scales) share bytes: a shifted offset would read another tensor's.
  const spans = tensors.flatMap((t) => [
    { what: t.name, start: t.offset, end: t.offset + t.length },
    ...(t.scalesOffset !== undefined ? [{ what: `${t.name} scales`, start: t.scalesOffset, end: t.scalesOffset + scaleBytes(t.dtype, t.shape) }] : []),
  ]).sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]!.start < spans[i - 1]!.end) fail('tensors', `${spans[i]!.what} overlaps ${spans[i - 1]!.what}`);
  }
  const tensorNames = new Set(tensors.map((t) => t.name));
  if (tensorNames.size !== tensors.length) fail('tensors', 'duplicate names');
  const tensorByName = new Map(tensors.map((t) => [t.name, t]));
  const need = (name: string, shape: number[], section = 'resident') => {
    const t = tensorByName.get(name) ?? fail('tensors', `missing ${name}`);
    if ((t.section ?? 'resident') !== section) fail('tensors', `${name} must be in section ${section}`);
    if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) fail('tensors', `${name} has shape [${t.shape}], expected [${shape}]`);
  };
  const { dModel, headDim, nHeads, nKvHeads, vocabSize, embedDim } = arch;
  need('tok_embeddings', [vocabSize, embedDim]);
  if (!arch.tiedEmbeddings) need('lm_head', [vocabSize, embedDim]);
  if (embedDim !== dModel) {
    need('project_in', [dModel, embedDim]);
    need('project_out', [embedDim, dModel]);
  }
  if (arch.positions === 'learned') need('pos_embeddings', [arch.maxSeqLen + arch.posOffset!, dModel]);
  for (let l = 0; l < arch.nLayers; l++) {
    const p = `layers.${l}.`;
    need(p + 'attn_norm.weight', [dModel]);
    need(p + 'ffn_norm.weight', [dModel]);
    need(p + 'wq', [nHeads * headDim, dModel]);
    need(p + 'wk', [nKvHeads * headDim, dModel]);
    need(p + 'wv', [nKvHeads * headDim, dModel]);
    need(p + 'wo', [dModel, nHeads * headDim]);
    if (arch.norm === 'layernorm') {
      need(p + 'attn_norm.bias', [dModel]);
      need(p + 'ffn_norm.bias', [dModel]);
    }
    if (arch.qkNorm) {
      need(p + 'q_norm', [headDim]);
      need(p + 'k_norm', [headDim]);
    }
    if (arch.attnBias) {
      need(p + 'bq', [nHeads * headDim]);
      need(p + 'bk', [nKvHeads * headDim]);
      need(p + 'bv', [nKvHeads * headDim]);
    }
    if (arch.ffnBias) need(p + 'ffn_down_bias', [dModel]);
  }

  const parts = ffnParts(arch);
  const geo = partGeometry(dModel, dtype, arch.ffnBias);
  const ffn: FfnEntry[] = arr(h.ffn, 'ffn', 4096).map((v, i) => {
    const p = `ffn[${i}]`;
    const f = obj(v, p);
    const e: FfnEntry = {
      layer: int(f.layer, `${p}.layer`, i, i),
      section: str(f.section, `${p}.section`, 256),
      layout: oneOf(f.layout, `${p}.layout`, ['bundled', 'split'] as const),
      dtype: oneOf(f.dtype, `${p}.dtype`, DTYPES),
      neurons: int(f.neurons, `${p}.neurons`, arch.ffnDim, arch.ffnDim),
      d: int(f.d, `${p}.d`, dModel, dModel),
      parts: arr(f.parts, `${p}.parts`, 3).map((x, j) => oneOf(x, `${p}.parts[${j}]`, [parts[j] ?? 'up'] as const)),
      partBytes: int(f.partBytes, `${p}.partBytes`),
      stride: int(f.stride, `${p}.stride`),
      partOffsets: arr(f.partOffsets, `${p}.partOffsets`, 3).map((x, j) => int(x, `${p}.partOffsets[${j}]`)),
      scaleAt: int(f.scaleAt, `${p}.scaleAt`),
      biasAt: int(f.biasAt, `${p}.biasAt`),
      hasBias: bool(f.hasBias, `${p}.hasBias`),
    };
    if (e.parts.length !== parts.length || e.partOffsets.length !== parts.length) fail(`${p}.parts`, `expected ${parts.join(', ')}`);
    if (e.dtype !== dtype || e.layout !== layout) fail(p, 'dtype/layout differ from the file');
    if (e.hasBias !== arch.ffnBias) fail(`${p}.hasBias`, 'differs from arch.ffnBias');
    if (e.partBytes !== geo.partBytes || e.scaleAt !== geo.scaleAt || e.biasAt !== geo.biasAt) fail(`${p}.partBytes`, 'does not match the part geometry');
    const n = e.neurons;
    const bundled = layout === 'bundled';
    if (e.stride !== (bundled ? parts.length * geo.partBytes : geo.partBytes)) fail(`${p}.stride`, 'does not match the layout');
    e.partOffsets.forEach((o, j) => {
      if (o !== (bundled ? j * geo.partBytes : j * n * geo.partBytes)) fail(`${p}.partOffsets[${j}]`, 'does not match the layout');
    });
    // Layer i's neurons live in section ffn.i (FORMAT.md §8): pointing it elsewhere would run another layer's weights.
    if (e.section !== `ffn.${i}`) fail(`${p}.section`, `expected ffn.${i}, got ${e.section}`);
    const s = byName.get(e.section) ?? fail(`${p}.section`, `no section ${e.section}`);
    if (s.length !== n * parts.length * geo.partBytes) fail(`${p}.section`, 'section length does not match neurons × record size');
    if (s.blockBytes !== (bundled ? e.stride : geo.partBytes)) fail(`${p}.section`, 'block size does not match the layout');
    return e;
  });
  if (ffn.length !== arch.nLayers) fail('ffn', `expected ${arch.nLayers} layers`);

  let predictors: PredictorEntry[] | undefined;
  if (h.predictors !== undefined) {
    if (!byName.has('predictor')) fail('predictors', "no 'predictor' section");
    predictors = arr(h.predictors, 'predictors', 4096).map((v, i) => {
      const p = `predictors[${i}]`;
      const e = obj(v, p);
      const entry: PredictorEntry = {
        layer: int(e.layer, `${p}.layer`, i, i),
        rank: int(e.rank, `${p}.rank`, 1, 1 << 16),
        threshold: num(e.threshold, `${p}.threshold`),
        a: str(e.a, `${p}.a`, 256),
        b: str(e.b, `${p}.b`, 256),
        bias: str(e.bias, `${p}.bias`, 256),
      };
      need(entry.a, [entry.rank, dModel], 'predictor');
      need(entry.b, [arch.ffnDim, entry.rank], 'predictor');
      need(entry.bias, [arch.ffnDim], 'predictor');
      return entry;
    });
    if (predictors.length !== arch.nLayers) fail('predictors', `expected ${arch.nLayers} layers`);
  }
  let lookahead: PredictorEntry[] | undefined;
  if (h.lookahead !== undefined) {
    if (!predictors) fail('lookahead', 'needs the per-layer predictors');
    const seen = new Set<number>();
    lookahead = arr(h.lookahead, 'lookahead', 4096).map((v, i) => {
      const p = `lookahead[${i}]`;
      const e = obj(v, p);
      const entry: PredictorEntry = {
        layer: int(e.layer, `${p}.layer`, 1, arch.nLayers - 1),
        rank: int(e.rank, `${p}.rank`, 1, 1 << 16),
        threshold: num(e.threshold, `${p}.threshold`),
        a: str(e.a, `${p}.a`, 256),
        b: str(e.b, `${p}.b`, 256),
        bias: str(e.bias, `${p}.bias`, 256),
      };
      if (seen.has(entry.layer)) fail(`${p}.layer`, `layer ${entry.layer} appears twice`);
      seen.add(entry.layer);
      need(entry.a, [entry.rank, dModel], 'predictor');
      need(entry.b, [arch.ffnDim, entry.rank], 'predictor');
      need(entry.bias, [arch.ffnDim], 'predictor');
      return entry;
    });
  }

  let gate: GateSparsity | undefined;
  if (h.gate !== undefined) {
    if (arch.activation !== 'swiglu') fail('gate', 'gate thresholds need a gated (swiglu) FFN');
    const g = obj(h.gate, 'gate');
    const sparsity = num(g.sparsity, 'gate.sparsity');
    if (sparsity < 0 || sparsity > 1) fail('gate.sparsity', 'expected a number in [0, 1]');
    const thresholds = arr(g.thresholds, 'gate.thresholds', 4096).map((v, i) => {
      const t = num(v, `gate.thresholds[${i}]`);
      return t >= 0 ? t : fail(`gate.thresholds[${i}]`, 'expected a number >= 0');
    });
    if (thresholds.length !== arch.nLayers) fail('gate.thresholds', `expected ${arch.nLayers} layers`);
    gate = { sparsity, thresholds };
  }

  const meta: Record<string, string> = {};
  if (h.meta !== undefined) for (const [k, v] of Object.entries(obj(h.meta, 'meta'))) meta[k] = str(v, `meta.${k}`, 4096);

  const header: FlmHeader = { format: 'flashlm', version, arch, tokenizer: validateTokenizer(h.tokenizer), dtype, layout, tensors, sections, ffn, integrity, meta };
  if (predictors) header.predictors = predictors;
  if (lookahead) header.lookahead = lookahead;
  if (gate) header.gate = gate;
  return header;
}

/** An opened .flm: the validated header and the verified integrity table. */
export class FlmFile {
  private readonly tensorsByName: Map<string, TensorEntry>;
  private readonly sectionsByName: Map<string, SectionEntry>;
  /** Kernel hashers, one per arena (useKernelHasher); usually one. */
  private arenaHashers: ArenaHasher[] = [];
  /** blockHashes as u32 halves [lo0, hi0, lo1, hi1, ...], for ArenaHasher.matches (made on first useKernelHasher). */
  private hashWords?: Uint32Array;
  constructor(
    readonly source: Source,
    readonly header: FlmHeader,
    /** u64 xxh64 per block, little-endian, all sections in table order. */
    readonly blockHashes: BigUint64Array,
    private readonly hasher: Hasher,
  ) {
    this.tensorsByName = new Map(header.tensors.map((t) => [t.name, t]));
    this.sectionsByName = new Map(header.sections.map((s) => [s.name, s]));
  }

  /** The same file read through another source (the one a cache tier wraps): same header and block hashes. */
  withSource(source: Source): FlmFile {
    return new FlmFile(source, this.header, this.blockHashes, this.hasher);
  }

  tensor(name: string): TensorEntry | undefined {
    return this.tensorsByName.get(name);
  }

  section(name: string): SectionEntry {
    const s = this.sectionsByName.get(name);
    if (!s) throw new FormatError(`no section ${name}`);
    return s;
  }

  /**
   * From now on, verify() hashes views of `kernels.memory` (an arena) in place
   * with the kernels' xxh64 instead of copying them into xxhash-wasm's memory.
   * Other bytes still go through xxhash-wasm. Call once per arena (a second
   * call for the same memory is ignored). Returns false, changing nothing, when
   * the module has no xxh64 export (an older kernels build).
   */
  useKernelHasher(kernels: Partial<XxhKernels> & Pick<XxhKernels, 'memory'>): boolean {
    if (typeof kernels.xxh64 !== 'function' || typeof kernels.xxh64_slot !== 'function') return false;
    if (this.arenaHashers.some((h) => h.kernels.memory === kernels.memory)) return true;
    if (!this.hashWords) {
      const h = this.blockHashes;
      if (LITTLE_ENDIAN) this.hashWords = new Uint32Array(h.buffer, h.byteOffset, h.length * 2); // the same bytes, no copy
      else {
        const w = new Uint32Array(h.length * 2);
        for (let i = 0; i < h.length; i++) {
          w[2 * i] = Number(h[i]! & 0xffffffffn);
          w[2 * i + 1] = Number(h[i]! >> 32n);
        }
        this.hashWords = w;
      }
    }
    this.arenaHashers.push(new ArenaHasher(kernels as XxhKernels, this.hasher));
    return true;
  }

  /**
   * Verifies bytes read from `section` starting at block `firstBlock`
   * (`bytes` must cover whole blocks, the last one possibly the section's short tail).
   * Views of an arena registered with useKernelHasher are hashed in place.
   */
  verify(section: SectionEntry, firstBlock: number, bytes: Uint8Array): void {
    let kernel: ArenaHasher | undefined;
    for (const h of this.arenaHashers) {
      if (h.owns(bytes)) {
        kernel = h;
        break;
      }
    }
    if (kernel) this.verifyInPlace(kernel, section, firstBlock, bytes.byteOffset, bytes.byteLength);
    else {
      let at = 0;
      for (let b = firstBlock; at < bytes.byteLength; b++) {
        const len = this.blockLength(section, b, at, bytes.byteLength);
        const got = this.hasher.u64(bytes.subarray(at, at + len));
        if (got !== this.blockHashes[section.firstBlock + b]!) this.mismatch(section, b, got);
        at += len;
      }
    }
  }

  /**
   * As verify(), for the `length` bytes at offset `ptr` of `memory` (an arena),
   * without a view of them: the hot path verifies every streamed record this way.
   */
  verifyArena(memory: WebAssembly.Memory, section: SectionEntry, firstBlock: number, ptr: number, length: number): void {
    for (const h of this.arenaHashers) {
      if (h.kernels.memory === memory) return this.verifyInPlace(h, section, firstBlock, ptr, length);
    }
    this.verify(section, firstBlock, new Uint8Array(memory.buffer, ptr, length));
  }

  /** Length of block b of `section`, read at `at` of a `total`-byte read; throws when the read does not cover whole blocks. */
  private blockLength(section: SectionEntry, b: number, at: number, total: number): number {
    const len = Math.min(section.blockBytes, section.length - b * section.blockBytes);
    if (b >= section.blockCount || at + len > total) throw new IntegrityError(`${this.source.name}: read of ${section.name} does not cover whole blocks`);
    return len;
  }

  private verifyInPlace(kernel: ArenaHasher, section: SectionEntry, firstBlock: number, ptr: number, length: number): void {
    const words = this.hashWords!; // set whenever a kernel hasher exists
    let at = 0;
    for (let b = firstBlock; at < length; b++) {
      const len = this.blockLength(section, b, at, length);
      const i = section.firstBlock + b;
      if (!kernel.matches(ptr + at, len, words[2 * i]!, words[2 * i + 1]!)) this.mismatch(section, b, kernel.hash(ptr + at, len));
      at += len;
    }
  }

  private mismatch(section: SectionEntry, b: number, got: bigint): never {
    const want = this.blockHashes[section.firstBlock + b]!;
    throw new IntegrityError(`${this.source.name}: ${section.name} block ${b} (file offset ${section.offset + b * section.blockBytes}) hash ${hex64(got)} != ${hex64(want)}`);
  }

  /**
   * Reads a whole section (or a block-aligned range of it) into `into`,
   * verified. With `hints`, long reads go out as `hints.parallel` pieces at
   * once (aligned for the source), so a section does not wait on one connection.
   * Returns the number of reads issued.
   */
  /** `onBytes` is told the size of each piece as it lands (load progress). */
  async readSection(section: SectionEntry, into: Uint8Array, firstBlock = 0, hints?: ReadHints, onBytes?: (bytes: number) => void): Promise<number> {
    const start = section.offset + firstBlock * section.blockBytes;
    const align = Math.max(1, this.source.alignment ?? 1);
    const parallel = hints?.parallel ?? 1;
    const piece = Math.max(align, Math.ceil(Math.min(hints?.maxRead ?? Infinity, Math.max(1 << 16, into.byteLength / parallel)) / align) * align);
    const tasks: (() => Promise<void>)[] = [];
    for (let at = 0; at < into.byteLength; at += parallel > 1 ? piece : into.byteLength) {
      const len = Math.min(parallel > 1 ? piece : into.byteLength, into.byteLength - at);
      tasks.push(onBytes ? () => this.source.read(start + at, into.subarray(at, at + len)).then(() => onBytes(len)) : () => this.source.read(start + at, into.subarray(at, at + len)));
    }
    await runBounded(tasks, parallel);
    this.verify(section, firstBlock, into);
    return tasks.length;
  }
}

/** Opens and validates a .flm through `source`: preamble, header (hash-checked), integrity table (hash-checked). */
export async function openFlm(source: Source): Promise<FlmFile> {
  const hasher = await getHasher();
  const size = source.size;
  const pre = new Uint8Array(PREAMBLE_BYTES);
  if (size < PREAMBLE_BYTES) throw new FormatError(`${source.name}: file too small for a .flm (${size} bytes)`);
  await source.read(0, pre);
  const preamble = parsePreamble(pre, size);
  const headerBytes = new Uint8Array(preamble.headerLength);
  await source.read(PREAMBLE_BYTES, headerBytes);
  if (hasher.u64(headerBytes) !== preamble.headerHash) throw new IntegrityError(`${source.name}: header hash mismatch (corrupt or truncated file)`);
  const header = decodeHeader(headerBytes, size);
  const table = new Uint8Array(header.integrity.length);
  await source.read(header.integrity.offset, table);
  if (hasher.hex(table) !== header.integrity.hash) throw new IntegrityError(`${source.name}: integrity table hash mismatch`);
  for (const s of header.sections) {
    if (hasher.hex(table.subarray(s.firstBlock * 8, (s.firstBlock + s.blockCount) * 8)) !== s.hash) {
      throw new IntegrityError(`${source.name}: section ${s.name} hash does not match its block hashes`);
    }
  }
  const hashes = new BigUint64Array(table.byteLength / 8);
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  for (let i = 0; i < hashes.length; i++) hashes[i] = dv.getBigUint64(i * 8, true);
  return new FlmFile(source, header, hashes, hasher);
}
