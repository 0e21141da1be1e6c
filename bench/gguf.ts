/**
 * A GGUF (v3) writer for llama2.c checkpoints, so that llama.cpp runs the very
 * weights flashlm runs (`npm run bench:native`). It writes what llama.cpp's own
 * converters write for architecture `llama`:
 *
 *   - metadata: general.* (architecture, name, file_type, quantization_version),
 *     llama.* hyperparameters, and the llama2.c vocabulary as a SentencePiece
 *     (`tokenizer.ggml.model = llama`) vocabulary: tokens (spaces as U+2581),
 *     scores, token types (normal, unknown, control, byte), bos/eos/unk ids;
 *   - tensors: token_embd, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,
 *     ffn_norm,ffn_gate,ffn_down,ffn_up}, output_norm, and output only when the
 *     classifier is not shared (llama.cpp reuses token_embd otherwise). Each
 *     tensor's dims are listed innermost first (a [rows, cols] matrix is
 *     ne = [cols, rows]); data at 32-byte aligned offsets.
 *
 * Types: F32, F16, or Q8_0 (blocks of 32 weights: an f16 scale d = max|x|/127,
 * then 32 int8 q = round(x/d)). As in llama.cpp's converters, vectors stay F32,
 * and a matrix whose rows are not a multiple of 32 falls back to F16 in a Q8_0 file.
 *
 * RoPE: llama2.c rotates interleaved pairs (x[2i], x[2i+1]) of each head, which
 * is llama.cpp's "normal" RoPE of the `llama` architecture, so q/k rows are
 * written as they are (Hugging Face checkpoints, which rotate halves, would need
 * their q/k rows permuted: they are refused here). bench/native.ts checks this
 * by greedy decoding stories260K (a trained model) in both engines.
 */
import type { Checkpoint } from '../src/convert/types.js';
import { ConvertError } from '../src/errors.js';
import { FileSink } from '../src/source/file-node.js';
import { encodeF16, f32ToF16Bits } from '../src/kernels/quant.js';
import { parseLlama2cTokenizer } from '../src/tokenizer/llama2c.js';

export type GgufType = 'F32' | 'F16' | 'Q8_0';

/** ggml_type ids (ggml.h). */
export const GGML_TYPE: Record<GgufType, number> = { F32: 0, F16: 1, Q8_0: 8 };
/** llama_ftype of a file whose matrices are of that type ("mostly"). */
const FILE_TYPE: Record<GgufType, number> = { F32: 0, F16: 1, Q8_0: 7 };
const GGML_QUANT_VERSION = 2;
const ALIGNMENT = 32;
export const Q8_0_BLOCK = 32;
/** Bytes of a Q8_0 block: the f16 scale, then 32 int8. */
export const Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK;

/** SentencePiece token types as llama.cpp reads them (llama_token_type). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, byte: 6 } as const;

/** gguf_type of metadata values. */
const KV = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9 } as const;

type KvValue =
  | { kind: 'u32' | 'i32' | 'f32'; value: number }
  | { kind: 'bool'; value: boolean }
  | { kind: 'string'; value: string | Uint8Array }
  | { kind: 'string[]'; value: Uint8Array[] }
  | { kind: 'f32[]'; value: Float32Array }
  | { kind: 'i32[]'; value: Int32Array };

export interface GgufTensor {
  /** GGUF name, e.g. blk.0.attn_q.weight. */
  name: string;
  /** The checkpoint's canonical name. */
  source: string;
  /** ne: innermost (row length) first. */
  dims: number[];
  type: GgufType;
  /** From the start of the tensor data, aligned. */
  offset: number;
  bytes: number;
}

const roundUp = (n: number, a: number) => Math.ceil(n / a) * a;

export function tensorBytes(type: GgufType, elements: number): number {
  if (type === 'F32') return elements * 4;
  if (type === 'F16') return elements * 2;
  return (elements / Q8_0_BLOCK) * Q8_0_BLOCK_BYTES;
}

/** Checks the checkpoint is one this writer can express (a llama2.c llama). */
function checkSupported(ckpt: Checkpoint): void {
  const a = ckpt.arch;
  const why =
    ckpt.tokenizer.kind !== 'llama2c' ? 'only llama2.c checkpoints (with their tokenizer.bin) are supported'
    : a.type !== 'llama' || a.norm !== 'rmsnorm' || a.activation !== 'swiglu' || a.positions !== 'rope' ? `architecture ${a.type} is not a plain llama`
    : a.ropeStyle !== 'interleaved' ? 'its RoPE rotates halves; llama.cpp wants interleaved pairs (q/k rows would need permuting)'
    : a.attnBias || a.ffnBias || a.qkNorm || a.embedDim !== a.dModel ? 'biases, q/k norms or a projected embedding are not supported'
    : null;
  if (why) throw new ConvertError(ckpt.path, undefined, `cannot write GGUF: ${why}`);
}

/** The tensors of the file, in order, with their types and offsets. */
export function ggufTensors(ckpt: Checkpoint, type: GgufType): GgufTensor[] {
  checkSupported(ckpt);
  const out: GgufTensor[] = [];
  let at = 0;
  const add = (name: string, source: string) => {
    const shape = ckpt.tensors.get(source);
    if (!shape) throw new ConvertError(ckpt.path, source, 'missing tensor');
    const dims = [...shape].reverse();
    const t: GgufType = dims.length === 1 ? 'F32' : type === 'Q8_0' && dims[0]! % Q8_0_BLOCK !== 0 ? 'F16' : type;
    const bytes = tensorBytes(t, dims.reduce((p, q) => p * q, 1));
    out.push({ name, source, dims, type: t, offset: at, bytes });
    at = roundUp(at + bytes, ALIGNMENT);
  };
  add('token_embd.weight', 'tok_embeddings');
  for (let l = 0; l < ckpt.arch.nLayers; l++) {
    const p = `layers.${l}.`, b = `blk.${l}.`;
    add(`${b}attn_norm.weight`, `${p}attn_norm.weight`);
    add(`${b}attn_q.weight`, `${p}wq`);
    add(`${b}attn_k.weight`, `${p}wk`);
    add(`${b}attn_v.weight`, `${p}wv`);
    add(`${b}attn_output.weight`, `${p}wo`);
    add(`${b}ffn_norm.weight`, `${p}ffn_norm.weight`);
    add(`${b}ffn_gate.weight`, `${p}ffn_gate`);
    add(`${b}ffn_down.weight`, `${p}ffn_down`);
    add(`${b}ffn_up.weight`, `${p}ffn_up`);
  }
  add('output_norm.weight', 'final_norm.weight');
  if (!ckpt.arch.tiedEmbeddings) add('output.weight', 'lm_head');
  return out;
}

const utf8 = (s: string) => new TextEncoder().encode(s);
const SPACE = 0x20;
const LOWER_ONE_EIGHTH_BLOCK = utf8('\u2581');
const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;

/** The llama2.c vocabulary as SentencePiece tokens, scores and types. */
export function ggufVocab(tokenizerBin: Uint8Array): { tokens: Uint8Array[]; scores: Float32Array; types: Int32Array } {
  const vocab = parseLlama2cTokenizer(tokenizerBin);
  const n = vocab.pieces.length;
  const tokens: Uint8Array[] = [];
  const types = new Int32Array(n);
  const special = ['<unk>', '<s>', '</s>']; // ids fixed by llama2.c's export; their pieces there are wrapped in newlines
  for (let id = 0; id < n; id++) {
    const piece = vocab.pieces[id]!;
    if (id < special.length) {
      tokens.push(utf8(special[id]!));
      types[id] = id === 0 ? TOKEN_TYPE.unknown : TOKEN_TYPE.control;
      continue;
    }
    const text = new TextDecoder().decode(piece);
    types[id] = piece.length === 0 ? TOKEN_TYPE.control : BYTE_TOKEN.test(text) ? TOKEN_TYPE.byte : TOKEN_TYPE.normal;
    // llama2.c's export turned SentencePiece's U+2581 into spaces: turn them back (bytes, so no piece is re-encoded).
    const parts: number[] = [];
    for (const c of piece) {
      if (c === SPACE) parts.push(...LOWER_ONE_EIGHTH_BLOCK);
      else parts.push(c);
    }
    tokens.push(Uint8Array.from(parts));
  }
  return { tokens, scores: vocab.scores, types };
}

/** The metadata key/values, in the order they are written. */
export function ggufMetadata(ckpt: Checkpoint, type: GgufType, name: string): [string, KvValue][] {
  checkSupported(ckpt);
  if (ckpt.tokenizer.kind !== 'llama2c') throw new Error('unreachable');
  const a = ckpt.arch;
  const v = ggufVocab(ckpt.tokenizer.data);
  if (v.tokens.length !== a.vocabSize) throw new ConvertError(ckpt.path, undefined, `tokenizer has ${v.tokens.length} tokens, the model ${a.vocabSize}`);
  const u32 = (value: number): KvValue => ({ kind: 'u32', value });
  return [
    ['general.architecture', { kind: 'string', value: 'llama' }],
    ['general.name', { kind: 'string', value: name }],
    ['general.file_type', u32(FILE_TYPE[type])],
    ['general.quantization_version', u32(GGML_QUANT_VERSION)],
    ['llama.vocab_size', u32(a.vocabSize)],
    ['llama.context_length', u32(a.maxSeqLen)],
    ['llama.embedding_length', u32(a.dModel)],
    ['llama.block_count', u32(a.nLayers)],
    ['llama.feed_forward_length', u32(a.ffnDim)],
    ['llama.rope.dimension_count', u32(a.headDim)],
    ['llama.rope.freq_base', { kind: 'f32', value: a.ropeTheta ?? 10000 }],
    ['llama.attention.head_count', u32(a.nHeads)],
    ['llama.attention.head_count_kv', u32(a.nKvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', { kind: 'f32', value: a.normEps }],
    ['tokenizer.ggml.model', { kind: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { kind: 'string[]', value: v.tokens }],
    ['tokenizer.ggml.scores', { kind: 'f32[]', value: v.scores }],
    ['tokenizer.ggml.token_type', { kind: 'i32[]', value: v.types }],
    ['tokenizer.ggml.unknown_token_id', u32(0)],
    ['tokenizer.ggml.bos_token_id', u32(a.bosId ?? 1)],
    ['tokenizer.ggml.eos_token_id', u32(a.eosId ?? 2)],
    ['tokenizer.ggml.add_bos_token', { kind: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { kind: 'bool', value: false }],
  ];
}

/** Little-endian bytes, growing as written. */
class ByteWriter {
  #buf = new Uint8Array(1 << 16);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  #room(n: number): void {
    if (this.length + n <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
    next.set(this.#buf.subarray(0, this.length));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }
  u32(x: number): void {
    this.#room(4);
    this.#view.setUint32(this.length, x, true);
    this.length += 4;
  }
  i32(x: number): void {
    this.#room(4);
    this.#view.setInt32(this.length, x, true);
    this.length += 4;
  }
  u64(x: number): void {
    this.#room(8);
    this.#view.setBigUint64(this.length, BigInt(x), true);
    this.length += 8;
  }
  f32(x: number): void {
    this.#room(4);
    this.#view.setFloat32(this.length, x, true);
    this.length += 4;
  }
  bytes(b: Uint8Array): void {
    this.#room(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }
  /** gguf_string: u64 length, then the bytes (no terminator). */
  str(s: string | Uint8Array): void {
    const b = typeof s === 'string' ? utf8(s) : s;
    this.u64(b.length);
    this.bytes(b);
  }
  pad(alignment: number): void {
    const n = roundUp(this.length, alignment) - this.length;
    this.bytes(new Uint8Array(n));
  }
  result(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

function writeKv(w: ByteWriter, key: string, v: KvValue): void {
  w.str(key);
  switch (v.kind) {
    case 'u32': w.u32(KV.u32); w.u32(v.value); break;
    case 'i32': w.u32(KV.i32); w.i32(v.value); break;
    case 'f32': w.u32(KV.f32); w.f32(v.value); break;
    case 'bool': w.u32(KV.bool); w.bytes(Uint8Array.of(v.value ? 1 : 0)); break;
    case 'string': w.u32(KV.string); w.str(v.value); break;
    case 'string[]': w.u32(KV.array); w.u32(KV.string); w.u64(v.value.length); for (const s of v.value) w.str(s); break;
    case 'f32[]': w.u32(KV.array); w.u32(KV.f32); w.u64(v.value.length); for (const x of v.value) w.f32(x); break;
    case 'i32[]': w.u32(KV.array); w.u32(KV.i32); w.u64(v.value.length); for (const x of v.value) w.i32(x); break;
  }
}

/** Header, metadata and tensor infos, padded to the alignment: the tensor data starts right after. */
export function ggufHeader(metadata: [string, KvValue][], tensors: GgufTensor[]): Uint8Array {
  const w = new ByteWriter();
  w.bytes(utf8('GGUF'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [k, v] of metadata) writeKv(w, k, v);
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(GGML_TYPE[t.type]);
    w.u64(t.offset);
  }
  w.pad(ALIGNMENT);
  return w.result();
}

/**
 * Q8_0 blocks of `src` (a multiple of 32 values) into `dst` (34 bytes a block):
 * d = max|x| / 127 (stored as f16), q = round(x / d) half away from zero, as
 * llama.cpp's reference quantizer (f32 arithmetic).
 */
export function encodeQ8_0(src: Float32Array, dst: Uint8Array = new Uint8Array(tensorBytes('Q8_0', src.length))): Uint8Array {
  const view = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let b = 0; b * Q8_0_BLOCK < src.length; b++) {
    const x = src.subarray(b * Q8_0_BLOCK, (b + 1) * Q8_0_BLOCK);
    let amax = 0;
    for (let i = 0; i < Q8_0_BLOCK; i++) amax = Math.max(amax, Math.abs(x[i]!));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    const at = b * Q8_0_BLOCK_BYTES;
    view.setUint16(at, f32ToF16Bits(d), true);
    for (let i = 0; i < Q8_0_BLOCK; i++) {
      const v = Math.fround(x[i]! * id);
      view.setInt8(at + 2 + i, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
  return dst;
}

/** Bytes of rows [start, start + count) of a tensor of the given type. */
function encodeRows(t: GgufTensor, rows: Float32Array): Uint8Array {
  if (t.type === 'F32') return new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength);
  if (t.type === 'F16') {
    const h = encodeF16(rows);
    return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
  }
  return encodeQ8_0(rows);
}

/** Rows read and encoded at a time (bounded memory for big matrices). */
const CHUNK_FLOATS = 1 << 20;

/**
 * Writes `ckpt` as a GGUF file of `type` at `path` (through a temporary file,
 * renamed at the end: an existing file is replaced only by a complete one).
 * Returns the tensors written and the file size.
 */
export async function writeGguf(ckpt: Checkpoint, path: string, options: { type: GgufType; name?: string }): Promise<{ tensors: GgufTensor[]; bytes: number }> {
  const tensors = ggufTensors(ckpt, options.type);
  const header = ggufHeader(ggufMetadata(ckpt, options.type, options.name ?? 'llama'), tensors);
  const last = tensors[tensors.length - 1]!;
  const total = header.length + roundUp(last.offset + last.bytes, ALIGNMENT);
  // Through a temporary name, renamed at the end: an error leaves no file.
  const sink = await FileSink.create(path);
  try {
    const put = (b: Uint8Array, at: number) => sink.write(at, b);
    await put(header, 0);
    for (const t of tensors) {
      const cols = t.dims[0]!;
      const rows = t.dims.length === 1 ? 1 : t.dims[1]!;
      const step = Math.max(1, Math.floor(CHUNK_FLOATS / cols));
      let at = header.length + t.offset;
      for (let r = 0; r < rows; r += step) {
        const n = Math.min(step, rows - r);
        const data = t.dims.length === 1 ? await ckpt.readRows(t.source, 0, cols) : await ckpt.readRows(t.source, r, n);
        const b = encodeRows(t, data);
        await put(b, at);
        at += b.length;
      }
      if (at !== header.length + t.offset + t.bytes) throw new Error(`${t.name}: wrote ${at - header.length - t.offset} bytes, expected ${t.bytes}`);
    }
    await sink.finish(total); // zero padding after the last tensor, as llama.cpp's writer leaves it
  } catch (e) {
    await sink.abort();
    throw e;
  }
  return { tensors, bytes: total };
}
