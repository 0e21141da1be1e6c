/** One FFN layer as the streaming FFN's parts see it (types only). */
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { Tensor } from '../engine/tensor.js';
import type { RecordRegion } from './planner.js';

/** A low-rank predictor placed in the arena: active when (B·(A·x))_j + bias_j > threshold. */
export interface LayerPredictor {
  a: Tensor;
  b: Tensor;
  bias: Tensor;
  threshold: number;
  rank: number;
}

export interface StreamLayer {
  f: FfnEntry;
  section: SectionEntry;
  /** Where the streamed parts of neuron records sit in the file. */
  regions: RecordRegion[];
  /** Window mode: the layer's cache state in the arena (0 without a cache), and its neuron -> slot map (-1: not cached). */
  state: number;
  neuronSlot?: Int32Array;
  pred?: LayerPredictor;
  /** The lookahead predictor of this layer: its neurons from the previous layer's FFN input (prefetch). */
  ahead?: LayerPredictor;
  /** Gate mode: the layer's gate parts, resident (loaded on first use), and its threshold. */
  gate?: { ptr: number; loaded: boolean; threshold: number };
}
