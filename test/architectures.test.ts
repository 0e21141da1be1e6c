/**
 * The architectures people bring (issue 10 part 2): qwen2, qwen3, phi3, the
 * rope_scaling types llama3 / linear / dynamic, and sliding-window attention
 * (Mistral, Qwen2, Phi-3) over contexts longer than the window.
 *
 * Each test writes a tiny random checkpoint (safetensors + config.json with the
 * real keys and tensor names), converts it, and checks flashlm's logits at every
 * position against `hfForward` below: a plain f64 forward pass written from the
 * Hugging Face modeling code (modeling_llama / mistral / qwen2 / qwen3 / phi3,
 * modeling_rope_utils.py, masking_utils.sliding_window_overlay), not from
 * flashlm's. Then decode, batched prefill and 2 threads must agree bit for bit.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openCheckpoint } from '../src/convert/index.js';
import { convertCheckpoint } from './helpers/models.js';
import { ConvertError, FormatError } from '../src/errors.js';
import { openFlm, validateHeader } from '../src/format/reader.js';
import { MemorySource, openModel, type Model } from '../src/node.js';
import { bytesOf, rng, writeSafetensors, type RawTensor } from './helpers/safetensors.js';

type Config = Record<string, unknown>;
type Weights = Map<string, Float32Array>;

// ---------------------------------------------------------------------------
// The reference: Hugging Face semantics in f64, one forward call per token.

/** HF's rotary embedding module, including dynamic NTK's per-call frequency update (dynamic_rope_update). */
class RefRotary {
  private readonly type: string;
  private readonly rs: Record<string, number>;
  private readonly base: number;
  private readonly maxPos: number;
  private cached: number;
  private inv: number[];
  /** attention_scaling: cos and sin are multiplied by it (LongRoPE). */
  private scaling = 1;
  constructor(
    cfg: Config,
    private readonly dim: number,
  ) {
    const rs = (cfg['rope_scaling'] ?? null) as Record<string, unknown> | null;
    this.type = rs ? String(rs['rope_type'] ?? rs['type'] ?? 'default') : 'default';
    this.rs = (rs ?? {}) as Record<string, number>;
    this.base = (cfg['rope_theta'] as number | undefined) ?? 10000;
    this.maxPos = cfg['max_position_embeddings'] as number;
    this.cached = this.maxPos;
    if (this.type === 'su') this.type = 'longrope'; // Phi3Config: "su" became "longrope"
    if (this.type === 'longrope') {
      // _compute_longrope_parameters with Phi3Config's original_max_position_embeddings
      const original = cfg['original_max_position_embeddings'] as number;
      const factor = this.maxPos / original;
      this.scaling = (rs?.['attention_factor'] as number | undefined) ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original)));
      this.original = original;
    }
    this.inv = this.init();
  }

  private original = 0;

  private defaults(base: number): number[] {
    return Array.from({ length: this.dim / 2 }, (_, i) => 1 / base ** ((2 * i) / this.dim));
  }

  private init(seqLen?: number): number[] {
    const { type, rs } = this;
    if (type === 'default') return this.defaults(this.base);
    if (type === 'linear') return this.defaults(this.base).map((x) => x / rs['factor']!);
    if (type === 'dynamic') {
      const factor = rs['factor']!;
      const sl = seqLen !== undefined && seqLen > this.maxPos ? seqLen : this.maxPos;
      const base = this.base * ((factor * sl) / this.maxPos - (factor - 1)) ** (this.dim / (this.dim - 2));
      return this.defaults(base);
    }
    if (type === 'llama3') {
      const factor = rs['factor']!, low = rs['low_freq_factor']!, high = rs['high_freq_factor']!, old = rs['original_max_position_embeddings']!;
      const lowWavelen = old / low, highWavelen = old / high;
      return this.defaults(this.base).map((inv) => {
        const wavelen = (2 * Math.PI) / inv;
        const scaled = wavelen > lowWavelen ? inv / factor : inv; // torch.where(wavelen > low_freq_wavelen, ...)
        const smooth = (old / wavelen - low) / (high - low);
        const smoothed = ((1 - smooth) * scaled) / factor + smooth * scaled;
        const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        return medium ? smoothed : scaled;
      });
    }
    if (type === 'longrope') {
      const ext = (seqLen !== undefined && seqLen > this.original ? rs['long_factor'] : rs['short_factor']) as unknown as number[];
      return this.defaults(this.base).map((inv, i) => inv / ext[i]!);
    }
    throw new Error(`reference: rope type ${type}`);
  }

  /** dynamic_rope_update at the start of a forward call whose last position is seqLen - 1. */
  beginCall(seqLen: number): void {
    if (this.type === 'dynamic' && seqLen > this.cached) {
      this.inv = this.init(seqLen);
      this.cached = seqLen;
    }
    // longrope_frequency_update: the long factors once seq_len passes original_max_position_embeddings, else the short ones
    if (this.type === 'longrope') this.inv = this.init(seqLen > this.original ? this.original + 1 : undefined);
  }

  /** cos/sin of emb = cat(freqs, freqs) at one position of the current call. */
  at(pos: number): { cos: number[]; sin: number[] } {
    const freqs = this.inv.map((f) => pos * f);
    const emb = [...freqs, ...freqs];
    return { cos: emb.map((v) => Math.cos(v) * this.scaling), sin: emb.map((v) => Math.sin(v) * this.scaling) };
  }
}

function linear(w: Float32Array, x: ArrayLike<number>, rows: number, bias?: Float32Array): number[] {
  const cols = x.length;
  const out = new Array<number>(rows);
  for (let r = 0; r < rows; r++) {
    let s = bias ? bias[r]! : 0;
    for (let c = 0; c < cols; c++) s += w[r * cols + c]! * x[c]!;
    out[r] = s;
  }
  return out;
}

function rmsNorm(x: number[], w: Float32Array, eps: number): number[] {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  const inv = 1 / Math.sqrt(ms + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

/** apply_rotary_pos_emb on one head: x * cos + rotate_half(x) * sin. */
function rotate(x: number[], cos: number[], sin: number[]): number[] {
  const h = x.length / 2;
  return x.map((v, j) => v * cos[j]! + (j < h ? -x[j + h]! : x[j - h]!) * sin[j]!);
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** The window of layer l as the HF config classes define it (undefined: full attention). */
function refWindow(cfg: Config, l: number): number | undefined {
  const type = cfg['model_type'];
  if (type === 'mistral' || type === 'phi3') return (cfg['sliding_window'] as number | null | undefined) ?? undefined;
  if (type === 'qwen2' || type === 'qwen3') {
    if (!cfg['use_sliding_window']) return undefined;
    return l >= (cfg['max_window_layers'] as number) ? (cfg['sliding_window'] as number) : undefined;
  }
  return undefined;
}

/**
 * Logits after each token of `ids`. 'per-token': HF decoding with a KV cache, one
 * token per forward call. 'per-prefix': the logits at p from a fresh forward call
 * over ids[0..p] (what Phi3ForCausalLM's generation does for LongRoPE, which drops
 * the cache when the sequence first outgrows original_max_position_embeddings).
 */
function hfForward(cfg: Config, w: Weights, ids: number[], calls: 'per-token' | 'per-prefix' = 'per-token'): Float64Array[] {
  if (calls === 'per-prefix') {
    return ids.map((_, p) => {
      const rotary = new RefRotary(cfg, hfHeadDim(cfg));
      rotary.beginCall(p + 1);
      return hfRun(cfg, w, ids.slice(0, p + 1), (pos) => rotary.at(pos)).at(-1)!;
    });
  }
  const rotary = new RefRotary(cfg, hfHeadDim(cfg));
  return hfRun(cfg, w, ids, (pos) => {
    rotary.beginCall(pos + 1);
    return rotary.at(pos);
  });
}

function hfHeadDim(cfg: Config): number {
  return (cfg['head_dim'] as number | undefined) ?? (cfg['hidden_size'] as number) / (cfg['num_attention_heads'] as number);
}

/** The decoder over `ids` (KV cache, causal or sliding mask), with each position's rotary cos/sin from `rope`. */
function hfRun(cfg: Config, w: Weights, ids: number[], rope: (pos: number) => { cos: number[]; sin: number[] }): Float64Array[] {
  const type = cfg['model_type'] as string;
  const D = cfg['hidden_size'] as number, H = cfg['num_attention_heads'] as number;
  const KVH = (cfg['num_key_value_heads'] as number | undefined) ?? H;
  const hd = (cfg['head_dim'] as number | undefined) ?? D / H;
  const L = cfg['num_hidden_layers'] as number, F = cfg['intermediate_size'] as number, V = cfg['vocab_size'] as number;
  const eps = cfg['rms_norm_eps'] as number;
  const g = (n: string) => {
    const x = w.get(n);
    if (!x) throw new Error(`reference: no ${n}`);
    return x;
  };
  const kCache: number[][][] = Array.from({ length: L }, () => []);
  const vCache: number[][][] = Array.from({ length: L }, () => []);
  const out: Float64Array[] = [];
  ids.forEach((token, pos) => {
    let x = Array.from(g('model.embed_tokens.weight').subarray(token * D, (token + 1) * D));
    const { cos, sin } = rope(pos);
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}.`;
      const h = rmsNorm(x, g(p + 'input_layernorm.weight'), eps);
      let q: number[], k: number[], v: number[];
      if (type === 'phi3') {
        const qkv = linear(g(p + 'self_attn.qkv_proj.weight'), h, (H + 2 * KVH) * hd);
        q = qkv.slice(0, H * hd);
        k = qkv.slice(H * hd, (H + KVH) * hd);
        v = qkv.slice((H + KVH) * hd);
      } else {
        q = linear(g(p + 'self_attn.q_proj.weight'), h, H * hd, w.get(p + 'self_attn.q_proj.bias'));
        k = linear(g(p + 'self_attn.k_proj.weight'), h, KVH * hd, w.get(p + 'self_attn.k_proj.bias'));
        v = linear(g(p + 'self_attn.v_proj.weight'), h, KVH * hd, w.get(p + 'self_attn.v_proj.bias'));
      }
      const heads = (a: number[], n: number) => Array.from({ length: n }, (_, i) => a.slice(i * hd, (i + 1) * hd));
      let qh = heads(q, H), kh = heads(k, KVH);
      if (type === 'qwen3') {
        qh = qh.map((x) => rmsNorm(x, g(p + 'self_attn.q_norm.weight'), eps));
        kh = kh.map((x) => rmsNorm(x, g(p + 'self_attn.k_norm.weight'), eps));
      }
      qh = qh.map((x) => rotate(x, cos, sin));
      kh = kh.map((x) => rotate(x, cos, sin));
      kCache[l]!.push(kh.flat());
      vCache[l]!.push(v);
      const win = refWindow(cfg, l);
      const attn: number[] = [];
      for (let i = 0; i < H; i++) {
        const kv = Math.floor(i / (H / KVH));
        // causal_mask_function and sliding_window_overlay: kv_idx <= q_idx and kv_idx > q_idx - sliding_window
        const seen = kCache[l]!.map((_, j) => j).filter((j) => j <= pos && (win === undefined || j > pos - win));
        const scores = seen.map((j) => {
          let s = 0;
          for (let c = 0; c < hd; c++) s += qh[i]![c]! * kCache[l]![j]![kv * hd + c]!;
          return s * hd ** -0.5;
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let c = 0; c < hd; c++) attn.push(seen.reduce((a, j, n) => a + (e[n]! / z) * vCache[l]![j]![kv * hd + c]!, 0));
      }
      const o = linear(g(p + 'self_attn.o_proj.weight'), attn, D, w.get(p + 'self_attn.o_proj.bias'));
      x = x.map((vv, i) => vv + o[i]!);
      const h2 = rmsNorm(x, g(p + 'post_attention_layernorm.weight'), eps);
      let gate: number[], up: number[];
      if (type === 'phi3') {
        const gu = linear(g(p + 'mlp.gate_up_proj.weight'), h2, 2 * F);
        gate = gu.slice(0, F); // gate, up_states = up_states.chunk(2, dim=-1)
        up = gu.slice(F);
      } else {
        gate = linear(g(p + 'mlp.gate_proj.weight'), h2, F);
        up = linear(g(p + 'mlp.up_proj.weight'), h2, F);
      }
      const act = up.map((u, i) => u * silu(gate[i]!));
      const down = linear(g(p + 'mlp.down_proj.weight'), act, D);
      x = x.map((vv, i) => vv + down[i]!);
    }
    const xf = rmsNorm(x, g('model.norm.weight'), eps);
    out.push(Float64Array.from(linear(w.get('lm_head.weight') ?? g('model.embed_tokens.weight'), xf, V)));
  });
  return out;
}

// ---------------------------------------------------------------------------
// Tiny checkpoints with the real tensor names.

const V = 40;

function wordLevelTokenizer(n: number): string {
  const vocab = Object.fromEntries(Array.from({ length: n }, (_, i) => [`t${i}`, i]));
  return JSON.stringify({
    version: '1.0', added_tokens: [], normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null,
    decoder: { type: 'Fuse' }, model: { type: 'WordLevel', vocab, unk_token: 't0' },
  });
}

/** Random f32 tensors named as the Hugging Face checkpoint of `cfg`'s model_type names them. */
function randomTensors(cfg: Config, seed: number): RawTensor[] {
  const rand = rng(seed);
  const type = cfg['model_type'] as string;
  const D = cfg['hidden_size'] as number, H = cfg['num_attention_heads'] as number;
  const KVH = (cfg['num_key_value_heads'] as number | undefined) ?? H;
  const hd = (cfg['head_dim'] as number | undefined) ?? D / H;
  const F = cfg['intermediate_size'] as number;
  const ts: RawTensor[] = [];
  const put = (name: string, shape: number[], f: () => number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    ts.push({ name, dtype: 'F32', shape, data: bytesOf(Float32Array.from({ length: n }, f)) });
  };
  const matrix = (name: string, rows: number, cols: number) => put(name, [rows, cols], () => ((rand() - 0.5) * 3) / Math.sqrt(cols));
  const norm = (name: string, n: number) => put(name, [n], () => 0.5 + rand());
  const bias = (name: string, n: number) => put(name, [n], () => rand() - 0.5);
  put('model.embed_tokens.weight', [V, D], () => (rand() - 0.5) * 2);
  for (let l = 0; l < (cfg['num_hidden_layers'] as number); l++) {
    const p = `model.layers.${l}.`;
    norm(p + 'input_layernorm.weight', D);
    if (type === 'phi3') matrix(p + 'self_attn.qkv_proj.weight', (H + 2 * KVH) * hd, D);
    else {
      matrix(p + 'self_attn.q_proj.weight', H * hd, D);
      matrix(p + 'self_attn.k_proj.weight', KVH * hd, D);
      matrix(p + 'self_attn.v_proj.weight', KVH * hd, D);
    }
    if (type === 'qwen2') {
      bias(p + 'self_attn.q_proj.bias', H * hd);
      bias(p + 'self_attn.k_proj.bias', KVH * hd);
      bias(p + 'self_attn.v_proj.bias', KVH * hd);
    }
    if (type === 'qwen3') {
      norm(p + 'self_attn.q_norm.weight', hd);
      norm(p + 'self_attn.k_norm.weight', hd);
    }
    matrix(p + 'self_attn.o_proj.weight', D, H * hd);
    norm(p + 'post_attention_layernorm.weight', D);
    if (type === 'phi3') matrix(p + 'mlp.gate_up_proj.weight', 2 * F, D);
    else {
      matrix(p + 'mlp.gate_proj.weight', F, D);
      matrix(p + 'mlp.up_proj.weight', F, D);
    }
    matrix(p + 'mlp.down_proj.weight', D, F);
  }
  norm('model.norm.weight', D);
  if (!cfg['tie_word_embeddings']) matrix('lm_head.weight', V, D);
  return ts;
}

async function writeFolder(t: ExecutionContext, cfg: Config, tensors: RawTensor[]): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'flashlm-arch-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(cfg));
  await writeFile(path.join(dir, 'tokenizer.json'), wordLevelTokenizer(V));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

const convert = (dir: string): Promise<Uint8Array> => convertCheckpoint(dir);

/** Logits after each token, decoded one token at a time. */
async function decodeLogits(m: Model, ids: number[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  await m.forwardTokens(ids, (_, logits) => out.push(logits.slice()));
  return out;
}

interface Engine {
  batch: number;
  forwardBlock(tokens: ArrayLike<number>, pos: number, from: number, T: number): Promise<number> | number;
  logitsView: Float32Array;
}

/** Logits at position `last`, prefilling ids[0..last] in blocks of the model's batch size. */
async function prefillLogits(m: Model, ids: number[], last: number): Promise<Float32Array> {
  const e = (m as unknown as { transformer: Engine }).transformer;
  for (let pos = 0; pos <= last; pos += e.batch) await e.forwardBlock(ids, pos, pos, Math.min(e.batch, last + 1 - pos));
  return e.logitsView.slice();
}

const sameBits = (a: Float32Array, b: Float32Array) => Buffer.compare(Buffer.from(bytesOf(a)), Buffer.from(bytesOf(b))) === 0;

/** Max |flashlm - reference| over every position and token. */
function maxDelta(got: Float32Array[], want: Float64Array[]): number {
  let m = 0;
  got.forEach((g, p) => g.forEach((v, i) => (m = Math.max(m, Math.abs(v - want[p]![i]!)))));
  return m;
}

/**
 * Convert, compare with the reference at every position (max |Δlogit| <= 1e-4),
 * then batched prefill (blocks of 5) and 2 threads against decoding, bit for bit.
 */
async function checkFamily(t: ExecutionContext, name: string, cfg: Config, n: number, expectArch: Record<string, unknown>, calls: 'per-token' | 'per-prefix' = 'per-token'): Promise<void> {
  const tensors = randomTensors(cfg, n * 7919 + name.length);
  const weights: Weights = new Map(tensors.map((x) => [x.name, new Float32Array(x.data.slice().buffer)]));
  const dir = await writeFolder(t, cfg, tensors);
  const bytes = await convert(dir);
  const file = await openFlm(new MemorySource(bytes));
  t.like(file.header.arch, expectArch, `${name}: arch`);
  const ids = Array.from({ length: n }, (_, i) => (i * 17 + 3) % V);
  const want = hfForward(cfg, weights, ids, calls);

  const one = await openModel(new MemorySource(bytes), { contextLength: n, threads: 1, batchSize: 5 });
  const got = await decodeLogits(one, ids);
  const delta = maxDelta(got, want);
  t.log(`${name}: max |Δlogit| vs the Hugging Face reference over ${n} positions = ${delta.toExponential(2)}`);
  t.true(delta <= 1e-4, `${name}: max |Δlogit| ${delta}`);
  // The reference is not trivially close: logits spread over several units.
  t.true(Math.max(...want[n - 1]!) - Math.min(...want[n - 1]!) > 1, `${name}: logits spread`);

  const checks = [0, 4, 5, Math.floor(n / 2), n - 1];
  for (const p of checks) t.true(sameBits(await prefillLogits(one, ids, p), got[p]!), `${name}: batched prefill = decode at position ${p}`);
  await one.close();

  const two = await openModel(new MemorySource(bytes), { contextLength: n, threads: 2, batchSize: 5 });
  t.is(two.threading.threads, 2, `${name}: two threads run`);
  const got2 = await decodeLogits(two, ids);
  got2.forEach((g, p) => t.true(sameBits(g, got[p]!), `${name}: 2 threads = 1 thread at position ${p}`));
  for (const p of checks) t.true(sameBits(await prefillLogits(two, ids, p), got[p]!), `${name}: 2 threads batched prefill = decode at position ${p}`);
  await two.close();
}

// Configs carry the keys of the published ones (Qwen/Qwen2.5-0.5B, Qwen/Qwen3-0.6B,
// microsoft/Phi-3-mini-4k-instruct, meta-llama/Llama-3.2-1B, mistralai/Mistral-7B-v0.1), shrunk.
const BASE = { hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: V, hidden_act: 'silu', rms_norm_eps: 1e-6, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float32' };

const QWEN2 = {
  ...BASE, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', max_position_embeddings: 32768, max_window_layers: 24,
  rope_theta: 1000000.0, sliding_window: 32768, use_sliding_window: false, tie_word_embeddings: true, attention_dropout: 0.0,
};
const QWEN3 = {
  ...BASE, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', head_dim: 8, attention_bias: false, max_position_embeddings: 40960,
  max_window_layers: 28, rope_scaling: null, rope_theta: 1000000, sliding_window: null, use_sliding_window: false, tie_word_embeddings: true,
};
const PHI3 = {
  ...BASE, hidden_size: 24, architectures: ['Phi3ForCausalLM'], model_type: 'phi3', max_position_embeddings: 4096, original_max_position_embeddings: 4096,
  rope_scaling: null, rope_theta: 10000.0, sliding_window: 2047, tie_word_embeddings: false, rms_norm_eps: 1e-5, bos_token_id: 1, eos_token_id: 32000 % V,
  embd_pdrop: 0.0, resid_pdrop: 0.0, attention_bias: false,
};
const LLAMA = { ...BASE, architectures: ['LlamaForCausalLM'], model_type: 'llama', head_dim: 8, max_position_embeddings: 2048, rope_theta: 10000.0, tie_word_embeddings: false, attention_bias: false, mlp_bias: false };
const MISTRAL = { ...BASE, architectures: ['MistralForCausalLM'], model_type: 'mistral', max_position_embeddings: 32768, rope_theta: 10000.0, sliding_window: 5, tie_word_embeddings: false };

test('qwen2: q/k/v biases (no o bias), tied head, rope_theta 1e6 match the reference', async (t) => {
  await checkFamily(t, 'qwen2', QWEN2, 14, { attnBias: true, tiedEmbeddings: true, ropeTheta: 1e6, maxSeqLen: 32768, slidingWindow: undefined });
});

test('qwen3: per-head q/k RMSNorm before RoPE, head_dim != hidden/heads, matches the reference', async (t) => {
  await checkFamily(t, 'qwen3', QWEN3, 14, { qkNorm: true, headDim: 8, attnBias: false, tiedEmbeddings: true });
});

test('phi3: fused qkv_proj and gate_up_proj split at convert time match the reference', async (t) => {
  await checkFamily(t, 'phi3', PHI3, 14, { headDim: 6, ffnDim: 24, tiedEmbeddings: false, normEps: 1e-5 });
  // The split keeps FFN neurons as bundles: gate row i, up row i (rows F+i of gate_up_proj), down column i.
  const dir = await writeFolder(t, PHI3, randomTensors(PHI3, 1));
  const c = await openCheckpoint(dir);
  try {
    t.deepEqual(c.tensors.get('layers.0.ffn_gate'), [24, 24]);
    t.deepEqual(c.tensors.get('layers.0.ffn_up'), [24, 24]);
    t.deepEqual(c.tensors.get('layers.0.wk'), [12, 24]);
    t.false(c.tensors.has('layers.0.qkv') || c.tensors.has('layers.0.gate_up'));
  } finally {
    await c.close();
  }
});

test('phi3 sliding_window shorter than the context: attention over the last window positions only', async (t) => {
  await checkFamily(t, 'phi3 window 6', { ...PHI3, sliding_window: 6 }, 16, { slidingWindow: 6, maxSeqLen: 4096 });
});

test('phi3 rope_scaling longrope (Phi-3-mini-128k): short factors, then long ones past original_max_position_embeddings, cos/sin x attention factor', async (t) => {
  const cfg = { ...PHI3, max_position_embeddings: 64, original_max_position_embeddings: 8, sliding_window: 262144, rope_scaling: { long_factor: [1.5, 3.0, 7.0], short_factor: [1.0, 1.25, 1.5], type: 'longrope' } };
  const want = { maxSeqLen: 64, slidingWindow: undefined, ropeScaling: { type: 'longrope', shortFactor: [1, 1.25, 1.5], longFactor: [1.5, 3, 7], originalMaxPos: 8, attentionFactor: Math.SQRT2 } };
  await checkFamily(t, 'phi3 longrope', cfg, 14, want, 'per-prefix');
  // The legacy "su" name, with an explicit attention_factor.
  const su = { ...cfg, rope_scaling: { ...cfg.rope_scaling, type: 'su', attention_factor: 1.3 } };
  await checkFamily(t, 'phi3 su', su, 12, { ropeScaling: { type: 'longrope', shortFactor: [1, 1.25, 1.5], longFactor: [1.5, 3, 7], originalMaxPos: 8, attentionFactor: 1.3 } }, 'per-prefix');
});

test('rope_scaling llama3 (Llama 3.1/3.2): low, medium and high frequency bands match the reference', async (t) => {
  // head_dim 8, base 10000: wavelengths 6.3, 63, 628, 6283 against 256/8 = 32 and 256/1 = 256: one kept, one blended, two scaled.
  const cfg = { ...LLAMA, rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 8.0, original_max_position_embeddings: 256, rope_type: 'llama3' } };
  await checkFamily(t, 'llama3', cfg, 14, { ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 8, originalMaxPos: 256 } });
});

test('rope_scaling linear matches the reference', async (t) => {
  await checkFamily(t, 'linear', { ...LLAMA, rope_scaling: { type: 'linear', factor: 4.0 } }, 14, { ropeScaling: { type: 'linear', factor: 4 } });
});

test('rope_scaling dynamic (legacy "type" key): NTK base grows past max_position_embeddings as HF decoding does', async (t) => {
  const cfg = { ...LLAMA, max_position_embeddings: 8, rope_scaling: { type: 'dynamic', factor: 3.0 } };
  await checkFamily(t, 'dynamic', cfg, 20, { maxSeqLen: 24, ropeScaling: { type: 'dynamic', factor: 3, originalMaxPos: 8 } });
});

test('mistral: sliding_window 5 over a 20-token context (no longer capped at the window)', async (t) => {
  await checkFamily(t, 'mistral window 5', MISTRAL, 20, { slidingWindow: 5, maxSeqLen: 32768 });
});

test('mistral: a 260-position window over 300 tokens, attention split over 2 threads (offset KV pointer, shorter nPos)', async (t) => {
  // 16 heads x head_dim 16: 2*16*nPos*16 multiply-adds reach the pool's split threshold (65536 per thread) at nPos 256.
  const cfg = { ...MISTRAL, hidden_size: 32, num_attention_heads: 16, num_key_value_heads: 4, head_dim: 16, sliding_window: 260 };
  await checkFamily(t, 'mistral window 260 (threads split attention)', cfg, 300, { slidingWindow: 260, headDim: 16 });
});

test('qwen2 use_sliding_window: the window on layers >= max_window_layers only', async (t) => {
  const cfg = { ...QWEN2, use_sliding_window: true, sliding_window: 4, max_window_layers: 1 };
  await checkFamily(t, 'qwen2 window 4 from layer 1', cfg, 16, { slidingWindow: 4, slidingWindowStart: 1 });
});

// ---------------------------------------------------------------------------
// Refusals, storage, versions

async function rejects(t: ExecutionContext, cfg: Config, ...parts: string[]): Promise<void> {
  const dir = await writeFolder(t, cfg, randomTensors(cfg, 2));
  const e = await t.throwsAsync(openCheckpoint(dir), { instanceOf: ConvertError });
  for (const s of parts) t.true(e?.message.includes(s), `"${e?.message}" should mention ${s}`);
  t.false(e?.message.includes('\n'), 'one line');
}

test('refused at convert time, naming the key and value', async (t) => {
  await rejects(t, { ...LLAMA, rope_scaling: { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 2048 } }, 'config.json', 'rope_scaling', '"yarn"');
  await rejects(t, { ...LLAMA, rope_scaling: { rope_type: 'longrope', short_factor: [1, 1, 1, 1], long_factor: [2, 2, 2, 2] } }, 'rope_scaling', '"longrope"');
  await rejects(t, { ...PHI3, rope_scaling: { type: 'yarn', short_factor: [1, 1, 1], long_factor: [2, 2, 2] } }, 'rope_scaling', '"yarn"', 'longrope');
  await rejects(t, { ...PHI3, rope_scaling: { type: 'linear', factor: 2.0 } }, 'rope_scaling', '"linear"');
  await rejects(t, { ...PHI3, rope_scaling: { type: 'longrope', short_factor: [1, 1], long_factor: [2, 2, 2] } }, 'rope_scaling', 'short_factor', '3');
  await rejects(t, { ...LLAMA, rope_scaling: { rope_type: 'llama3', factor: 8.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 } }, 'rope_scaling', 'low_freq_factor');
  await rejects(t, { ...LLAMA, rope_scaling: { rope_type: 'linear' } }, 'rope_scaling', 'factor');
  await rejects(t, { ...PHI3, partial_rotary_factor: 0.75 }, 'partial_rotary_factor', '0.75');
  await rejects(t, { ...QWEN2, use_sliding_window: true, sliding_window: 4, layer_types: ['sliding_attention', 'full_attention'] }, 'layer_types', 'last');
  await rejects(t, { ...QWEN2, model_type: 'gemma2' }, 'model_type', 'gemma2', 'qwen3', 'phi3');
});

test('storage: the new arch keys make a version-2 file; plain models stay version 1; bad values are FormatErrors', async (t) => {
  const cfg = { ...QWEN3, use_sliding_window: true, sliding_window: 3, max_window_layers: 1, rope_scaling: { rope_type: 'linear', factor: 2.0 } };
  const bytes = await convert(await writeFolder(t, cfg, randomTensors(cfg, 3)));
  t.is(new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true), 2);
  const h = (await openFlm(new MemorySource(bytes))).header;
  t.like(h.arch, { qkNorm: true, slidingWindow: 3, slidingWindowStart: 1, ropeScaling: { type: 'linear', factor: 2 } });
  t.is(h.version, 2);
  const plain = await convert(await writeFolder(t, LLAMA, randomTensors(LLAMA, 4)));
  t.is(new DataView(plain.buffer, plain.byteOffset).getUint32(8, true), 1);
  t.is((await openFlm(new MemorySource(plain))).header.arch.ropeScaling, undefined);

  const bad = (edit: (a: Record<string, unknown>) => void, version = 2) => {
    const raw = structuredClone(h) as unknown as Record<string, unknown>;
    raw['version'] = version;
    edit(raw['arch'] as Record<string, unknown>);
    return () => validateHeader(raw, bytes.length);
  };
  t.notThrows(bad(() => {}));
  t.throws(bad(() => {}, 1), { instanceOf: FormatError, message: /arch\.ropeScaling.*version 2/ });
  t.throws(bad((a) => (a['ropeScaling'] = { type: 'yarn', factor: 2 })), { instanceOf: FormatError, message: /ropeScaling\.type/ });
  t.throws(bad((a) => (a['ropeScaling'] = { type: 'linear', factor: 0.5 })), { instanceOf: FormatError, message: /ropeScaling\.factor/ });
  t.throws(bad((a) => (a['ropeScaling'] = { type: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1, originalMaxPos: 8192 })), { instanceOf: FormatError, message: /highFreqFactor/ });
  t.throws(bad((a) => (a['ropeScaling'] = { type: 'dynamic', factor: 2 })), { instanceOf: FormatError, message: /originalMaxPos/ });
  const longrope = { type: 'longrope', shortFactor: [1, 1, 1, 1], longFactor: [2, 2, 2, 2], originalMaxPos: 8, attentionFactor: 1.2 };
  t.notThrows(bad((a) => (a['ropeScaling'] = longrope)));
  t.throws(bad((a) => (a['ropeScaling'] = { ...longrope, longFactor: [2, 2, 2] })), { instanceOf: FormatError, message: /headDim \/ 2 = 4/ });
  t.throws(bad((a) => (a['ropeScaling'] = { ...longrope, shortFactor: [1, 0, 1, 1] })), { instanceOf: FormatError, message: /shortFactor\[1\]/ });
  t.throws(bad((a) => (a['ropeScaling'] = { ...longrope, attentionFactor: -1 })), { instanceOf: FormatError, message: /attentionFactor/ });
  t.throws(bad((a) => (a['slidingWindow'] = 0)), { instanceOf: FormatError, message: /slidingWindow/ });
  t.throws(bad((a) => (a['slidingWindowStart'] = 2)), { instanceOf: FormatError, message: /slidingWindowStart/ });
  t.throws(bad((a) => (a['qkNorm'] = 'yes')), { instanceOf: FormatError, message: /qkNorm/ });
  const noNorm = structuredClone(h) as unknown as { tensors: { name: string }[] };
  noNorm.tensors = noNorm.tensors.filter((x) => x.name !== 'layers.1.k_norm');
  t.throws(() => validateHeader(noNorm, bytes.length), { instanceOf: FormatError, message: /layers\.1\.k_norm/ });
});

test('flashlm inspect names rope scaling, the sliding window and q/k norm', async (t) => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const main = new URL('../src/cli/main.ts', import.meta.url).pathname;
  const inspect = async (cfg: Config, name: string) => {
    const file = path.join(await writeFolder(t, cfg, randomTensors(cfg, 5)), `${name}.flm`);
    await writeFile(file, await convert(path.dirname(file)));
    const script = `import(${JSON.stringify(main)}).then((m) => m.main(['node', 'flashlm', 'inspect', ${JSON.stringify(file)}]))`;
    return (await promisify(execFile)(process.execPath, ['--import=tsx', '-e', script])).stdout;
  };
  t.regex(await inspect({ ...LLAMA, rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 8.0, original_max_position_embeddings: 256, rope_type: 'llama3' } }, 'llama3'), /^attention +rope scaling llama3 x8 \(original context 256\)$/m);
  t.regex(await inspect(MISTRAL, 'mistral'), /^attention +sliding window 5$/m);
  t.regex(await inspect(QWEN3, 'qwen3'), /^attention +per-head RMSNorm on q and k$/m);
  t.notRegex(await inspect(LLAMA, 'llama'), /^attention /m);
});
