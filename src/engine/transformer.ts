/**
 * The transformer forward pass for OPT and Llama-family models, one token at
 * a time over a KV cache. All math runs in the WebAssembly kernels on arena
 * pointers; this file only sequences calls (as llama2.c's forward()).
 */
import { FormatError } from '../errors.js';
import type { SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { ArchConfig } from '../format/types.js';
import type { Kernels } from '../kernels/types.js';
import type { Arena } from './arena.js';
import type { FfnProvider } from './ffn.js';
import { matvec, placeTensor, type Tensor } from './tensor.js';

/** The sections read once at open: everything but the FFN neurons. */
export function residentSections(file: FlmFile): SectionEntry[] {
  return file.header.sections.filter((s) => s.name === 'resident' || s.name === 'predictor');
}

export class Transformer {
  readonly arch: ArchConfig;
  readonly contextLength: number;
  private readonly t = new Map<string, Tensor>();
  private readonly mem: Uint8Array;
  // activations
  private readonly x: number;
  private readonly xb: number;
  private readonly xb2: number;
  private readonly q: number;
  private readonly tmp: number;
  private readonly emb: number;
  private readonly att: number;
  private readonly cos: number;
  private readonly sin: number;
  private readonly i8scratch: number;
  readonly logits: number;
  readonly logitsView: Float32Array;
  private readonly kv: number;
  private readonly kvDim: number;
  private readonly ropeFreqs: Float32Array | undefined;
  private readonly cosView: Float32Array | undefined;
  private readonly sinView: Float32Array | undefined;

  private constructor(
    readonly file: FlmFile,
    private readonly k: Kernels,
    readonly arena: Arena,
    /** Arena address of each loaded non-FFN section ('resident', 'predictor'). */
    readonly sectionPtrs: ReadonlyMap<string, number>,
    contextLength: number,
    private readonly ffn: FfnProvider,
  ) {
    const a = file.header.arch;
    this.arch = a;
    this.contextLength = contextLength;
    this.mem = new Uint8Array(arena.memory.buffer);
    for (const e of file.header.tensors) this.t.set(e.name, placeTensor(file, arena, sectionPtrs, e));
    const qDim = a.nHeads * a.headDim;
    this.kvDim = a.nKvHeads * a.headDim;
    const wide = Math.max(a.dModel, a.embedDim, qDim);
    const f32 = (name: string, n: number) => arena.alloc(name, n * 4);
    this.x = f32('x', wide);
    this.xb = f32('xb', wide);
    this.xb2 = f32('xb2', wide);
    this.q = f32('q', qDim);
    this.tmp = f32('tmp', wide);
    this.emb = f32('emb', wide);
    this.att = f32('attention scores', contextLength);
    this.cos = f32('rope cos', a.headDim / 2);
    this.sin = f32('rope sin', a.headDim / 2);
    this.logits = f32('logits', a.vocabSize);
    this.logitsView = arena.f32(this.logits, a.vocabSize);
    const maxCols = Math.max(...[...this.t.values()].map((x) => x.cols));
    this.i8scratch = arena.alloc('int8 scratch', Math.max(16, k.matvec_i8_scratch_bytes(maxCols)));
    this.kv = arena.alloc('kv cache', 2 * a.nLayers * contextLength * this.kvDim * 4);
    if (a.positions === 'rope') {
      // f32 arithmetic throughout, as llama2.c and PyTorch compute the tables
      const theta = a.ropeTheta ?? 10000;
      this.ropeFreqs = new Float32Array(a.headDim / 2);
      for (let i = 0; i < a.headDim / 2; i++) {
        this.ropeFreqs[i] = Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / a.headDim))));
      }
      this.cosView = arena.f32(this.cos, a.headDim / 2);
      this.sinView = arena.f32(this.sin, a.headDim / 2);
    }
  }

  /**
   * Reads the resident (and predictor) sections into the arena and lays out
   * activations and the KV cache; the FFN provider is made by the caller
   * from what is left.
   */
  static async load(file: FlmFile, k: Kernels, arena: Arena, contextLength: number, makeFfn: (sections: ReadonlyMap<string, number>) => Promise<FfnProvider>): Promise<Transformer> {
    const sectionPtrs = new Map<string, number>();
    for (const s of residentSections(file)) {
      // Page-aligned, so O_DIRECT sources read straight into the arena.
      const ptr = arena.alloc(`${s.name} weights`, s.length, 4096);
      await file.readSection(s, arena.u8(ptr, s.length), 0, file.source.hints);
      sectionPtrs.set(s.name, ptr);
    }
    const ffn = await makeFfn(sectionPtrs);
    return new Transformer(file, k, arena, sectionPtrs, contextLength, ffn);
  }


  /** Arena bytes needed for activations and the KV cache at a context length. */
  static workingBytes(a: ArchConfig, contextLength: number, maxCols: number, k: Kernels): number {
    const wide = Math.max(a.dModel, a.embedDim, a.nHeads * a.headDim);
    const floats = 5 * wide + a.nHeads * a.headDim + contextLength + a.headDim + a.vocabSize;
    const kv = 2 * a.nLayers * contextLength * a.nKvHeads * a.headDim * 4;
    return floats * 4 + kv + k.matvec_i8_scratch_bytes(maxCols) + 16 * 64;
  }

  private tensor(name: string): Tensor {
    const t = this.t.get(name);
    if (!t) throw new FormatError(`model has no tensor ${name}`);
    return t;
  }

  private opt(name: string): Tensor | undefined {
    return this.t.get(name);
  }

  private mv(out: number, w: Tensor, x: number, bias?: Tensor): void {
    matvec(this.k, out, w, x, bias ? bias.ptr : 0, this.i8scratch);
  }

  /** dst[cols] = row r of an embedding table, as f32. */
  private row(w: Tensor, r: number, dst: number): void {
    if (w.dtype === 'f32') this.mem.copyWithin(dst, w.ptr + r * w.cols * 4, w.ptr + (r + 1) * w.cols * 4);
    else if (w.dtype === 'f16') this.k.dequant_f16(dst, w.ptr + r * w.cols * 2, w.cols);
    else this.k.dequant_i8(dst, w.ptr + r * w.cols, w.cols, w.scaleView![r]!);
  }

  private norm(out: number, x: number, prefix: string): void {
    const a = this.arch;
    const w = this.tensor(prefix + '.weight');
    if (a.norm === 'layernorm') this.k.layernorm(out, x, w.ptr, this.opt(prefix + '.bias')?.ptr ?? 0, a.dModel, a.normEps);
    else this.k.rmsnorm(out, x, w.ptr, a.dModel, a.normEps);
  }

  private rope(vec: number, heads: number): void {
    if (this.arch.ropeStyle === 'half') this.k.rope_half(vec, heads, this.arch.headDim, this.cos, this.sin);
    else this.k.rope_interleaved(vec, heads, this.arch.headDim, this.cos, this.sin);
  }

  /** Runs one token at `pos` (0-based, < contextLength); returns the logits pointer. */
  async forward(token: number, pos: number): Promise<number> {
    const a = this.arch;
    const k = this.k;
    const d = a.dModel;
    if (pos >= this.contextLength) throw new RangeError(`position ${pos} is past the context length ${this.contextLength}`);
    if (!(token >= 0 && token < a.vocabSize)) throw new RangeError(`token ${token} outside the vocabulary`);

    // Embedding (+ projection for OPT-350m) and learned positions.
    const projIn = this.opt('project_in');
    this.row(this.tensor('tok_embeddings'), token, projIn ? this.emb : this.x);
    if (projIn) this.mv(this.x, projIn, this.emb);
    if (a.positions === 'learned') {
      this.row(this.tensor('pos_embeddings'), pos + (a.posOffset ?? 0), this.tmp);
      k.add(this.x, this.x, this.tmp, d);
    } else {
      for (let i = 0; i < this.ropeFreqs!.length; i++) {
        const v = Math.fround(pos * this.ropeFreqs![i]!);
        this.cosView![i] = Math.cos(v);
        this.sinView![i] = Math.sin(v);
      }
    }

    const scale = Math.fround(1 / Math.sqrt(a.headDim));
    const layerKv = this.contextLength * this.kvDim * 4;
    for (let l = 0; l < a.nLayers; l++) {
      const p = `layers.${l}.`;
      // Attention block.
      let xin = this.x;
      if (a.preNorm) {
        this.norm(this.xb, this.x, p + 'attn_norm');
        xin = this.xb;
      }
      const kBase = this.kv + 2 * l * layerKv;
      const vBase = kBase + layerKv;
      const kRow = kBase + pos * this.kvDim * 4;
      const vRow = vBase + pos * this.kvDim * 4;
      this.mv(this.q, this.tensor(p + 'wq'), xin, this.opt(p + 'bq'));
      this.mv(kRow, this.tensor(p + 'wk'), xin, this.opt(p + 'bk'));
      this.mv(vRow, this.tensor(p + 'wv'), xin, this.opt(p + 'bv'));
      if (a.positions === 'rope') {
        this.rope(this.q, a.nHeads);
        this.rope(kRow, a.nKvHeads);
      }
      k.attention(this.xb2, this.q, kBase, vBase, a.nHeads, a.nKvHeads, a.headDim, pos + 1, scale, this.att);
      this.mv(this.tmp, this.tensor(p + 'wo'), this.xb2, this.opt(p + 'bo'));
      k.add(this.x, this.x, this.tmp, d);
      if (!a.preNorm) this.norm(this.x, this.x, p + 'attn_norm');

      // FFN block.
      xin = this.x;
      if (a.preNorm) {
        this.norm(this.xb, this.x, p + 'ffn_norm');
        xin = this.xb;
      }
      await this.ffn.run(l, xin, this.tmp);
      const downBias = this.opt(p + 'ffn_down_bias');
      if (downBias) k.add(this.tmp, this.tmp, downBias.ptr, d);
      k.add(this.x, this.x, this.tmp, d);
      if (!a.preNorm) this.norm(this.x, this.x, p + 'ffn_norm');
    }

    let head = this.x;
    if (this.opt('final_norm.weight')) {
      this.norm(this.xb, this.x, 'final_norm');
      head = this.xb;
    }
    const projOut = this.opt('project_out');
    if (projOut) {
      this.mv(this.emb, projOut, head);
      head = this.emb;
    }
    this.mv(this.logits, this.opt('lm_head') ?? this.tensor('tok_embeddings'), head);
    return this.logits;
  }
}
