/**
 * The tokenizer a synthetic model embeds: the bundled OPT tokenizer
 * (models/opt-tokenizer-4k, shipped with the package) or the user's
 * tokenizer.json, its vocabulary padded to the shape's with `<synth_N>`
 * pieces that no text encodes to, so the embeddings and head keep the real
 * model's size and every id the model can emit decodes.
 */
import { fileURLToPath } from 'node:url';
import { loadHfTokenizer } from '../convert/index.js';
import { ConvertError } from '../errors.js';
import type { TokenizerSpec } from '../format/types.js';
import { createTokenizer } from '../tokenizer/index.js';

/** The bundled tokenizer.json: two folders up from src/synth/ and dist/synth/ alike. */
export const BUNDLED_TOKENIZER = fileURLToPath(new URL('../../models/opt-tokenizer-4k/tokenizer.json', import.meta.url));

export interface SynthTokenizer {
  spec: TokenizerSpec;
  /** Ids of the tokenizer before padding. */
  vocab: number;
  bosId: number;
  eosId: number;
}

export async function loadSynthTokenizer(vocabSize: number, file = BUNDLED_TOKENIZER): Promise<SynthTokenizer> {
  const spec = await loadHfTokenizer(file, vocabSize);
  if (spec.kind !== 'hf') throw new ConvertError(file, undefined, 'expected a tokenizer.json');
  const tok = await createTokenizer(spec);
  const vocab = tok.vocabSize;
  const bosId = tok.bosId ?? tok.eosId;
  const eosId = tok.eosId ?? tok.bosId;
  if (bosId === undefined || eosId === undefined) throw new ConvertError(file, undefined, 'the tokenizer names no BOS or EOS token (tokenizer_config.json bos_token / eos_token)');
  if (vocab < vocabSize) {
    const doc = JSON.parse(spec.json) as { model: { vocab: Record<string, number> | [string, number][] } };
    const v = doc.model.vocab;
    if (Array.isArray(v) && v.length !== vocab) throw new ConvertError(file, undefined, `cannot pad this tokenizer to ${vocabSize} ids: its added tokens lie beyond its vocabulary`);
    for (let id = vocab; id < vocabSize; id++) {
      const piece = `<synth_${id}>`;
      if (Array.isArray(v)) v.push([piece, -1e9]); // Unigram: id = index; a score no text would choose
      else v[piece] = id;
    }
    spec.json = JSON.stringify(doc);
  }
  return { spec, vocab, bosId, eosId };
}
