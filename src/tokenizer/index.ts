/**
 * Tokenizers behind one interface. `createTokenizer` builds the one a .flm
 * carries. The HF implementation (and its ~100 kB library) is loaded lazily,
 * so llama2.c-only builds and bundles don't pay for it.
 */
import { TokenizerError } from '../errors.js';
import type { TokenizerSpec } from '../format/types.js';
import { Llama2cTokenizer } from './llama2c.js';
import type { Tokenizer } from './types.js';

export type { StreamDecoder, Tokenizer } from './types.js';
export type { HfTokenizer } from './hf.js';
export { Llama2cTokenizer, parseLlama2cTokenizer, type Llama2cVocab } from './llama2c.js';

/** Builds the tokenizer a spec describes; throws TokenizerError on a malformed spec. */
export async function createTokenizer(spec: TokenizerSpec): Promise<Tokenizer> {
  if (typeof spec !== 'object' || spec === null) throw new TokenizerError('tokenizer spec missing');
  switch (spec.kind) {
    case 'hf': {
      if (typeof spec.json !== 'string') throw new TokenizerError('hf tokenizer spec: json must be the tokenizer.json text');
      if (spec.config !== undefined && typeof spec.config !== 'string') {
        throw new TokenizerError('hf tokenizer spec: config must be the tokenizer_config.json text');
      }
      const { HfTokenizer } = await import('./hf.js');
      return new HfTokenizer(spec.json, spec.config);
    }
    case 'llama2c':
      if (!(spec.data instanceof Uint8Array)) throw new TokenizerError('llama2c tokenizer spec: data must be a Uint8Array');
      return Llama2cTokenizer.fromBytes(spec.data);
    default:
      throw new TokenizerError(`unknown tokenizer kind ${JSON.stringify((spec as { kind?: unknown }).kind)}`);
  }
}
