/**
 * A random llama2.c checkpoint (run.c's format: 7 int32 header fields, then
 * the f32 tensors in its order, shared classifier) of any shape, written
 * tensor by tensor in bounded chunks — for benchmarks (bench/decode.ts) and
 * tests that need a model bigger than the fixtures. Weights are normal·0.02
 * from a seeded PRNG, norms 1; row 1 of the embedding (BOS, llama2.c's stop
 * token) is 100x smaller so greedy decoding never stops early.
 */
import { FileSink } from '../../src/source/file-node.js';
import { rng } from '../../src/util/random.js';

export interface Llama2cShape {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
}

/** The file size run.c's format implies for a shape with a shared classifier. */
export function llama2cBytes(s: Llama2cShape): number {
  const kvDim = (s.dim / s.nHeads) * s.nKvHeads;
  const floats = s.vocabSize * s.dim + s.nLayers * (2 * s.dim + 2 * s.dim * s.dim + 2 * kvDim * s.dim + 3 * s.hiddenDim * s.dim) + s.dim + s.seqLen * (s.dim / s.nHeads);
  return 28 + floats * 4;
}

/** Writes the checkpoint to `path` (through a temporary name, renamed at the end). */
export async function writeRandomLlama2c(path: string, shape: Llama2cShape, seed: number): Promise<void> {
  const { dim, hiddenDim: hid, nLayers: L, nHeads, vocabSize: V, seqLen } = shape;
  const kvDim = (dim / nHeads) * shape.nKvHeads;
  const headSize = dim / nHeads;
  const sink = await FileSink.create(path);
  try {
    let at = 0;
    const put = async (f: Float32Array) => {
      await sink.write(at, new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
      at += f.byteLength;
    };
    const header = new Int32Array([dim, hid, L, nHeads, shape.nKvHeads, V /* > 0: shared classifier */, seqLen]);
    await put(new Float32Array(header.buffer));

    const uniform = rng(seed);
    let spare = NaN;
    const normal = (): number => {
      if (!Number.isNaN(spare)) {
        const s = spare;
        spare = NaN;
        return s;
      }
      const u = 1 - uniform(); // (0, 1]
      const r = Math.sqrt(-2 * Math.log(u));
      const t = 2 * Math.PI * uniform();
      spare = r * Math.sin(t);
      return r * Math.cos(t);
    };
    const CHUNK = 4 << 20;
    const buf = new Float32Array(CHUNK);
    /** `count` floats of fill(i) (i = index within the tensor), in chunks. */
    const tensor = async (count: number, fill: (i: number) => number) => {
      for (let start = 0; start < count; start += CHUNK) {
        const n = Math.min(CHUNK, count - start);
        for (let i = 0; i < n; i++) buf[i] = fill(start + i);
        await put(buf.subarray(0, n));
      }
    };
    const randn = (count: number) => tensor(count, () => normal() * 0.02);
    const ones = (count: number) => tensor(count, () => 1);

    await tensor(V * dim, (i) => normal() * (Math.floor(i / dim) === 1 ? 0.0002 : 0.02)); // token_embedding (= classifier)
    await ones(L * dim); // rms_att
    await randn(L * dim * dim); // wq
    await randn(L * kvDim * dim); // wk
    await randn(L * kvDim * dim); // wv
    await randn(L * dim * dim); // wo
    await ones(L * dim); // rms_ffn
    await randn(L * hid * dim); // w1
    await randn(L * dim * hid); // w2
    await randn(L * hid * dim); // w3
    await ones(dim); // rms_final
    // freq_cis_real, freq_cis_imag (unused by readers, written as run.c's exporter did)
    const half = headSize / 2;
    const angle = (i: number) => Math.floor(i / half) * Math.pow(10000, -(2 * (i % half)) / headSize);
    await tensor(seqLen * half, (i) => Math.cos(angle(i)));
    await tensor(seqLen * half, (i) => Math.sin(angle(i)));
    if (at !== llama2cBytes(shape)) throw new Error(`wrote ${at} bytes, expected ${llama2cBytes(shape)}`);
    await sink.finish(at);
  } catch (e) {
    await sink.abort();
    throw e;
  }
}
