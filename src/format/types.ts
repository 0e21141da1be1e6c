/**
 * The model description every part of flashlm shares: the converter fills it,
 * the .flm header stores it, the engine runs from it.
 */

/**
 * Weight storage types. int8 carries one f32 scale per row (per bundle part);
 * q8 one f32 scale per group of 32 consecutive values of a row (as llama.cpp's
 * Q8_0; `flashlm convert --dtype int8` writes q8, `--dtype int8-row` int8);
 * q4 symmetric 4-bit, one f16 scale per group of 32 values of a row (docs/FORMAT.md §7.2).
 */
export type DType = 'f32' | 'f16' | 'int8' | 'q8' | 'q4';

export type ArchType = 'opt' | 'llama';

export interface ArchConfig {
  type: ArchType;
  /** Residual width. */
  dModel: number;
  nLayers: number;
  nHeads: number;
  /** Key/value heads (grouped-query attention); equals nHeads without GQA. */
  nKvHeads: number;
  headDim: number;
  /** FFN neurons per layer (OPT ffn_dim, Llama intermediate_size). */
  ffnDim: number;
  vocabSize: number;
  /** Longest context the model supports (positions). */
  maxSeqLen: number;
  norm: 'layernorm' | 'rmsnorm';
  normEps: number;
  /** 'relu': up (+bias) -> ReLU -> down. 'swiglu': down(silu(gate x) * up x). */
  activation: 'relu' | 'swiglu';
  /**
   * Gated ('swiglu') FFNs only: h = act(gate x, up x). 'silu' (the default when
   * absent): silu(g)·u; 'relu': relu(g)·u; 'fatrelu': (g > gatedActThreshold ? g : 0)·u;
   * 'drelu': relu(g)·relu(u).
   */
  gatedAct?: GatedActivation;
  /** FATReLU threshold T (only with gatedAct 'fatrelu'). */
  gatedActThreshold?: number;
  /** Positions: learned table (OPT) or rotary (Llama). */
  positions: 'learned' | 'rope';
  /** OPT's learned positions start at row `posOffset` (2). */
  posOffset?: number;
  /** 'interleaved' rotates (x[2i], x[2i+1]) as llama2.c; 'half' rotates (x[i], x[i+d/2]) as HF. */
  ropeStyle?: 'interleaved' | 'half';
  ropeTheta?: number;
  /**
   * Scaled rotary frequencies (Hugging Face rope_scaling, computed as transformers'
   * modeling_rope_utils.py): 'linear' divides every frequency by `factor`; 'llama3'
   * divides the low ones by `factor` and blends the middle band (Llama 3.1+);
   * 'dynamic' (NTK) raises the base for a position p >= originalMaxPos to
   * base * (factor * (p+1) / originalMaxPos - (factor - 1)) ^ (hd / (hd - 2));
   * 'longrope' (Phi-3) divides by per-frequency factors, short or long by position.
   */
  ropeScaling?: RopeScaling;
  /** Per-head RMSNorm (weights layers.{i}.q_norm / k_norm, eps normEps) on q and k before RoPE (Qwen3). */
  qkNorm?: boolean;
  /** Sliding-window attention: a query at position p attends to positions (p - slidingWindow, p] only. */
  slidingWindow?: number;
  /** The window applies to layers >= this index (Qwen2's max_window_layers; 0 when absent). */
  slidingWindowStart?: number;
  /** Pre-LayerNorm (true for all but OPT-350m). */
  preNorm: boolean;
  /** q/k/v/o projections have biases (OPT; some Llama-family models on q/k/v only). */
  attnBias: boolean;
  /** FFN up/down have biases (OPT). */
  ffnBias: boolean;
  /** lm_head shares the token embedding. */
  tiedEmbeddings: boolean;
  /** OPT-350m: word_embed_proj_dim differs from dModel -> project_in/project_out. */
  embedDim: number;
  bosId: number;
  eosId: number;
  /** Token ids that end generation (llama2.c models stop on BOS). */
  stopIds: number[];
}

export type RopeScaling =
  | { type: 'linear'; factor: number }
  | { type: 'dynamic'; factor: number; originalMaxPos: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPos: number }
  /**
   * Phi-3 LongRoPE: inv_i / shortFactor[i] while the sequence fits originalMaxPos positions, / longFactor[i] at
   * every position once it is longer (the cache is recomputed then); cos and sin times attentionFactor.
   */
  | { type: 'longrope'; shortFactor: number[]; longFactor: number[]; originalMaxPos: number; attentionFactor: number };

/** The activation of a gated FFN (ArchConfig.gatedAct). */
export type GatedActivation = 'silu' | 'relu' | 'fatrelu' | 'drelu';

/** The tokenizer travels inside the .flm. */
export type TokenizerSpec =
  | {
      kind: 'hf';
      /** tokenizer.json text */ json: string;
      /** tokenizer_config.json text, if any */ config?: string;
      /** A chat template kept apart from the config (chat_template.jinja, or chat_template.json's), which takes precedence. */ chatTemplate?: string;
    }
  | { kind: 'llama2c'; /** the tokenizer.bin bytes */ data: Uint8Array };

/**
 * Canonical tensor names (independent of the checkpoint's own naming).
 * Shapes are [rows, cols] row-major, PyTorch Linear layout [out, in].
 *
 * resident:
 *   tok_embeddings            [vocabSize, embedDim]
 *   pos_embeddings            [maxSeqLen + posOffset, dModel]      (learned positions)
 *   project_in                [dModel, embedDim]                   (only when embedDim != dModel)
 *   project_out               [embedDim, dModel]                   (only when embedDim != dModel)
 *   layers.{i}.attn_norm.weight / .bias   [dModel]                (bias only for layernorm)
 *   layers.{i}.wq [nHeads*headDim, dModel]   .bq [nHeads*headDim] (if attnBias)
 *   layers.{i}.wk [nKvHeads*headDim, dModel] .bk
 *   layers.{i}.wv [nKvHeads*headDim, dModel] .bv
 *   layers.{i}.wo [dModel, nHeads*headDim]   .bo [dModel]         (bo if attnBias and the checkpoint has it)
 *   layers.{i}.q_norm / k_norm [headDim]                          (qkNorm: per-head RMSNorm weights)
 *   layers.{i}.ffn_norm.weight / .bias    [dModel]
 *   layers.{i}.ffn_down_bias  [dModel]                            (if ffnBias)
 *   final_norm.weight / .bias [dModel]
 *   lm_head                   [vocabSize, embedDim]                (absent when tiedEmbeddings)
 * streamed (FFN, bundled per neuron by the writer):
 *   layers.{i}.ffn_up   [ffnDim, dModel]   .ffn_up_bias [ffnDim] (if ffnBias)
 *   layers.{i}.ffn_gate [ffnDim, dModel]                        (swiglu)
 *   layers.{i}.ffn_down [dModel, ffnDim]
 */
export const FFN_TENSORS = ['ffn_up', 'ffn_gate', 'ffn_down', 'ffn_up_bias'] as const;
