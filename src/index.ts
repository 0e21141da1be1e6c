/**
 * flashlm, platform-neutral entry: Deno, browsers and edge runtimes import
 * this; Node gets src/node.ts, which adds file paths on top.
 */
import { registerSourceOpener } from './model.js';
import { httpOpener } from './source/http.js';

registerSourceOpener(httpOpener);

export { openModel, Model, registerSourceOpener, resolveSource, STRATEGIES, type Strategy, type MemoryPlan, type DenseLayout, type OpenOptions, type GenerateOptions, type SourceOpener, type Timings, type FinishReason, type Step } from './model.js';
export { renderChat, chatTemplateOf, type ChatMessage, type ChatTemplate } from './chat.js';
export { openAiFetch, ApiError, type OpenAiFetchOptions } from './api/openai.js';
export type { Sparsity } from './flash/streaming.js';
export type { RunStats, StatsSummary, TokenStats } from './flash/stats.js';
export { writeWithPredictors, type LayerPredictor } from './format/rewrite.js';
export type { SamplingOptions } from './engine/sampler.js';
export * from './errors.js';
export type { ArchConfig, DType, TokenizerSpec } from './format/types.js';
export type { FlmHeader, TensorEntry, SectionEntry, FfnEntry, Layout } from './format/layout.js';
export { openFlm, FlmFile } from './format/reader.js';
export { writeFlm, type WriteOptions } from './format/writer.js';
export { MemorySource, MemorySink } from './source/memory.js';
export { MemoryCachedSource, type MemoryCacheOptions, type MemoryCacheCounters } from './source/memory-cache.js';
export type { Source, Sink, ReadHints, TierCounters } from './source/types.js';
export { HttpSource, httpOpener, createHttpOpener, HTTP_HINTS, type HttpSourceOptions, type HttpOptions, type RetryEvent } from './source/http.js';
export { createTokenizer } from './tokenizer/index.js';
export type { Tokenizer } from './tokenizer/types.js';
export { calibrate, defaultRank, type CalibrateOptions, type CalibrationResult, type LayerReport } from './calibrate/calibrate.js';
export { calibrateGates, type GateCalibrateOptions, type GateCalibration, type GateLayerReport } from './calibrate/gates.js';
export { evaluate, type EvalOptions, type EvalResult } from './calibrate/evaluate.js';
export type { GateSparsity, PredictorEntry } from './format/layout.js';
