/**
 * The GGUF writer of `npm run bench:native` (bench/gguf.ts): stories260K
 * written at F32, F16 and Q8_0, then read back by an independent parser
 * (@huggingface/gguf) — metadata, tensor names, shapes, types and offsets —
 * and tensor values read from the file compared with the checkpoint's.
 */
import test from 'ava';
import { gguf, GGMLQuantizationType, GGUFValueType } from '@huggingface/gguf';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openCheckpoint } from '../src/convert/index.js';
import type { Checkpoint } from '../src/convert/types.js';
import { ConvertError } from '../src/errors.js';
import { f16BitsToF32, f32ToF16Bits } from '../src/kernels/quant.js';
import { parseLlama2cTokenizer } from '../src/tokenizer/llama2c.js';
import { encodeQ8_0, Q8_0_BLOCK, Q8_0_BLOCK_BYTES, TOKEN_TYPE, writeGguf, type GgufType } from '../bench/gguf.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK } from './helpers/models.js';

const dir = await mkdtemp(path.join(tmpdir(), 'flashlm-gguf-'));
test.after.always(() => rm(dir, { recursive: true, force: true }));

const withCheckpoint = async <T>(fn: (c: Checkpoint) => Promise<T>): Promise<T> => {
  const c = await openCheckpoint(STORIES_BIN, { tokenizer: STORIES_TOK });
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
};

const SPM_SPACE = '\u2581';

for (const type of ['F32', 'F16', 'Q8_0'] as GgufType[]) {
  test(`stories260K at ${type}: @huggingface/gguf reads back the metadata, tensors and values`, async (t) => {
    const file = path.join(dir, `stories260K.${type}.gguf`);
    await withCheckpoint(async (ckpt) => {
      const written = await writeGguf(ckpt, file, { type, name: 'stories260K' });
      t.is((await stat(file)).size, written.bytes);

      const parsed = await gguf(file, { allowLocalFile: true, typedMetadata: true });
      const m = parsed.metadata as Record<string, unknown>;
      const tm = parsed.typedMetadata as Record<string, { type: GGUFValueType; value: unknown; subType?: GGUFValueType }>;
      t.is(m.version, 3);
      t.is(m['general.architecture'], 'llama');
      t.is(m['general.name'], 'stories260K');
      t.is(m['general.file_type'], { F32: 0, F16: 1, Q8_0: 7 }[type]);
      // stories260K: dim 64, 5 layers, 8 heads, 4 kv heads, hidden 172, vocab 512, seq_len 512
      const expect: Record<string, number> = {
        'llama.embedding_length': 64,
        'llama.block_count': 5,
        'llama.attention.head_count': 8,
        'llama.attention.head_count_kv': 4,
        'llama.feed_forward_length': 172,
        'llama.rope.dimension_count': 8,
        'llama.context_length': 512,
        'llama.vocab_size': 512,
        'tokenizer.ggml.bos_token_id': 1,
        'tokenizer.ggml.eos_token_id': 2,
        'tokenizer.ggml.unknown_token_id': 0,
      };
      for (const [k, v] of Object.entries(expect)) {
        t.is(m[k], v, k);
        t.is(tm[k]!.type, GGUFValueType.UINT32, `${k} is a u32`);
      }
      t.is(tm['llama.attention.layer_norm_rms_epsilon']!.type, GGUFValueType.FLOAT32);
      t.is(m['llama.attention.layer_norm_rms_epsilon'], Math.fround(1e-5));
      t.is(m['llama.rope.freq_base'], 10000);
      t.is(m['tokenizer.ggml.add_bos_token'], true);

      // The vocabulary: SentencePiece text (spaces as U+2581), llama2.c's scores, byte tokens typed as such.
      t.is(m['tokenizer.ggml.model'], 'llama');
      const tokens = m['tokenizer.ggml.tokens'] as string[];
      const scores = m['tokenizer.ggml.scores'] as number[];
      const types = m['tokenizer.ggml.token_type'] as number[];
      t.is(tm['tokenizer.ggml.token_type']!.subType, GGUFValueType.INT32);
      const vocab = parseLlama2cTokenizer(new Uint8Array(await readFile(STORIES_TOK)));
      t.is(tokens.length, 512);
      t.deepEqual(tokens.slice(0, 3), ['<unk>', '<s>', '</s>']);
      t.deepEqual(types.slice(0, 3), [TOKEN_TYPE.unknown, TOKEN_TYPE.control, TOKEN_TYPE.control]);
      t.is(tokens[3 + 0x0a], '<0x0A>');
      t.true(types.slice(3, 259).every((x) => x === TOKEN_TYPE.byte));
      t.true(types.slice(259).every((x) => x === TOKEN_TYPE.normal));
      t.deepEqual(scores, Array.from(vocab.scores));
      const dec = new TextDecoder();
      let spaced = 0;
      for (let id = 259; id < 512; id++) {
        const piece = dec.decode(vocab.pieces[id]);
        t.is(tokens[id], piece.replaceAll(' ', SPM_SPACE));
        if (piece.includes(' ')) spaced++;
      }
      t.true(spaced > 50, `${spaced} tokens hold a space`);

      // Tensors: llama.cpp's names, dims innermost first, the types the writer promises.
      const infos = new Map(parsed.tensorInfos.map((x) => [x.name, x]));
      t.is(parsed.tensorInfos.length, 2 + 5 * 9); // token_embd, output_norm, 9 per layer; no output (shared classifier)
      t.false(infos.has('output.weight'));
      const shape = (name: string) => infos.get(name)!.shape.map(Number);
      t.deepEqual(shape('token_embd.weight'), [64, 512]);
      t.deepEqual(shape('output_norm.weight'), [64]);
      t.deepEqual(shape('blk.4.attn_q.weight'), [64, 64]);
      t.deepEqual(shape('blk.4.attn_k.weight'), [64, 32]);
      t.deepEqual(shape('blk.4.ffn_gate.weight'), [64, 172]);
      t.deepEqual(shape('blk.4.ffn_down.weight'), [172, 64]);
      const Q = GGMLQuantizationType;
      const matrix = { F32: Q.F32, F16: Q.F16, Q8_0: Q.Q8_0 }[type];
      t.is(infos.get('blk.0.attn_norm.weight')!.dtype, Q.F32);
      t.is(infos.get('token_embd.weight')!.dtype, matrix);
      t.is(infos.get('blk.2.ffn_up.weight')!.dtype, matrix);
      // rows of 172 are not whole Q8_0 blocks: F16, as llama.cpp's converters fall back
      t.is(infos.get('blk.2.ffn_down.weight')!.dtype, type === 'Q8_0' ? Q.F16 : matrix);
      for (const x of parsed.tensorInfos) t.is(Number(x.offset) % 32, 0, `${x.name} is aligned`);
      t.is(Number(parsed.tensorDataOffset) % 32, 0);

      // Values, straight from the file's bytes.
      const bytes = new Uint8Array(await readFile(file));
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const base = (name: string) => Number(parsed.tensorDataOffset + infos.get(name)!.offset);
      const norm = await ckpt.readRows('layers.1.ffn_norm.weight', 0, 64);
      for (let i = 0; i < 64; i++) t.is(view.getFloat32(base('blk.1.ffn_norm.weight') + 4 * i, true), norm[i]!);
      const rows = await ckpt.readRows('layers.3.wv', 5, 2); // rows 5 and 6 of [32, 64]
      const at = base('blk.3.attn_v.weight');
      if (type === 'F32') {
        for (let i = 0; i < 128; i++) t.is(view.getFloat32(at + 4 * (5 * 64 + i), true), rows[i]!);
      } else if (type === 'F16') {
        for (let i = 0; i < 128; i++) t.is(view.getUint16(at + 2 * (5 * 64 + i), true), f32ToF16Bits(rows[i]!));
      } else {
        // row 5 is blocks 10 and 11 (2 a row): dequantized within half a step of the source, the largest at ±127
        for (let b = 0; b < 4; b++) {
          const block = at + (10 + b) * Q8_0_BLOCK_BYTES;
          const d = f16BitsToF32(view.getUint16(block, true));
          const src = rows.subarray(b * Q8_0_BLOCK, (b + 1) * Q8_0_BLOCK);
          const amax = Math.max(...Array.from(src, Math.abs));
          t.true(Math.abs(d - amax / 127) <= (amax / 127) * 2 ** -10, `block ${b}: scale ${d} vs ${amax / 127}`);
          let peak = 0;
          for (let i = 0; i < Q8_0_BLOCK; i++) {
            const q = view.getInt8(block + 2 + i);
            peak = Math.max(peak, Math.abs(q));
            t.true(Math.abs(q * d - src[i]!) <= d * 0.5 + amax * 2 ** -10, `block ${b}[${i}]: ${q} * ${d} vs ${src[i]}`);
          }
          t.is(peak, 127);
        }
        // the F16 fallback holds its values too
        const down = await ckpt.readRows('layers.2.ffn_down', 63, 1);
        t.is(view.getUint16(base('blk.2.ffn_down.weight') + 2 * (63 * 172 + 171), true), f32ToF16Bits(down[171]!));
      }
    });
  });
}

test('encodeQ8_0: scale max|x|/127 as f16, rounding half away from zero, zero blocks stay zero', (t) => {
  const x = new Float32Array(64);
  for (let i = 0; i < 32; i++) x[i] = i - 16; // max |x| = 16 at i = 0
  x[31] = 127; // so d = 1 exactly
  x[5] = 2.5;
  x[6] = -2.5; // Math.round would give -2
  x[7] = 0.49;
  const b = encodeQ8_0(x);
  t.is(b.length, 2 * 34);
  const v = new DataView(b.buffer);
  t.is(v.getUint16(0, true), 0x3c00); // f16 1.0
  t.is(v.getInt8(2 + 0), -16);
  t.is(v.getInt8(2 + 31), 127);
  t.is(v.getInt8(2 + 5), 3);
  t.is(v.getInt8(2 + 6), -3);
  t.is(v.getInt8(2 + 7), 0);
  t.is(v.getUint16(34, true), 0);
  t.true(b.subarray(36).every((q) => q === 0));
});

test('a checkpoint GGUF cannot express is refused with a ConvertError, leaving no file', async (t) => {
  const ckpt = await openCheckpoint(OPT_DIR);
  try {
    const file = path.join(dir, 'opt.gguf');
    const e = await t.throwsAsync(writeGguf(ckpt, file, { type: 'F32' }), { instanceOf: ConvertError });
    t.regex(e!.message, /cannot write GGUF/);
    t.false((await readdir(dir)).some((f) => f.startsWith('opt.gguf')));
  } finally {
    await ckpt.close();
  }
});
