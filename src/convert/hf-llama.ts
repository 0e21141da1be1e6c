/**
 * Hugging Face Llama-family folders mapped onto canonical tensor names:
 * config.json `model_type` "llama", "mistral" (a sliding window), "qwen2"
 * (q/k/v biases, no o bias) and "qwen3" (per-head RMSNorm on q and k), which
 * share Llama's tensor names. Defaults are those of transformers' LlamaConfig,
 * MistralConfig, Qwen2Config and Qwen3Config.
 */
import type { ArchConfig, RopeScaling, TokenizerSpec } from '../format/types.js';
import { plainSlidingWindow, qwenSlidingWindow, ropeScaling, ropeTheta, scaledMaxSeqLen } from './hf-rope.js';
import { JsonConfig, MappedCheckpoint, SafetensorsStore, bindTensors, type TensorBinding } from './safetensors.js';
import type { Checkpoint } from './types.js';
import { activationFields, configActivation } from './activation.js';

/** model_type values this adapter accepts. */
// sparsellama (ProSparse) and bamboo (TurboSparse/Bamboo) are Llama tensors with a sparse activation (activation.ts)
export const LLAMA_MODEL_TYPES: readonly string[] = ['llama', 'mistral', 'qwen2', 'qwen3', 'sparsellama', 'bamboo'];

/** max_position_embeddings when config.json has none (each config class's default). */
const MAX_POSITIONS: Readonly<Record<string, number>> = { llama: 2048, mistral: 4096 * 32, qwen2: 32768, qwen3: 32768 };

/**
 * ArchConfig from a Llama/Mistral/Qwen2/Qwen3 config.json (defaults as transformers' config classes).
 * `tiedEmbeddings` is provisional: openLlama settles it from the weights.
 */
export function llamaArch(cfg: JsonConfig): ArchConfig {
  const modelType = cfg.str('model_type', 'llama');
  const qwen = modelType === 'qwen2' || modelType === 'qwen3';
  // hidden_act: silu, relu, fatrelu (+ hidden_act_param), bamboo's relu = dReLU (activation.ts)
  const act = activationFields(configActivation(cfg));
  if (cfg.bool('mlp_bias', false)) cfg.fail('mlp_bias', 'is true: FFN biases are not supported for Llama models');
  const dModel = cfg.int('hidden_size');
  const nHeads = cfg.int('num_attention_heads');
  // Qwen3Config defaults head_dim to 128; the others derive it.
  const { nKvHeads, headDim } = rotaryHeads(cfg, dModel, nHeads, modelType === 'qwen3' ? 128 : undefined);
  const maxPositions = cfg.int('max_position_embeddings', MAX_POSITIONS[modelType] ?? 2048);
  const scaling = ropeScaling(cfg, maxPositions);
  const maxSeqLen = scaledMaxSeqLen(maxPositions, scaling);
  const nLayers = cfg.int('num_hidden_layers');
  // LlamaConfig has no sliding window; MistralConfig's defaults to 4096; Qwen's needs use_sliding_window.
  const window = qwen ? qwenSlidingWindow(cfg, nLayers, maxSeqLen) : modelType === 'mistral' ? plainSlidingWindow(cfg, 4096, maxSeqLen) : {};
  const attention = { ...(modelType === 'qwen3' ? { qkNorm: true } : {}), ...window };
  const shape = { dModel, nLayers, nHeads, nKvHeads, headDim, ffnDim: cfg.int('intermediate_size'), vocabSize: cfg.int('vocab_size'), maxSeqLen };
  // Qwen2 always biases q/k/v (never o); the others follow attention_bias.
  return rotaryArch(cfg, shape, act, cfg.positive('rms_norm_eps', 1e-6), scaling, attention, modelType === 'qwen2' ? true : cfg.bool('attention_bias', false), 2);
}

/** num_key_value_heads and head_dim of a rotary config, checked: head_dim defaults to `headDimDefault`, else to hidden_size / heads, which must divide. */
export function rotaryHeads(cfg: JsonConfig, dModel: number, nHeads: number, headDimDefault?: number): { nKvHeads: number; headDim: number } {
  const nKvHeads = cfg.int('num_key_value_heads', nHeads);
  if (nHeads % nKvHeads !== 0) cfg.fail('num_key_value_heads', `(${nKvHeads}) does not divide num_attention_heads (${nHeads})`);
  if (!cfg.has('head_dim') && headDimDefault === undefined && dModel % nHeads !== 0) {
    cfg.fail('hidden_size', `(${dModel}) is not a multiple of num_attention_heads (${nHeads}) and head_dim is not given`);
  }
  const headDim = cfg.int('head_dim', headDimDefault ?? dModel / nHeads);
  if (headDim % 2 !== 0) cfg.fail('head_dim', `(${headDim}) must be even for RoPE`);
  return { nKvHeads, headDim };
}

/**
 * The ArchConfig of a rotary, RMSNorm, gated-FFN family (Llama, Mistral,
 * Qwen, Phi-3) from its shape and what differs per family: the activation,
 * rope scaling, `attention` (q/k norm, sliding window), attention biases and
 * the eos id's default.
 */
export function rotaryArch(
  cfg: JsonConfig,
  shape: Pick<ArchConfig, 'dModel' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'headDim' | 'ffnDim' | 'vocabSize' | 'maxSeqLen'>,
  act: Pick<ArchConfig, 'gatedAct' | 'gatedActThreshold'>,
  normEps: number,
  scaling: RopeScaling | undefined,
  attention: Partial<ArchConfig>,
  attnBias: boolean,
  eosDefault: number,
): ArchConfig {
  const eos = cfg.ids('eos_token_id', eosDefault);
  return {
    type: 'llama',
    ...shape,
    norm: 'rmsnorm',
    normEps,
    activation: 'swiglu',
    ...act,
    positions: 'rope',
    ropeStyle: 'half',
    ropeTheta: ropeTheta(cfg, 10000),
    ...(scaling ? { ropeScaling: scaling } : {}),
    ...attention,
    preNorm: true,
    attnBias,
    ffnBias: false,
    tiedEmbeddings: cfg.bool('tie_word_embeddings', false),
    embedDim: shape.dModel,
    bosId: cfg.ids('bos_token_id', 1)[0]!,
    eosId: eos[0]!,
    stopIds: eos,
  };
}

/**
 * Open the weights of a Llama-family folder. lm_head.weight is used unless
 * `tie_word_embeddings` is true or it is missing (then tied to embed_tokens).
 */
export async function openLlama(dir: string, arch: ArchConfig, tokenizer: TokenizerSpec, modelType = 'llama'): Promise<Checkpoint> {
  const store = await SafetensorsStore.openFolder(dir);
  try {
    const { dModel, ffnDim, vocabSize, attnBias, headDim } = arch;
    const qwen2 = modelType === 'qwen2';
    const q = arch.nHeads * arch.headDim;
    const kv = arch.nKvHeads * arch.headDim;
    const b: TensorBinding[] = [{ canonical: 'tok_embeddings', source: 'model.embed_tokens.weight', shape: [vocabSize, dModel] }];
    const add = (canonical: string, source: string, shape: number[], optional = false): void => {
      b.push({ canonical, source, shape, optional });
    };
    for (let i = 0; i < arch.nLayers; i++) {
      const l = `layers.${i}.`;
      const s = `model.layers.${i}.`;
      add(`${l}attn_norm.weight`, `${s}input_layernorm.weight`, [dModel]);
      add(`${l}wq`, `${s}self_attn.q_proj.weight`, [q, dModel]);
      add(`${l}wk`, `${s}self_attn.k_proj.weight`, [kv, dModel]);
      add(`${l}wv`, `${s}self_attn.v_proj.weight`, [kv, dModel]);
      add(`${l}wo`, `${s}self_attn.o_proj.weight`, [dModel, q]);
      if (attnBias) {
        add(`${l}bq`, `${s}self_attn.q_proj.bias`, [q]);
        add(`${l}bk`, `${s}self_attn.k_proj.bias`, [kv]);
        add(`${l}bv`, `${s}self_attn.v_proj.bias`, [kv]);
        if (!qwen2) add(`${l}bo`, `${s}self_attn.o_proj.bias`, [dModel], true); // some checkpoints bias q/k/v only
      }
      if (arch.qkNorm) {
        add(`${l}q_norm`, `${s}self_attn.q_norm.weight`, [headDim]);
        add(`${l}k_norm`, `${s}self_attn.k_norm.weight`, [headDim]);
      }
      add(`${l}ffn_norm.weight`, `${s}post_attention_layernorm.weight`, [dModel]);
      add(`${l}ffn_gate`, `${s}mlp.gate_proj.weight`, [ffnDim, dModel]);
      add(`${l}ffn_up`, `${s}mlp.up_proj.weight`, [ffnDim, dModel]);
      add(`${l}ffn_down`, `${s}mlp.down_proj.weight`, [dModel, ffnDim]);
    }
    add('final_norm.weight', 'model.norm.weight', [dModel]);
    if (!arch.tiedEmbeddings) add('lm_head', 'lm_head.weight', [vocabSize, dModel], true);
    const regions = bindTensors(store, b);
    const tied = !regions.has('lm_head');
    return new MappedCheckpoint(dir, { ...arch, tiedEmbeddings: tied }, tokenizer, regions, () => store.close());
  } catch (e) {
    await store.close();
    throw e;
  }
}
