/**
 * Hugging Face Llama-family folders (config.json `model_type` "llama", or "mistral",
 * which has the same tensors) mapped onto canonical tensor names.
 */
import type { ArchConfig, TokenizerSpec } from '../format/types.js';
import { JsonConfig, MappedCheckpoint, SafetensorsStore, bindTensors, type TensorBinding } from './safetensors.js';
import type { Checkpoint } from './types.js';

/** model_type values this adapter accepts. */
export const LLAMA_MODEL_TYPES: readonly string[] = ['llama', 'mistral'];

/**
 * ArchConfig from a Llama/Mistral config.json (defaults as transformers' LlamaConfig).
 * `tiedEmbeddings` is provisional: openLlama settles it from the weights.
 */
export function llamaArch(cfg: JsonConfig): ArchConfig {
  // Scaled RoPE (linear, dynamic, yarn, llama3) changes the rotary frequencies; ArchConfig cannot express it.
  if (cfg.has('rope_scaling')) cfg.fail('rope_scaling', `is ${JSON.stringify(cfg.values['rope_scaling'])}: RoPE scaling is not supported`);
  const act = cfg.str('hidden_act', 'silu');
  if (act !== 'silu') cfg.fail('hidden_act', `is ${JSON.stringify(act)}: only silu (SwiGLU) is supported`);
  if (cfg.bool('mlp_bias', false)) cfg.fail('mlp_bias', 'is true: FFN biases are not supported for Llama models');
  const dModel = cfg.int('hidden_size');
  const nHeads = cfg.int('num_attention_heads');
  const nKvHeads = cfg.int('num_key_value_heads', nHeads);
  if (nHeads % nKvHeads !== 0) cfg.fail('num_key_value_heads', `(${nKvHeads}) does not divide num_attention_heads (${nHeads})`);
  if (!cfg.has('head_dim') && dModel % nHeads !== 0) {
    cfg.fail('hidden_size', `(${dModel}) is not a multiple of num_attention_heads (${nHeads}) and head_dim is not given`);
  }
  const headDim = cfg.int('head_dim', dModel / nHeads);
  if (headDim % 2 !== 0) cfg.fail('head_dim', `(${headDim}) must be even for RoPE`);
  let maxSeqLen = cfg.int('max_position_embeddings', 2048);
  // Mistral's sliding-window attention equals full attention for contexts no longer than the window.
  if (cfg.has('sliding_window') && cfg.values['use_sliding_window'] !== false) maxSeqLen = Math.min(maxSeqLen, cfg.int('sliding_window'));
  const eos = cfg.ids('eos_token_id', 2);
  return {
    type: 'llama',
    dModel,
    nLayers: cfg.int('num_hidden_layers'),
    nHeads,
    nKvHeads,
    headDim,
    ffnDim: cfg.int('intermediate_size'),
    vocabSize: cfg.int('vocab_size'),
    maxSeqLen,
    norm: 'rmsnorm',
    normEps: cfg.positive('rms_norm_eps', 1e-6),
    activation: 'swiglu',
    positions: 'rope',
    ropeStyle: 'half',
    ropeTheta: cfg.positive('rope_theta', 10000),
    preNorm: true,
    attnBias: cfg.bool('attention_bias', false),
    ffnBias: false,
    tiedEmbeddings: cfg.bool('tie_word_embeddings', false),
    embedDim: dModel,
    bosId: cfg.ids('bos_token_id', 1)[0]!,
    eosId: eos[0]!,
    stopIds: eos,
  };
}

/**
 * Open the weights of a Llama-family folder. lm_head.weight is used unless
 * `tie_word_embeddings` is true or it is missing (then tied to embed_tokens).
 */
export async function openLlama(dir: string, arch: ArchConfig, tokenizer: TokenizerSpec): Promise<Checkpoint> {
  const store = await SafetensorsStore.openFolder(dir);
  try {
    const { dModel, ffnDim, vocabSize, attnBias } = arch;
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
        add(`${l}bo`, `${s}self_attn.o_proj.bias`, [dModel], true); // some checkpoints bias q/k/v only
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
