/**
 * config.json keys shared by the RoPE model families: `rope_scaling` (or
 * transformers v5's `rope_parameters`) read as transformers'
 * modeling_rope_utils.py does, and the sliding-window keys.
 */
import type { RopeScaling } from '../format/types.js';
import type { JsonConfig } from './safetensors.js';

/** The rope types flashlm computes (others are refused naming the key and value). */
export const ROPE_TYPES = ['default', 'linear', 'dynamic', 'llama3'] as const;

/** rope_theta: top level, or inside rope_parameters (transformers v5 configs). */
export function ropeTheta(cfg: JsonConfig, dflt: number): number {
  const params = cfg.values['rope_parameters'];
  if (isObject(params) && params['rope_theta'] !== undefined && !cfg.has('rope_theta')) {
    const v = params['rope_theta'];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) cfg.fail('rope_parameters', `has rope_theta ${JSON.stringify(v)}: must be a positive number`);
    return v;
  }
  return cfg.positive('rope_theta', dflt);
}

/**
 * The scaling of a config's rotary frequencies, undefined for plain RoPE.
 * `maxPositions` is max_position_embeddings (dynamic NTK grows the base past it);
 * `types` those accepted here, `supported` those the refusal lists.
 */
export function ropeScaling(cfg: JsonConfig, maxPositions: number, types: readonly string[] = ROPE_TYPES, supported = types): RopeScaling | undefined {
  const key = cfg.has('rope_scaling') ? 'rope_scaling' : cfg.has('rope_parameters') ? 'rope_parameters' : undefined;
  const prf = cfg.values['partial_rotary_factor'] ?? (isObject(cfg.values['rope_parameters']) ? cfg.values['rope_parameters']['partial_rotary_factor'] : undefined);
  if (prf !== undefined && prf !== null && prf !== 1) cfg.fail('partial_rotary_factor', `is ${JSON.stringify(prf)}: only RoPE over whole heads (1.0) is supported`);
  if (!key) return undefined;
  const raw = cfg.values[key];
  const shown = JSON.stringify(raw);
  if (!isObject(raw)) cfg.fail(key, `is ${shown}: expected an object`);
  // Hugging Face's key was "type" before it became "rope_type"; both are read, rope_type first.
  const type = raw['rope_type'] ?? raw['type'] ?? 'default';
  if (typeof type !== 'string' || !types.includes(type)) {
    cfg.fail(key, `is ${shown}: rope type ${JSON.stringify(type)} is not supported (supported: ${supported.join(', ')})`);
  }
  if (type === 'default') return undefined;
  const number = (name: string, min: number): number => {
    const v = raw[name];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) cfg.fail(key, `is ${shown}: "${name}" must be a number >= ${min} for rope type ${type}`);
    return v;
  };
  const factor = number('factor', 1);
  if (type === 'linear') return { type, factor };
  if (type === 'dynamic') return { type, factor, originalMaxPos: maxPositions };
  const lowFreqFactor = number('low_freq_factor', Number.MIN_VALUE);
  const highFreqFactor = number('high_freq_factor', Number.MIN_VALUE);
  if (!(highFreqFactor > lowFreqFactor)) cfg.fail(key, `is ${shown}: "high_freq_factor" must exceed "low_freq_factor"`);
  const originalMaxPos = number('original_max_position_embeddings', 1);
  if (!Number.isSafeInteger(originalMaxPos)) cfg.fail(key, `is ${shown}: "original_max_position_embeddings" must be an integer`);
  return { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPos };
}

/** The context a scaled model is meant for: dynamic NTK exists to run past max_position_embeddings (by `factor`). */
export function scaledMaxSeqLen(maxPositions: number, scaling: RopeScaling | undefined): number {
  return scaling?.type === 'dynamic' ? Math.floor(maxPositions * scaling.factor) : maxPositions;
}

/**
 * Qwen2/Qwen3 sliding windows as their config classes define them: the window is
 * `sliding_window` when `use_sliding_window` is true (else none), on the layers
 * `layer_types` marks "sliding_attention", or without layer_types on layers
 * i >= `max_window_layers`. flashlm expresses a window over a last run of layers.
 */
export function qwenSlidingWindow(cfg: JsonConfig, nLayers: number, maxSeqLen: number): { slidingWindow?: number; slidingWindowStart?: number } {
  if (!cfg.bool('use_sliding_window', false)) return {};
  const window = cfg.int('sliding_window', 4096);
  let sliding: boolean[];
  if (cfg.has('layer_types')) {
    const types = cfg.values['layer_types'];
    if (!Array.isArray(types) || types.length !== nLayers || !types.every((x) => x === 'full_attention' || x === 'sliding_attention')) {
      cfg.fail('layer_types', `must list "full_attention" or "sliding_attention" for each of the ${nLayers} layers, got ${JSON.stringify(types)}`);
    }
    sliding = types.map((x) => x === 'sliding_attention');
  } else {
    const from = cfg.int('max_window_layers', 28, 0);
    sliding = Array.from({ length: nLayers }, (_, i) => i >= from);
  }
  const start = sliding.indexOf(true);
  if (start < 0 || window >= maxSeqLen) return {}; // no layer slides, or the window covers every context
  if (!sliding.slice(start).every(Boolean)) {
    cfg.fail('layer_types', `is ${JSON.stringify(cfg.values['layer_types'])}: sliding-window layers must be the last ones`);
  }
  return start === 0 ? { slidingWindow: window } : { slidingWindow: window, slidingWindowStart: start };
}

/** Mistral/Phi-3: `sliding_window` on every layer (null: none); `dflt` is the config class's default. */
export function plainSlidingWindow(cfg: JsonConfig, dflt: number | null, maxSeqLen: number): { slidingWindow?: number } {
  const v = cfg.values['sliding_window'];
  const window = v === undefined ? dflt : v === null ? null : cfg.int('sliding_window');
  return window === null || window >= maxSeqLen ? {} : { slidingWindow: window };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
