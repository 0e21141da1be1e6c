/**
 * The oracle: the true FFN activations of a token. It measures the streaming
 * machinery and the predictor; it is not a way to save I/O. (Gated FFNs with
 * SiLU have no exact zeros: their true set is |silu(gate·x)| over the file's
 * gate threshold; relu-family gates have exact zeros.)
 *
 * Two ways to know them, outside the budget:
 *  - `copy`: a dense copy of the whole FFN in a memory of its own (fast; as
 *    big as the FFN: 8.6 GB for an OPT-6.7B shape at f16, more than wasm32's
 *    4 GiB);
 *  - `paged`: no copy: prepare() (which the streaming FFN awaits before it
 *    selects) reads the layer's records from the source (a local file:
 *    through the page cache) in chunks of 16 MiB into a small memory and
 *    runs the same kernel over them, chunk by chunk.
 * Both give the same activations bit for bit (the same kernel over the same
 * records, chunks cut where the kernel's neuron groups are). Their time is
 * reported apart from the strategy's (RunStats.oracle), so ms per token is
 * the strategy's own.
 */
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { Kernels } from '../kernels/types.js';
import { createArena, loadKernels } from '../kernels/load.js';
import { Arena, MAX_ARENA_BYTES, fmtBytes } from '../engine/arena.js';
import { ArgumentError } from '../errors.js';
import { ResidentFfn, exactZeros, gatedActArgs, runFfnKernel, type ActArgs } from '../engine/ffn.js';
import type { RunStats } from './stats.js';

export type OracleMode = 'copy' | 'paged';

/** Paged chunks hold a multiple of this many neurons. */
const PAGE_NEURONS = 64;

/** The oracle copies an FFN up to this size (outside the budget), and pages a bigger one. */
export const ORACLE_COPY_LIMIT = 1 << 30;

/** The oracle's mode for an FFN of `ffnBytes`: the one asked for, else copy up to the limit. */
export function oracleModeFor(ffnBytes: number, mode?: OracleMode, copyLimit = ORACLE_COPY_LIMIT): OracleMode {
  return mode ?? (ffnBytes <= copyLimit ? 'copy' : 'paged');
}

export interface OracleOptions {
  /** Default: `copy` when the FFN is at most `copyLimit` bytes, else `paged`. */
  mode?: OracleMode;
  /** Default ORACLE_COPY_LIMIT (1 GiB). */
  copyLimit?: number;
  /** Paged: bytes read and computed at once (default 16 MiB, at least 64 records). */
  chunkBytes?: number;
  /** Told each call's time and (exact-zero activations) active count. */
  stats?: RunStats;
}

export class Oracle {
  /** Paged: the layer whose activations `prepare` computed (and the input it had), -1: none. */
  private preparedLayer = -1;
  private readonly prepared: Float32Array;
  /** Gated without exact zeros (SiLU): prepare() computes the gate half too, for gateActivations(). */
  private readonly withGate: boolean;
  /** A view of the caller's arena, made once per buffer (ready() allocates nothing). */
  private callerView = new Float32Array(0);

  private constructor(
    private readonly dense: ResidentFfn | undefined,
    private readonly paged: PagedFfn | undefined,
    private readonly n: number,
    private readonly exact: boolean,
    private readonly x: number,
    private readonly out: number,
    private readonly h: number,
    private readonly view: Float32Array,
    /** Paged, withGate: the gate half, apart from the activations. */
    private readonly hg: number,
    private readonly gateView: Float32Array,
    /** The FFN input slot, as a view made once. */
    private readonly xView: Float32Array,
    private readonly stats: RunStats | undefined,
    gated: boolean,
  ) {
    this.prepared = new Float32Array(xView.length);
    this.withGate = gated && !exact;
  }

  static async create(file: FlmFile, wasm?: BufferSource | WebAssembly.Module | URL | string, options: OracleOptions = {}): Promise<Oracle> {
    const h = file.header;
    const { dModel: d, ffnDim: n } = h.arch;
    const ffnBytes = h.ffn.reduce((s, f) => s + file.section(f.section).length, 0);
    const mode = oracleModeFor(ffnBytes, options.mode, options.copyLimit);
    const f0 = h.ffn[0]!;
    const record = f0.parts.length * f0.partBytes;
    const chunk = Math.max(PAGE_NEURONS * record, Math.floor((options.chunkBytes ?? 16 << 20) / record) * record);
    const work = (2 * d + 2 * n) * 4 + (1 << 20);
    const bytes = (mode === 'copy' ? ffnBytes : chunk + 4096) + work;
    if (bytes > MAX_ARENA_BYTES) throw new ArgumentError(`the oracle cannot copy an FFN of ${fmtBytes(ffnBytes)} into a wasm32 memory (4 GiB at most): use the paged oracle (oracle: 'paged')`);
    const memory = createArena(bytes);
    const k = await loadKernels(memory, wasm);
    const arena = new Arena(memory, k.heap_base());
    file.useKernelHasher(k); // what is read is verified in place too
    const dense = mode === 'copy' ? await ResidentFfn.load(file, k, arena) : undefined;
    const paged = mode === 'paged' ? new PagedFfn(file, k, arena, arena.alloc('oracle chunk', chunk, 4096), chunk, gatedActArgs(h.arch)) : undefined;
    const x = arena.alloc('oracle x', d * 4);
    const out = arena.alloc('oracle out', d * 4);
    const hp = arena.alloc('oracle h', n * 4);
    const hg = arena.alloc('oracle gate', n * 4);
    return new Oracle(dense, paged, n, exactZeros(h.arch), x, out, hp, arena.f32(hp, n), hg, arena.f32(hg, n), arena.f32(x, d), options.stats, h.arch.activation === 'swiglu');
  }

  get mode(): OracleMode {
    return this.dense ? 'copy' : 'paged';
  }

  /** Reports a computation's time and, for exact-zero activations, its active count. */
  private report(t0: number, counted: boolean): void {
    if (!this.stats) return;
    let active = -1;
    if (counted && this.exact) {
      const v = this.view;
      active = 0;
      for (let j = 0; j < this.n; j++) if (v[j] !== 0) active++;
    }
    this.stats.oracle(performance.now() - t0, active, this.n);
  }

  /**
   * Whether activations()/gateActivations() can answer synchronously for this
   * layer and the d floats at byte offset `x` of `memory` (always with a copy;
   * paged: after prepare() for the same layer and input).
   */
  ready(layer: number, memory: WebAssembly.Memory, x: number): boolean {
    if (this.dense) return true;
    if (layer !== this.preparedLayer) return false;
    if (this.callerView.buffer !== memory.buffer) this.callerView = new Float32Array(memory.buffer);
    const v = this.callerView;
    const p = this.prepared;
    const at = x >>> 2;
    for (let i = 0; i < p.length; i++) if (v[at + i] !== p[i]) return false;
    return true;
  }

  /** Paged: computes the layer's activations (or gate half) for the d floats at `x` of `memory`, reading the layer from the source. */
  async prepare(layer: number, memory: WebAssembly.Memory, x: number): Promise<void> {
    if (!this.paged) return;
    const t0 = performance.now();
    const input = new Float32Array(memory.buffer, x, this.prepared.length);
    this.prepared.set(input);
    this.xView.set(input);
    this.preparedLayer = -1;
    await this.paged.run(layer, this.x, this.out, this.h);
    if (this.withGate) await this.paged.gate(layer, this.x, this.hg);
    this.preparedLayer = layer;
    this.report(t0, true);
  }

  private preparedFor(layer: number, x: Float32Array): boolean {
    if (layer !== this.preparedLayer) return false;
    const p = this.prepared;
    for (let i = 0; i < p.length; i++) if (x[i] !== p[i]) return false;
    return true;
  }

  /** The layer's n activations for FFN input `x` (a view, valid until the next call). */
  activations(layer: number, x: Float32Array): Float32Array {
    if (!this.dense) {
      if (!this.preparedFor(layer, x)) throw new Error(`internal: the paged oracle was not prepared for layer ${layer}`);
      return this.view;
    }
    const t0 = performance.now();
    this.xView.set(x);
    this.dense.run(layer, this.x, this.out, this.h);
    this.report(t0, true);
    return this.view;
  }

  /** Gated FFNs: the gate half of the activation of the layer's n neurons (a view, valid until the next call). */
  gateActivations(layer: number, x: Float32Array): Float32Array {
    if (!this.dense) {
      if (!this.withGate || !this.preparedFor(layer, x)) throw new Error(`internal: the paged oracle was not prepared for layer ${layer}`);
      return this.gateView;
    }
    const t0 = performance.now();
    this.xView.set(x);
    this.dense.gateActivations(layer, this.x, this.h);
    this.report(t0, false);
    return this.view;
  }
}

/**
 * The FFN read chunk by chunk from the source on every call: `chunk` bytes of
 * whole records (bundled: whole bundles; split: the parts it needs, each a
 * run of part records), verified, then the kernel over them.
 */
class PagedFfn {
  constructor(
    private readonly file: FlmFile,
    private readonly k: Kernels,
    private readonly arena: Arena,
    private readonly buf: number,
    private readonly chunk: number,
    private readonly act: ActArgs,
  ) {}

  /** Reads neurons [i0, i0 + m) of the parts `parts` (indices into f.parts) into buf; returns each part's pointer and the stride. */
  private async read(f: FfnEntry, s: SectionEntry, i0: number, m: number, parts: readonly number[]): Promise<{ ptrs: number[]; stride: number }> {
    const hints = this.file.source.hints;
    if (f.layout === 'bundled') {
      await this.file.readSection(s, this.arena.u8(this.buf, m * f.stride), i0, hints);
      return { ptrs: f.partOffsets.map((o) => this.buf + o), stride: f.stride };
    }
    const ptrs: number[] = [];
    let at = this.buf;
    for (const p of parts) {
      // Split: part p of neuron i is block p·N + i.
      await this.file.readSection(s, this.arena.u8(at, m * f.partBytes), p * f.neurons + i0, hints);
      ptrs[p] = at;
      at += m * f.partBytes;
    }
    // Parts not read (down) point at one that was: the kernel's output is discarded, only h is used.
    return { ptrs: f.parts.map((_, p) => ptrs[p] ?? ptrs[parts[0]!]!), stride: f.partBytes };
  }

  /**
   * Neurons per chunk when `parts` parts of each are read: a multiple of 64,
   * so that the kernels' neuron groups (and their tails) fall where they do
   * over the whole layer, and every neuron's sum runs in the same order.
   */
  private per(f: FfnEntry, parts: number): number {
    return Math.max(PAGE_NEURONS, Math.floor(this.chunk / (f.layout === 'bundled' ? f.stride : parts * f.partBytes) / PAGE_NEURONS) * PAGE_NEURONS);
  }

  async run(layer: number, x: number, out: number, h: number): Promise<void> {
    const f = this.file.header.ffn[layer]!;
    const s = this.file.section(f.section);
    // Activations need the up (and gate) parts only; a bundled read brings whole bundles anyway.
    const need = f.parts.map((name, p) => (name === 'down' ? -1 : p)).filter((p) => p >= 0);
    const per = this.per(f, need.length);
    for (let i0 = 0; i0 < f.neurons; i0 += per) {
      const m = Math.min(per, f.neurons - i0);
      const { ptrs, stride } = await this.read(f, s, i0, m, need);
      runFfnKernel(this.k, f, out, x, m, ptrs, stride, h + i0 * 4, this.act);
    }
  }

  async gate(layer: number, x: number, h: number): Promise<void> {
    const f = this.file.header.ffn[layer]!;
    const s = this.file.section(f.section);
    const g = f.parts.indexOf('gate');
    const per = this.per(f, 1);
    const k = this.k;
    const act = f.dtype === 'f32' ? k.gate_act_f32 : f.dtype === 'f16' ? k.gate_act_f16 : f.dtype === 'q8' ? k.gate_act_q8 : f.dtype === 'q4' ? k.gate_act_q4 : k.gate_act_i8;
    for (let i0 = 0; i0 < f.neurons; i0 += per) {
      const m = Math.min(per, f.neurons - i0);
      const { ptrs, stride } = await this.read(f, s, i0, m, [g]);
      act(h + i0 * 4, x, f.d, m, ptrs[g]!, stride, this.act.afn, this.act.athr);
    }
  }
}
