/**
 * Hugging Face OPT folders (config.json `model_type: "opt"`), facebook/opt-125m .. opt-6.7b
 * and compatible fine-tunes, mapped onto canonical tensor names.
 */
import type { ArchConfig, TokenizerSpec } from '../format/types.js';
import {
  JsonConfig,
  MappedCheckpoint,
  SafetensorsStore,
  bindTensors,
  regionsEqual,
  type TensorBinding,
} from './safetensors.js';
import type { Checkpoint } from './types.js';

/**
 * ArchConfig from an OPT config.json (defaults as transformers' OPTConfig).
 * `tiedEmbeddings` is provisional: openOpt settles it from the weights.
 */
export function optArch(cfg: JsonConfig): ArchConfig {
  const act = cfg.str('activation_function', 'relu');
  if (act !== 'relu') cfg.fail('activation_function', `is ${JSON.stringify(act)}: only relu OPT models are supported`);
  if (!cfg.bool('layer_norm_elementwise_affine', true)) {
    cfg.fail('layer_norm_elementwise_affine', 'is false: LayerNorms without weights are not supported');
  }
  const dModel = cfg.int('hidden_size');
  const nHeads = cfg.int('num_attention_heads');
  if (dModel % nHeads !== 0) cfg.fail('hidden_size', `(${dModel}) is not a multiple of num_attention_heads (${nHeads})`);
  const bias = cfg.bool('enable_bias', true);
  const eos = cfg.ids('eos_token_id', 2);
  return {
    type: 'opt',
    dModel,
    nLayers: cfg.int('num_hidden_layers'),
    nHeads,
    nKvHeads: nHeads,
    headDim: dModel / nHeads,
    ffnDim: cfg.int('ffn_dim'),
    vocabSize: cfg.int('vocab_size'),
    maxSeqLen: cfg.int('max_position_embeddings'),
    norm: 'layernorm',
    normEps: 1e-5, // OPT's nn.LayerNorm default
    activation: 'relu',
    positions: 'learned',
    posOffset: 2,
    preNorm: cfg.bool('do_layer_norm_before', true),
    attnBias: bias,
    ffnBias: bias,
    tiedEmbeddings: true,
    embedDim: cfg.int('word_embed_proj_dim', dModel),
    bosId: cfg.ids('bos_token_id', 2)[0]!,
    eosId: eos[0]!,
    stopIds: eos,
  };
}

/** True when the decoder ends with a LayerNorm (transformers' OPTDecoder rule). */
function hasFinalNorm(cfg: JsonConfig): boolean {
  return cfg.bool('do_layer_norm_before', true) && !cfg.bool('_remove_final_layer_norm', false);
}

/**
 * Open the weights of an OPT folder. Names may be `model.decoder.*` (OPTForCausalLM)
 * or `decoder.*` (older OPTModel dumps). lm_head.weight: absent or byte-identical to
 * embed_tokens -> tied; different -> exposed as `lm_head` (untied) only when config.json
 * says `tie_word_embeddings: false`: OPTConfig defaults it to true, and then transformers
 * ties the head to the embeddings whatever lm_head.weight holds, and so do we.
 */
export async function openOpt(dir: string, cfg: JsonConfig, arch: ArchConfig, tokenizer: TokenizerSpec): Promise<Checkpoint> {
  const store = await SafetensorsStore.openFolder(dir);
  try {
    const p = store.get('model.decoder.embed_tokens.weight') || !store.get('decoder.embed_tokens.weight') ? 'model.decoder.' : 'decoder.';
    const { dModel, embedDim, vocabSize, ffnDim, attnBias, ffnBias } = arch;
    const b: TensorBinding[] = [];
    const add = (canonical: string, source: string, shape: number[], optional = false): void => {
      b.push({ canonical, source: p + source, shape, optional });
    };
    add('tok_embeddings', 'embed_tokens.weight', [vocabSize, embedDim]);
    add('pos_embeddings', 'embed_positions.weight', [arch.maxSeqLen + 2, dModel]);
    if (embedDim !== dModel) {
      add('project_in', 'project_in.weight', [dModel, embedDim]);
      add('project_out', 'project_out.weight', [embedDim, dModel]);
    }
    for (let i = 0; i < arch.nLayers; i++) {
      const l = `layers.${i}.`;
      add(`${l}attn_norm.weight`, `${l}self_attn_layer_norm.weight`, [dModel]);
      add(`${l}attn_norm.bias`, `${l}self_attn_layer_norm.bias`, [dModel]);
      for (const [c, s] of [['q', 'q_proj'], ['k', 'k_proj'], ['v', 'v_proj'], ['o', 'out_proj']] as const) {
        add(`${l}w${c}`, `${l}self_attn.${s}.weight`, [dModel, dModel]);
        if (attnBias) add(`${l}b${c}`, `${l}self_attn.${s}.bias`, [dModel]);
      }
      add(`${l}ffn_norm.weight`, `${l}final_layer_norm.weight`, [dModel]);
      add(`${l}ffn_norm.bias`, `${l}final_layer_norm.bias`, [dModel]);
      add(`${l}ffn_up`, `${l}fc1.weight`, [ffnDim, dModel]);
      if (ffnBias) add(`${l}ffn_up_bias`, `${l}fc1.bias`, [ffnDim]);
      add(`${l}ffn_down`, `${l}fc2.weight`, [dModel, ffnDim]);
      if (ffnBias) add(`${l}ffn_down_bias`, `${l}fc2.bias`, [dModel]);
    }
    if (hasFinalNorm(cfg)) {
      add('final_norm.weight', 'final_layer_norm.weight', [dModel]);
      add('final_norm.bias', 'final_layer_norm.bias', [dModel]);
    }
    b.push({ canonical: 'lm_head', source: 'lm_head.weight', shape: [vocabSize, embedDim], optional: true });
    // a final norm the config removes (_remove_final_layer_norm) is in some checkpoints: transformers ignores it too
    const ignored = hasFinalNorm(cfg) ? [] : [p + 'final_layer_norm.weight', p + 'final_layer_norm.bias'];
    const regions = bindTensors(store, b, ignored);

    let tied = true;
    const head = regions.get('lm_head');
    if (head) {
      // OPTConfig defaults tie_word_embeddings to true: only an explicit false keeps a different head
      const forcedTie = cfg.bool('tie_word_embeddings', true);
      tied = forcedTie || (await regionsEqual(head, regions.get('tok_embeddings')!));
      if (tied) regions.delete('lm_head');
    }
    return new MappedCheckpoint(dir, { ...arch, tiedEmbeddings: tied }, tokenizer, regions, () => store.close());
  } catch (e) {
    await store.close();
    throw e;
  }
}
