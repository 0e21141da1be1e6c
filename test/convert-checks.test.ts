/**
 * Converter config checks (issue 10 part 3), on tiny checkpoints written here
 * with the real Hugging Face tensor names and config keys:
 *  - OPT without `tie_word_embeddings` ties the head as transformers does
 *    (OPTConfig defaults it to true), even when lm_head.weight differs;
 *  - tensors for more layers than num_hidden_layers, or tensors no rule reads,
 *    are a ConvertError naming them; known harmless extras (rotary caches, a
 *    tied head's lm_head.weight) are notes, printed by `flashlm convert`.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/convert/index.js';
import { ConvertError } from '../src/errors.js';
import { openFlm } from '../src/format/reader.js';
import { MemorySource } from '../src/source/memory.js';
import { bytesOf, randomF32, rng, writeSafetensors, type RawTensor } from './helpers/safetensors.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

/** `flashlm ...args` from the sources (no dist/ needed): exit code and stderr. */
async function cli(...args: string[]): Promise<{ code: number; stderr: string }> {
  const script = `import(${JSON.stringify(MAIN)}).then((m) => m.main(['node', 'flashlm', ...${JSON.stringify(args)}]))`;
  try {
    const { stderr } = await promisify(execFile)(process.execPath, ['--import=tsx', '-e', script]);
    return { code: 0, stderr };
  } catch (e) {
    const err = e as { code: number; stderr: string };
    return { code: err.code, stderr: err.stderr };
  }
}

async function tmp(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'flashlm-checks-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function tokenizer(V: number): string {
  const vocab = Object.fromEntries(Array.from({ length: V }, (_, i) => [`t${i}`, i]));
  return JSON.stringify({ version: '1.0', added_tokens: [], model: { type: 'WordLevel', vocab, unk_token: 't0' } });
}

const tensor = (name: string, shape: number[], r: () => number): RawTensor => ({ name, dtype: 'F32', shape, data: bytesOf(randomF32(shape.reduce((a, b) => a * b, 1), r)) });

/** A Llama folder with `layers` layers of tensors (config says `config.num_hidden_layers`, default the same). */
async function llama(t: ExecutionContext, layers: number, config: Record<string, unknown> = {}, extra: (r: () => number) => RawTensor[] = () => []): Promise<string> {
  const dir = await tmp(t);
  const r = rng(7);
  const [D, F, V] = [8, 12, 20];
  const ts: RawTensor[] = [tensor('model.embed_tokens.weight', [V, D], r)];
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`;
    ts.push(
      tensor(`${p}input_layernorm.weight`, [D], r), tensor(`${p}self_attn.q_proj.weight`, [D, D], r), tensor(`${p}self_attn.k_proj.weight`, [D, D], r),
      tensor(`${p}self_attn.v_proj.weight`, [D, D], r), tensor(`${p}self_attn.o_proj.weight`, [D, D], r), tensor(`${p}post_attention_layernorm.weight`, [D], r),
      tensor(`${p}mlp.gate_proj.weight`, [F, D], r), tensor(`${p}mlp.up_proj.weight`, [F, D], r), tensor(`${p}mlp.down_proj.weight`, [D, F], r),
    );
  }
  ts.push(tensor('model.norm.weight', [D], r), tensor('lm_head.weight', [V, D], r), ...extra(r));
  writeSafetensors(path.join(dir, 'model.safetensors'), ts);
  await writeFile(path.join(dir, 'config.json'), JSON.stringify({
    model_type: 'llama', hidden_size: D, intermediate_size: F, num_hidden_layers: layers, num_attention_heads: 2, num_key_value_heads: 2,
    vocab_size: V, max_position_embeddings: 32, rms_norm_eps: 1e-5, hidden_act: 'silu', tie_word_embeddings: false, ...config,
  }));
  await writeFile(path.join(dir, 'tokenizer.json'), tokenizer(V));
  return dir;
}

/** An OPT folder (OPTForCausalLM names) with a head different from the embeddings. */
async function opt(t: ExecutionContext, config: Record<string, unknown>): Promise<string> {
  const dir = await tmp(t);
  const r = rng(11);
  const [D, F, V, P] = [8, 16, 20, 6];
  const p = 'model.decoder.';
  const ts: RawTensor[] = [tensor(`${p}embed_tokens.weight`, [V, D], r), tensor(`${p}embed_positions.weight`, [P + 2, D], r)];
  for (let i = 0; i < 2; i++) {
    const l = `${p}layers.${i}.`;
    for (const s of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) ts.push(tensor(`${l}self_attn.${s}.weight`, [D, D], r), tensor(`${l}self_attn.${s}.bias`, [D], r));
    ts.push(
      tensor(`${l}self_attn_layer_norm.weight`, [D], r), tensor(`${l}self_attn_layer_norm.bias`, [D], r), tensor(`${l}final_layer_norm.weight`, [D], r),
      tensor(`${l}final_layer_norm.bias`, [D], r), tensor(`${l}fc1.weight`, [F, D], r), tensor(`${l}fc1.bias`, [F], r), tensor(`${l}fc2.weight`, [D, F], r), tensor(`${l}fc2.bias`, [D], r),
    );
  }
  ts.push(tensor(`${p}final_layer_norm.weight`, [D], r), tensor(`${p}final_layer_norm.bias`, [D], r), tensor('lm_head.weight', [V, D], r));
  writeSafetensors(path.join(dir, 'model.safetensors'), ts);
  await writeFile(path.join(dir, 'config.json'), JSON.stringify({
    model_type: 'opt', hidden_size: D, word_embed_proj_dim: D, ffn_dim: F, num_hidden_layers: 2, num_attention_heads: 2,
    max_position_embeddings: P, vocab_size: V, do_layer_norm_before: true, activation_function: 'relu', bos_token_id: 2, eos_token_id: 2, ...config,
  }));
  await writeFile(path.join(dir, 'tokenizer.json'), tokenizer(V));
  return dir;
}

async function arch(dir: string) {
  const c = await openCheckpoint(dir);
  try {
    return { arch: c.arch, hasHead: c.tensors.has('lm_head'), notes: c.notes ?? [] };
  } finally {
    await c.close();
  }
}

test('OPT without tie_word_embeddings ties the head (OPTConfig default true) although lm_head.weight differs; false keeps it', async (t) => {
  const missing = await arch(await opt(t, {}));
  t.true(missing.arch.tiedEmbeddings);
  t.false(missing.hasHead);
  const forced = await arch(await opt(t, { tie_word_embeddings: true }));
  t.true(forced.arch.tiedEmbeddings && !forced.hasHead);
  const untied = await arch(await opt(t, { tie_word_embeddings: false }));
  t.false(untied.arch.tiedEmbeddings);
  t.true(untied.hasHead);
});

test('tensors for more layers than num_hidden_layers: a ConvertError naming the layers and the config value', async (t) => {
  const one = await llama(t, 3, { num_hidden_layers: 1 });
  const e = await t.throwsAsync(openCheckpoint(one), { instanceOf: ConvertError });
  t.regex(e.message, /model\.safetensors: the checkpoint has tensors for layers 1\.\.2 but config\.json says num_hidden_layers = 1/);
  const two = await llama(t, 3, { num_hidden_layers: 2 });
  const e2 = await t.throwsAsync(openCheckpoint(two), { instanceOf: ConvertError });
  t.regex(e2.message, /tensors for layer 2 but config\.json says num_hidden_layers = 2/);
  t.is((await arch(await llama(t, 2))).arch.nLayers, 2, 'the same checkpoint with the right count converts');
});

test('tensors no rule uses: a ConvertError naming them', async (t) => {
  const dir = await llama(t, 2, {}, (r) => [tensor('model.layers.0.mlp.gate_bias', [12], r), tensor('model.extra_proj.weight', [4, 4], r)]);
  const e = await t.throwsAsync(openCheckpoint(dir), { instanceOf: ConvertError });
  t.regex(e.message, /2 tensors no rule of this architecture uses: (model\.layers\.0\.mlp\.gate_bias, model\.extra_proj\.weight|model\.extra_proj\.weight, model\.layers\.0\.mlp\.gate_bias)/);
  // OPT too (the same binding helper)
  const o = await opt(t, {});
  const { readFile } = await import('node:fs/promises');
  const cfg = JSON.parse(await readFile(path.join(o, 'config.json'), 'utf8'));
  await writeFile(path.join(o, 'config.json'), JSON.stringify({ ...cfg, enable_bias: false }));
  const e3 = await t.throwsAsync(openCheckpoint(o), { instanceOf: ConvertError });
  t.regex(e3.message, /tensors no rule of this architecture uses: .*self_attn\.q_proj\.bias/);
});

test('known harmless extras are notes: rotary caches, a tied head; `flashlm convert` prints them on stderr', async (t) => {
  const dir = await llama(t, 2, { tie_word_embeddings: true }, (r) => [tensor('model.layers.0.self_attn.rotary_emb.inv_freq', [2], r), tensor('model.layers.1.self_attn.rotary_emb.inv_freq', [2], r)]);
  const a = await arch(dir);
  t.true(a.arch.tiedEmbeddings);
  t.is(a.notes.length, 2);
  t.regex(a.notes.join('\n'), /skipped 2 tensors \(model\.layers\.0\.self_attn\.rotary_emb\.inv_freq, model\.layers\.1\.self_attn\.rotary_emb\.inv_freq\): a rotary cache/);
  t.regex(a.notes.join('\n'), /skipped 1 tensor \(lm_head\.weight\): the head is tied/);
  const out = path.join(dir, 'm.flm');
  const r = await cli('convert', dir, '-o', out);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /note: skipped 2 tensors .*rotary cache/);
  t.regex(r.stderr, /wrote .*m\.flm/);
  // --activation through the CLI: the header says so; a bad value is one line
  const out2 = path.join(dir, 'd.flm');
  t.is((await cli('convert', dir, '-o', out2, '--activation', 'fatrelu=0.5')).code, 0);
  const { readFile: rf } = await import('node:fs/promises');
  const f = await openFlm(new MemorySource(new Uint8Array(await rf(out2))));
  t.like(f.header.arch, { gatedAct: 'fatrelu', gatedActThreshold: 0.5 });
  const bad = await cli('convert', dir, '-o', path.join(dir, 'x.flm'), '--activation', 'gelu');
  t.not(bad.code, 0);
  t.regex(bad.stderr, /--activation "gelu": expected relu, fatrelu=T, drelu or silu/);
  t.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
});
