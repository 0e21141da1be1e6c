/**
 * FFN providers: where a layer's neuron records come from for one token.
 * The dense provider keeps every FFN section resident in the arena; the
 * streaming providers (sparse, windowed) implement the same interface.
 */
import type { FfnEntry, SectionEntry } from '../format/layout.js';
import type { FlmFile } from '../format/reader.js';
import type { ArchConfig, GatedActivation } from '../format/types.js';
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

/** Every FFN section read once into the arena (the `dense` strategy). */
export class ResidentFfn implements FfnProvider {
  private constructor(
    private readonly k: Kernels,
    private readonly entries: FfnEntry[],
    private readonly bases: number[],
    /** Arena address of each layer's parts (in the entry's part order), computed once. */
    private readonly partPtrs: number[][],
    /** The gated activation (arch.gatedAct) as kernel arguments. */
    readonly act: ActArgs,
  ) {}

  static async load(file: FlmFile, k: Kernels, arena: Arena, onBytes?: (bytes: number) => void): Promise<ResidentFfn> {
    const entries = file.header.ffn;
    const sections: SectionEntry[] = entries.map((f) => file.section(f.section));
    const bases = sections.map((s) => arena.alloc(s.name, s.length));
    // Sections are independent: read them concurrently (a file or HTTP source overlaps the reads).
    await Promise.all(sections.map((s, i) => file.readSection(s, arena.u8(bases[i]!, s.length), 0, file.source.hints, onBytes)));
    return new ResidentFfn(k, entries, bases, entries.map((f, l) => f.partOffsets.map((o) => bases[l]! + o)), gatedActArgs(file.header.arch));
  }

  /** chooseFfnTouch over this model's first layers (TOUCH_SAMPLE_BYTES of them) with input x, output to out. */
  chooseTouch(x: number, out: number): boolean {
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
    runFfnKernel(this.k, f, out, x, f.neurons, this.partPtrs[layer]!, f.stride, hOut, this.act);
  }

  runBlock(layer: number, x: number, ldx: number, T: number, out: number, ldo: number, h: number, scratch: number): void {
    const f = this.entries[layer]!;
    runFfnBatch(this.k, f, out, ldo, x, ldx, T, f.neurons, this.partPtrs[layer]!, f.stride, h, scratch, this.act);
  }

  /** Gated FFNs: out[n] = the gate half of the activation (silu / relu / fatrelu) of gate_j · x, every neuron of `layer`. */
  gateActivations(layer: number, x: number, out: number): void {
    const f = this.entries[layer]!;
    const gate = this.bases[layer]! + f.partOffsets[f.parts.indexOf('gate')]!;
    const act = f.dtype === 'f32' ? this.k.gate_act_f32 : f.dtype === 'f16' ? this.k.gate_act_f16 : f.dtype === 'q8' ? this.k.gate_act_q8 : f.dtype === 'q4' ? this.k.gate_act_q4 : this.k.gate_act_i8;
    act(out, x, f.d, f.neurons, gate, f.stride, this.act.afn, this.act.athr);
  }
}
