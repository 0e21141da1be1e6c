/**
 * The oracle: the true FFN activations of a token, from a dense copy of the
 * FFN in a memory of its own (outside the budget). It measures the streaming
 * machinery and the predictor; it is not a way to save I/O. (Gated FFNs have
 * no exact zeros: their true set is |silu(gate·x)| over the file's gate threshold.)
 */
import type { FlmFile } from '../format/reader.js';
import { createArena, loadKernels } from '../kernels/load.js';
import { Arena } from '../engine/arena.js';
import { ResidentFfn } from '../engine/ffn.js';

export class Oracle {
  private constructor(
    private readonly ffn: ResidentFfn,
    private readonly x: number,
    private readonly out: number,
    private readonly h: number,
    private readonly view: Float32Array,
    /** The FFN input slot, as a view made once. */
    private readonly xView: Float32Array,
  ) {}

  static async create(file: FlmFile, wasm?: BufferSource | WebAssembly.Module | URL | string): Promise<Oracle> {
    const { dModel: d, ffnDim: n } = file.header.arch;
    const ffnBytes = file.header.ffn.reduce((s, f) => s + file.section(f.section).length, 0);
    const memory = createArena(ffnBytes + (2 * d + n) * 4 + (1 << 20));
    const k = await loadKernels(memory, wasm);
    const arena = new Arena(memory, k.heap_base());
    file.useKernelHasher(k); // the dense copy is verified in place too
    const ffn = await ResidentFfn.load(file, k, arena);
    const x = arena.alloc('oracle x', d * 4);
    const out = arena.alloc('oracle out', d * 4);
    const h = arena.alloc('oracle h', n * 4);
    return new Oracle(ffn, x, out, h, arena.f32(h, n), arena.f32(x, d));
  }

  /** The layer's n activations for FFN input `x` (a view, valid until the next call). */
  activations(layer: number, x: Float32Array): Float32Array {
    this.xView.set(x);
    this.ffn.run(layer, this.x, this.out, this.h);
    return this.view;
  }

  /** Gated FFNs: silu(gate_j · x) of the layer's n neurons (a view, valid until the next call). */
  gateActivations(layer: number, x: Float32Array): Float32Array {
    this.xView.set(x);
    this.ffn.gateActivations(layer, this.x, this.h);
    return this.view;
  }
}
