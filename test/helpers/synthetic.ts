/**
 * A small random Checkpoint held in memory, for format and engine tests that
 * need a model of a chosen shape without a converter.
 */
import type { Checkpoint } from '../../src/convert/types.js';
import type { ArchConfig, TokenizerSpec } from '../../src/format/types.js';

import { rng } from '../../src/util/random.js';

export { rng };

export function syntheticArch(type: 'opt' | 'llama', over: Partial<ArchConfig> = {}): ArchConfig {
  const base: ArchConfig =
    type === 'opt'
      ? { type, dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 4, headDim: 8, ffnDim: 48, vocabSize: 40, maxSeqLen: 64, norm: 'layernorm', normEps: 1e-5, activation: 'relu', positions: 'learned', posOffset: 2, preNorm: true, attnBias: true, ffnBias: true, tiedEmbeddings: true, embedDim: 32, bosId: 2, eosId: 2, stopIds: [2] }
      : { type, dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8, ffnDim: 40, vocabSize: 40, maxSeqLen: 64, norm: 'rmsnorm', normEps: 1e-5, activation: 'swiglu', positions: 'rope', ropeStyle: 'half', ropeTheta: 10000, preNorm: true, attnBias: false, ffnBias: false, tiedEmbeddings: false, embedDim: 32, bosId: 1, eosId: 2, stopIds: [2] };
  return { ...base, ...over };
}

/** Canonical tensor shapes for an architecture (the contract in src/format/types.ts). */
export function canonicalShapes(a: ArchConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const q = a.nHeads * a.headDim;
  const kv = a.nKvHeads * a.headDim;
  m.set('tok_embeddings', [a.vocabSize, a.embedDim]);
  if (a.positions === 'learned') m.set('pos_embeddings', [a.maxSeqLen + (a.posOffset ?? 0), a.dModel]);
  if (a.embedDim !== a.dModel) {
    m.set('project_in', [a.dModel, a.embedDim]);
    m.set('project_out', [a.embedDim, a.dModel]);
  }
  const ln = a.norm === 'layernorm';
  for (let i = 0; i < a.nLayers; i++) {
    const l = `layers.${i}.`;
    m.set(l + 'attn_norm.weight', [a.dModel]);
    if (ln) m.set(l + 'attn_norm.bias', [a.dModel]);
    m.set(l + 'wq', [q, a.dModel]);
    m.set(l + 'wk', [kv, a.dModel]);
    m.set(l + 'wv', [kv, a.dModel]);
    m.set(l + 'wo', [a.dModel, q]);
    if (a.attnBias) {
      m.set(l + 'bq', [q]);
      m.set(l + 'bk', [kv]);
      m.set(l + 'bv', [kv]);
      m.set(l + 'bo', [a.dModel]);
    }
    m.set(l + 'ffn_norm.weight', [a.dModel]);
    if (ln) m.set(l + 'ffn_norm.bias', [a.dModel]);
    m.set(l + 'ffn_up', [a.ffnDim, a.dModel]);
    if (a.activation === 'swiglu') m.set(l + 'ffn_gate', [a.ffnDim, a.dModel]);
    m.set(l + 'ffn_down', [a.dModel, a.ffnDim]);
    if (a.ffnBias) {
      m.set(l + 'ffn_up_bias', [a.ffnDim]);
      m.set(l + 'ffn_down_bias', [a.dModel]);
    }
  }
  m.set('final_norm.weight', [a.dModel]);
  if (ln) m.set('final_norm.bias', [a.dModel]);
  if (!a.tiedEmbeddings) m.set('lm_head', [a.vocabSize, a.embedDim]);
  return m;
}

/** An in-memory checkpoint with random values (norm weights near 1). */
export function syntheticCheckpoint(arch: ArchConfig, seed = 1, tokenizer?: TokenizerSpec): Checkpoint & { values: Map<string, Float32Array> } {
  const r = rng(seed);
  const shapes = canonicalShapes(arch);
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    const isNormWeight = name.endsWith('norm.weight');
    for (let i = 0; i < n; i++) v[i] = isNormWeight ? 1 + (r() - 0.5) * 0.2 : (r() - 0.5) * 0.4;
    values.set(name, v);
  }
  const tok: TokenizerSpec = tokenizer ?? { kind: 'llama2c', data: new Uint8Array(4) };
  return {
    path: `synthetic-${arch.type}`,
    arch,
    tokenizer: tok,
    tensors: shapes,
    values,
    async readRows(name, start, count) {
      const shape = shapes.get(name)!;
      const cols = shape.length === 2 ? shape[1]! : 1;
      return values.get(name)!.slice(start * cols, (start + count) * cols);
    },
    async readColumns(name, start, count) {
      const [rows, cols] = shapes.get(name)! as [number, number];
      const v = values.get(name)!;
      const out = new Float32Array(count * rows);
      for (let j = 0; j < count; j++) for (let r = 0; r < rows; r++) out[j * rows + r] = v[r * cols + start + j]!;
      return out;
    },
    async close() {},
  };
}
