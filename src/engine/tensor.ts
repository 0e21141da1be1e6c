/** Resident tensors as the kernels see them: arena pointers, dtype, shape. */
import type { TensorEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { DType } from '../format/types.js';
import type { Kernels } from '../kernels/types.js';
import type { Arena } from './arena.js';

export interface Tensor {
  name: string;
  dtype: DType;
  rows: number;
  cols: number;
  ptr: number;
  /** int8: pointer to and view of the per-row scales; q8: of the [rows][ceil(cols / 32)] group scales; q4: pointer to its f16 group scales, no view (0 otherwise). */
  scales: number;
  scaleView?: Float32Array;
}

/** Where a tensor of `file` sits once its section was read to `sectionPtrs[section]`. */
export function placeTensor(file: FlmFile, arena: Arena, sectionPtrs: ReadonlyMap<string, number>, e: TensorEntry): Tensor {
  const section = file.section(e.section ?? 'resident');
  const delta = sectionPtrs.get(section.name)! - section.offset;
  const rows = e.shape.length === 2 ? e.shape[0]! : 1;
  const cols = e.shape.length === 2 ? e.shape[1]! : e.shape[0]!;
  const t: Tensor = { name: e.name, dtype: e.dtype, rows, cols, ptr: e.offset + delta, scales: 0 };
  if (e.dtype === 'int8' || e.dtype === 'q8') {
    t.scales = e.scalesOffset! + delta;
    t.scaleView = arena.f32(t.scales, e.dtype === 'int8' ? rows : rows * Math.ceil(cols / 32));
  } else if (e.dtype === 'q4') t.scales = e.scalesOffset! + delta;
  return t;
}

/** out = W x (+ bias) in W's dtype; `i8scratch` has matvec_i8_scratch_bytes(W.cols) bytes. */
export function matvec(k: Kernels, out: number, w: Tensor, x: number, bias: number, i8scratch: number): void {
  if (w.dtype === 'f32') k.matvec_f32(out, w.ptr, x, bias, w.rows, w.cols);
  else if (w.dtype === 'f16') k.matvec_f16(out, w.ptr, x, bias, w.rows, w.cols);
  else if (w.dtype === 'q8') k.matvec_q8(out, w.ptr, w.scales, x, bias, w.rows, w.cols, i8scratch);
  else if (w.dtype === 'q4') k.matvec_q4(out, w.ptr, w.scales, x, bias, w.rows, w.cols, i8scratch);
  else k.matvec_i8(out, w.ptr, w.scales, x, bias, w.rows, w.cols, i8scratch);
}

/** out[t] = W x[t] (+ bias) for T tokens (rows ldx / ldo bytes apart), each bit-identical to matvec; `scratch` has batch_scratch_bytes(T, W.cols, 0) bytes or more. */
export function matmul(k: Kernels, out: number, ldo: number, w: Tensor, x: number, ldx: number, bias: number, T: number, scratch: number): void {
  if (w.dtype === 'f32') k.matmul_f32(out, ldo, w.ptr, x, ldx, bias, T, w.rows, w.cols, scratch);
  else if (w.dtype === 'f16') k.matmul_f16(out, ldo, w.ptr, x, ldx, bias, T, w.rows, w.cols, scratch);
  else if (w.dtype === 'q8') k.matmul_q8(out, ldo, w.ptr, w.scales, x, ldx, bias, T, w.rows, w.cols, scratch);
  else if (w.dtype === 'q4') k.matmul_q4(out, ldo, w.ptr, w.scales, x, ldx, bias, T, w.rows, w.cols, scratch);
  else k.matmul_i8(out, ldo, w.ptr, w.scales, x, ldx, bias, T, w.rows, w.cols, scratch);
}
