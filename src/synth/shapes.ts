/**
 * The model shapes `flashlm synth` writes: the published configurations of
 * OPT-1.3B, 6.7B and 13B (Hugging Face facebook/opt-*: config.json) and
 * Llama-2-7B (meta-llama/Llama-2-7b-hf), plus a tiny one for tests.
 */
import type { ArchConfig } from '../format/types.js';

export const SHAPE_NAMES = ['opt-1.3b', 'opt-6.7b', 'opt-13b', 'llama-7b', 'tiny'] as const;
export type ShapeName = (typeof SHAPE_NAMES)[number];

/** OPT as the converter reads it (hf-opt.ts): pre-LayerNorm, biases everywhere, learned positions from row 2, tied head. */
function opt(dModel: number, nLayers: number, nHeads: number, ffnDim: number, vocabSize: number, maxSeqLen: number): ArchConfig {
  return {
    type: 'opt',
    dModel,
    nLayers,
    nHeads,
    nKvHeads: nHeads,
    headDim: dModel / nHeads,
    ffnDim,
    vocabSize,
    maxSeqLen,
    norm: 'layernorm',
    normEps: 1e-5,
    activation: 'relu',
    positions: 'learned',
    posOffset: 2,
    preNorm: true,
    attnBias: true,
    ffnBias: true,
    tiedEmbeddings: true,
    embedDim: dModel,
    bosId: 2,
    eosId: 2,
    stopIds: [2],
  };
}

/**
 * Llama-2-7B's shape with a ReLU-gated FFN (h = relu(gate·x)·(up·x), as
 * ReluLLaMA / ProSparse-Llama-2): SiLU is never exactly zero, so a sparse
 * Llama needs a ReLU-family gate. The tokenizer's ids (BOS = EOS = 2, the
 * bundled OPT tokenizer's) replace Llama's.
 */
function llama7b(): ArchConfig {
  return {
    type: 'llama',
    dModel: 4096,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 32,
    headDim: 128,
    ffnDim: 11008,
    vocabSize: 32000,
    maxSeqLen: 4096,
    norm: 'rmsnorm',
    normEps: 1e-5,
    activation: 'swiglu',
    gatedAct: 'relu',
    positions: 'rope',
    ropeStyle: 'half',
    ropeTheta: 10000,
    preNorm: true,
    attnBias: false,
    ffnBias: false,
    tiedEmbeddings: false,
    embedDim: 4096,
    bosId: 2,
    eosId: 2,
    stopIds: [2],
  };
}

export function shapeArch(name: ShapeName): ArchConfig {
  switch (name) {
    case 'opt-1.3b':
      return opt(2048, 24, 32, 8192, 50272, 2048);
    case 'opt-6.7b':
      return opt(4096, 32, 32, 16384, 50272, 2048);
    case 'opt-13b':
      return opt(5120, 40, 40, 20480, 50272, 2048);
    case 'llama-7b':
      return llama7b();
    case 'tiny':
      // Small enough for tests (a few MB), with enough neurons (2048) for the statistics to mean something.
      return opt(128, 2, 4, 2048, 4096, 512);
  }
}
