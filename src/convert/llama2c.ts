/**
 * llama2.c "legacy" checkpoints (.bin): 7 little-endian int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then f32
 * tensors in a fixed order, each stacked over layers; a negative vocab_size means a
 * separate classifier follows the two (unused) RoPE tables. See
 * /work/shared/models/stories260K/README.md.
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { ConvertError } from '../errors.js';
import type { ArchConfig, TokenizerSpec } from '../format/types.js';
import { MappedCheckpoint, openInputFile, type TensorRegion } from './safetensors.js';
import type { Checkpoint } from './types.js';

const HEADER_BYTES = 28;
/** A tokenizer.bin larger than this is not one (llama2.c's 32000-token file is ~430 KB). */
const MAX_TOKENIZER_BYTES = 64 << 20;

/** The header fields, as ints. */
export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Always positive here; `shared` says whether the classifier is the embedding. */
  vocabSize: number;
  shared: boolean;
  seqLen: number;
}

/** Parse and sanity-check the 28-byte header. */
export function parseLlama2cHeader(file: string, bytes: Uint8Array): Llama2cHeader {
  if (bytes.length < HEADER_BYTES) throw new ConvertError(file, undefined, `file is ${bytes.length} bytes: too small for a llama2.c header`);
  // PyTorch's zip format: a common mistake is to pass pytorch_model.bin.
  if (bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 0x03 && bytes[3] === 0x04) {
    throw new ConvertError(file, undefined, 'this is a PyTorch (zip) checkpoint, not llama2.c: pass the Hugging Face folder with model.safetensors');
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = Array.from({ length: 7 }, (_, i) => v.getInt32(i * 4, true)) as [
    number, number, number, number, number, number, number,
  ];
  const bad = (msg: string): never => {
    throw new ConvertError(file, undefined, `not a llama2.c checkpoint: ${msg} (header dim=${dim} hidden_dim=${hiddenDim} n_layers=${nLayers} n_heads=${nHeads} n_kv_heads=${nKvHeads} vocab_size=${vocab} seq_len=${seqLen})`);
  };
  if ([dim, hiddenDim, nLayers, nHeads, nKvHeads, seqLen].some((x) => x <= 0) || vocab === 0) bad('non-positive size');
  if (dim % nHeads !== 0) bad('dim is not a multiple of n_heads');
  if (nHeads % nKvHeads !== 0) bad('n_kv_heads does not divide n_heads');
  if ((dim / nHeads) % 2 !== 0) bad('head size must be even for RoPE');
  return { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize: Math.abs(vocab), shared: vocab > 0, seqLen };
}

/** ArchConfig of a llama2.c model (llama2.c's fixed choices: RMSNorm 1e-5, interleaved RoPE, theta 10000). */
export function llama2cArch(h: Llama2cHeader): ArchConfig {
  return {
    type: 'llama',
    dModel: h.dim,
    nLayers: h.nLayers,
    nHeads: h.nHeads,
    nKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads,
    ffnDim: h.hiddenDim,
    vocabSize: h.vocabSize,
    maxSeqLen: h.seqLen,
    norm: 'rmsnorm',
    normEps: 1e-5,
    activation: 'swiglu',
    positions: 'rope',
    ropeStyle: 'interleaved',
    ropeTheta: 10000,
    preNorm: true,
    attnBias: false,
    ffnBias: false,
    tiedEmbeddings: h.shared,
    embedDim: h.dim,
    bosId: 1,
    eosId: 2,
    stopIds: [1], // llama2.c's generate loop stops when the model emits BOS
  };
}

/**
 * Where each canonical tensor lies (f32, file offsets) and the exact file size
 * the header implies.
 */
export function llama2cLayout(h: Llama2cHeader): { tensors: { name: string; shape: number[]; offset: number }[]; fileSize: number } {
  const { dim, hiddenDim: hid, nLayers: L, vocabSize: V } = h;
  const kvDim = (dim / h.nHeads) * h.nKvHeads;
  const tensors: { name: string; shape: number[]; offset: number }[] = [];
  let at = HEADER_BYTES;
  const single = (name: string, shape: number[]): void => {
    tensors.push({ name, shape, offset: at });
    at += shape.reduce((a, b) => a * b, 1) * 4;
  };
  /** A [layer, ...shape] block: one canonical tensor per layer. */
  const stacked = (suffix: string, shape: number[]): void => {
    for (let l = 0; l < L; l++) single(`layers.${l}.${suffix}`, shape);
  };
  single('tok_embeddings', [V, dim]);
  stacked('attn_norm.weight', [dim]);
  stacked('wq', [dim, dim]);
  stacked('wk', [kvDim, dim]);
  stacked('wv', [kvDim, dim]);
  stacked('wo', [dim, dim]);
  stacked('ffn_norm.weight', [dim]);
  stacked('ffn_gate', [hid, dim]); // w1
  stacked('ffn_down', [dim, hid]); // w2
  stacked('ffn_up', [hid, dim]); // w3
  single('final_norm.weight', [dim]);
  at += 2 * h.seqLen * (dim / h.nHeads / 2) * 4; // freq_cis_real, freq_cis_imag: unused
  if (!h.shared) single('lm_head', [V, dim]);
  return { tensors, fileSize: at };
}

/**
 * Find the tokenizer: the explicit path, else `tokenizer.bin` beside the checkpoint,
 * else the only `tok*.bin` there.
 */
export async function findLlama2cTokenizer(checkpoint: string, explicit?: string): Promise<string> {
  if (explicit) return explicit;
  const dir = path.dirname(checkpoint);
  const names = await readdir(dir);
  if (names.includes('tokenizer.bin')) return path.join(dir, 'tokenizer.bin');
  const toks = names.filter((f) => /^tok.*\.bin$/.test(f) && f !== path.basename(checkpoint));
  if (toks.length === 1) return path.join(dir, toks[0]!);
  throw new ConvertError(
    checkpoint,
    undefined,
    toks.length === 0
      ? `no llama2.c tokenizer found beside the checkpoint (tokenizer.bin or tok*.bin): pass --tokenizer`
      : `several tokenizers beside the checkpoint (${toks.join(', ')}): pass --tokenizer`,
  );
}

/**
 * Load a llama2.c tokenizer.bin after a structural check: int32 max_token_length, then
 * exactly `vocabSize` entries of (f32 score, int32 length, bytes), nothing after.
 */
export async function loadLlama2cTokenizer(file: string, vocabSize: number): Promise<TokenizerSpec> {
  const bad = (msg: string): never => {
    throw new ConvertError(file, undefined, `not a llama2.c tokenizer for this model: ${msg}`);
  };
  let data: Uint8Array;
  try {
    data = new Uint8Array(await readFile(file));
  } catch (e) {
    throw new ConvertError(file, undefined, `cannot read tokenizer: ${(e as Error).message}`, { cause: e });
  }
  if (data.length > MAX_TOKENIZER_BYTES) bad(`${data.length} bytes is too large`);
  if (data.length < 4) bad('file too short');
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const maxLen = v.getInt32(0, true);
  if (maxLen <= 0 || maxLen > 65536) {
    // JSON text read as an int32 is huge: say what the file most likely is.
    const json = /^\s*[{[]/.test(new TextDecoder().decode(data.subarray(0, 16)));
    bad(json ? 'this is a JSON (Hugging Face) tokenizer; llama2.c checkpoints need a tokenizer.bin' : `max_token_length ${maxLen} is not sane`);
  }
  let at = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (at + 8 > data.length) bad(`it has ${i} tokens, the model has ${vocabSize}`);
    const len = v.getInt32(at + 4, true);
    if (len < 0 || len > maxLen) bad(`token ${i} has length ${len} (max_token_length ${maxLen})`);
    at += 8 + len;
    if (at > data.length) bad(`token ${i} runs past the end of the file`);
  }
  if (at !== data.length) bad(`${data.length - at} bytes follow token ${vocabSize - 1}: it has more tokens than the model's ${vocabSize}`);
  return { kind: 'llama2c', data };
}

/** Open a llama2.c checkpoint; the file's size must be exactly what the header implies. */
export async function openLlama2c(file: string, options: { tokenizer?: string } = {}): Promise<Checkpoint> {
  const fh = await openInputFile(file);
  try {
    const size = (await fh.stat()).size;
    const head = new Uint8Array(Math.min(size, HEADER_BYTES));
    await fh.read(head, 0, head.length, 0);
    const header = parseLlama2cHeader(file, head);
    const layout = llama2cLayout(header);
    if (size !== layout.fileSize) {
      throw new ConvertError(file, undefined, `file is ${size} bytes but its header implies ${layout.fileSize}${size < layout.fileSize ? ' (truncated)' : ''}`);
    }
    const arch = llama2cArch(header);
    const tokenizer = await loadLlama2cTokenizer(await findLlama2cTokenizer(file, options.tokenizer), arch.vocabSize);
    const regions = new Map<string, TensorRegion>();
    // Expose tensors layer by layer (the file stacks each kind over layers).
    const order = (name: string): number => Number(/^layers\.(\d+)\./.exec(name)?.[1] ?? (name === 'tok_embeddings' ? -1 : 1e9));
    const sorted = [...layout.tensors].sort((a, b) => order(a.name) - order(b.name));
    for (const t of sorted) {
      const byteLength = t.shape.reduce((a, b) => a * b, 1) * 4;
      regions.set(t.name, { file, fh, name: t.name, dtype: 'F32', shape: t.shape, offset: t.offset, byteLength });
    }
    let closed = false;
    return new MappedCheckpoint(file, arch, tokenizer, regions, async () => {
      if (!closed) {
        closed = true;
        await fh.close();
      }
    });
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}
