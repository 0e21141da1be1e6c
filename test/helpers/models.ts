/** Paths to the shared fixture models and a converter-to-memory helper for tests. */
import { fileURLToPath } from 'node:url';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, type OpenCheckpointOptions } from '../../src/convert/index.js';
import { writeFlm, type WriteOptions } from '../../src/format/writer.js';
import { MemorySink } from '../../src/source/memory.js';

export const SHARED_MODELS = fileURLToPath(new URL('../../../shared/models/', import.meta.url));
export const STORIES_DIR = SHARED_MODELS + 'stories260K/';
export const STORIES_BIN = STORIES_DIR + 'stories260K.bin';
export const STORIES_TOK = STORIES_DIR + 'tok512.bin';
export const OPT_DIR = SHARED_MODELS + 'opt-relu-6m';

export interface OptReference {
  prompt: string;
  prompt_ids: number[];
  n: number;
  greedy_ids: number[];
  text: string;
  last_logits_top5: number[];
}

export function optReference(): { ref: OptReference; lastLogits: Float32Array } {
  const ref = JSON.parse(readFileSync(OPT_DIR + '/REFERENCE.json', 'utf8')) as OptReference;
  const raw = readFileSync(OPT_DIR + '/REFERENCE.last_logits.f32');
  return { ref, lastLogits: new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)) };
}

/**
 * What llama2.c's `run stories260K.bin -z tok512.bin -t 0.0` prints (256 greedy
 * tokens from BOS), as published in the model's readme on the tinyllamas page.
 */
export const STORIES_GOLDEN = [
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.',
  'Lily\'s mom said, "Lily, let\'s go to the park." Lily was sad and didn\'t know what to do. She said, "I want to play with your ball, but I can\'t find it."',
  'Lily was sad and didn\'t know what to do. She said, "I\'m sorry, Lily. I didn\'t know what to do."',
  'Lily didn\'t want to help her mom, so she said, "I\'m sorry, mom. I didn\'t know what to do." Her mom said, "Don\'t worry, Lily. We can help you.',
].join('\n');

const cache = new Map<string, Promise<Uint8Array>>();

/** Converts a fixture to .flm bytes in memory (memoised per input/options within a test file). */
export function convertToBytes(input: string, opts: Partial<WriteOptions> & { tokenizer?: string } = {}): Promise<Uint8Array> {
  const key = JSON.stringify([input, opts.dtype, opts.layout, opts.tokenizer]);
  let p = cache.get(key);
  if (!p) {
    p = convertCheckpoint(input, opts);
    cache.set(key, p);
  }
  return p;
}

/** Converts a checkpoint to .flm bytes (f32, bundled unless `opts` says otherwise), every call afresh. */
export async function convertCheckpoint(input: string, opts: Partial<WriteOptions> & { tokenizer?: string; activation?: OpenCheckpointOptions['activation'] } = {}): Promise<Uint8Array> {
  const ckpt = await openCheckpoint(input, { tokenizer: opts.tokenizer, activation: opts.activation });
  try {
    const sink = new MemorySink();
    await writeFlm(ckpt, sink, { dtype: opts.dtype ?? 'f32', layout: opts.layout ?? 'bundled' });
    return sink.bytes();
  } finally {
    await ckpt.close();
  }
}

/** The OPT fixture with a chat template (test/fixtures/chat/zephyr.jinja) in its tokenizer_config.json, as .flm bytes. */
export async function optChatBytes(): Promise<Uint8Array> {
  const src = mkdtempSync(join(tmpdir(), 'flashlm-optchat-'));
  try {
    cpSync(OPT_DIR, src, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(src, 'tokenizer_config.json'), 'utf8'));
    cfg.chat_template = readFileSync(new URL('../fixtures/chat/zephyr.jinja', import.meta.url), 'utf8');
    writeFileSync(join(src, 'tokenizer_config.json'), JSON.stringify(cfg));
    return await convertToBytes(src);
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
}
