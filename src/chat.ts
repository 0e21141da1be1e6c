/**
 * Chat templates: the Jinja template a Hugging Face model ships in
 * tokenizer_config.json (`chat_template`), rendered with @huggingface/jinja
 * (the Jinja implementation transformers.js uses: the same trim_blocks and
 * lstrip_blocks as transformers' `apply_chat_template`, `raise_exception`
 * and `strftime_now` built in). The rendered text is tokenized as
 * `apply_chat_template(tokenize=True)` does: without adding special tokens,
 * since the template writes BOS and the turn markers itself.
 * Platform-neutral: no `node:` imports.
 */
import { Template } from '@huggingface/jinja';
import { ArgumentError, TokenizerError } from './errors.js';
import type { TokenizerSpec } from './format/types.js';

export interface ChatMessage {
  /** 'system', 'user', 'assistant' (or whatever the template knows). */
  role: string;
  content: string;
}

/** A model's chat template and the special tokens `apply_chat_template` passes to it. */
export interface ChatTemplate {
  /** The Jinja source. */
  source: string;
  /** bos_token, eos_token, unk_token, pad_token, ... as strings (HF's `special_tokens_map`). */
  special: Record<string, string | string[]>;
}

/** The option users pass when the model has no template. */
export const CHAT_TEMPLATE_HINT = 'pass a Jinja chat template with --chat-template FILE (library: openModel(src, { chatTemplate }))';

const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/**
 * The chat template a .flm's tokenizer carries (tokenizer_config.json's
 * `chat_template`: a string, or a list of named templates of which 'default'
 * is taken) or `override` (a template's source) — undefined when neither has one.
 */
export function chatTemplateOf(spec: TokenizerSpec, override?: string): ChatTemplate | undefined {
  let config: Record<string, unknown> = {};
  if (spec.kind === 'hf' && spec.config !== undefined) {
    try {
      const c: unknown = JSON.parse(spec.config);
      if (typeof c === 'object' && c !== null && !Array.isArray(c)) config = c as Record<string, unknown>;
    } catch (e) {
      throw new TokenizerError(`tokenizer_config.json is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }
  const special: Record<string, string | string[]> = {};
  if (spec.kind === 'llama2c') Object.assign(special, { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' });
  for (const k of SPECIAL_KEYS) {
    const s = tokenString(config[k]);
    if (s !== undefined) special[k] = s;
  }
  const extra = config['additional_special_tokens'];
  if (Array.isArray(extra)) special['additional_special_tokens'] = extra.map(tokenString).filter((s): s is string => s !== undefined);

  let source = override;
  // A template stored beside the tokenizer (as a converter may keep chat_template.jinja) comes before the config's.
  const stored = (spec as { chatTemplate?: unknown }).chatTemplate;
  if (source === undefined && typeof stored === 'string') source = stored;
  if (source === undefined) {
    const t = config['chat_template'];
    if (typeof t === 'string') source = t;
    else if (Array.isArray(t)) {
      const named = t as { name?: unknown; template?: unknown }[];
      const pick = named.find((x) => x?.name === 'default') ?? named[0];
      if (typeof pick?.template === 'string') source = pick.template;
    }
  }
  return source === undefined ? undefined : { source, special };
}

const compiled = new Map<string, Template>();

/** Checks messages: an array of { role, content } with string fields. Throws ArgumentError. */
export function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) throw new ArgumentError('messages must be a non-empty array');
  for (const [i, m] of messages.entries()) {
    if (typeof m !== 'object' || m === null) throw new ArgumentError(`messages[${i}] must be an object`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string') throw new ArgumentError(`messages[${i}].role must be a string`);
    if (typeof content !== 'string') throw new ArgumentError(`messages[${i}].content must be a string`);
  }
}

/**
 * The template rendered over `messages`, with `add_generation_prompt` (true:
 * the text ends where the assistant's answer starts) and the special tokens,
 * as transformers' apply_chat_template(tokenize=False) gives it.
 */
export function renderChat(t: ChatTemplate, messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
  checkMessages(messages);
  let tpl = compiled.get(t.source);
  try {
    if (!tpl) {
      tpl = new Template(t.source);
      if (compiled.size > 16) compiled.clear();
      compiled.set(t.source, tpl);
    }
    return tpl.render({ ...t.special, messages: messages.map((m) => ({ ...m })), add_generation_prompt: options.addGenerationPrompt ?? true });
  } catch (e) {
    throw new ArgumentError(`chat template: ${(e as Error).message}`, { cause: e });
  }
}
