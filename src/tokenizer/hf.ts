/**
 * Hugging Face `tokenizer.json` through @huggingface/tokenizers (pure JS, no
 * `node:` imports, runs in every target). We add: typed errors, id checks,
 * HF `skip_special_tokens=True` decoding, and an exact incremental decoder.
 */
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { TokenizerError } from '../errors.js';
import type { EncodeOptions, StreamDecoder, Tokenizer } from './types.js';

/**
 * The part of @huggingface/tokenizers' Tokenizer we use. Spelled out because
 * the package's .d.ts files use extensionless relative imports, which
 * NodeNext resolution rejects: with skipLibCheck the import silently types as
 * `any`. Assigning to this type restores checking at our call sites.
 */
interface HfLibTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean | null }): string;
  token_to_id(token: string): number | undefined;
  get_added_tokens_decoder(): Map<number, { content: string; special: boolean }>;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}
const HfLib: new (tokenizerJson: object, config: object) => HfLibTokenizer = HfTokenizerImpl;

/** Decode options for text that will be concatenated: cleanup is applied by the stream itself. */
const RAW = { skip_special_tokens: true, clean_up_tokenization_spaces: false } as const;

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly #tok: HfLibTokenizer;
  /** Ids that `skip_special_tokens` drops. */
  readonly #special: ReadonlySet<number>;
  /** Whether decode() applies clean_up_tokenization (tokenizers.js defaults it to true when the config is silent). */
  readonly #cleanup: boolean;

  /** `json`: tokenizer.json text; `config`: tokenizer_config.json text, if any. Throws TokenizerError. */
  constructor(json: string, config?: string) {
    const tj = parseObject(json, 'tokenizer.json');
    const cfg = config === undefined ? {} : parseObject(config, 'tokenizer_config.json');
    try {
      this.#tok = new HfLib(tj, cfg);
    } catch (e) {
      throw new TokenizerError(`tokenizer.json not usable: ${(e as Error).message}`, { cause: e });
    }
    let max = -1;
    for (const id of this.#tok.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    if (this.vocabSize === 0) throw new TokenizerError('tokenizer.json has an empty vocabulary');

    // Mirror tokenizers.js: special = added tokens marked special, plus config.additional_special_tokens (strings).
    const special = new Set<number>();
    for (const [id, t] of this.#tok.get_added_tokens_decoder()) if (t.special) special.add(id);
    const extra = cfg['additional_special_tokens'];
    if (Array.isArray(extra)) {
      for (const s of extra) {
        const id = typeof s === 'string' ? this.#tok.token_to_id(s) : undefined;
        if (id !== undefined) special.add(id);
      }
    }
    this.#special = special;
    this.#cleanup = typeof cfg['clean_up_tokenization_spaces'] === 'boolean' ? cfg['clean_up_tokenization_spaces'] : true;
    this.bosId = this.#configTokenId(cfg['bos_token']) ?? templateBosId(tj, this.#tok);
    this.eosId = this.#configTokenId(cfg['eos_token']);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TokenizerError('encode: text must be a string');
    let ids: number[];
    try {
      // add_special_tokens defaults to true: the post-processor template applies
      ids = this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
    } catch (e) {
      throw new TokenizerError(`encode failed: ${(e as Error).message}`, { cause: e });
    }
    // A BPE without unk_token maps an unknown piece to undefined rather than failing.
    if (ids.some((id) => typeof id !== 'number')) throw new TokenizerError('encode: text has a piece outside the vocabulary and no unk_token');
    return ids;
  }

  decode(ids: readonly number[]): string {
    this.#checkAll(ids);
    if (ids.length === 0) return ''; // tokenizers.js throws on an empty array
    return this.#tok.decode([...ids], { skip_special_tokens: true, clean_up_tokenization_spaces: this.#cleanup });
  }

  streamDecoder(context: readonly number[] = []): StreamDecoder {
    this.#checkAll(context);
    const s = new WindowDecoder((ids) => this.#tok.decode(ids, RAW), this.#cleanup);
    // Only the last few ids can influence later text; push them and drop what they print.
    for (const id of context.slice(-8)) if (!this.#special.has(id)) s.push(id);
    s.discard();
    return {
      push: (id: number): string => {
        this.#check(id);
        return this.#special.has(id) ? '' : s.push(id); // skipped specials never reach the window
      },
      flush: (): string => s.flush(),
    };
  }

  /** The token decoded alone, specials included (a lone partial byte of a character shows as U+FFFD). */
  tokenText(id: number): string {
    this.#check(id);
    return this.#tok.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  tokenId(text: string): number | undefined {
    return this.#tok.token_to_id(text) ?? undefined;
  }

  #configTokenId(v: unknown): number | undefined {
    // tokenizer_config.json writes special tokens as a string or as {content: ...}.
    const content = typeof v === 'string' ? v : isRecord(v) && typeof v['content'] === 'string' ? v['content'] : undefined;
    return content === undefined ? undefined : this.#tok.token_to_id(content);
  }

  #check(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError(`token id ${id} out of range [0, ${this.vocabSize})`);
    }
  }

  #checkAll(ids: readonly number[]): void {
    if (!Array.isArray(ids)) throw new TokenizerError('ids must be an array');
    for (const id of ids) this.#check(id);
  }
}

/**
 * Incremental decoding by a sliding window of ids, re-decoding only the window
 * (text-generation-inference's prefix/read-offset scheme, made char-exact):
 *  - the window starts with one already-printed context id, so decoders whose
 *    output depends on position (SentencePiece's leading-space strip) see the
 *    same neighbourhood as a full decode;
 *  - everything before a trailing run of U+FFFD is final (UTF-8 decoding never
 *    revises earlier text), so it is emitted at once; the U+FFFD run may still
 *    become a character when its remaining bytes arrive, so it is withheld;
 *  - when the window text ends cleanly it shrinks back to its last id.
 * The window only grows across a run of ids whose text keeps ending in an
 * incomplete/invalid UTF-8 sequence, which valid text does not produce.
 */
class WindowDecoder {
  #ids: number[] = [];
  /** Chars of decode(#ids) already accounted for (emitted or context). */
  #done = 0;
  readonly #decode: (ids: number[]) => string;
  readonly #cleanup: CleanupStream | undefined;

  constructor(decodeRaw: (ids: number[]) => string, cleanup: boolean) {
    this.#decode = decodeRaw;
    this.#cleanup = cleanup ? new CleanupStream() : undefined;
  }

  push(id: number): string {
    this.#ids.push(id);
    const text = this.#decode(this.#ids);
    let end = text.length;
    while (end > this.#done && text.charCodeAt(end - 1) === 0xfffd) end--;
    const out = end > this.#done ? text.slice(this.#done, end) : '';
    if (end === text.length) {
      this.#ids = [id];
      this.#done = this.#decode(this.#ids).length;
    } else {
      this.#done = Math.max(this.#done, end);
    }
    return this.#cleanup ? this.#cleanup.push(out) : out;
  }

  flush(): string {
    const text = this.#ids.length ? this.#decode(this.#ids) : '';
    const out = text.slice(this.#done);
    this.#done = text.length;
    return this.#cleanup ? this.#cleanup.push(out) + this.#cleanup.flush() : out;
  }

  /** Marks everything decoded so far as printed (used after pushing context). */
  discard(): void {
    this.#done = this.#ids.length ? this.#decode(this.#ids).length : 0;
    this.#cleanup?.discard();
  }
}

/**
 * tokenizers.js `clean_up_tokenization` (as transformers'), applied to a
 * stream. Every rule deletes a space and spans at most 4 chars starting with
 * that space, so cleaning chunks equals cleaning the whole text as long as each
 * chunk boundary has 3 non-space chars before it: no rule can straddle it.
 */
class CleanupStream {
  #pending = '';
  /** The last (≤3) raw chars already emitted. */
  #tail = '';

  push(raw: string): string {
    this.#pending += raw;
    const all = this.#tail + this.#pending;
    let k = all.length;
    while (k > this.#tail.length && !safeBoundary(all, k)) k--;
    if (k <= this.#tail.length) return '';
    const chunk = all.slice(this.#tail.length, k);
    this.#pending = all.slice(k);
    this.#tail = all.slice(Math.max(0, k - 3), k);
    return cleanUpTokenization(chunk);
  }

  flush(): string {
    const out = cleanUpTokenization(this.#pending);
    this.#tail = (this.#tail + this.#pending).slice(-3);
    this.#pending = '';
    return out;
  }

  discard(): void {
    this.flush();
  }
}

function safeBoundary(s: string, k: number): boolean {
  for (let i = Math.max(0, k - 3); i < k; i++) if (s.charCodeAt(i) === 0x20) return false;
  const last = s.charCodeAt(k - 1);
  return !(last >= 0xd800 && last <= 0xdbff); // never split a surrogate pair
}

/** Same replacements, same order, as tokenizers.js 0.2.0 `clean_up_tokenization`. */
function cleanUpTokenization(text: string): string {
  return text
    .replace(/ \./g, '.')
    .replace(/ \?/g, '?')
    .replace(/ !/g, '!')
    .replace(/ ,/g, ',')
    .replace(/ ' /g, "'")
    .replace(/ n't/g, "n't")
    .replace(/ 'm/g, "'m")
    .replace(/ 's/g, "'s")
    .replace(/ 've/g, "'ve")
    .replace(/ 're/g, "'re");
}

/** Without a config naming bos_token: the special token the post-processor template puts first, if any. */
function templateBosId(tj: Record<string, unknown>, tok: HfLibTokenizer): number | undefined {
  const pp = tj['post_processor'];
  if (!isRecord(pp) || pp['type'] !== 'TemplateProcessing' || !Array.isArray(pp['single'])) return undefined;
  const first: unknown = pp['single'][0];
  const special = isRecord(first) ? first['SpecialToken'] : undefined;
  return isRecord(special) && typeof special['id'] === 'string' ? tok.token_to_id(special['id']) : undefined;
}

function parseObject(text: string, what: string): Record<string, unknown> {
  if (typeof text !== 'string') throw new TokenizerError(`${what}: expected JSON text`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${what} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (!isRecord(v)) throw new TokenizerError(`${what} must be a JSON object`);
  return v;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
