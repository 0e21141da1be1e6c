/** Reads FFN weights back out of a .flm as f32 matrices (for initialisation and gate thresholds). */
import type { FfnPart } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import { f16BitsToF32, q4Value } from '../kernels/quant.js';

let table: Float32Array | undefined;
/** Every f16 bit pattern's value (decoding a 6.7B layer's rows by table is ~10x faster than by arithmetic). */
function f16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) table[i] = f16BitsToF32(i);
  }
  return table;
}

/** Part `part` of every neuron of `layer` as f32 [ffnDim, dModel] (verified as it is read). */
export async function readFfnPart(file: FlmFile, layer: number, part: FfnPart): Promise<Float32Array> {
  const f = file.header.ffn[layer]!;
  const p = f.parts.indexOf(part);
  if (p < 0) throw new Error(`layer ${layer} has no ${part} part`);
  const s = file.section(f.section);
  const bytes = new Uint8Array(s.length);
  await file.readSection(s, bytes);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(f.neurons * f.d);
  for (let i = 0; i < f.neurons; i++) {
    const at = f.partOffsets[p]! + i * f.stride;
    const row = out.subarray(i * f.d, (i + 1) * f.d);
    if (f.dtype === 'f32') for (let c = 0; c < f.d; c++) row[c] = dv.getFloat32(at + 4 * c, true);
    else if (f.dtype === 'f16') {
      const lut = f16Table();
      for (let c = 0; c < f.d; c++) row[c] = lut[dv.getUint16(at + 2 * c, true)]!;
    }
    else if (f.dtype === 'q8') for (let c = 0; c < f.d; c++) row[c] = Math.fround(dv.getInt8(at + c) * dv.getFloat32(at + f.scaleAt + 4 * Math.floor(c / 32), true));
    else if (f.dtype === 'q4') {
      const scales = new Uint16Array(Math.ceil(f.d / 32));
      for (let g = 0; g < scales.length; g++) scales[g] = dv.getUint16(at + f.scaleAt + 2 * g, true);
      const values = bytes.subarray(at, at + f.scaleAt);
      for (let c = 0; c < f.d; c++) row[c] = q4Value(values, scales, c);
    }
    else {
      const scale = dv.getFloat32(at + f.scaleAt, true);
      for (let c = 0; c < f.d; c++) row[c] = Math.fround(dv.getInt8(at + c) * scale);
    }
  }
  return out;
}

/** The up part's bias of every neuron of `layer` (zeros when the file has no FFN biases). */
export async function readUpBias(file: FlmFile, layer: number): Promise<Float32Array> {
  const f = file.header.ffn[layer]!;
  const out = new Float32Array(f.neurons);
  if (!f.hasBias) return out;
  const p = f.parts.indexOf('up');
  const s = file.section(f.section);
  const bytes = new Uint8Array(s.length);
  await file.readSection(s, bytes);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < f.neurons; i++) out[i] = dv.getFloat32(f.partOffsets[p]! + i * f.stride + f.biasAt, true);
  return out;
}
