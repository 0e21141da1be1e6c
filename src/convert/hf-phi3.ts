/**
 * Hugging Face Phi-3 folders (config.json `model_type` "phi3"; defaults as
 * transformers' Phi3Config). Phi-3 is Llama-shaped but fuses its projections:
 * `self_attn.qkv_proj` is q, k and v stacked by rows, `mlp.gate_up_proj` gate
 * then up (Phi3MLP: `gate, up = gate_up_proj(x).chunk(2)`). They are split at
 * convert time into wq/wk/wv and ffn_gate/ffn_up, so FFN neurons stay bundles
 * of one gate row, one up row and one down column.
 */
import type { ArchConfig, RopeScaling, TokenizerSpec } from '../format/types.js';
import { activationFields, configActivation } from './activation.js';
import { plainSlidingWindow, ropeScaling, scaledMaxSeqLen } from './hf-rope.js';
import { rotaryArch, rotaryHeads } from './hf-llama.js';
import { JsonConfig, MappedCheckpoint, SafetensorsStore, bindTensors, type TensorBinding, type TensorRegion } from './safetensors.js';
import type { Checkpoint } from './types.js';

export function phi3Arch(cfg: JsonConfig): ArchConfig {
  const act = activationFields(configActivation(cfg));
  const dModel = cfg.int('hidden_size', 3072);
  const nHeads = cfg.int('num_attention_heads', 32);
  const { nKvHeads, headDim } = rotaryHeads(cfg, dModel, nHeads);
  const maxPositions = cfg.int('max_position_embeddings', 4096);
  const scaling = phi3RopeScaling(cfg, maxPositions, headDim);
  const maxSeqLen = scaledMaxSeqLen(maxPositions, scaling);
  const shape = { dModel, nLayers: cfg.int('num_hidden_layers', 32), nHeads, nKvHeads, headDim, ffnDim: cfg.int('intermediate_size', 8192), vocabSize: cfg.int('vocab_size', 32064), maxSeqLen };
  // Phi3Config's sliding_window defaults to None (Phi-3-mini-4k sets 2047).
  return rotaryArch(cfg, shape, act, cfg.positive('rms_norm_eps', 1e-5), scaling, plainSlidingWindow(cfg, null, maxSeqLen), false, 32000);
}

/**
 * Phi3Config accepts rope type "longrope" (formerly "su") or none. LongRoPE as
 * transformers' _compute_longrope_parameters: inv_i / short_factor[i] while a
 * sequence fits original_max_position_embeddings, / long_factor[i] past it;
 * cos and sin times attention_factor, by default
 * sqrt(1 + ln(max_position_embeddings / original) / ln(original)).
 */
function phi3RopeScaling(cfg: JsonConfig, maxPositions: number, headDim: number): RopeScaling | undefined {
  const key = cfg.has('rope_scaling') ? 'rope_scaling' : 'rope_parameters';
  const raw = cfg.values[key];
  const others = () => ropeScaling(cfg, maxPositions, ['default'], ['default', 'longrope', 'su']);
  if (raw === undefined || raw === null || typeof raw !== 'object' || Array.isArray(raw)) return others();
  const r = raw as Record<string, unknown>;
  const type = r['rope_type'] ?? r['type'];
  if (type !== 'longrope' && type !== 'su') return others();
  const shown = JSON.stringify(raw);
  const factors = (name: string): number[] => {
    const v = r[name];
    if (!Array.isArray(v) || v.length !== headDim / 2 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
      cfg.fail(key, `is ${shown}: "${name}" must list ${headDim / 2} positive numbers (head_dim / 2)`);
    }
    return v as number[];
  };
  const shortFactor = factors('short_factor');
  const longFactor = factors('long_factor');
  const originalMaxPos = cfg.int('original_max_position_embeddings', 4096);
  const factor = maxPositions / originalMaxPos;
  let attentionFactor = r['attention_factor'];
  if (attentionFactor === undefined || attentionFactor === null) attentionFactor = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMaxPos));
  if (typeof attentionFactor !== 'number' || !Number.isFinite(attentionFactor) || attentionFactor <= 0) {
    cfg.fail(key, `is ${shown}: "attention_factor" must be a positive number`);
  }
  return { type: 'longrope', shortFactor, longFactor, originalMaxPos, attentionFactor };
}

/** Rows [start, start+count) of a 2-D region, as a region of its own (same file, no copy). */
function rowSlice(r: TensorRegion, start: number, count: number, label: string): TensorRegion {
  const rowBytes = r.byteLength / r.shape[0]!;
  return { ...r, name: `${r.name} (${label}: rows ${start}..${start + count})`, shape: [count, r.shape[1]!], offset: r.offset + start * rowBytes, byteLength: count * rowBytes };
}

/** Open the weights of a Phi-3 folder; lm_head.weight is used unless tied or missing. */
export async function openPhi3(dir: string, arch: ArchConfig, tokenizer: TokenizerSpec): Promise<Checkpoint> {
  const store = await SafetensorsStore.openFolder(dir);
  try {
    const { dModel, ffnDim, vocabSize } = arch;
    const q = arch.nHeads * arch.headDim;
    const kv = arch.nKvHeads * arch.headDim;
    const b: TensorBinding[] = [{ canonical: 'tok_embeddings', source: 'model.embed_tokens.weight', shape: [vocabSize, dModel] }];
    const add = (canonical: string, source: string, shape: number[], optional = false): void => {
      b.push({ canonical, source, shape, optional });
    };
    // The fused tensors are bound whole (under temporary names), then split into canonical ones.
    const fused: { name: string; parts: [canonical: string, start: number, count: number, label: string][] }[] = [];
    for (let i = 0; i < arch.nLayers; i++) {
      const l = `layers.${i}.`;
      const s = `model.layers.${i}.`;
      add(`${l}attn_norm.weight`, `${s}input_layernorm.weight`, [dModel]);
      add(`${l}qkv`, `${s}self_attn.qkv_proj.weight`, [q + 2 * kv, dModel]);
      fused.push({ name: `${l}qkv`, parts: [[`${l}wq`, 0, q, 'q'], [`${l}wk`, q, kv, 'k'], [`${l}wv`, q + kv, kv, 'v']] });
      add(`${l}wo`, `${s}self_attn.o_proj.weight`, [dModel, q]);
      add(`${l}ffn_norm.weight`, `${s}post_attention_layernorm.weight`, [dModel]);
      add(`${l}gate_up`, `${s}mlp.gate_up_proj.weight`, [2 * ffnDim, dModel]);
      fused.push({ name: `${l}gate_up`, parts: [[`${l}ffn_gate`, 0, ffnDim, 'gate'], [`${l}ffn_up`, ffnDim, ffnDim, 'up']] });
      add(`${l}ffn_down`, `${s}mlp.down_proj.weight`, [dModel, ffnDim]);
    }
    add('final_norm.weight', 'model.norm.weight', [dModel]);
    if (!arch.tiedEmbeddings) add('lm_head', 'lm_head.weight', [vocabSize, dModel], true);
    const regions = bindTensors(store, b);
    for (const f of fused) {
      const whole = regions.get(f.name)!;
      regions.delete(f.name);
      for (const [canonical, start, count, label] of f.parts) regions.set(canonical, rowSlice(whole, start, count, label));
    }
    const tied = !regions.has('lm_head');
    return new MappedCheckpoint(dir, { ...arch, tiedEmbeddings: tied }, tokenizer, regions, () => store.close());
  } catch (e) {
    await store.close();
    throw e;
  }
}
