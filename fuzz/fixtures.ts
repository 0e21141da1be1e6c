/**
 * The fuzzers' models: both shared fixtures converted to .flm (stories260K,
 * llama2.c, f32 bundled; opt-relu-6m, Hugging Face OPT, q8 split: two
 * architectures, two tokenizers, two dtypes, both layouts), written once to
 * a temporary folder that the workers read.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertToBytes, OPT_DIR, STORIES_BIN, STORIES_TOK } from '../test/helpers/models.js';
import type { RunSpec } from './corrupt.js';

export interface Fixture {
  name: string;
  file: string;
  bytes: number;
  /** How `run` is driven on it (greedy, so the reference text is exact). */
  spec: Omit<RunSpec, 'strategy'>;
}

export const FIXTURES = ['stories', 'opt'] as const;
export type FixtureName = (typeof FIXTURES)[number];

export async function writeFixtures(dir: string, names: readonly FixtureName[] = FIXTURES): Promise<Fixture[]> {
  const out: Fixture[] = [];
  for (const name of names) {
    const bytes =
      name === 'stories'
        ? await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK, dtype: 'f32', layout: 'bundled' })
        : await convertToBytes(OPT_DIR, { dtype: 'q8', layout: 'split' });
    const file = join(dir, `${name}.flm`);
    await writeFile(file, bytes);
    out.push({
      name,
      file,
      bytes: bytes.byteLength,
      spec: name === 'stories' ? { prompt: 'Once upon a time', tokens: 8, contextLength: 32 } : { prompt: 'The capital of France is', tokens: 6, contextLength: 32 },
    });
  }
  return out;
}
