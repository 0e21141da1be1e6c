/**
 * Writes a Checkpoint as a .flm file (docs/FORMAT.md): preamble, msgpack
 * header, the resident section, one FFN section per layer (row-column
 * bundled or split), and the integrity table. Tensors are read in bounded
 * chunks, so memory stays at a few tens of MB whatever the model size.
 */
import { Packr } from 'msgpackr';
import type { Checkpoint } from '../convert/types.js';
import { AbortedError, ConvertError } from '../errors.js';
import { encodeF16, encodeI8Row, encodeQ4Row, encodeQ8Row, q4Groups, q4RowBytes, q8Groups, rowBytes } from '../kernels/quant.js';
import type { Sink } from '../source/types.js';
import { getHasher, type Hasher } from './hash.js';
import {
  formatVersion,
  MAGIC,
  PREAMBLE_BYTES,
  RESIDENT_BLOCK_BYTES,
  SECTION_ALIGN,
  TENSOR_ALIGN,
  alignUp,
  ffnParts,
  isStreamedTensor,
  partGeometry,
  scaleBytes,
  type FfnEntry,
  type FlmHeader,
  type Layout,
  type SectionEntry,
  type TensorEntry,
} from './layout.js';
import type { ArchConfig, DType } from './types.js';

export interface WriteOptions {
  /** Storage type of the FFN records (and, unless residentDtype says otherwise, of the 2-D resident tensors). */
  dtype: DType;
  /** Storage type of the 2-D resident tensors (attention, embeddings, head) when it differs from `dtype`, e.g. int8 beside a q4 FFN. */
  residentDtype?: DType;
  layout: Layout;
  /** Provenance stored in header.meta. */
  meta?: Record<string, string>;
  /** Called as bytes are written: (done, total). */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/** Upper bound on the f32 values held at once while converting. */
const CHUNK_VALUES = 4 << 20;
const ZERO_HASH = '0'.repeat(16);

/** Packs plain msgpack maps (no msgpackr record extension) so any msgpack reader can read the header. */
export const headerPackr = new Packr({ useRecords: false, variableMapSize: true });

/** The resident tensors in file order: embeddings first, then layer by layer, then the head. */
export function residentOrder(arch: ArchConfig): string[] {
  const names = ['tok_embeddings', 'pos_embeddings', 'project_in', 'project_out'];
  for (let i = 0; i < arch.nLayers; i++) {
    const l = `layers.${i}.`;
    names.push(
      ...['attn_norm.weight', 'attn_norm.bias', 'wq', 'bq', 'wk', 'bk', 'wv', 'bv', 'q_norm', 'k_norm', 'wo', 'bo'].map((n) => l + n),
      ...['ffn_norm.weight', 'ffn_norm.bias', 'ffn_down_bias'].map((n) => l + n),
    );
  }
  names.push('final_norm.weight', 'final_norm.bias', 'lm_head');
  return names;
}

interface Plan {
  header: FlmHeader;
  /** Header bytes length as encoded with placeholder hashes (final encoding must match). */
  headerLength: number;
  fileSize: number;
}

function planFile(ckpt: Checkpoint, opts: WriteOptions): Plan {
  const { arch } = ckpt;
  const order = residentOrder(arch);
  for (const name of ckpt.tensors.keys()) {
    if (!order.includes(name) && !isStreamedTensor(name)) throw new ConvertError(ckpt.path, name, 'tensor has no place in a .flm file');
  }
  // Resident tensors, offsets relative to the resident section for now.
  const tensors: TensorEntry[] = [];
  let rel = 0;
  for (const name of order) {
    const shape = ckpt.tensors.get(name);
    if (!shape) continue;
    const dtype: DType = shape.length === 2 ? (opts.residentDtype ?? opts.dtype) : 'f32';
    const cols = shape[shape.length - 1]!;
    rel = alignUp(rel, TENSOR_ALIGN);
    const entry: TensorEntry = { name, dtype, shape: [...shape], offset: rel, length: (shape.length === 2 ? shape[0]! : 1) * rowBytes(dtype, cols) };
    rel += entry.length;
    if (dtype === 'int8' || dtype === 'q8' || dtype === 'q4') {
      rel = alignUp(rel, TENSOR_ALIGN);
      entry.scalesOffset = rel;
      rel += scaleBytes(dtype, shape);
    }
    tensors.push(entry);
  }
  const residentLength = Math.max(rel, 1);

  const parts = ffnParts(arch);
  const hasBias = arch.ffnBias;
  const geo = partGeometry(arch.dModel, opts.dtype, hasBias);
  const ffn: FfnEntry[] = [];
  const sectionSizes: SectionSize[] = [
    { name: 'resident', length: residentLength, blockBytes: RESIDENT_BLOCK_BYTES, blockCount: Math.ceil(residentLength / RESIDENT_BLOCK_BYTES) },
  ];
  for (let layer = 0; layer < arch.nLayers; layer++) {
    const n = arch.ffnDim;
    const bundled = opts.layout === 'bundled';
    const stride = bundled ? parts.length * geo.partBytes : geo.partBytes;
    const partOffsets = parts.map((_, p) => (bundled ? p * geo.partBytes : p * n * geo.partBytes));
    const section = `ffn.${layer}`;
    ffn.push({ layer, section, layout: opts.layout, dtype: opts.dtype, neurons: n, d: arch.dModel, parts, partBytes: geo.partBytes, stride, partOffsets, scaleAt: geo.scaleAt, biasAt: geo.biasAt, hasBias });
    const length = n * parts.length * geo.partBytes;
    sectionSizes.push({ name: section, length, blockBytes: bundled ? stride : geo.partBytes, blockCount: bundled ? n : n * parts.length });
  }
  const header: FlmHeader = {
    format: 'flashlm',
    version: formatVersion(arch),
    arch,
    tokenizer: ckpt.tokenizer,
    dtype: opts.dtype,
    layout: opts.layout,
    tensors,
    sections: [],
    ffn,
    integrity: { algorithm: 'xxh64', offset: 0, length: 0, hash: ZERO_HASH }, // placed below
    meta: { writer: 'flashlm', ...opts.meta },
  };
  const { headerLength, fileSize } = placeSections(header, sectionSizes, tensors);
  return { header, headerLength, fileSize };
}

/** The header writeFlm would write for `ckpt` (layout, sections, tensors; hashes zero): sizes without writing. */
export function planHeader(ckpt: Checkpoint, opts: WriteOptions): FlmHeader {
  return planFile(ckpt, opts).header;
}

export interface SectionSize {
  name: string;
  length: number;
  blockBytes: number;
  blockCount: number;
}

/**
 * Places `sizes` one after another behind the header, page-aligned, then the
 * integrity table; fills header.sections, header.integrity.offset and the
 * absolute offsets of `relTensors` (given relative to their section). The
 * header's size depends on the offsets it holds, so this repeats until stable.
 */
export function placeSections(header: FlmHeader, sizes: readonly SectionSize[], relTensors: readonly TensorEntry[]): { headerLength: number; fileSize: number } {
  let dataStart = SECTION_ALIGN;
  for (;;) {
    let at = dataStart;
    let firstBlock = 0;
    header.sections = sizes.map((s) => {
      const entry: SectionEntry = { name: s.name, offset: at, length: s.length, blockBytes: s.blockBytes, firstBlock, blockCount: s.blockCount, hash: ZERO_HASH };
      at = alignUp(at + s.length, SECTION_ALIGN);
      firstBlock += s.blockCount;
      return entry;
    });
    header.integrity = { algorithm: 'xxh64', offset: at, length: firstBlock * 8, hash: ZERO_HASH };
    const base = new Map(header.sections.map((s) => [s.name, s.offset]));
    header.tensors = relTensors.map((t) => withBase(t, base.get(t.section ?? 'resident')!));
    const headerLength = headerPackr.pack(header).byteLength;
    const need = alignUp(PREAMBLE_BYTES + headerLength, SECTION_ALIGN);
    if (need <= dataStart) return { headerLength, fileSize: at + header.integrity.length };
    dataStart = need;
  }
}

/** Fills section and table hashes from the block hashes, then writes the table, the preamble and the header. */
export async function finishFile(sink: Sink, header: FlmHeader, headerLength: number, blockHashes: readonly string[], hasher: Hasher): Promise<number> {
  const total = header.integrity.length / 8;
  if (blockHashes.length !== total) throw new Error(`internal: ${blockHashes.length} block hashes for ${total} blocks`);
  const table = new Uint8Array(total * 8);
  const tv = new DataView(table.buffer);
  blockHashes.forEach((h, i) => tv.setBigUint64(i * 8, BigInt('0x' + h), true));
  for (const s of header.sections) s.hash = hasher.hex(table.subarray(s.firstBlock * 8, (s.firstBlock + s.blockCount) * 8));
  header.integrity.hash = hasher.hex(table);
  await sink.write(header.integrity.offset, table);
  const headerBytes = headerPackr.pack(header);
  if (headerBytes.byteLength !== headerLength) throw new Error(`internal: header size changed from ${headerLength} to ${headerBytes.byteLength}`);
  const preamble = new Uint8Array(PREAMBLE_BYTES);
  const pv = new DataView(preamble.buffer);
  preamble.set(MAGIC, 0);
  pv.setUint32(8, header.version, true);
  pv.setUint32(12, headerBytes.byteLength, true);
  pv.setBigUint64(16, hasher.u64(headerBytes), true);
  await sink.write(0, preamble);
  await sink.write(PREAMBLE_BYTES, headerBytes);
  return PREAMBLE_BYTES + headerBytes.byteLength + table.byteLength;
}

function withBase(t: TensorEntry, base: number): TensorEntry {
  const out: TensorEntry = { ...t, offset: t.offset + base };
  if (t.scalesOffset !== undefined) out.scalesOffset = t.scalesOffset + base;
  return out;
}

/** Encodes f32 rows to a dtype; int8 also returns one scale per row, q8 ceil(cols / 32) per row (row-major), q4 as many f16 scales (bits). */
function encodeRows(values: Float32Array, rows: number, cols: number, dtype: DType): { bytes: Uint8Array; scales?: Float32Array | Uint16Array } {
  if (dtype === 'f32') return { bytes: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
  if (dtype === 'f16') {
    const h = encodeF16(values);
    return { bytes: new Uint8Array(h.buffer, h.byteOffset, h.byteLength) };
  }
  if (dtype === 'q4') {
    const g = q4Groups(cols), rb = q4RowBytes(cols);
    const bytes = new Uint8Array(rows * rb);
    const scales = new Uint16Array(rows * g);
    for (let r = 0; r < rows; r++) encodeQ4Row(values.subarray(r * cols, (r + 1) * cols), bytes.subarray(r * rb, (r + 1) * rb), scales.subarray(r * g, (r + 1) * g));
    return { bytes, scales };
  }
  const q = new Int8Array(rows * cols);
  if (dtype === 'q8') {
    const g = q8Groups(cols);
    const scales = new Float32Array(rows * g);
    for (let r = 0; r < rows; r++) encodeQ8Row(values.subarray(r * cols, (r + 1) * cols), q.subarray(r * cols, (r + 1) * cols), scales.subarray(r * g, (r + 1) * g));
    return { bytes: new Uint8Array(q.buffer), scales };
  }
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) scales[r] = encodeI8Row(values.subarray(r * cols, (r + 1) * cols), q.subarray(r * cols, (r + 1) * cols));
  return { bytes: new Uint8Array(q.buffer), scales };
}

/**
 * Sequential writer for the resident section: pads, cuts the stream into
 * integrity blocks, hashes each block and writes in large pieces.
 */
export class BlockStream {
  private pos = 0;
  private block: Uint8Array;
  private fill = 0;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private flushedTo = 0;
  readonly hashes: string[] = [];
  constructor(
    private readonly sink: Sink,
    private readonly base: number,
    blockBytes: number,
    private readonly hasher: Hasher,
    private readonly progress: (n: number) => void,
  ) {
    this.block = new Uint8Array(blockBytes);
  }
  async padTo(rel: number): Promise<void> {
    if (rel < this.pos) throw new Error(`internal: resident stream moved backwards (${rel} < ${this.pos})`);
    await this.push(new Uint8Array(rel - this.pos));
  }
  async push(bytes: Uint8Array): Promise<void> {
    let i = 0;
    while (i < bytes.byteLength) {
      const take = Math.min(this.block.byteLength - this.fill, bytes.byteLength - i);
      this.block.set(bytes.subarray(i, i + take), this.fill);
      this.fill += take;
      i += take;
      if (this.fill === this.block.byteLength) await this.endBlock();
    }
    this.pos += bytes.byteLength;
  }
  private async endBlock(): Promise<void> {
    const full = this.block.slice(0, this.fill);
    this.hashes.push(this.hasher.hex(full));
    this.pending.push(full);
    this.pendingBytes += full.byteLength;
    this.fill = 0;
    if (this.pendingBytes >= 8 << 20) await this.flush();
  }
  private async flush(): Promise<void> {
    if (!this.pendingBytes) return;
    const joined = new Uint8Array(this.pendingBytes);
    let at = 0;
    for (const p of this.pending) {
      joined.set(p, at);
      at += p.byteLength;
    }
    await this.sink.write(this.base + this.flushedTo, joined);
    this.progress(joined.byteLength);
    this.flushedTo += joined.byteLength;
    this.pending = [];
    this.pendingBytes = 0;
  }
  async end(length: number): Promise<void> {
    await this.padTo(length);
    if (this.fill) await this.endBlock();
    await this.flush();
  }
}

/**
 * Converts `ckpt` into `sink`. Returns the header as written.
 * Throws ConvertError for tensors that do not fit the architecture, AbortedError on abort.
 */
export async function writeFlm(ckpt: Checkpoint, sink: Sink, opts: WriteOptions): Promise<FlmHeader> {
  const hasher = await getHasher();
  const { header, headerLength, fileSize } = planFile(ckpt, opts);
  let done = 0;
  const progress = (n: number) => {
    done += n;
    opts.onProgress?.(done, fileSize);
  };
  const checkAbort = () => {
    if (opts.signal?.aborted) throw new AbortedError('conversion aborted', { cause: opts.signal.reason });
  };
  const blockHashes: string[] = [];

  // Resident section: tensors in order, each read in row chunks.
  const resident = header.sections[0]!;
  const stream = new BlockStream(sink, resident.offset, RESIDENT_BLOCK_BYTES, hasher, progress);
  for (const t of header.tensors) {
    checkAbort();
    const rows = t.shape.length === 2 ? t.shape[0]! : 1;
    const cols = t.shape.length === 2 ? t.shape[1]! : t.shape[0]!;
    const chunkRows = Math.max(1, Math.floor(CHUNK_VALUES / cols));
    const perRow = t.dtype === 'int8' ? 1 : t.dtype === 'q8' ? q8Groups(cols) : t.dtype === 'q4' ? q4Groups(cols) : 0;
    const scales = perRow ? (t.dtype === 'q4' ? new Uint16Array(rows * perRow) : new Float32Array(rows * perRow)) : undefined;
    await stream.padTo(t.offset - resident.offset);
    for (let r = 0; r < rows; r += chunkRows) {
      const n = Math.min(chunkRows, rows - r);
      const values = t.shape.length === 2 ? await ckpt.readRows(t.name, r, n) : await ckpt.readRows(t.name, 0, cols);
      expectLength(ckpt, t.name, values, n * cols);
      const enc = encodeRows(values, n, cols, t.dtype);
      await stream.push(enc.bytes);
      if (scales && enc.scales) scales.set(enc.scales, r * perRow);
    }
    if (scales) {
      await stream.padTo(t.scalesOffset! - resident.offset);
      await stream.push(new Uint8Array(scales.buffer));
    }
  }
  await stream.end(resident.length);
  blockHashes.push(...stream.hashes);

  // FFN sections: neurons in chunks; each part record is encoded, hashed as its block, and written.
  for (const f of header.ffn) {
    const section = header.sections.find((s) => s.name === f.section)!;
    const l = `layers.${f.layer}.`;
    const nParts = f.parts.length;
    const hashes: string[] = new Array(section.blockCount);
    const chunk = Math.max(1, Math.floor(CHUNK_VALUES / (nParts * f.d)));
    for (let i0 = 0; i0 < f.neurons; i0 += chunk) {
      checkAbort();
      const n = Math.min(chunk, f.neurons - i0);
      const partValues = await Promise.all(
        f.parts.map(async (p) => {
          const name = l + `ffn_${p}`;
          const v = p === 'down' ? await ckpt.readColumns(name, i0, n) : await ckpt.readRows(name, i0, n);
          expectLength(ckpt, name, v, n * f.d);
          return v;
        }),
      );
      const bias = f.hasBias ? await ckpt.readRows(l + 'ffn_up_bias', i0, n) : undefined;
      if (bias) expectLength(ckpt, l + 'ffn_up_bias', bias, n);
      const records = new Uint8Array(n * nParts * f.partBytes);
      const view = new DataView(records.buffer);
      // Records are built neuron-major (bundled order); split files write each part's run separately.
      for (let p = 0; p < nParts; p++) {
        const enc = encodeRows(partValues[p]!, n, f.d, f.dtype);
        const rb = rowBytes(f.dtype, f.d);
        const groups = f.dtype === 'q8' ? q8Groups(f.d) : 0;
        const halves = f.dtype === 'q4' ? q4Groups(f.d) : 0;
        for (let i = 0; i < n; i++) {
          const at = (i * nParts + p) * f.partBytes;
          records.set(enc.bytes.subarray(i * rb, (i + 1) * rb), at);
          if (groups) for (let g = 0; g < groups; g++) view.setFloat32(at + f.scaleAt + 4 * g, enc.scales![i * groups + g]!, true);
          else if (halves) for (let g = 0; g < halves; g++) view.setUint16(at + f.scaleAt + 2 * g, enc.scales![i * halves + g]!, true);
          else if (enc.scales) view.setFloat32(at + f.scaleAt, enc.scales[i]!, true);
          if (bias && f.parts[p] === 'up') view.setFloat32(at + f.biasAt, bias[i]!, true);
        }
      }
      if (f.layout === 'bundled') {
        for (let i = 0; i < n; i++) hashes[i0 + i] = hasher.hex(records.subarray(i * f.stride, (i + 1) * f.stride));
        await sink.write(section.offset + i0 * f.stride, records);
      } else {
        for (let p = 0; p < nParts; p++) {
          const run = new Uint8Array(n * f.partBytes);
          for (let i = 0; i < n; i++) {
            const rec = records.subarray((i * nParts + p) * f.partBytes, (i * nParts + p + 1) * f.partBytes);
            run.set(rec, i * f.partBytes);
            hashes[p * f.neurons + i0 + i] = hasher.hex(rec);
          }
          await sink.write(section.offset + f.partOffsets[p]! + i0 * f.partBytes, run);
        }
      }
      progress(records.byteLength);
    }
    blockHashes.push(...hashes);
  }

  // Integrity table, section hashes over their slices of it, and the final header.
  progress(await finishFile(sink, header, headerLength, blockHashes, hasher));
  await sink.finish(fileSize);
  return header;
}

/** Checks a chunk's length, and that every weight is finite (inf/NaN means a corrupt or broken checkpoint). */
function expectLength(ckpt: Checkpoint, name: string, v: Float32Array, n: number): void {
  if (v.length !== n) throw new ConvertError(ckpt.path, name, `expected ${n} values, got ${v.length}`);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i]!)) throw new ConvertError(ckpt.path, name, `value ${v[i]} at index ${i} of the chunk: weights must be finite`);
  }
}

