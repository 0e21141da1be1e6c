/**
 * llama2.c `tokenizer.bin`: a SentencePiece BPE vocabulary exported as
 * (score, piece) records. Encoding and decoding follow llama2.c's run.c
 * exactly (see shared/models/stories260K/README.md, "Tokenizer").
 *
 * File layout (little-endian): int32 max_token_length, then per token
 * float32 score, int32 byte length, the bytes. The token count is not stored:
 * records run to the end of the file.
 */
import { TokenizerError } from '../errors.js';
import type { EncodeOptions, StreamDecoder, Tokenizer } from './types.js';

/** SentencePiece ids fixed by the llama2.c export. */
const UNK_ID = 0;
const BOS_ID = 1;
const EOS_ID = 2;
/** Byte-fallback tokens `<0x00>`..`<0xFF>` sit at ids 3..258. */
const BYTE_BASE = 3;
/** llama2.c starts its best-pair search at -1e10: pairs scoring at or below that never merge. */
const NO_MERGE_SCORE = -1e10;
/** Sanity bound on max_token_length: real files hold single digits to a few dozen. */
const MAX_TOKEN_LENGTH_LIMIT = 1 << 16;
const SPACE = 0x20;

export interface Llama2cVocab {
  maxTokenLength: number;
  scores: Float32Array;
  /** Raw bytes of each token's piece. */
  pieces: Uint8Array[];
}

/** Parses and structurally validates tokenizer.bin; throws TokenizerError if malformed. */
export function parseLlama2cTokenizer(data: Uint8Array): Llama2cVocab {
  if (!(data instanceof Uint8Array)) throw new TokenizerError('llama2.c tokenizer: data must be a Uint8Array');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.byteLength < 4) throw new TokenizerError('llama2.c tokenizer: truncated (no header)');
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength < 1 || maxTokenLength > MAX_TOKEN_LENGTH_LIMIT) {
    throw new TokenizerError(`llama2.c tokenizer: implausible max_token_length ${maxTokenLength}`);
  }
  const scores: number[] = [];
  const pieces: Uint8Array[] = [];
  let off = 4;
  while (off < data.byteLength) {
    const id = pieces.length;
    if (off + 8 > data.byteLength) throw new TokenizerError(`llama2.c tokenizer: truncated in the header of token ${id}`);
    const score = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (Number.isNaN(score)) throw new TokenizerError(`llama2.c tokenizer: token ${id} has a NaN score`);
    if (len < 0) throw new TokenizerError(`llama2.c tokenizer: token ${id} has negative length ${len}`);
    if (len > maxTokenLength) {
      throw new TokenizerError(`llama2.c tokenizer: token ${id} is ${len} bytes, over max_token_length ${maxTokenLength}`);
    }
    if (off + len > data.byteLength) throw new TokenizerError(`llama2.c tokenizer: truncated in the bytes of token ${id}`);
    scores.push(score);
    pieces.push(data.slice(off, off + len));
    off += len;
  }
  // Byte fallback (and so encoding of any text) depends on the 256 byte tokens at ids 3..258.
  if (pieces.length < BYTE_BASE + 256) {
    throw new TokenizerError(`llama2.c tokenizer: ${pieces.length} tokens, need at least ${BYTE_BASE + 256} (specials + byte tokens)`);
  }
  for (let b = 0; b < 256; b++) {
    if (byteTokenValue(pieces[BYTE_BASE + b]!) !== b) {
      throw new TokenizerError(`llama2.c tokenizer: token ${BYTE_BASE + b} should be the byte token <0x${hex2(b)}>`);
    }
  }
  return { maxTokenLength, scores: Float32Array.from(scores), pieces };
}

export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId = BOS_ID;
  readonly eosId = EOS_ID;
  readonly #scores: Float32Array;
  readonly #pieces: Uint8Array[];
  /** Piece bytes as a "binary string" (one char per byte), so merges concatenate bytes exactly. */
  readonly #keys: string[];
  /** Binary-string piece -> id, built once. On duplicate pieces the first id wins. */
  readonly #ids = new Map<string, number>();
  /** For `<0xNN>` tokens the byte value, else -1. */
  readonly #byteOf: Int16Array;
  readonly #spaceId: number;

  constructor(vocab: Llama2cVocab) {
    this.vocabSize = vocab.pieces.length;
    this.#scores = vocab.scores;
    this.#pieces = vocab.pieces;
    this.#keys = vocab.pieces.map(binaryString);
    this.#byteOf = new Int16Array(this.vocabSize);
    for (let id = 0; id < this.vocabSize; id++) {
      if (!this.#ids.has(this.#keys[id]!)) this.#ids.set(this.#keys[id]!, id);
      this.#byteOf[id] = byteTokenValue(this.#pieces[id]!);
    }
    this.#spaceId = this.#ids.get(' ') ?? BYTE_BASE + SPACE;
  }

  static fromBytes(data: Uint8Array): Llama2cTokenizer {
    return new Llama2cTokenizer(parseLlama2cTokenizer(data));
  }

  tokenId(text: string): number | undefined {
    if (text === '<s>') return BOS_ID;
    if (text === '</s>') return EOS_ID;
    return this.#ids.get(binaryString(new TextEncoder().encode(text)));
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TokenizerError('encode: text must be a string');
    if (options.addSpecialTokens === false) {
      // No BOS added; `<s>` and `</s>` written in the text are BOS and EOS (as SentencePiece's
      // special pieces), and each stretch between them is encoded on its own, dummy prefix included.
      const ids: number[] = [];
      for (const part of text.split(/(<\/?s>)/)) {
        if (part === '<s>') ids.push(BOS_ID);
        else if (part === '</s>') ids.push(EOS_ID);
        else if (part) ids.push(...this.encode(part).slice(1));
      }
      return ids;
    }
    if (text.length === 0) return [BOS_ID];
    // Lone surrogates become U+FFFD here, as with any UTF-8 encoder.
    const bytes = new TextEncoder().encode(text);
    const syms: number[] = [this.#spaceId]; // the dummy prefix
    // One token per UTF-8 code point, or its bytes when the code point is not in the vocab.
    for (let i = 0; i < bytes.length; ) {
      let end = i + 1;
      while (end < bytes.length && end - i < 4 && (bytes[end]! & 0xc0) === 0x80) end++;
      const id = this.#ids.get(binaryString(bytes.subarray(i, end)));
      if (id !== undefined) syms.push(id);
      else for (let k = i; k < end; k++) syms.push(bytes[k]! + BYTE_BASE);
      i = end;
    }
    return [BOS_ID, ...this.#merge(syms)];
  }

  /**
   * llama2.c's greedy merge: repeatedly merge the adjacent pair whose
   * concatenation is a token with the highest score (leftmost on ties) until
   * none merges. Done with a heap over a linked list, O(n log n) instead of
   * run.c's O(n^2) rescans, with the same result.
   */
  #merge(syms: number[]): number[] {
    const n = syms.length;
    const tok = syms.slice();
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const version = new Uint32Array(n); // bumped when a slot changes: invalidates stale heap entries
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const consider = (left: number, right: number): void => {
      if (left < 0 || right < 0) return;
      const id = this.#ids.get(this.#keys[tok[left]!]! + this.#keys[tok[right]!]!);
      if (id === undefined) return;
      const score = this.#scores[id]!;
      if (!(score > NO_MERGE_SCORE)) return;
      heap.push({ score, left, right, id, vLeft: version[left]!, vRight: version[right]! });
    };
    for (let i = 0; i + 1 < n; i++) consider(i, i + 1);
    for (let p = heap.pop(); p; p = heap.pop()) {
      const { left, right } = p;
      if (!alive[left] || !alive[right] || next[left] !== right) continue;
      if (version[left] !== p.vLeft || version[right] !== p.vRight) continue;
      tok[left] = p.id;
      version[left]!++;
      alive[right] = 0;
      const after = next[right]!;
      next[left] = after;
      if (after >= 0) prev[after] = left;
      consider(prev[left]!, left);
      consider(left, after);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]!) out.push(tok[i]!);
    return out;
  }

  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    let prev: number | undefined;
    for (const id of ids) {
      this.#check(id);
      const b = this.#bytes(id, prev);
      prev = id;
      if (b.length) {
        parts.push(b);
        total += b.length;
      }
    }
    const all = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    return utf8Decoder().decode(all);
  }

  streamDecoder(context: readonly number[] = []): StreamDecoder {
    for (const id of context) this.#check(id);
    // Only the previous id matters for decoding (the leading-space strip after BOS).
    let prev: number | undefined = context.length ? context[context.length - 1] : undefined;
    const decoder = utf8Decoder();
    return {
      push: (id: number): string => {
        this.#check(id);
        const b = this.#bytes(id, prev);
        prev = id;
        // A streaming TextDecoder withholds an incomplete sequence until its bytes arrive.
        return b.length ? decoder.decode(b, { stream: true }) : '';
      },
      flush: (): string => decoder.decode(),
    };
  }

  /** The raw piece, e.g. ' the', '<0xE6>', '\n<s>\n'. */
  tokenText(id: number): string {
    this.#check(id);
    return utf8Decoder().decode(this.#pieces[id]!);
  }

  /** Bytes a token contributes to the text, as run.c's decode(prev, token). */
  #bytes(id: number, prev: number | undefined): Uint8Array {
    if (id === UNK_ID || id === BOS_ID || id === EOS_ID) return EMPTY; // control tokens print nothing
    const byte = this.#byteOf[id]!;
    if (byte >= 0) return BYTES[byte]!;
    const piece = this.#pieces[id]!;
    return prev === BOS_ID && piece[0] === SPACE ? piece.subarray(1) : piece;
  }

  #check(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError(`token id ${id} out of range [0, ${this.vocabSize})`);
    }
  }
}

interface PairEntry {
  score: number;
  left: number;
  right: number;
  /** The merged token. */
  id: number;
  vLeft: number;
  vRight: number;
}

/** Max-heap on score; ties go to the leftmost pair, as run.c's strict `>` scan picks. */
class PairHeap {
  readonly #a: PairEntry[] = [];
  static #before(x: PairEntry, y: PairEntry): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }
  push(e: PairEntry): void {
    const a = this.#a;
    let i = a.push(e) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!PairHeap.#before(a[i]!, a[parent]!)) break;
      [a[i], a[parent]] = [a[parent]!, a[i]!];
      i = parent;
    }
  }
  pop(): PairEntry | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < a.length && PairHeap.#before(a[l]!, a[best]!)) best = l;
        if (r < a.length && PairHeap.#before(a[r]!, a[best]!)) best = r;
        if (best === i) break;
        [a[i], a[best]] = [a[best]!, a[i]!];
        i = best;
      }
    }
    return top;
  }
}

const EMPTY = new Uint8Array(0);
const BYTES = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));

/** ignoreBOM: keep a leading U+FEFF as text instead of swallowing it. */
function utf8Decoder(): TextDecoder {
  return new TextDecoder('utf-8', { ignoreBOM: true });
}

function binaryString(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

function hex2(b: number): string {
  return b.toString(16).toUpperCase().padStart(2, '0');
}

/** The byte of a `<0xNN>` piece, else -1. */
function byteTokenValue(piece: Uint8Array): number {
  if (piece.length !== 6) return -1;
  const s = binaryString(piece);
  const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(s);
  return m ? parseInt(m[1]!, 16) : -1;
}
