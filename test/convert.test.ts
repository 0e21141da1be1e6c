import test, { type ExecutionContext } from 'ava';
import { copyFile, mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/convert/index.js';
import { SafetensorsStore, readRegionColumns, readRegionRows, readTuning } from '../src/convert/safetensors.js';
import type { Checkpoint } from '../src/convert/types.js';
import { ConvertError } from '../src/errors.js';
import { MemorySource } from '../src/node.js';
import { openFlm } from '../src/format/reader.js';
import { chatTemplateOf, renderChat } from '../src/chat.js';
import { convertToBytes } from './helpers/models.js';
import type { ArchConfig } from '../src/format/types.js';
import {
  bits,
  bytesOf,
  decodeRef,
  encodeRaw,
  randomBf16Bits,
  randomF16Bits,
  randomF32,
  readSafetensorsWhole,
  refColumns,
  refRows,
  rng,
  writeSafetensors,
  type RawTensor,
} from './helpers/safetensors.js';

const MODELS = fileURLToPath(new URL('../../shared/models/', import.meta.url));
const OPT = path.join(MODELS, 'opt-relu-6m');
const STORIES = path.join(MODELS, 'stories260K');

async function tmp(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'flashlm-convert-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Open, run, always close. */
async function withCheckpoint<T>(input: string, fn: (c: Checkpoint) => Promise<T>, options?: { tokenizer?: string }): Promise<T> {
  const c = await openCheckpoint(input, options);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** Rejects with a ConvertError whose message mentions every part. */
async function rejectsConvert(t: ExecutionContext, p: Promise<unknown>, ...parts: string[]): Promise<void> {
  const e = await t.throwsAsync(p, { instanceOf: ConvertError });
  for (const s of parts) t.true(e?.message.includes(s), `"${e?.message}" should mention "${s}"`);
}

/** Bit-exact equality, reporting the first mismatch (t.deepEqual is slow on big arrays). */
function sameBits(t: ExecutionContext, got: Float32Array, want: Uint32Array, message = ''): void {
  const g = bits(got);
  let bad = g.length === want.length ? -1 : Math.min(g.length, want.length);
  for (let i = 0; bad < 0 && i < g.length; i++) if (g[i] !== want[i]) bad = i;
  t.is(bad, -1, `${message}: first mismatch at ${bad} (got ${got[bad]}, want ${new Float32Array(want.buffer, want.byteOffset, want.length)[bad]})`);
}

/** Every canonical tensor equals its reference, whole, row-chunked and column-chunked. */
async function checkAgainst(t: ExecutionContext, c: Checkpoint, expected: Map<string, Float32Array>): Promise<void> {
  t.deepEqual([...c.tensors.keys()].sort(), [...expected.keys()].sort());
  for (const [name, shape] of c.tensors) {
    const want = expected.get(name)!;
    const [rows, cols = 1] = shape;
    sameBits(t, await c.readRows(name, 0, rows!), bits(want), name);
    const r0 = Math.floor(rows! / 3);
    const rn = Math.min(rows! - r0, 5);
    sameBits(t, await c.readRows(name, r0, rn), bits(refRows(want, cols, r0, rn)), `${name} rows`);
    if (shape.length === 2) {
      const c0 = Math.floor(cols / 4);
      const cn = Math.max(1, Math.floor(cols / 2));
      sameBits(t, await c.readColumns(name, c0, cn), bits(refColumns(want, rows!, cols, c0, cn)), `${name} columns`);
    }
  }
}

// ---------------------------------------------------------------------------
// Real fixtures

test('opt-relu-6m opens with the right ArchConfig and tokenizer', async (t) => {
  await withCheckpoint(OPT, async (c) => {
    const want: ArchConfig = {
      type: 'opt', dModel: 256, nLayers: 6, nHeads: 8, nKvHeads: 8, headDim: 32, ffnDim: 1024, vocabSize: 4096,
      maxSeqLen: 512, norm: 'layernorm', normEps: 1e-5, activation: 'relu', positions: 'learned', posOffset: 2,
      preNorm: true, attnBias: true, ffnBias: true, tiedEmbeddings: true, embedDim: 256, bosId: 2, eosId: 2, stopIds: [2],
    };
    t.deepEqual(c.arch, want);
    t.false(c.tensors.has('lm_head'), 'lm_head identical to embed_tokens: tied');
    t.deepEqual(c.tensors.get('pos_embeddings'), [514, 256]);
    t.deepEqual(c.tensors.get('final_norm.bias'), [256]);
    t.deepEqual(c.tensors.get('layers.5.ffn_down'), [256, 1024]);
    t.is(c.tokenizer.kind, 'hf');
    if (c.tokenizer.kind === 'hf') {
      t.is(c.tokenizer.json, await readFile(path.join(OPT, 'tokenizer.json'), 'utf8'));
      t.is(c.tokenizer.config, await readFile(path.join(OPT, 'tokenizer_config.json'), 'utf8'));
    }
  });
});

test('opt-relu-6m: every tensor reads back as the whole-file reference', async (t) => {
  const ref = readSafetensorsWhole(path.join(OPT, 'model.safetensors'));
  const src = (n: string): Float32Array => ref.get(`model.decoder.${n}`)!.values;
  const expected = new Map<string, Float32Array>([
    ['tok_embeddings', src('embed_tokens.weight')],
    ['pos_embeddings', src('embed_positions.weight')],
    ['final_norm.weight', src('final_layer_norm.weight')],
    ['final_norm.bias', src('final_layer_norm.bias')],
  ]);
  for (let i = 0; i < 6; i++) {
    const l = `layers.${i}.`;
    const pairs: [string, string][] = [
      ['attn_norm.weight', 'self_attn_layer_norm.weight'], ['attn_norm.bias', 'self_attn_layer_norm.bias'],
      ['wq', 'self_attn.q_proj.weight'], ['bq', 'self_attn.q_proj.bias'], ['wk', 'self_attn.k_proj.weight'], ['bk', 'self_attn.k_proj.bias'],
      ['wv', 'self_attn.v_proj.weight'], ['bv', 'self_attn.v_proj.bias'], ['wo', 'self_attn.out_proj.weight'], ['bo', 'self_attn.out_proj.bias'],
      ['ffn_norm.weight', 'final_layer_norm.weight'], ['ffn_norm.bias', 'final_layer_norm.bias'],
      ['ffn_up', 'fc1.weight'], ['ffn_up_bias', 'fc1.bias'], ['ffn_down', 'fc2.weight'], ['ffn_down_bias', 'fc2.bias'],
    ];
    for (const [c, s] of pairs) expected.set(l + c, src(l + s));
  }
  await withCheckpoint(OPT, async (c) => {
    await checkAgainst(t, c, expected);
    // The writer's access pattern: neurons 512..767 of a layer (up rows, down columns).
    const up = await c.readRows('layers.4.ffn_up', 512, 256);
    sameBits(t, up, bits(refRows(src('layers.4.fc1.weight'), 256, 512, 256)));
    const down = await c.readColumns('layers.4.ffn_down', 512, 256);
    sameBits(t, down, bits(refColumns(src('layers.4.fc2.weight'), 256, 1024, 512, 256)));
  });
});

test('stories260K opens with the right ArchConfig, tokenizer and values', async (t) => {
  const file = path.join(STORIES, 'stories260K.bin');
  const buf = await readFile(file);
  const f32 = (at: number, n: number): Float32Array => decodeRef('F32', new Uint8Array(buf.subarray(at, at + n * 4)));
  // Offsets per the README, computed independently: dim 64, hidden 172, 5 layers, kv_dim 32, vocab 512.
  const [D, H, L, KV, V] = [64, 172, 5, 32, 512];
  const expected = new Map<string, Float32Array>();
  let at = 28;
  const take = (n: number): Float32Array => {
    const v = f32(at, n);
    at += n * 4;
    return v;
  };
  expected.set('tok_embeddings', take(V * D));
  for (const [name, n] of [['attn_norm.weight', D], ['wq', D * D], ['wk', KV * D], ['wv', KV * D], ['wo', D * D], ['ffn_norm.weight', D], ['ffn_gate', H * D], ['ffn_down', D * H], ['ffn_up', H * D]] as const) {
    for (let l = 0; l < L; l++) expected.set(`layers.${l}.${name}`, take(n));
  }
  expected.set('final_norm.weight', take(D));

  await withCheckpoint(file, async (c) => {
    const want: ArchConfig = {
      type: 'llama', dModel: 64, nLayers: 5, nHeads: 8, nKvHeads: 4, headDim: 8, ffnDim: 172, vocabSize: 512, maxSeqLen: 512,
      norm: 'rmsnorm', normEps: 1e-5, activation: 'swiglu', positions: 'rope', ropeStyle: 'interleaved', ropeTheta: 10000,
      preNorm: true, attnBias: false, ffnBias: false, tiedEmbeddings: true, embedDim: 64, bosId: 1, eosId: 2, stopIds: [1],
    };
    t.deepEqual(c.arch, want);
    t.deepEqual(c.tensors.get('layers.2.wk'), [32, 64]);
    t.deepEqual(c.tensors.get('layers.2.ffn_down'), [64, 172]);
    t.is(c.tokenizer.kind, 'llama2c');
    if (c.tokenizer.kind === 'llama2c') t.deepEqual(c.tokenizer.data, new Uint8Array(await readFile(path.join(STORIES, 'tok512.bin'))));
    await checkAgainst(t, c, expected);
  });
});

// ---------------------------------------------------------------------------
// Synthetic Hugging Face Llama folder

const LLAMA_CONFIG = {
  model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2,
  num_attention_heads: 4, num_key_value_heads: 2, head_dim: 6, vocab_size: 40, max_position_embeddings: 64,
  rms_norm_eps: 1e-5, rope_theta: 500000, rope_scaling: null, tie_word_embeddings: false, bos_token_id: 1,
  eos_token_id: [2, 5], hidden_act: 'silu', torch_dtype: 'bfloat16',
};

function wordLevelTokenizer(n: number): string {
  const vocab = Object.fromEntries(Array.from({ length: n }, (_, i) => [`t${i}`, i]));
  return JSON.stringify({ version: '1.0', added_tokens: [], model: { type: 'WordLevel', vocab, unk_token: 't0' } });
}

interface LlamaFolder {
  dir: string;
  /** Source tensor name -> decoded values. */
  values: Map<string, Float32Array>;
}

/** Write a 2-layer GQA Llama with BF16/F16/F32 tensors, sharded with an index by default. */
async function makeLlama(
  t: ExecutionContext,
  opts: {
    config?: Record<string, unknown>;
    sharded?: boolean;
    /** Edit the tensor list before writing (drop, reshape, retype). */
    edit?: (ts: RawTensor[]) => RawTensor[];
    tokenizer?: string | null;
  } = {},
): Promise<LlamaFolder> {
  const dir = await tmp(t);
  const rand = rng(1234);
  const [D, F, V, Q, KV] = [16, 24, 40, 24, 12];
  const spec: [string, string, number[]][] = [['model.embed_tokens.weight', 'BF16', [V, D]]];
  for (let i = 0; i < 2; i++) {
    const p = `model.layers.${i}.`;
    spec.push(
      [`${p}input_layernorm.weight`, 'F32', [D]],
      [`${p}self_attn.q_proj.weight`, 'F16', [Q, D]],
      [`${p}self_attn.k_proj.weight`, 'BF16', [KV, D]],
      [`${p}self_attn.v_proj.weight`, 'F16', [KV, D]],
      [`${p}self_attn.o_proj.weight`, 'BF16', [D, Q]],
      [`${p}post_attention_layernorm.weight`, 'F32', [D]],
      [`${p}mlp.gate_proj.weight`, 'BF16', [F, D]],
      [`${p}mlp.up_proj.weight`, 'F16', [F, D]],
      [`${p}mlp.down_proj.weight`, 'BF16', [D, F]],
      [`${p}self_attn.rotary_emb.inv_freq`, 'F32', [3]], // extra tensors are ignored
    );
  }
  spec.push(['model.norm.weight', 'F32', [D]], ['lm_head.weight', 'F16', [V, D]]);
  let tensors: RawTensor[] = spec.map(([name, dtype, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = dtype === 'F32' ? bytesOf(randomF32(n, rand)) : bytesOf(dtype === 'F16' ? randomF16Bits(n, rand) : randomBf16Bits(n, rand));
    return { name, dtype, shape, data };
  });
  if (opts.edit) tensors = opts.edit(tensors);
  const values = new Map(tensors.filter((x) => ['F32', 'F16', 'BF16'].includes(x.dtype)).map((x) => [x.name, decodeRef(x.dtype, x.data)]));

  await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...LLAMA_CONFIG, ...opts.config }));
  if (opts.tokenizer !== null) await writeFile(path.join(dir, 'tokenizer.json'), opts.tokenizer ?? wordLevelTokenizer(V));
  if (opts.sharded === false) {
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  } else {
    const half = Math.ceil(tensors.length / 2);
    const shards = [tensors.slice(0, half), tensors.slice(half)];
    const weightMap: Record<string, string> = {};
    shards.forEach((ts, i) => {
      const f = `model-0000${i + 1}-of-00002.safetensors`;
      writeSafetensors(path.join(dir, f), ts);
      for (const x of ts) weightMap[x.name] = f;
    });
    await writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  }
  return { dir, values };
}

function llamaExpected(values: Map<string, Float32Array>, withHead: boolean): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>([
    ['tok_embeddings', values.get('model.embed_tokens.weight')!],
    ['final_norm.weight', values.get('model.norm.weight')!],
  ]);
  if (withHead) m.set('lm_head', values.get('lm_head.weight')!);
  for (let i = 0; i < 2; i++) {
    const pairs: [string, string][] = [
      ['attn_norm.weight', 'input_layernorm.weight'], ['wq', 'self_attn.q_proj.weight'], ['wk', 'self_attn.k_proj.weight'],
      ['wv', 'self_attn.v_proj.weight'], ['wo', 'self_attn.o_proj.weight'], ['ffn_norm.weight', 'post_attention_layernorm.weight'],
      ['ffn_gate', 'mlp.gate_proj.weight'], ['ffn_up', 'mlp.up_proj.weight'], ['ffn_down', 'mlp.down_proj.weight'],
    ];
    for (const [c, s] of pairs) m.set(`layers.${i}.${c}`, values.get(`model.layers.${i}.${s}`)!);
  }
  return m;
}

test('synthetic sharded Llama (BF16/F16, GQA, head_dim, untied) opens and converts exactly', async (t) => {
  const { dir, values } = await makeLlama(t);
  await withCheckpoint(dir, async (c) => {
    const a = c.arch;
    t.like(a, {
      type: 'llama', dModel: 16, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 6, ffnDim: 24, vocabSize: 40, maxSeqLen: 64,
      norm: 'rmsnorm', normEps: 1e-5, activation: 'swiglu', positions: 'rope', ropeStyle: 'half', ropeTheta: 500000,
      preNorm: true, attnBias: false, ffnBias: false, tiedEmbeddings: false, embedDim: 16, bosId: 1, eosId: 2,
    });
    t.deepEqual(a.stopIds, [2, 5]);
    t.deepEqual(c.tensors.get('layers.1.wq'), [24, 16]);
    t.deepEqual(c.tensors.get('layers.1.wk'), [12, 16]);
    t.deepEqual(c.tensors.get('layers.1.wo'), [16, 24]);
    t.deepEqual(c.tokenizer, { kind: 'hf', json: wordLevelTokenizer(40) });
    await checkAgainst(t, c, llamaExpected(values, true));
  });
});

test('synthetic Llama: tied when tie_word_embeddings or lm_head missing; single file; mistral accepted', async (t) => {
  const a = await makeLlama(t, { config: { tie_word_embeddings: true }, sharded: false });
  await withCheckpoint(a.dir, async (c) => {
    t.true(c.arch.tiedEmbeddings);
    t.false(c.tensors.has('lm_head'));
  });
  const b = await makeLlama(t, { edit: (ts) => ts.filter((x) => x.name !== 'lm_head.weight') });
  await withCheckpoint(b.dir, async (c) => {
    t.true(c.arch.tiedEmbeddings);
    await checkAgainst(t, c, llamaExpected(b.values, false));
  });
  // Mistral: same tensors; the sliding window is kept (attention over it: test/architectures.test.ts), the context is not capped.
  const m = await makeLlama(t, { config: { model_type: 'mistral', sliding_window: 32 } });
  await withCheckpoint(m.dir, async (c) => t.like(c.arch, { type: 'llama', maxSeqLen: 64, slidingWindow: 32, tiedEmbeddings: false }));
});

test('Hugging Face extras: chat_template.jinja (or chat_template.json) is kept and rendered; generation_config.json eos ids join the stop ids', async (t) => {
  const a = await makeLlama(t, { config: { eos_token_id: 2 } });
  await writeFile(path.join(a.dir, 'chat_template.jinja'), "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}");
  await writeFile(path.join(a.dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 7, 99999] }));
  await withCheckpoint(a.dir, async (c) => {
    t.deepEqual(c.arch.stopIds, [2, 7], 'ids outside the vocabulary are dropped');
    t.is((c.tokenizer as { chatTemplate?: string }).chatTemplate?.startsWith('{% for m in messages %}'), true);
  });
  // Through the file: the writer keeps both, the reader accepts them, chat renders the stored template.
  const file = await openFlm(new MemorySource(await convertToBytes(a.dir)));
  t.deepEqual(file.header.arch.stopIds, [2, 7]);
  t.is(renderChat(chatTemplateOf(file.header.tokenizer)!, [{ role: 'user', content: 'hi' }]), '<user>hi<assistant>');
  const b = await makeLlama(t);
  await writeFile(path.join(b.dir, 'chat_template.json'), JSON.stringify({ chat_template: '{{ messages[0].content }}' }));
  await withCheckpoint(b.dir, async (c) => t.is((c.tokenizer as { chatTemplate?: string }).chatTemplate, '{{ messages[0].content }}'));
  await writeFile(path.join(b.dir, 'chat_template.json'), '{"nope": 1}');
  await t.throwsAsync(openCheckpoint(b.dir), { instanceOf: ConvertError, message: /chat_template\.json.*no "chat_template" string/ });
});

test('synthetic Llama with attention_bias: q/k/v biases required, o bias optional', async (t) => {
  const rand = rng(7);
  const bias = (name: string, n: number): RawTensor => ({ name, dtype: 'F32', shape: [n], data: bytesOf(randomF32(n, rand)) });
  const { dir, values } = await makeLlama(t, {
    config: { attention_bias: true },
    edit: (ts) => [...ts, ...[0, 1].flatMap((i) => [bias(`model.layers.${i}.self_attn.q_proj.bias`, 24), bias(`model.layers.${i}.self_attn.k_proj.bias`, 12), bias(`model.layers.${i}.self_attn.v_proj.bias`, 12)])],
  });
  await withCheckpoint(dir, async (c) => {
    t.true(c.arch.attnBias);
    t.deepEqual(c.tensors.get('layers.1.bk'), [12]);
    t.false(c.tensors.has('layers.1.bo'));
    sameBits(t, await c.readRows('layers.1.bv', 0, 12), bits(values.get('model.layers.1.self_attn.v_proj.bias')!));
  });
});

test.serial('readColumns: merged, chunked and per-row read paths agree', async (t) => {
  const { dir, values } = await makeLlama(t, { sharded: false });
  const saved = { ...readTuning };
  t.teardown(() => Object.assign(readTuning, saved));
  const down = values.get('model.layers.1.mlp.down_proj.weight')!; // BF16 [16, 24]
  const q = values.get('model.layers.0.self_attn.q_proj.weight')!; // F16 [24, 16]
  const norm = values.get('model.norm.weight')!; // F32 [16]
  await withCheckpoint(dir, async (c) => {
    for (const tuning of [
      { chunkBytes: 8 << 20, minMergeGap: 4096, maxParallelReads: 32 }, // one merged read
      { chunkBytes: 100, minMergeGap: 0, maxParallelReads: 32 }, // merged, several reads of a few rows
      { chunkBytes: 7, minMergeGap: 0, maxParallelReads: 3 }, // per-row slices, waves of 3; tiny row chunks
    ]) {
      Object.assign(readTuning, tuning);
      for (const [s, n] of [[0, 24], [0, 1], [23, 1], [5, 2], [3, 17]] as const) {
        sameBits(t, await c.readColumns('layers.1.ffn_down', s, n), bits(refColumns(down, 16, 24, s, n)), `down ${s}+${n} ${tuning.chunkBytes}`);
        if (s + n <= 16) sameBits(t, await c.readColumns('layers.0.wq', s, n), bits(refColumns(q, 24, 16, s, n)));
      }
      sameBits(t, await c.readRows('layers.0.wq', 3, 20), bits(refRows(q, 16, 3, 20)));
      sameBits(t, await c.readRows('final_norm.weight', 0, 16), bits(norm));
      t.is((await c.readColumns('layers.0.wq', 4, 0)).length, 0);
    }
    await t.throwsAsync(c.readRows('layers.0.wq', 20, 5), { code: 'ARGUMENT' });
    await t.throwsAsync(c.readColumns('final_norm.weight', 0, 1), { code: 'ARGUMENT' });
    await t.throwsAsync(c.readRows('nope', 0, 1), { code: 'ARGUMENT' });
  });
});

test('positions past 4 GiB are read correctly (sparse file)', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'big.safetensors');
  const [rows, cols] = [(1 << 20) + 3, 1280]; // 4*1280*(2^20+3) bytes ~ 5 GiB
  let json = JSON.stringify({ big: { dtype: 'F32', shape: [rows, cols], data_offsets: [0, rows * cols * 4] } });
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = encodeRaw(json, []);
  const fh = await open(file, 'w');
  try {
    await fh.write(head, 0, head.length, 0);
    await fh.truncate(head.length + rows * cols * 4); // holes: no disk used
    const last = Float32Array.from({ length: cols }, (_, i) => i + 0.5);
    await fh.write(bytesOf(last), 0, cols * 4, head.length + (rows - 1) * cols * 4);
  } finally {
    await fh.close();
  }
  const store = await SafetensorsStore.openFile(file);
  try {
    const r = store.get('big')!;
    t.true(r.offset + r.byteLength > 2 ** 32);
    const got = await readRegionRows(r, rows - 2, 2);
    t.is(got[0], 0);
    t.is(got[cols], 0.5);
    t.is(got[2 * cols - 1], cols - 0.5);
    const col = await readRegionColumns({ ...r, shape: [2, cols], offset: r.offset + (rows - 2) * cols * 4, byteLength: 2 * cols * 4 }, 7, 2);
    t.deepEqual([...col], [0, 7.5, 0, 8.5]);
  } finally {
    await store.close();
  }
});

// ---------------------------------------------------------------------------
// Synthetic OPT folders (variants the fixture does not cover)

async function makeOpt(
  t: ExecutionContext,
  opts: { config?: Record<string, unknown>; prefix?: string; head?: 'same' | 'different' | 'none'; finalNorm?: boolean } = {},
): Promise<{ dir: string; values: Map<string, Float32Array> }> {
  const dir = await tmp(t);
  const rand = rng(99);
  const p = opts.prefix ?? 'decoder.';
  const [D, E, F, V, P] = [8, 4, 12, 20, 6];
  const spec: [string, number[]][] = [
    [`${p}embed_tokens.weight`, [V, E]], [`${p}embed_positions.weight`, [P + 2, D]],
    [`${p}project_in.weight`, [D, E]], [`${p}project_out.weight`, [E, D]],
  ];
  for (let i = 0; i < 2; i++) {
    const l = `${p}layers.${i}.`;
    for (const s of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) spec.push([`${l}self_attn.${s}.weight`, [D, D]], [`${l}self_attn.${s}.bias`, [D]]);
    spec.push(
      [`${l}self_attn_layer_norm.weight`, [D]], [`${l}self_attn_layer_norm.bias`, [D]],
      [`${l}final_layer_norm.weight`, [D]], [`${l}final_layer_norm.bias`, [D]],
      [`${l}fc1.weight`, [F, D]], [`${l}fc1.bias`, [F]], [`${l}fc2.weight`, [D, F]], [`${l}fc2.bias`, [D]],
    );
  }
  if (opts.finalNorm) spec.push([`${p}final_layer_norm.weight`, [D]], [`${p}final_layer_norm.bias`, [D]]);
  const tensors: RawTensor[] = spec.map(([name, shape]) => ({ name, dtype: 'F32', shape, data: bytesOf(randomF32(shape.reduce((a, b) => a * b, 1), rand)) }));
  if (opts.head === 'same') tensors.push({ ...tensors[0]!, name: 'lm_head.weight' });
  if (opts.head === 'different') tensors.push({ name: 'lm_head.weight', dtype: 'F32', shape: [V, E], data: bytesOf(randomF32(V * E, rand)) });
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  const config = {
    model_type: 'opt', hidden_size: D, word_embed_proj_dim: E, ffn_dim: F, num_hidden_layers: 2, num_attention_heads: 2,
    max_position_embeddings: P, vocab_size: V, do_layer_norm_before: false, activation_function: 'relu', bos_token_id: 2, eos_token_id: 2,
    ...opts.config,
  };
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
  await writeFile(path.join(dir, 'tokenizer.json'), wordLevelTokenizer(V));
  return { dir, values: new Map(tensors.map((x) => [x.name, decodeRef(x.dtype, x.data)])) };
}

test('OPT-350m-like folder: decoder.* names, project_in/out, post-LN, no final norm, untied lm_head', async (t) => {
  const { dir, values } = await makeOpt(t, { head: 'different', config: { tie_word_embeddings: false } });
  await withCheckpoint(dir, async (c) => {
    t.like(c.arch, { type: 'opt', dModel: 8, embedDim: 4, preNorm: false, tiedEmbeddings: false, headDim: 4, maxSeqLen: 6, posOffset: 2 });
    t.deepEqual(c.tensors.get('project_in'), [8, 4]);
    t.deepEqual(c.tensors.get('project_out'), [4, 8]);
    t.false(c.tensors.has('final_norm.weight'));
    t.deepEqual(c.tensors.get('lm_head'), [20, 4]);
    sameBits(t, await c.readRows('lm_head', 0, 20), bits(values.get('lm_head.weight')!));
    sameBits(t, await c.readColumns('layers.1.ffn_down', 3, 4), bits(refColumns(values.get('decoder.layers.1.fc2.weight')!, 8, 12, 3, 4)));
    sameBits(t, await c.readRows('layers.1.ffn_down_bias', 0, 8), bits(values.get('decoder.layers.1.fc2.bias')!));
  });
});

test('OPT: identical lm_head is tied; explicit tie_word_embeddings ties; final norm follows the config', async (t) => {
  const same = await makeOpt(t, { head: 'same', prefix: 'model.decoder.', finalNorm: true, config: { do_layer_norm_before: true } });
  await withCheckpoint(same.dir, async (c) => {
    t.true(c.arch.tiedEmbeddings);
    t.true(c.arch.preNorm);
    t.false(c.tensors.has('lm_head'));
    t.deepEqual(c.tensors.get('final_norm.bias'), [8]);
  });
  const forced = await makeOpt(t, { head: 'different', config: { tie_word_embeddings: true } });
  await withCheckpoint(forced.dir, async (c) => t.true(c.arch.tiedEmbeddings && !c.tensors.has('lm_head')));
  const removed = await makeOpt(t, { finalNorm: true, config: { do_layer_norm_before: true, _remove_final_layer_norm: true } });
  await withCheckpoint(removed.dir, async (c) => t.false(c.tensors.has('final_norm.weight')));
  const missing = await makeOpt(t, { config: { do_layer_norm_before: true } });
  await rejectsConvert(t, openCheckpoint(missing.dir), 'model.safetensors', 'decoder.final_layer_norm.weight', 'missing');
});

// ---------------------------------------------------------------------------
// Errors: every one a ConvertError naming the file (and tensor)

test('error: unknown model_type names config.json', async (t) => {
  const { dir } = await makeLlama(t, { config: { model_type: 'gpt2' } });
  await rejectsConvert(t, openCheckpoint(dir), path.join(dir, 'config.json'), 'gpt2');
});

test('error: unsupported config values name config.json and the key', async (t) => {
  const a = await makeLlama(t, { config: { rope_scaling: { rope_type: 'llama3', factor: 8 } } });
  await rejectsConvert(t, openCheckpoint(a.dir), 'config.json', 'rope_scaling');
  const b = await makeOpt(t, { config: { activation_function: 'gelu' } });
  await rejectsConvert(t, openCheckpoint(b.dir), 'config.json', 'activation_function');
  const c = await makeLlama(t, { config: { num_hidden_layers: 'two' } });
  await rejectsConvert(t, openCheckpoint(c.dir), 'config.json', 'num_hidden_layers');
  const d = await tmp(t);
  await writeFile(path.join(d, 'config.json'), '{"model_type": "llama",');
  await rejectsConvert(t, openCheckpoint(d), 'config.json', 'JSON');
});

test('error: missing tensor names the file and tensor', async (t) => {
  const name = 'model.layers.1.mlp.up_proj.weight';
  const a = await makeLlama(t, { edit: (ts) => ts.filter((x) => x.name !== name) });
  await rejectsConvert(t, openCheckpoint(a.dir), 'model.safetensors.index.json', name, 'missing');
  const b = await makeLlama(t, { sharded: false, edit: (ts) => ts.filter((x) => x.name !== name) });
  await rejectsConvert(t, openCheckpoint(b.dir), path.join(b.dir, 'model.safetensors'), name, 'missing');
});

test('error: misshapen tensor names the shard and tensor', async (t) => {
  const name = 'model.layers.1.self_attn.k_proj.weight';
  const { dir } = await makeLlama(t, {
    edit: (ts) => ts.map((x) => (x.name === name ? { ...x, shape: [16, 12] } : x)),
  });
  await rejectsConvert(t, openCheckpoint(dir), 'model-00002-of-00002.safetensors', name, '[16, 12]', '[12, 16]');
});

test('error: unsupported dtype names the tensor', async (t) => {
  const name = 'model.norm.weight';
  const { dir } = await makeLlama(t, { sharded: false, edit: (ts) => ts.map((x) => (x.name === name ? { ...x, dtype: 'I32' } : x)) });
  await rejectsConvert(t, openCheckpoint(dir), 'model.safetensors', name, 'I32');
  const f64 = await makeLlama(t, { sharded: false, edit: (ts) => ts.map((x) => (x.name === name ? { ...x, dtype: 'F64', data: new Uint8Array(x.data.length * 2) } : x)) });
  await rejectsConvert(t, openCheckpoint(f64.dir), name, 'F64');
});

test('error: truncated safetensors file names the file and the cut tensor', async (t) => {
  const { dir } = await makeLlama(t, { sharded: false });
  const file = path.join(dir, 'model.safetensors');
  const size = (await readFile(file)).length;
  await truncate(file, size - 10);
  await rejectsConvert(t, openCheckpoint(dir), file, 'lm_head.weight', 'outside the data area');
});

test('error: corrupt safetensors headers', async (t) => {
  const dir = await tmp(t);
  const data = bytesOf(new Float32Array([1, 2, 3, 4]));
  const entry = (offs: number[], shape = [4], dtype = 'F32'): string => JSON.stringify({ x: { dtype, shape, data_offsets: offs } });
  const cases: [string, Uint8Array, string[]][] = [
    ['bad-json', encodeRaw('{"x": {"dtype": "F32",', [data]), ['not valid JSON']],
    ['past-eof', encodeRaw(entry([0, 16]), [data], 1 << 20), ['runs past the end']],
    ['huge-len', encodeRaw(entry([0, 16]), [data], 2 ** 40), ['not sane']],
    ['outside', encodeRaw(entry([0, 32], [8]), [data]), ['[x]', 'outside the data area']],
    ['inconsistent', encodeRaw(entry([0, 12]), [data]), ['[x]', 'needs 16']],
    ['reversed', encodeRaw(entry([12, 4], [0]), [data]), ['[x]', 'outside']],
    ['bad-dtype', encodeRaw(entry([0, 16], [4], 'F33'), [data]), ['[x]', 'unknown dtype']],
    ['bad-shape', encodeRaw(entry([0, 16], [-4]), [data]), ['[x]', 'shape']],
    ['array', encodeRaw('[1, 2]', [data]), ['not a JSON object']],
    ['overlap', encodeRaw(JSON.stringify({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [3], data_offsets: [4, 16] } }), [data]), ['overlap']],
    ['tiny', new Uint8Array(5), ['too small']],
  ];
  for (const [name, bytes, parts] of cases) {
    const file = path.join(dir, `${name}.safetensors`);
    await writeFile(file, bytes);
    await rejectsConvert(t, SafetensorsStore.openFile(file), file, ...parts);
  }
  // Through a model folder as well.
  const m = await makeLlama(t, { sharded: false });
  await writeFile(path.join(m.dir, 'model.safetensors'), cases[0]![1]);
  await rejectsConvert(t, openCheckpoint(m.dir), path.join(m.dir, 'model.safetensors'), 'JSON');
});

test('error: sharded index problems name the file', async (t) => {
  const { dir } = await makeLlama(t);
  const index = path.join(dir, 'model.safetensors.index.json');
  const doc = JSON.parse(await readFile(index, 'utf8')) as { weight_map: Record<string, string> };
  doc.weight_map['model.norm.weight'] = 'model-00001-of-00002.safetensors'; // it is in shard 2
  await writeFile(index, JSON.stringify(doc));
  await rejectsConvert(t, openCheckpoint(dir), 'model.norm.weight', 'index.json');
  doc.weight_map['model.norm.weight'] = '../elsewhere.safetensors';
  await writeFile(index, JSON.stringify(doc));
  await rejectsConvert(t, openCheckpoint(dir), index, 'elsewhere');
  await rm(path.join(dir, 'model-00002-of-00002.safetensors'));
  doc.weight_map['model.norm.weight'] = 'model-00002-of-00002.safetensors';
  await writeFile(index, JSON.stringify(doc));
  await rejectsConvert(t, openCheckpoint(dir), 'model-00002-of-00002.safetensors', 'cannot open');
});

test('error: truncated or padded llama2.c file', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'stories.bin');
  await copyFile(path.join(STORIES, 'stories260K.bin'), file);
  await copyFile(path.join(STORIES, 'tok512.bin'), path.join(dir, 'tok512.bin'));
  await truncate(file, 1056540 - 4);
  await rejectsConvert(t, openCheckpoint(file), file, 'truncated', '1056540');
  await truncate(file, 1056540 + 4);
  await rejectsConvert(t, openCheckpoint(file), file, 'implies 1056540');
  await truncate(file, 10);
  await rejectsConvert(t, openCheckpoint(file), file, 'too small');
  const bad = new Uint8Array(await readFile(path.join(STORIES, 'stories260K.bin')));
  new DataView(bad.buffer).setInt32(12, 7, true); // n_heads 7 does not divide dim 64
  await writeFile(file, bad);
  await rejectsConvert(t, openCheckpoint(file), file, 'n_heads');
});

test('error: wrong tokenizers name the tokenizer file', async (t) => {
  const tok512 = path.join(STORIES, 'tok512.bin');
  const stories = path.join(STORIES, 'stories260K.bin');
  // llama2.c tokenizer given to a Hugging Face model, and vice versa.
  const { dir } = await makeLlama(t);
  await rejectsConvert(t, openCheckpoint(dir, { tokenizer: tok512 }), tok512, 'llama2.c');
  const hfTok = path.join(OPT, 'tokenizer.json');
  await rejectsConvert(t, openCheckpoint(stories, { tokenizer: hfTok }), hfTok, 'JSON');
  // A tokenizer with more ids than the model's vocabulary.
  const big = await makeLlama(t, { tokenizer: wordLevelTokenizer(41) });
  await rejectsConvert(t, openCheckpoint(big.dir), path.join(big.dir, 'tokenizer.json'), '41', '40');
  // No model, not JSON, missing.
  const nomodel = await makeLlama(t, { tokenizer: '{"version": "1.0"}' });
  await rejectsConvert(t, openCheckpoint(nomodel.dir), 'tokenizer.json', '"model"');
  const notjson = await makeLlama(t, { tokenizer: 'vocab a b c' });
  await rejectsConvert(t, openCheckpoint(notjson.dir), 'tokenizer.json', 'invalid JSON');
  const none = await makeLlama(t, { tokenizer: null });
  await rejectsConvert(t, openCheckpoint(none.dir), path.join(none.dir, 'tokenizer.json'), '--tokenizer');
  // llama2.c: a tokenizer with a different vocabulary size, or none beside the checkpoint.
  const d = await tmp(t);
  const file = path.join(d, 'model.bin');
  await copyFile(stories, file);
  await rejectsConvert(t, openCheckpoint(file), file, '--tokenizer');
  const short = path.join(d, 'tokenizer.bin');
  await writeFile(short, (await readFile(tok512)).subarray(0, 3000));
  await rejectsConvert(t, openCheckpoint(file), short, 'tokens');
  const tok = new Uint8Array(await readFile(tok512));
  const extra = new Uint8Array(tok.length + 9);
  extra.set(tok);
  new DataView(extra.buffer).setInt32(tok.length + 4, 1, true); // a 513th token, 1 byte long
  await writeFile(short, extra);
  await rejectsConvert(t, openCheckpoint(file), short, 'more tokens');
  // Auto-detected tokenizer.bin works.
  await copyFile(tok512, short);
  await withCheckpoint(file, async (c) => t.is(c.tokenizer.kind, 'llama2c'));
});

test('error: unsupported inputs', async (t) => {
  const dir = await tmp(t);
  await rejectsConvert(t, openCheckpoint(path.join(dir, 'nope')), 'nope');
  await rejectsConvert(t, openCheckpoint(dir), dir, 'config.json');
  await rejectsConvert(t, openCheckpoint(path.join(OPT, 'model.safetensors')), 'model folder');
  const zip = path.join(dir, 'pytorch_model.bin');
  await writeFile(zip, new Uint8Array([0x50, 0x4b, 0x03, 0x04, ...new Array(40).fill(0)]));
  await rejectsConvert(t, openCheckpoint(zip), zip, 'PyTorch');
  const { dir: m } = await makeLlama(t, { sharded: false });
  await rm(path.join(m, 'model.safetensors'));
  await writeFile(path.join(m, 'pytorch_model.bin'), '');
  await rejectsConvert(t, openCheckpoint(m), m, 'pytorch_model.bin');
});
