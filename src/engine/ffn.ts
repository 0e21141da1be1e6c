/**
 * FFN providers: where a layer's neuron records come from for one token.
 * The dense provider keeps every FFN section resident in the arena; the
 * streaming providers (sparse, windowed) implement the same interface.
 */
import { alignUp, type FfnEntry, type SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { ArchConfig, DType, GatedActivation } from '../format/types.js';
import type { Kernels } from '../kernels/types.js';
import type { Arena } from './arena.js';

export interface FfnProvider {
  /** out[dModel] = FFN_layer(x), without the down-projection bias. */
  run(layer: number, x: number, out: number): Promise<void> | void;
  /**
   * Optional: out[t] = FFN_layer(x[t]) for T tokens at once (rows ldx / ldo
   * bytes apart): the dense provider bit-identical to run(), the streaming
   * one reading the block's neurons once. `h` has T x ffnDim f32 for the
   * activations, `scratch` batch_scratch_bytes(T, dModel) bytes. Providers
   * without it get one token at a time.
   */
  runBlock?(layer: number, x: number, ldx: number, T: number, out: number, ldo: number, h: number, scratch: number): Promise<void> | void;
  /** True when layers run in the rows layout, whose batched down pass takes ffnDim columns (maxColumns). */
  readonly rowsLayout?: boolean;
}

/** Kernel codes of the gated activations (assembly/activation.ts ACT_*). */
export const GATED_ACT_CODES: Record<GatedActivation, number> = { silu: 0, relu: 1, fatrelu: 2, drelu: 3 };

/** The (afn, athr) pair every gated FFN kernel takes last. */
export interface ActArgs {
  afn: number;
  athr: number;
}

/** A gated model's activation as kernel arguments (files without arch.gatedAct: SiLU). */
export function gatedActArgs(arch: ArchConfig): ActArgs {
  const a = arch.gatedAct ?? 'silu';
  return { afn: GATED_ACT_CODES[a], athr: a === 'fatrelu' ? arch.gatedActThreshold ?? 0 : 0 };
}

/** True when the gated activation is exactly zero off its active set (relu family), so the oracle's active set is exact. */
export function exactZeros(arch: ArchConfig): boolean {
  return arch.activation === 'relu' || (arch.gatedAct ?? 'silu') !== 'silu';
}


/**
 * Runs the FFN kernel for `n` neuron records whose parts start at
 * `partPtrs` (in the entry's part order) and step by `stride`.
 * `hOut` (0 = none) receives the n activations; `act`: the model's gated activation (gatedActArgs), required so no caller runs SiLU by default.
 */
export function runFfnKernel(k: Kernels, f: FfnEntry, out: number, x: number, n: number, partPtrs: readonly number[], stride: number, hOut: number, act: ActArgs): void {
  if (f.parts.length === 2) {
    const [up, down] = partPtrs as [number, number];
    const bias = f.hasBias ? 1 : 0;
    if (f.dtype === 'f32') k.ffn_relu_f32(out, x, f.d, n, up, down, stride, bias, hOut);
    else if (f.dtype === 'f16') k.ffn_relu_f16(out, x, f.d, n, up, down, stride, bias, hOut);
    else if (f.dtype === 'q8') k.ffn_relu_q8(out, x, f.d, n, up, down, stride, bias, hOut);
    else if (f.dtype === 'q4') k.ffn_relu_q4(out, x, f.d, n, up, down, stride, bias, hOut);
    else k.ffn_relu_i8(out, x, f.d, n, up, down, stride, bias, hOut);
  } else {
    const [gate, up, down] = partPtrs as [number, number, number];
    const { afn, athr } = act;
    if (f.dtype === 'f32') k.ffn_swiglu_f32(out, x, f.d, n, gate, up, down, stride, hOut, afn, athr);
    else if (f.dtype === 'f16') k.ffn_swiglu_f16(out, x, f.d, n, gate, up, down, stride, hOut, afn, athr);
    else if (f.dtype === 'q8') k.ffn_swiglu_q8(out, x, f.d, n, gate, up, down, stride, hOut, afn, athr);
    else if (f.dtype === 'q4') k.ffn_swiglu_q4(out, x, f.d, n, gate, up, down, stride, hOut, afn, athr);
    else k.ffn_swiglu_i8(out, x, f.d, n, gate, up, down, stride, hOut, afn, athr);
  }
}

/** As runFfnKernel, for neurons whose part addresses are listed at `ptrs` (u32 [n][nParts]). */
export function runFfnPtrs(k: Kernels, f: FfnEntry, out: number, x: number, ptrs: number, n: number, hOut: number, act: ActArgs): void {
  if (f.parts.length === 2) {
    const bias = f.hasBias ? 1 : 0;
    if (f.dtype === 'f32') k.ffn_relu_f32_ptrs(out, x, f.d, ptrs, n, bias, hOut);
    else if (f.dtype === 'f16') k.ffn_relu_f16_ptrs(out, x, f.d, ptrs, n, bias, hOut);
    else if (f.dtype === 'q8') k.ffn_relu_q8_ptrs(out, x, f.d, ptrs, n, bias, hOut);
    else if (f.dtype === 'q4') k.ffn_relu_q4_ptrs(out, x, f.d, ptrs, n, bias, hOut);
    else k.ffn_relu_i8_ptrs(out, x, f.d, ptrs, n, bias, hOut);
  } else if (f.dtype === 'f32') k.ffn_swiglu_f32_ptrs(out, x, f.d, ptrs, n, hOut, act.afn, act.athr);
  else if (f.dtype === 'f16') k.ffn_swiglu_f16_ptrs(out, x, f.d, ptrs, n, hOut, act.afn, act.athr);
  else if (f.dtype === 'q8') k.ffn_swiglu_q8_ptrs(out, x, f.d, ptrs, n, hOut, act.afn, act.athr);
  else if (f.dtype === 'q4') k.ffn_swiglu_q4_ptrs(out, x, f.d, ptrs, n, hOut, act.afn, act.athr);
  else k.ffn_swiglu_i8_ptrs(out, x, f.d, ptrs, n, hOut, act.afn, act.athr);
}

/**
 * out[t] = FFN over `n` records (parts at `partPtrs`, stepping by `stride`)
 * for T tokens (rows ldx / ldo bytes apart), each bit-identical to
 * runFfnKernel on that token alone; `h`: T x n f32 activations, `scratch`:
 * batch_scratch_bytes(T, d) bytes.
 */
export function runFfnBatch(k: Kernels, f: FfnEntry, out: number, ldo: number, x: number, ldx: number, T: number, n: number, partPtrs: readonly number[], stride: number, h: number, scratch: number, act: ActArgs): void {
  if (f.parts.length === 2) {
    const bias = f.hasBias ? 1 : 0;
    const run = f.dtype === 'f32' ? k.ffn_relu_f32_batch : f.dtype === 'f16' ? k.ffn_relu_f16_batch : f.dtype === 'q8' ? k.ffn_relu_q8_batch : f.dtype === 'q4' ? k.ffn_relu_q4_batch : k.ffn_relu_i8_batch;
    run(out, ldo, x, ldx, T, f.d, n, partPtrs[0]!, partPtrs[1]!, stride, bias, h, scratch);
  } else {
    const run = f.dtype === 'f32' ? k.ffn_swiglu_f32_batch : f.dtype === 'f16' ? k.ffn_swiglu_f16_batch : f.dtype === 'q8' ? k.ffn_swiglu_q8_batch : f.dtype === 'q4' ? k.ffn_swiglu_q4_batch : k.ffn_swiglu_i8_batch;
    run(out, ldo, x, ldx, T, f.d, n, partPtrs[0]!, partPtrs[1]!, partPtrs[2]!, stride, h, scratch, act.afn, act.athr);
  }
}

/**
 * Times `run` (some of the model's FFN layers) without and with the FFN
 * kernels' touch of each next batch of records (Kernels.ffn_touch_set),
 * alternating, and leaves the touch on only when both its median and its best
 * time are at least 5% lower (a wrong "on" costs ~15%, a wrong "off" what the touch would gain).
 * WebAssembly has no prefetch instruction: the touch was worth 1.1-1.5x decode
 * on one CPU and cost 0.7-0.9x on another (bench/README "The touch, reversed
 * on another host"), and the output bits are the same either way, so the
 * machine decides. `now` is the clock (a parameter so tests can give one).
 */
export function chooseFfnTouch(k: Kernels, run: () => void, rounds = 7, now: () => number = () => performance.now()): boolean {
  const time = (on: number): number => {
    k.ffn_touch_set(on);
    const t0 = now();
    run();
    return now() - t0;
  };
  time(0); // warm-up, both ways
  time(1);
  const off: number[] = [], on: number[] = [];
  for (let r = 0; r < rounds; r++) {
    off.push(time(0));
    on.push(time(1));
  }
  const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!;
  const keep = median(on) < 0.95 * median(off) && Math.min(...on) < 0.95 * Math.min(...off);
  k.ffn_touch_set(keep ? 1 : 0);
  return keep;
}

/** FFN bytes a chooseFfnTouch sample runs over (whole layers, at least one): long enough to time, short at open. */
export const TOUCH_SAMPLE_BYTES = 32 << 20;

// ---------------------------------------------------------------- the rows layout
//
// A resident SiLU-gated layer is rearranged at load (assembly/rows.ts): its
// gate and up parts stay together as [gate | up] records, its down parts
// become the down matrix D [d][n] they came from, so the down pass runs as a
// matvec (a dot per output row) instead of an axpy per neuron, which costs
// ~2x the dots per byte (bench/README "The rows layout"). The ReLU family
// keeps its records: there most activations are 0 and the records' down pass
// skips those neurons, which a matvec over D cannot. The layer's section bytes
// hold the rearrangement (it never needs more): the arena plan grows only by the
// activations (residentFfnBytes) and the batched down pass's wider scratch (maxColumns).

/** Kernel dtype codes of the rows layout (assembly/rows.ts T_*). */
const ROWS_DTYPES: Partial<Record<DType, number>> = { f32: 0, f16: 1, int8: 2, q8: 3 };

/** Where a layer's parts sit in its section's arena bytes in the rows layout (offsets from the section's start). */
export interface RowsLayout {
  /** Kernel dtype code (ffn_rows' t). */
  t: number;
  /** Bytes from one [gate | up] record to the next (two parts). */
  stride: number;
  /** D [d][n] values, then (int8, q8) its f32 column scales [groups][n]. */
  down: number;
  scales: number;
  /** Scale rows: int8 1, q8 ceil(d / 32), else 0. */
  groups: number;
}

/** The rows layout of a layer whose section is `sectionBytes` long, or null where it keeps its records. */
export function rowsLayout(f: FfnEntry, act: ActArgs, sectionBytes: number): RowsLayout | null {
  const t = ROWS_DTYPES[f.dtype];
  if (t === undefined || f.parts.length !== 3 || act.afn !== GATED_ACT_CODES.silu) return null;
  // int8 and q8 quantize the coefficients into the kernels' int16 area, as their FFNs quantize x
  if ((f.dtype === 'int8' || f.dtype === 'q8') && (f.d > MAX_I8_WIDTH || f.neurons > MAX_I8_WIDTH)) return null;
  const n = f.neurons, d = f.d, stride = 2 * f.partBytes;
  const groups = f.dtype === 'int8' ? 1 : f.dtype === 'q8' ? Math.ceil(d / 32) : 0;
  const down = n * stride;
  const scales = alignUp(down + d * n * (f.dtype === 'f32' ? 4 : f.dtype === 'f16' ? 2 : 1), 16);
  return scales + 4 * groups * n <= sectionBytes ? { t, stride, down, scales, groups } : null;
}

/** Widest d and n the int8 and q8 kernels quantize (assembly/arena.ts MAXD_I8). */
const MAX_I8_WIDTH = 32768;

/** Rearranges a layer's section bytes (as read, in `region`) into its rows layout, in place. */
export function toRows(f: FfnEntry, r: RowsLayout, region: Uint8Array): void {
  const src = region.slice(); // the records as read
  const n = f.neurons, d = f.d, pb = f.partBytes, st = f.stride;
  const [gateAt, upAt, downAt] = f.partOffsets as [number, number, number];
  for (let i = 0; i < n; i++) {
    region.set(src.subarray(gateAt + i * st, gateAt + i * st + pb), i * r.stride);
    region.set(src.subarray(upAt + i * st, upAt + i * st + pb), i * r.stride + pb);
  }
  // D[j][i] = value j of neuron i's down part, copied as bits (f32 NaN payloads stay), a 32-bit
  // word at a time: the values of 4 / es neighbouring neurons (f16 2x faster than one by one)
  const at = region.byteOffset + r.down;
  const es = f.dtype === 'f32' ? 4 : f.dtype === 'f16' ? 2 : 1;
  const from = es === 4 ? new Uint32Array(src.buffer) : es === 2 ? new Uint16Array(src.buffer) : src;
  const per = n % (4 / es) === 0 ? 4 / es : 1, step = st / es;
  const to = per > 1 || es === 4 ? new Uint32Array(region.buffer, at, (d * n) / per) : es === 2 ? new Uint16Array(region.buffer, at, d * n) : new Uint8Array(region.buffer, at, d * n);
  for (let i = 0; i < n; i += per) {
    const p = (downAt + i * st) / es;
    for (let j = 0, q = i / per; j < d; j++, q += n / per) {
      let v = 0;
      for (let k = per - 1; k >= 0; k--) v = (v << (8 * es)) | from[p + k * step + j]!;
      to[q] = v;
    }
  }
  if (!r.groups) return;
  const view = new DataView(src.buffer);
  const S = new Float32Array(region.buffer, region.byteOffset + r.scales, r.groups * n);
  for (let g = 0; g < r.groups; g++) {
    for (let i = 0; i < n; i++) S[g * n + i] = view.getFloat32(downAt + i * st + f.scaleAt + 4 * g, true);
  }
}

/** A rows-layout layer's arena addresses (ffn_rows' arguments). */
interface RowsPtrs {
  t: number;
  gate: number;
  up: number;
  stride: number;
  D: number;
  S: number;
}

/** Whether any FFN layer of a file takes the rows layout (ResidentFfn.load with rows). */
export function hasRowsLayout(file: FlmFile): boolean {
  const act = gatedActArgs(file.header.arch);
  return file.header.ffn.some((f) => rowsLayout(f, act, file.section(f.section).length) !== null);
}

/** Arena bytes ResidentFfn.load takes for a file with these options: its FFN sections, and the rows layout's activations. */
export function residentFfnBytes(file: FlmFile, options: { rows?: boolean } = {}): number {
  const sections = file.header.ffn.map((f) => file.section(f.section));
  return sections.reduce((s, x) => s + x.length, 0) + (options.rows && hasRowsLayout(file) ? 4 * file.header.arch.ffnDim : 0);
}

/** Every FFN section read once into the arena (the `dense` strategy). */
export class ResidentFfn implements FfnProvider {
  private constructor(
    private readonly k: Kernels,
    private readonly entries: FfnEntry[],
    private readonly bases: number[],
    /** Arena address of each layer's parts (in the entry's part order), computed once; rows-layout layers: unused. */
    private readonly partPtrs: number[][],
    /** The gated activation (arch.gatedAct) as kernel arguments. */
    readonly act: ActArgs,
    /** Per layer, its rows layout's addresses, or null where it keeps its records. */
    private readonly rows: (RowsPtrs | null)[],
    /** ffn_rows' activations (ffnDim f32) when no hOut is asked for; 0 without rows-layout layers. */
    private readonly h: number,
  ) {
    this.rowsLayout = rows.some(Boolean);
  }

  readonly rowsLayout: boolean;

  /**
   * Reads every FFN section into the arena (residentFfnBytes of it). `rows`:
   * SiLU-gated layers take the rows layout (rowsLayout), faster, whose down
   * sums round differently from the records'; without it (the default: the
   * calibrator and the oracle, which stand in for the streaming strategies)
   * every layer keeps its records and gives the streamed bits.
   */
  static async load(file: FlmFile, k: Kernels, arena: Arena, onBytes?: (bytes: number) => void, options: { rows?: boolean } = {}): Promise<ResidentFfn> {
    const entries = file.header.ffn;
    const act = gatedActArgs(file.header.arch);
    const sections: SectionEntry[] = entries.map((f) => file.section(f.section));
    const layouts = entries.map((f, l) => (options.rows ? rowsLayout(f, act, sections[l]!.length) : null));
    const bases = sections.map((s) => arena.alloc(s.name, s.length));
    const h = layouts.some(Boolean) ? arena.alloc('ffn activations (rows layout)', 4 * file.header.arch.ffnDim) : 0;
    // Sections are independent: read them concurrently (a file or HTTP source overlaps the reads).
    await Promise.all(sections.map(async (s, i) => {
      const region = arena.u8(bases[i]!, s.length);
      await file.readSection(s, region, 0, file.source.hints, onBytes);
      if (layouts[i]) toRows(entries[i]!, layouts[i]!, region);
    }));
    const rows = layouts.map((r, l): RowsPtrs | null => r && {
      t: r.t, gate: bases[l]!, up: bases[l]! + entries[l]!.partBytes, stride: r.stride, D: bases[l]! + r.down, S: bases[l]! + r.scales,
    });
    return new ResidentFfn(k, entries, bases, entries.map((f, l) => f.partOffsets.map((o) => bases[l]! + o)), act, rows, h);
  }

  /** Whether every f16 value of its layers is finite (Kernels.f16_special over each part, or the rows layout's records and D). */
  f16Finite(): boolean {
    const k = this.k;
    return this.entries.every((f, l) => {
      if (f.dtype !== 'f16') return true;
      const r = this.rows[l];
      if (!r) return this.partPtrs[l]!.every((p) => k.f16_special(p, f.stride, f.neurons, f.d) === 0);
      return k.f16_special(r.gate, r.stride, f.neurons, f.d) === 0 && k.f16_special(r.up, r.stride, f.neurons, f.d) === 0 && k.f16_special(r.D, 2 * f.neurons, f.d, f.neurons) === 0;
    });
  }

  /** chooseFfnTouch over this model's first layers (TOUCH_SAMPLE_BYTES of them) with input x, output to out. */
  chooseTouch(x: number, out: number): boolean {
    if (this.rows.every(Boolean)) return false; // the rows layout has no record touch
    let layers = 0;
    for (let bytes = 0; layers < this.entries.length && (layers === 0 || bytes < TOUCH_SAMPLE_BYTES); layers++) {
      const f = this.entries[layers]!;
      bytes += f.neurons * f.parts.length * f.partBytes;
    }
    return chooseFfnTouch(this.k, () => {
      for (let l = 0; l < layers; l++) this.run(l, x, out);
    });
  }

  run(layer: number, x: number, out: number, hOut = 0): void {
    const f = this.entries[layer]!;
    const r = this.rows[layer];
    if (r) this.k.ffn_rows(r.t, out, x, f.d, f.neurons, r.gate, r.up, r.stride, r.D, r.S, hOut || this.h, this.act.afn, this.act.athr);
    else runFfnKernel(this.k, f, out, x, f.neurons, this.partPtrs[layer]!, f.stride, hOut, this.act);
  }

  /** `scratch`: batch_scratch_bytes(T, max(d, n)) for rows-layout layers (maxColumns(file, true)); h is left scaled (int8). */
  runBlock(layer: number, x: number, ldx: number, T: number, out: number, ldo: number, h: number, scratch: number): void {
    const f = this.entries[layer]!;
    const r = this.rows[layer];
    if (r) this.k.ffn_rows_batch(r.t, out, ldo, x, ldx, T, f.d, f.neurons, r.gate, r.up, r.stride, r.D, r.S, h, scratch, this.act.afn, this.act.athr);
    else runFfnBatch(this.k, f, out, ldo, x, ldx, T, f.neurons, this.partPtrs[layer]!, f.stride, h, scratch, this.act);
  }

  /** Gated FFNs: out[n] = the gate half of the activation (silu / relu / fatrelu) of gate_j · x, every neuron of `layer`. */
  gateActivations(layer: number, x: number, out: number): void {
    const f = this.entries[layer]!;
    const r = this.rows[layer];
    const gate = r ? r.gate : this.bases[layer]! + f.partOffsets[f.parts.indexOf('gate')]!;
    const act = f.dtype === 'f32' ? this.k.gate_act_f32 : f.dtype === 'f16' ? this.k.gate_act_f16 : f.dtype === 'q8' ? this.k.gate_act_q8 : f.dtype === 'q4' ? this.k.gate_act_q4 : this.k.gate_act_i8;
    act(out, x, f.d, f.neurons, gate, r ? r.stride : f.stride, this.act.afn, this.act.athr);
  }
}
