/**
 * The one tokenizer interface the engine and CLI use, whatever the model's
 * tokenizer format (Hugging Face tokenizer.json or llama2.c tokenizer.bin).
 * Platform-neutral: no `node:` imports anywhere under src/tokenizer.
 */

/** Incremental decoder: text out as ids come in, never half a character. */
export interface StreamDecoder {
  /** Push the next id; returns the text it completes (possibly ''). */
  push(id: number): string;
  /** Returns whatever was withheld (e.g. an unfinished UTF-8 sequence, as U+FFFD) and resets. */
  flush(): string;
}

export interface EncodeOptions {
  /** Default true. */
  addSpecialTokens?: boolean;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  /**
   * Ids for a prompt exactly as the model's reference pipeline makes them (HF: post-processor template, e.g. OPT prepends </s>=2; llama2.c: BOS + dummy-prefix encoding).
   * `addSpecialTokens: false` adds none (HF's `add_special_tokens=False`, as `apply_chat_template` tokenizes a rendered chat, whose template wrote them itself); special tokens written in the text are still recognised.
   */
  encode(text: string, options?: EncodeOptions): number[];
  /**
   * Text for ids, special tokens skipped (HF `skip_special_tokens=True`).
   * Throws TokenizerError on an id outside [0, vocabSize).
   */
  decode(ids: readonly number[]): string;
  /**
   * Incremental decoding for streaming: push ids one at a time, get the new text (never a broken UTF-8 sequence or a half multi-byte char; withheld bytes come out when completed); flush() returns anything left.
   * Concatenated output (pushes + flush) equals `decode(all pushed ids)`.
   *
   * `context` (optional, e.g. the prompt ids) is decoding context only: nothing
   * is emitted for it, but it decides context-dependent text of the first
   * pushed tokens (llama2.c strips the leading space of the token after BOS;
   * SentencePiece-style HF decoders strip it at the start of a sequence).
   */
  streamDecoder(context?: readonly number[]): StreamDecoder;
  /** The text of a single token, for debugging. */
  tokenText(id: number): string;
  /** The id of a token written as text (e.g. '<|im_end|>'), if the vocabulary has it. */
  tokenId(text: string): number | undefined;
}
