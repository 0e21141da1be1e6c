/** FFN records built by kernel-reference.ts buildRecords, as the format describes them. */
import type { FfnEntry } from '../../src/format/layout.js';
import { scaleAtOf, type FfnLayout, type FfnRecords } from './kernel-reference.js';

/** The FfnEntry of buildRecords' output for a gated layer without biases. */
export function entryOf(L: FfnLayout, R: FfnRecords): FfnEntry {
  return {
    layer: 0, section: 'ffn.0', layout: L.bundled ? 'bundled' : 'split', dtype: L.dtype, neurons: L.n, d: L.d,
    parts: ['gate', 'up', 'down'], partBytes: R.partBytes, stride: R.stride, partOffsets: R.partOff,
    scaleAt: scaleAtOf(L.dtype, L.d), biasAt: 0, hasBias: false,
  };
}
