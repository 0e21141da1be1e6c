/**
 * Entry point of the converter's input side: open any supported checkpoint as a
 * Checkpoint (canonical tensor names, streaming f32 reads).
 *
 *   - a folder with config.json -> Hugging Face, by model_type (opt | llama | mistral | qwen2 | qwen3 | phi3)
 *   - a .bin file               -> llama2.c legacy checkpoint
 */
import { access, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { ConvertError } from '../errors.js';
import type { ArchConfig, TokenizerSpec } from '../format/types.js';
import { LLAMA_MODEL_TYPES, llamaArch, openLlama } from './hf-llama.js';
import { openOpt, optArch } from './hf-opt.js';
import { openPhi3, phi3Arch } from './hf-phi3.js';
import { openLlama2c } from './llama2c.js';
import { JsonConfig } from './safetensors.js';
import { withActivation, type ActivationChoice } from './activation.js';
import type { Checkpoint } from './types.js';

export type { Checkpoint } from './types.js';

export interface OpenCheckpointOptions {
  /** Tokenizer file: tokenizer.json for Hugging Face models, tokenizer.bin for llama2.c. */
  tokenizer?: string;
  /** `--activation`: the gated FFN activation, over config.json's hidden_act (gated models only). */
  activation?: ActivationChoice;
}

/** Open a checkpoint folder or file. Every bad input is a ConvertError naming the file (and tensor). */
export async function openCheckpoint(input: string, options: OpenCheckpointOptions = {}): Promise<Checkpoint> {
  let isDir: boolean;
  try {
    isDir = (await stat(input)).isDirectory();
  } catch (e) {
    throw new ConvertError(input, undefined, `cannot open: ${(e as Error).message}`, { cause: e });
  }
  if (isDir) return openHf(input, options);
  const base = path.basename(input);
  if (base === 'config.json') return openHf(path.dirname(input), options);
  if (base.endsWith('.bin')) {
    if (options.activation) throw new ConvertError(input, undefined, '--activation is for Hugging Face gated (Llama-family) models');
    return openLlama2c(input, options);
  }
  if (base.endsWith('.safetensors') || base.endsWith('.safetensors.index.json')) {
    throw new ConvertError(input, undefined, 'pass the model folder (with config.json and tokenizer.json), not a weights file');
  }
  throw new ConvertError(input, undefined, 'unsupported input: expected a Hugging Face model folder or a llama2.c .bin checkpoint');
}

async function openHf(dir: string, options: OpenCheckpointOptions): Promise<Checkpoint> {
  const configPath = path.join(dir, 'config.json');
  if (!(await exists(configPath))) throw new ConvertError(dir, undefined, 'not a Hugging Face model folder: no config.json');
  const cfg = await JsonConfig.load(configPath);
  const modelType = cfg.values['model_type'];
  const tokenizerPath = options.tokenizer ?? path.join(dir, 'tokenizer.json');
  /** A gated arch with --activation applied (it overrides hidden_act). */
  const gated = (arch: ArchConfig): ArchConfig => (options.activation ? withActivation(arch, options.activation) : arch);
  if (modelType === 'opt') {
    if (options.activation) throw new ConvertError(configPath, undefined, '--activation is for gated (Llama-family) models: OPT FFNs are ReLU (up, down) already');
    const arch = await withGenerationStops(dir, optArch(cfg));
    return openOpt(dir, cfg, arch, await loadHfTokenizer(tokenizerPath, arch.vocabSize));
  }
  if (typeof modelType === 'string' && LLAMA_MODEL_TYPES.includes(modelType)) {
    const arch = await withGenerationStops(dir, gated(llamaArch(cfg)));
    return openLlama(dir, arch, await loadHfTokenizer(tokenizerPath, arch.vocabSize), modelType);
  }
  if (modelType === 'phi3') {
    const arch = await withGenerationStops(dir, gated(phi3Arch(cfg)));
    return openPhi3(dir, arch, await loadHfTokenizer(tokenizerPath, arch.vocabSize));
  }
  throw new ConvertError(configPath, undefined, `unsupported model_type ${JSON.stringify(modelType)} (supported: opt, ${LLAMA_MODEL_TYPES.join(', ')}, phi3)`);
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/**
 * Load a Hugging Face tokenizer.json (and tokenizer_config.json beside it, if any)
 * after a structural check: UTF-8 JSON object with a `model`, and no token id at or
 * beyond the model's vocabulary (a smaller tokenizer is normal: padded embeddings).
 */
export async function loadHfTokenizer(file: string, vocabSize: number): Promise<TokenizerSpec> {
  const bad = (msg: string, cause?: unknown): never => {
    throw new ConvertError(file, undefined, `not a tokenizer.json for this model: ${msg}`, { cause });
  };
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (e) {
    throw new ConvertError(file, undefined, `cannot read tokenizer (pass --tokenizer to choose one): ${(e as Error).message}`, { cause: e });
  }
  const binary = 'binary file, not JSON (a llama2.c tokenizer.bin? Hugging Face models need tokenizer.json)';
  if (bytes.includes(0)) bad(binary); // JSON text never holds NUL; tokenizer.bin's int32s do
  let json = '';
  try {
    json = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (e) {
    bad(binary, e);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    bad(`invalid JSON: ${(e as Error).message}`, e);
  }
  const obj = doc as { model?: unknown; added_tokens?: unknown };
  if (typeof doc !== 'object' || doc === null || typeof obj.model !== 'object' || obj.model === null) bad('no "model" object');
  const count = tokenCount(obj.model as Record<string, unknown>, obj.added_tokens);
  if (count > vocabSize) bad(`it has ${count} token ids but the model's vocabulary is ${vocabSize}`);

  const spec: TokenizerSpec = { kind: 'hf', json };
  const configPath = path.join(path.dirname(file), 'tokenizer_config.json');
  if (await exists(configPath)) {
    const config = await readFile(configPath, 'utf8');
    parseJson(configPath, config);
    spec.config = config;
  }
  // Newer Hugging Face repositories keep the chat template in a file of its own.
  const jinja = path.join(path.dirname(file), 'chat_template.jinja');
  const templateJson = path.join(path.dirname(file), 'chat_template.json');
  if (await exists(jinja)) spec.chatTemplate = await readFile(jinja, 'utf8');
  else if (await exists(templateJson)) {
    const t = (parseJson(templateJson, await readFile(templateJson, 'utf8')) as { chat_template?: unknown } | null)?.chat_template;
    if (typeof t !== 'string') throw new ConvertError(templateJson, undefined, 'no "chat_template" string');
    spec.chatTemplate = t;
  }
  return spec;
}

function parseJson(file: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConvertError(file, undefined, `invalid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * generation_config.json's eos_token_id (an id or a list: Llama-3-Instruct
 * ends turns with 128009 besides 128001) joins the stop ids from config.json.
 */
async function withGenerationStops(dir: string, arch: ArchConfig): Promise<ArchConfig> {
  const p = path.join(dir, 'generation_config.json');
  if (!(await exists(p))) return arch;
  const eos = (parseJson(p, await readFile(p, 'utf8')) as { eos_token_id?: unknown } | null)?.eos_token_id;
  const ids = (Array.isArray(eos) ? eos : [eos]).filter((x): x is number => Number.isInteger(x) && (x as number) >= 0 && (x as number) < arch.vocabSize);
  return { ...arch, stopIds: [...new Set([...arch.stopIds, ...ids])] };
}

/** 1 + the largest token id in the tokenizer's vocabulary and added tokens. */
function tokenCount(model: Record<string, unknown>, added: unknown): number {
  let max = -1;
  const vocab = model['vocab'];
  if (Array.isArray(vocab)) max = vocab.length - 1; // Unigram: [[piece, score], ...], id = index
  else if (typeof vocab === 'object' && vocab !== null) {
    for (const id of Object.values(vocab)) if (typeof id === 'number' && id > max) max = id; // BPE/WordPiece/WordLevel: piece -> id
  }
  if (Array.isArray(added)) {
    for (const t of added) {
      const id = (t as { id?: unknown } | null)?.id;
      if (typeof id === 'number' && id > max) max = id;
    }
  }
  return max + 1;
}
