/**
 * The .flm layout constants and the arithmetic shared by writer, reader and
 * engine (docs/FORMAT.md is the prose version of this file).
 */
import type { ArchConfig, DType, TokenizerSpec } from './types.js';
import { q4Groups, q8Groups, rowBytes } from '../kernels/quant.js';

/** PNG-style magic: a high byte, the name, CR LF, ^Z, LF catch text-mode mangling. */
export const MAGIC = Uint8Array.of(0x89, 0x46, 0x4c, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a);
export const FORMAT_VERSION = 1;
/**
 * Version 2 = version 1 plus arch keys a version-1 reader would silently ignore
 * (ropeScaling, qkNorm, slidingWindow). Only files using one are written as 2,
 * so every other file stays version 1, readable by older readers.
 */
export const FORMAT_VERSION_ARCH2 = 2;
export const READ_VERSIONS: readonly number[] = [FORMAT_VERSION, FORMAT_VERSION_ARCH2];
/** The arch keys that need version 2, present in `arch`. */
export function archV2Keys(arch: ArchConfig): string[] {
  return (['ropeScaling', 'qkNorm', 'slidingWindow', 'slidingWindowStart', 'gatedAct', 'gatedActThreshold'] as const).filter((k) => arch[k] !== undefined);
}
/** The version a file of this architecture is written as. */
export function formatVersion(arch: ArchConfig): number {
  return archV2Keys(arch).length ? FORMAT_VERSION_ARCH2 : FORMAT_VERSION;
}
export const PREAMBLE_BYTES = 32;
/** Sections start on this boundary: page-aligned for O_DIRECT and OPFS. */
export const SECTION_ALIGN = 4096;
/** Tensors inside the resident section start on this boundary (SIMD-friendly). */
export const TENSOR_ALIGN = 64;
/** Integrity block of the resident section. */
export const RESIDENT_BLOCK_BYTES = 65536;
/** A header larger than this is refused before it is read. */
export const MAX_HEADER_BYTES = 256 * 1024 * 1024;

export type Layout = 'bundled' | 'split';
export type FfnPart = 'gate' | 'up' | 'down';

export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute file offset of the values. */
  offset: number;
  /** Bytes of values (product(shape) * dtype bytes). */
  length: number;
  /** int8: absolute file offset of one f32 scale per row; q8: of [rows][ceil(cols / 32)] f32 group scales. */
  scalesOffset?: number;
  /** The section holding the tensor: 'resident' when absent, or 'predictor'. */
  section?: string;
}

/**
 * A layer's neuron-activity predictor (PAPER.md "Low-rank predictor"):
 * neuron j is predicted active when (B·(A·x))_j + bias_j > threshold,
 * x being the FFN input (after the FFN norm).
 */
export interface PredictorEntry {
  layer: number;
  rank: number;
  /** Decision threshold on the logit (0 = probability 0.5). */
  threshold: number;
  /** Tensor names: A [rank, dModel], B [ffnDim, rank], bias [ffnDim]. */
  a: string;
  b: string;
  bias: string;
}

/**
 * Thresholded activation sparsity of a gated (SwiGLU) FFN: neuron j of layer l
 * is computed only when |silu(gate_j · x)| > thresholds[l]; its gate row stays
 * resident, its up and down parts are read only then.
 */
export interface GateSparsity {
  /** Share of neurons the thresholds were calibrated to skip (on calibration text). */
  sparsity: number;
  /** One threshold per layer (>= 0). */
  thresholds: number[];
}

export interface SectionEntry {
  /** 'resident', 'predictor', 'ffn.{layer}' */
  name: string;
  offset: number;
  length: number;
  /** Size of one integrity block; the last block of a section may be shorter. */
  blockBytes: number;
  /** Index of this section's first block in the integrity table. */
  firstBlock: number;
  blockCount: number;
  /** xxh64 (hex) of this section's slice of the integrity table. */
  hash: string;
}

export interface FfnEntry {
  layer: number;
  /** Name of the section that holds this layer's neurons. */
  section: string;
  layout: Layout;
  dtype: DType;
  /** Neurons (ffnDim) and values per part (dModel). */
  neurons: number;
  d: number;
  parts: FfnPart[];
  /** Bytes of one part record: values, int8 scale, bias slot, padded to 16. */
  partBytes: number;
  /** Distance between neuron i and i+1 within a part. */
  stride: number;
  /** Offset, relative to the section, of part p of neuron 0. */
  partOffsets: number[];
  /** Byte offset inside a part of the f32 scale (int8), of the first of ceil(d / 32) f32 group scales (q8), and of the bias (hasBias). */
  scaleAt: number;
  biasAt: number;
  hasBias: boolean;
}

export interface FlmHeader {
  format: 'flashlm';
  version: number;
  arch: ArchConfig;
  tokenizer: TokenizerSpec;
  dtype: DType;
  layout: Layout;
  tensors: TensorEntry[];
  sections: SectionEntry[];
  ffn: FfnEntry[];
  integrity: { algorithm: 'xxh64'; offset: number; length: number; hash: string };
  /** Per-layer predictors, in section 'predictor' (absent until `flashlm calibrate`). */
  predictors?: PredictorEntry[];
  /**
   * Lookahead predictors (Deja Vu's asynchronous lookahead), in section
   * 'predictor': the entry with `layer` L (1 <= L < nLayers, at most one each)
   * predicts layer L's active neurons from layer L-1's FFN input (the x layer
   * L-1's own predictor reads), by the same rule as PredictorEntry, so layer
   * L's reads can start before layer L-1's FFN ends. Absent when not calibrated.
   */
  lookahead?: PredictorEntry[];
  /** Gate thresholds of a gated FFN (absent until `flashlm calibrate` on a gated model). */
  gate?: GateSparsity;
  /** Free-form provenance: converter version, source format. */
  meta: Record<string, string>;
}

export const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export function ffnParts(arch: ArchConfig): FfnPart[] {
  return arch.activation === 'swiglu' ? ['gate', 'up', 'down'] : ['up', 'down'];
}

/** Bytes of one FFN part record for a model and dtype (see FfnEntry). */
export function partGeometry(d: number, dtype: DType, hasBias: boolean) {
  const values = rowBytes(dtype, d);
  const scaleAt = dtype === 'q8' ? alignUp(values, 4) : values;
  // q4: f16 group scales right after the 16-byte groups, the bias 4-aligned after them
  const biasAt = dtype === 'q4' ? alignUp(scaleAt + 2 * q4Groups(d), 4) : scaleAt + (dtype === 'int8' ? 4 : dtype === 'q8' ? 4 * q8Groups(d) : 0);
  const partBytes = alignUp(biasAt + (hasBias ? 4 : 0), 16);
  return { partBytes, scaleAt, biasAt };
}

/** Bytes of a resident tensor's scales: int8 one f32 per row, q8 one per group of 32 of each row, else none. */
export function scaleBytes(dtype: DType, shape: readonly number[]): number {
  if (dtype === 'int8') return shape[0]! * 4;
  if (dtype === 'q8') return shape[0]! * q8Groups(shape[shape.length - 1]!) * 4;
  if (dtype === 'q4') return shape[0]! * q4Groups(shape[shape.length - 1]!) * 2;
  return 0;
}

/** Tensors that are not FFN neurons stay resident (loaded once). */
export function isStreamedTensor(name: string): boolean {
  return /^layers\.\d+\.ffn_(up|gate|down)$|^layers\.\d+\.ffn_up_bias$/.test(name);
}
