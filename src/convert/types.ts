import type { ArchConfig, TokenizerSpec } from '../format/types.js';

/**
 * A checkpoint opened for conversion: canonical tensor names (see
 * src/format/types.ts) and streaming reads, so that a multi-GB model converts
 * within a few hundred MB of memory. Values always come back as f32
 * (source f16/bf16/f32 are converted).
 */
export interface Checkpoint {
  /** Where it came from, for error messages. */
  readonly path: string;
  readonly arch: ArchConfig;
  readonly tokenizer: TokenizerSpec;
  /** Canonical name -> shape ([n] for vectors, [rows, cols] for matrices). */
  readonly tensors: ReadonlyMap<string, readonly number[]>;
  /** Rows [start, start+count) of a matrix (or elements of a vector), row-major f32. */
  readRows(name: string, start: number, count: number): Promise<Float32Array>;
  /**
   * Columns [start, start+count) of a matrix, returned transposed as
   * [count][rows] row-major f32 (column j of the source is row j-start).
   */
  readColumns(name: string, start: number, count: number): Promise<Float32Array>;
  close(): Promise<void>;
  /** Things the converter skipped on purpose (e.g. rotary caches), one line each, for the user. */
  readonly notes?: readonly string[];
}
