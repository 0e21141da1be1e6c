/** One FFN layer as the streaming FFN's parts see it (types only). */
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { Tensor } from '../engine/tensor.js';
import type { RecordRegion } from './planner.js';

export interface StreamLayer {
  f: FfnEntry;
  section: SectionEntry;
  /** Where the streamed parts of neuron records sit in the file. */
  regions: RecordRegion[];
  /** Window mode: the layer's cache state in the arena (0 without a cache). */
  state: number;
  pred?: { a: Tensor; b: Tensor; bias: Tensor; threshold: number; rank: number };
  /** Gate mode: the layer's gate parts, resident (loaded on first use), and its threshold. */
  gate?: { ptr: number; loaded: boolean; threshold: number };
}
