/**
 * The transformer forward pass for OPT and Llama-family models over a KV
 * cache: one token at a time (decoding), or a block of prompt tokens at once
 * (prefill), where every weight matrix is applied to the whole block in one
 * batched kernel call. Both give bit-identical results. All math runs in the
 * WebAssembly kernels on arena pointers; this file only sequences calls (as
 * llama2.c's forward()).
 */
import { FormatError } from '../errors.js';
import type { SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { ArchConfig } from '../format/types.js';
import { jobGroup, type JobGroup } from '../kernels/pool.js';
import type { Kernels } from '../kernels/types.js';
import { CountingAllocator, type Allocator, type Arena } from './arena.js';
import type { FfnProvider } from './ffn.js';
import { positionQK, ropeAttentionFactor, ropeFrequencies, ropeVaries } from './rope.js';
import { matmul, matvec, placeTensor, type Tensor } from './tensor.js';

/** The sections read once at open: everything but the FFN neurons. */
export function residentSections(file: FlmFile): SectionEntry[] {
  return file.header.sections.filter((s) => s.name === 'resident' || s.name === 'predictor');
}

/** Prompt tokens per batched forward pass, unless the caller says otherwise. */
export const DEFAULT_BATCH = 32;

/** Widest input any kernel call gets: a tensor's columns or the model width, or ffnDim for an FFN in the rows layout (its down matrix: engine/ffn.ts rowsLayout). */
export function maxColumns(file: FlmFile, rowsFfn = false): number {
  const a = file.header.arch;
  return Math.max(a.dModel, a.embedDim, rowsFfn ? a.ffnDim : 0, ...file.header.tensors.map((t) => t.shape[t.shape.length - 1]!));
}

/**
 * The working memory: activations for a block of `batch` tokens (row t of a
 * buffer at ptr + t * its row bytes), scratch, and the KV cache. The planner
 * sizes it with a CountingAllocator and the engine places it with the arena,
 * through this one function.
 */
/** The KV cache's element type: f32, or f16 (half the memory, rows rounded to nearest even). */
export type KvDtype = 'f32' | 'f16';

export function layoutWorking(al: Allocator, a: ArchConfig, contextLength: number, maxCols: number, batch: number, k: Kernels, kvDtype: KvDtype = 'f32') {
  const qDim = a.nHeads * a.headDim;
  const kvDim = a.nKvHeads * a.headDim;
  const f16 = kvDtype === 'f16';
  const wide = Math.max(a.dModel, a.embedDim, qDim);
  const rows = (name: string, n: number) => al.alloc(name, batch * n * 4);
  return {
    batch,
    /** Row bytes of x, xb, xb2, tmp, emb; q's rows are qDim floats. */
    ld: wide * 4,
    x: rows('x', wide),
    xb: rows('xb', wide),
    xb2: rows('xb2', wide),
    q: rows('q', qDim),
    tmp: rows('tmp', wide),
    emb: rows('emb', wide),
    att: al.alloc('attention scores', contextLength * 4),
    cos: rows('rope cos', a.headDim / 2),
    sin: rows('rope sin', a.headDim / 2),
    logits: al.alloc('logits', a.vocabSize * 4),
    i8scratch: al.alloc('int8 scratch', Math.max(16, k.matvec_i8_scratch_bytes(maxCols))),
    batchScratch: batch > 1 ? al.alloc('batch scratch', k.batch_scratch_bytes(batch, maxCols)) : 0,
    ffnActs: batch > 1 ? rows('ffn activations', a.ffnDim) : 0,
    /**
     * Per layer K then V, each head-major: kv head g's contextLength rows of headDim
     * values, so attention reads a head's positions as one stream (attention's headBytes).
     */
    kv: al.alloc('kv cache', 2 * a.nLayers * contextLength * kvDim * (f16 ? 2 : 4)),
    /** The block's K and V rows in f32 (projected, normed, rotated), before they go to their heads' cache rows. */
    kRows: rows('k rows', kvDim),
    vRows: rows('v rows', kvDim),
  };
}
type Working = ReturnType<typeof layoutWorking>;

/** One layer's tensors, looked up once at load. */
interface LayerTensors {
  attnNorm: Tensor;
  attnNormBias?: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  wo: Tensor;
  bq?: Tensor;
  bk?: Tensor;
  bv?: Tensor;
  bo?: Tensor;
  /** Per-head RMSNorm weights on q and k (qkNorm). */
  qNorm?: Tensor;
  kNorm?: Tensor;
  /** Positions a query attends back over (sliding-window layers), else Infinity. */
  window: number;
  ffnNorm: Tensor;
  ffnNormBias?: Tensor;
  downBias?: Tensor;
}

export class Transformer {
  readonly arch: ArchConfig;
  readonly contextLength: number;
  /** Most tokens one forwardBlock call takes. */
  readonly batch: number;
  readonly logits: number;
  readonly logitsView: Float32Array;
  private readonly mem: Uint8Array;
  private readonly w: Working;
  private readonly kvDim: number;
  private readonly layers: LayerTensors[];
  private readonly embed: Tensor;
  private readonly posEmbed?: Tensor;
  private readonly projIn?: Tensor;
  private readonly projOut?: Tensor;
  private readonly finalNorm?: Tensor;
  private readonly finalNormBias?: Tensor;
  private readonly head: Tensor;
  private readonly ropeFreqs: Float32Array | undefined;
  private readonly cosView: Float32Array | undefined;
  private readonly sinView: Float32Array | undefined;
  /** LongRoPE: the token at each cached position, and whether the cache holds long-factor positions (forwardBlock). */
  private readonly history: Int32Array | undefined;
  private cacheLong = false;
  /** Threads: collects independent kernel calls (q/k/v, a block's attention rows) into one hand-off (null: one thread). */
  private readonly job: JobGroup | null;

  private constructor(
    readonly file: FlmFile,
    private readonly k: Kernels,
    readonly arena: Arena,
    /** Arena address of each loaded non-FFN section ('resident', 'predictor'). */
    readonly sectionPtrs: ReadonlyMap<string, number>,
    contextLength: number,
    batch: number,
    private readonly ffn: FfnProvider,
    /** The KV cache's element type. */
    readonly kvDtype: KvDtype,
  ) {
    const a = file.header.arch;
    this.arch = a;
    this.contextLength = contextLength;
    this.mem = new Uint8Array(arena.memory.buffer);
    const t = new Map<string, Tensor>();
    for (const e of file.header.tensors) t.set(e.name, placeTensor(file, arena, sectionPtrs, e));
    const need = (name: string): Tensor => {
      const x = t.get(name);
      if (!x) throw new FormatError(`model has no tensor ${name}`);
      return x;
    };
    this.layers = Array.from({ length: a.nLayers }, (_, l) => {
      const p = `layers.${l}.`;
      return {
        attnNorm: need(p + 'attn_norm.weight'),
        attnNormBias: t.get(p + 'attn_norm.bias'),
        wq: need(p + 'wq'), wk: need(p + 'wk'), wv: need(p + 'wv'), wo: need(p + 'wo'),
        bq: t.get(p + 'bq'), bk: t.get(p + 'bk'), bv: t.get(p + 'bv'), bo: t.get(p + 'bo'),
        qNorm: a.qkNorm ? need(p + 'q_norm') : undefined,
        kNorm: a.qkNorm ? need(p + 'k_norm') : undefined,
        window: a.slidingWindow !== undefined && l >= (a.slidingWindowStart ?? 0) ? a.slidingWindow : Infinity,
        ffnNorm: need(p + 'ffn_norm.weight'),
        ffnNormBias: t.get(p + 'ffn_norm.bias'),
        downBias: t.get(p + 'ffn_down_bias'),
      };
    });
    this.embed = need('tok_embeddings');
    this.posEmbed = a.positions === 'learned' ? need('pos_embeddings') : undefined;
    this.projIn = t.get('project_in');
    this.projOut = t.get('project_out');
    this.finalNorm = t.get('final_norm.weight');
    this.finalNormBias = t.get('final_norm.bias');
    this.head = t.get('lm_head') ?? this.embed;
    this.kvDim = a.nKvHeads * a.headDim;
    this.job = jobGroup(k);
    this.batch = ffn.runBlock ? batch : 1;
    this.w = layoutWorking(arena, a, contextLength, maxColumns(file, ffn.rowsLayout === true), this.batch, k, kvDtype);
    this.logits = this.w.logits;
    this.logitsView = arena.f32(this.logits, a.vocabSize);
    if (a.positions === 'rope') {
      // f32 arithmetic throughout, as llama2.c and PyTorch compute the tables
      this.ropeFreqs = ropeFrequencies(a);
      this.cosView = arena.f32(this.w.cos, this.batch * (a.headDim / 2));
      this.sinView = arena.f32(this.w.sin, this.batch * (a.headDim / 2));
      if (a.ropeScaling?.type === 'longrope') this.history = new Int32Array(contextLength);
    }
  }

  /**
   * Reads the resident (and predictor) sections into the arena and lays out
   * activations and the KV cache; the FFN provider is made by the caller
   * from what is left. `batch` > 1 enables block prefill when the provider
   * can run a block (dense only).
   */
  static async load(file: FlmFile, k: Kernels, arena: Arena, contextLength: number, makeFfn: (sections: ReadonlyMap<string, number>) => Promise<FfnProvider>, batch = 1, onBytes?: (bytes: number) => void, kvDtype: KvDtype = 'f32'): Promise<Transformer> {
    const sectionPtrs = new Map<string, number>();
    for (const s of residentSections(file)) {
      // Page-aligned, so O_DIRECT sources read straight into the arena.
      const ptr = arena.alloc(`${s.name} weights`, s.length, 4096);
      await file.readSection(s, arena.u8(ptr, s.length), 0, file.source.hints, onBytes);
      sectionPtrs.set(s.name, ptr);
    }
    const ffn = await makeFfn(sectionPtrs);
    return new Transformer(file, k, arena, sectionPtrs, contextLength, batch, ffn, kvDtype);
  }

  /** Whether every f16 tensor it computes with holds only finite values (Kernels.f16_special). */
  f16Finite(): boolean {
    return this.file.header.tensors.every((e) => {
      if (e.dtype !== 'f16') return true;
      const w = placeTensor(this.file, this.arena, this.sectionPtrs, e);
      return this.k.f16_special(w.ptr, 2 * w.cols, w.rows, w.cols) === 0;
    });
  }

  /** Arena bytes of the working memory (layoutWorking) at a context length and batch; rowsFfn: for a ResidentFfn in the rows layout. */
  static workingBytes(file: FlmFile, contextLength: number, batch: number, k: Kernels, kvDtype: KvDtype = 'f32', rowsFfn = false): number {
    const c = new CountingAllocator();
    layoutWorking(c, file.header.arch, contextLength, maxColumns(file, rowsFfn), batch, k, kvDtype);
    return c.bytes;
  }

  /** out[t] = W x[t] (+ bias) for T tokens; one token takes the matvec kernels. */
  private mm(out: number, ldo: number, w: Tensor, x: number, ldx: number, T: number, bias?: Tensor): void {
    if (T === 1) matvec(this.k, out, w, x, bias ? bias.ptr : 0, this.w.i8scratch);
    else matmul(this.k, out, ldo, w, x, ldx, bias ? bias.ptr : 0, T, this.w.batchScratch);
  }

  /** dst[cols] = row r of an embedding table, as f32. */
  private row(w: Tensor, r: number, dst: number): void {
    if (w.dtype === 'f32') this.mem.copyWithin(dst, w.ptr + r * w.cols * 4, w.ptr + (r + 1) * w.cols * 4);
    else if (w.dtype === 'f16') this.k.dequant_f16(dst, w.ptr + r * w.cols * 2, w.cols);
    else if (w.dtype === 'q8') this.k.dequant_q8(dst, w.ptr + r * w.cols, w.scales + r * Math.ceil(w.cols / 32) * 4, w.cols);
    else if (w.dtype === 'q4') this.k.dequant_q4(dst, w.ptr + r * Math.ceil(w.cols / 32) * 16, w.scales + r * Math.ceil(w.cols / 32) * 2, w.cols);
    else this.k.dequant_i8(dst, w.ptr + r * w.cols, w.cols, w.scaleView![r]!);
  }

  /** Norm of T rows (ld bytes apart), in place allowed. */
  private norm(out: number, x: number, T: number, w: Tensor, bias: Tensor | undefined): void {
    const a = this.arch;
    const ld = this.w.ld;
    for (let t = 0; t < T; t++) {
      if (a.norm === 'layernorm') this.k.layernorm(out + t * ld, x + t * ld, w.ptr, bias?.ptr ?? 0, a.dModel, a.normEps);
      else this.k.rmsnorm(out + t * ld, x + t * ld, w.ptr, a.dModel, a.normEps);
    }
  }

  /** x[t] += y[t] over T rows of dModel. */
  private addRows(x: number, y: number, T: number): void {
    const ld = this.w.ld;
    for (let t = 0; t < T; t++) this.k.add(x + t * ld, x + t * ld, y + t * ld, this.arch.dModel);
  }

  /**
   * Calls f with an FFN input (dModel f32 of a fixed, model-scale pattern, in
   * the working rows) and an output row: for timing the FFN kernels at open
   * (chooseFfnTouch). Only between forward passes: it overwrites working rows.
   */
  withFfnInput<T>(f: (x: number, out: number) => T): T {
    const w = this.w, d = this.arch.dModel;
    const x = new Float32Array(this.k.memory.buffer, w.xb, d);
    for (let i = 0; i < d; i++) x[i] = Math.sin(i * 0.7) * 0.5; // ~ a normed hidden state: no zeros, no NaN
    return f(w.xb, w.tmp);
  }

  /** Runs one token at `pos` (0-based, < contextLength); returns the logits pointer. */
  forward(token: number, pos: number): Promise<number> | number {
    return this.forwardBlock([token], pos, 0, 1);
  }

  /**
   * Runs tokens[from .. from+T) at positions pos .. pos+T-1 (T <= batch) and
   * returns the logits pointer of the last one. Synchronous unless the FFN
   * provider reads from a source (streaming strategies).
   */
  forwardBlock(tokens: ArrayLike<number>, pos: number, from = 0, T = tokens.length - from): Promise<number> | number {
    const a = this.arch;
    if (!(T >= 1 && T <= this.batch)) throw new RangeError(`a block holds 1..${this.batch} tokens, got ${T}`);
    if (pos + T > this.contextLength) throw new RangeError(`position ${pos + T - 1} is past the context length ${this.contextLength}`);
    for (let t = 0; t < T; t++) {
      const token = tokens[from + t]!;
      if (!(token >= 0 && token < a.vocabSize)) throw new RangeError(`token ${token} outside the vocabulary`);
    }
    const rs = a.ropeScaling;
    if (this.history && rs?.type === 'longrope') {
      // As Phi3ForCausalLM generates: short factors while the sequence fits originalMaxPos, long ones for every
      // position once it is longer; when that switches, the cached positions are recomputed (its
      // prepare_inputs_for_generation drops the cache), so any block split gives the same logits.
      for (let t = 0; t < T; t++) this.history[pos + t] = tokens[from + t]!;
      const long = pos + T > rs.originalMaxPos;
      const switched = pos > 0 && long !== this.cacheLong;
      this.cacheLong = long;
      if (switched) {
        const replayed = this.replay(0, pos);
        if (replayed) return replayed.then(() => this.block(tokens, pos, from, T));
      }
    }
    return this.block(tokens, pos, from, T);
  }

  /** Recomputes the cache at positions p..end-1 from the token history (LongRoPE's switch). */
  private replay(p: number, end: number): Promise<void> | void {
    while (p < end) {
      const T = Math.min(this.batch, end - p);
      const r = this.block(this.history!, p, p, T);
      p += T;
      if (typeof r !== 'number') {
        const next = p;
        return r.then(() => this.replay(next, end));
      }
    }
  }

  /** forwardBlock after its checks. */
  private block(tokens: ArrayLike<number>, pos: number, from: number, T: number): Promise<number> | number {
    const a = this.arch;
    const w = this.w;
    const ld = w.ld;
    // Embedding (+ projection for OPT-350m) and learned positions, or the rope tables.
    for (let t = 0; t < T; t++) this.row(this.embed, tokens[from + t]!, (this.projIn ? w.emb : w.x) + t * ld);
    if (this.projIn) this.mm(w.x, ld, this.projIn, w.emb, ld, T);
    if (this.posEmbed) {
      for (let t = 0; t < T; t++) {
        this.row(this.posEmbed, pos + t + (a.posOffset ?? 0), w.tmp);
        this.k.add(w.x + t * ld, w.x + t * ld, w.tmp, a.dModel);
      }
    } else {
      const half = a.headDim / 2;
      const varies = ropeVaries(a);
      const mscale = ropeAttentionFactor(a);
      for (let t = 0; t < T; t++) {
        // Dynamic NTK: each position keeps the frequencies Hugging Face gives it when decoding it (seq_len = pos + 1);
        // LongRoPE: the cache's short or long factors.
        const seqLen = a.ropeScaling?.type === 'longrope' ? (this.cacheLong ? a.ropeScaling.originalMaxPos + 1 : 0) : pos + t + 1;
        const freqs = varies ? ropeFrequencies(a, seqLen) : this.ropeFreqs!;
        for (let i = 0; i < half; i++) {
          const v = Math.fround((pos + t) * freqs[i]!);
          // LongRoPE scales cos and sin (so q and k) by its attention factor, in f32 as PyTorch.
          this.cosView![t * half + i] = mscale === 1 ? Math.cos(v) : Math.fround(Math.fround(Math.cos(v)) * mscale);
          this.sinView![t * half + i] = mscale === 1 ? Math.sin(v) : Math.fround(Math.fround(Math.sin(v)) * mscale);
        }
      }
    }
    return this.layersFrom(0, pos, T);
  }

  /** Layers l.. of the current block; awaits only when the FFN provider returns a promise. */
  private layersFrom(l0: number, pos: number, T: number): Promise<number> | number {
    const a = this.arch;
    const k = this.k;
    const w = this.w;
    const ld = w.ld;
    const qDim = a.nHeads * a.headDim;
    const f16 = this.kvDtype === 'f16';
    const elt = f16 ? 2 : 4;
    const posBytes = a.headDim * elt; // one position of one head in the (head-major) cache
    const headBytes = this.contextLength * posBytes;
    const rowBytes = this.kvDim * 4;
    const scale = Math.fround(1 / Math.sqrt(a.headDim));
    const layerKv = a.nKvHeads * headBytes;
    const ropeBytes = (a.headDim / 2) * 4;
    for (let l = l0; l < a.nLayers; l++) {
      const L = this.layers[l]!;
      // Attention block.
      let xin = w.x;
      if (a.preNorm) {
        this.norm(w.xb, w.x, T, L.attnNorm, L.attnNormBias);
        xin = w.xb;
      }
      const kBase = w.kv + 2 * l * layerKv;
      const vBase = kBase + layerKv;
      // K and V rows of the block go through f32 rows, then each head's part to that head's cache rows.
      // q, k and v read only xin: one job on the threads.
      this.job?.begin();
      try {
        this.mm(w.q, qDim * 4, L.wq, xin, ld, T, L.bq);
        this.mm(w.kRows, rowBytes, L.wk, xin, ld, T, L.bk);
        this.mm(w.vRows, rowBytes, L.wv, xin, ld, T, L.bv);
      } finally {
        this.job?.end();
      }
      for (let t = 0; t < T; t++) {
        const kRow = w.kRows + t * rowBytes, vRow = w.vRows + t * rowBytes;
        positionQK(k, a, L.qNorm, L.kNorm, w.q + t * qDim * 4, kRow, w.cos + t * ropeBytes, w.sin + t * ropeBytes);
        const at = (pos + t) * posBytes;
        for (let g = 0; g < a.nKvHeads; g++) {
          const src = g * a.headDim * 4, dst = g * headBytes + at;
          if (f16) {
            k.encode_f16(kBase + dst, kRow + src, a.headDim);
            k.encode_f16(vBase + dst, vRow + src, a.headDim);
          } else {
            this.mem.copyWithin(kBase + dst, kRow + src, kRow + src + posBytes);
            this.mem.copyWithin(vBase + dst, vRow + src, vRow + src + posBytes);
          }
        }
      }
      // Causal: token t sees positions 0 .. pos+t (the block's later rows are not read);
      // with a sliding window only the last L.window of them: the cache from `first` on.
      // The block's rows are independent (the cache holds all of them now): one job.
      this.job?.begin();
      try {
        for (let t = 0; t < T; t++) {
          const seen = pos + t + 1;
          const first = Math.max(0, seen - L.window);
          k.attention(w.xb2 + t * ld, w.q + t * qDim * 4, kBase + first * posBytes, vBase + first * posBytes, a.nHeads, a.nKvHeads, a.headDim, seen - first, scale, w.att, f16 ? 1 : 0, headBytes);
        }
      } finally {
        this.job?.end();
      }
      this.mm(w.tmp, ld, L.wo, w.xb2, ld, T, L.bo);
      this.addRows(w.x, w.tmp, T);
      if (!a.preNorm) this.norm(w.x, w.x, T, L.attnNorm, L.attnNormBias);

      // FFN block.
      xin = w.x;
      if (a.preNorm) {
        this.norm(w.xb, w.x, T, L.ffnNorm, L.ffnNormBias);
        xin = w.xb;
      }
      let pending: Promise<void> | void = undefined;
      if (T === 1) pending = this.ffn.run(l, xin, w.tmp);
      else pending = this.ffn.runBlock!(l, xin, ld, T, w.tmp, ld, w.ffnActs, w.batchScratch);
      if (pending) return pending.then(() => this.afterFfn(l, pos, T));
      this.afterFfn(l, pos, T, true);
    }
    return this.finish(T);
  }

  /** The FFN block's residual (and post-norm) for layer l; continues with the next layer unless `inline`. */
  private afterFfn(l: number, pos: number, T: number, inline: true): void;
  private afterFfn(l: number, pos: number, T: number): Promise<number> | number;
  private afterFfn(l: number, pos: number, T: number, inline = false): Promise<number> | number | void {
    const a = this.arch;
    const w = this.w;
    const L = this.layers[l]!;
    if (L.downBias) for (let t = 0; t < T; t++) this.k.add(w.tmp + t * w.ld, w.tmp + t * w.ld, L.downBias.ptr, a.dModel);
    this.addRows(w.x, w.tmp, T);
    if (!a.preNorm) this.norm(w.x, w.x, T, L.ffnNorm, L.ffnNormBias);
    if (!inline) return this.layersFrom(l + 1, pos, T);
  }

  /** Logits of the block's last token. */
  private finish(T: number): number {
    const w = this.w;
    const last = (T - 1) * w.ld;
    let head = w.x + last;
    if (this.finalNorm) {
      this.norm(w.xb + last, head, 1, this.finalNorm, this.finalNormBias);
      head = w.xb + last;
    }
    if (this.projOut) {
      this.mm(w.emb, w.ld, this.projOut, head, w.ld, 1);
      head = w.emb;
    }
    this.mm(this.logits, 0, this.head, head, w.ld, 1);
    return this.logits;
  }
}
