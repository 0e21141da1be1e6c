import test from 'ava';
import fc from 'fast-check';
import { ConvertError, FlashlmError, FormatError, IntegrityError } from '../src/errors.js';
import { PREAMBLE_BYTES, type FlmHeader } from '../src/format/layout.js';
import { decodeHeader, openFlm, validateHeader } from '../src/format/reader.js';
import { headerPackr, writeFlm } from '../src/format/writer.js';
import type { DType } from '../src/format/types.js';
import { f16BitsToF32 } from '../src/kernels/quant.js';
import { MemorySink, MemorySource } from '../src/source/memory.js';
import { syntheticArch, syntheticCheckpoint } from './helpers/synthetic.js';
import { withHeader } from './helpers/header.js';

async function build(type: 'opt' | 'llama', dtype: DType, layout: 'bundled' | 'split', seed = 1) {
  const ckpt = syntheticCheckpoint(syntheticArch(type), seed);
  const sink = new MemorySink();
  const header = await writeFlm(ckpt, sink, { dtype, layout });
  return { ckpt, header, bytes: sink.bytes().slice() };
}

/** Decodes `count` values of a dtype at `at`, with an int8 scale (q8: the group scales start at `scaleAt`). */
function decode(bytes: Uint8Array, at: number, count: number, dtype: DType, scale = 1, scaleAt = 0): Float32Array {
  const out = new Float32Array(count);
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  for (let i = 0; i < count; i++) {
    if (dtype === 'f32') out[i] = dv.getFloat32(at + 4 * i, true);
    else if (dtype === 'f16') out[i] = f16BitsToF32(dv.getUint16(at + 2 * i, true));
    else if (dtype === 'q8') out[i] = Math.fround(dv.getInt8(at + i) * dv.getFloat32(scaleAt + 4 * Math.floor(i / 32), true));
    else out[i] = Math.fround(dv.getInt8(at + i) * scale);
  }
  return out;
}

const TOLERANCE: Record<DType, number> = { f32: 0, f16: 1e-3, int8: 0.2 / 127, q8: 0.2 / 127 };

for (const type of ['opt', 'llama'] as const) {
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as const) {
    for (const layout of ['bundled', 'split'] as const) {
      test(`round trip: ${type} ${dtype} ${layout}`, async (t) => {
        const { ckpt, bytes } = await build(type, dtype, layout);
        const file = await openFlm(new MemorySource(bytes));
        const h = file.header;
        t.deepEqual(h.arch, ckpt.arch);
        t.is(bytes.byteLength % 8, 0);
        for (const s of h.sections) t.is(s.offset % 4096, 0, `${s.name} aligned`);
        const dv = new DataView(bytes.buffer);
        // Every resident tensor decodes back to the checkpoint's values.
        for (const te of h.tensors) {
          const want = ckpt.values.get(te.name)!;
          const rows = te.shape.length === 2 ? te.shape[0]! : 1;
          const cols = want.length / rows;
          for (let r = 0; r < rows; r++) {
            const scale = te.dtype === 'int8' ? dv.getFloat32(te.scalesOffset! + 4 * r, true) : 1;
            const q8At = te.dtype === 'q8' ? te.scalesOffset! + 4 * r * Math.ceil(cols / 32) : 0;
            const got = decode(bytes, te.offset + r * cols * (te.dtype === 'f32' ? 4 : te.dtype === 'f16' ? 2 : 1), cols, te.dtype, scale, q8At);
            for (let c = 0; c < cols; c++) {
              if (Math.abs(got[c]! - want[r * cols + c]!) > TOLERANCE[te.dtype] + 1e-7) return t.fail(`${te.name}[${r},${c}] = ${got[c]} != ${want[r * cols + c]}`);
            }
          }
          t.is(te.dtype, te.shape.length === 2 ? dtype : 'f32');
        }
        // Every FFN part of every neuron decodes back: up/gate rows, down columns, up bias.
        for (const f of h.ffn) {
          const s = file.section(f.section);
          const l = `layers.${f.layer}.`;
          for (let i = 0; i < f.neurons; i++) {
            f.parts.forEach((part, p) => {
              const at = s.offset + f.partOffsets[p]! + i * f.stride;
              const scale = dtype === 'int8' ? dv.getFloat32(at + f.scaleAt, true) : 1;
              const got = decode(bytes, at, f.d, dtype, scale, at + f.scaleAt);
              const src = ckpt.values.get(l + `ffn_${part}`)!;
              for (let c = 0; c < f.d; c++) {
                const want = part === 'down' ? src[c * f.neurons + i]! : src[i * f.d + c]!;
                if (Math.abs(got[c]! - want) > TOLERANCE[dtype] + 1e-7) t.fail(`${l}${part} neuron ${i}[${c}]`);
              }
              if (f.hasBias && part === 'up') t.is(dv.getFloat32(at + f.biasAt, true), ckpt.values.get(l + 'ffn_up_bias')![i]!);
            });
          }
        }
        // All blocks verify.
        for (const s of h.sections) {
          const buf = new Uint8Array(s.length);
          await file.readSection(s, buf);
        }
        t.pass();
      });
    }
  }
}

test('non-finite weights stop the writer with an error naming the tensor', async (t) => {
  const ckpt = syntheticCheckpoint(syntheticArch('opt'), 3);
  ckpt.values.get('layers.1.ffn_down')![77] = Number.NaN;
  await t.throwsAsync(writeFlm(ckpt, new MemorySink(), { dtype: 'f16', layout: 'bundled' }), { instanceOf: ConvertError, message: /layers\.1\.ffn_down.*finite/ });
  const inf = syntheticCheckpoint(syntheticArch('llama'), 3);
  inf.values.get('tok_embeddings')![5] = -Infinity;
  await t.throwsAsync(writeFlm(inf, new MemorySink(), { dtype: 'f32', layout: 'split' }), { instanceOf: ConvertError, message: /tok_embeddings/ });
});

test('the writer is deterministic', async (t) => {
  const a = await build('opt', 'f16', 'bundled', 7);
  const b = await build('opt', 'f16', 'bundled', 7);
  t.deepEqual(a.bytes, b.bytes);
});

test('a flipped byte in any section is caught by its block hash', async (t) => {
  const { bytes } = await build('llama', 'int8', 'bundled');
  const good = await openFlm(new MemorySource(bytes));
  for (const s of good.header.sections) {
    const bad = bytes.slice();
    const at = s.offset + Math.floor(s.length / 2);
    bad[at] = bad[at]! ^ 0x40;
    const file = await openFlm(new MemorySource(bad));
    const block = Math.floor((at - s.offset) / s.blockBytes);
    const start = block * s.blockBytes;
    const buf = new Uint8Array(Math.min(s.blockBytes, s.length - start));
    await t.throwsAsync(file.readSection(s, buf, block), { instanceOf: IntegrityError, message: new RegExp(`${s.name} block ${block}`) });
    // The neighbouring block still verifies.
    if (block > 0) await t.notThrowsAsync(file.readSection(s, new Uint8Array(s.blockBytes), block - 1));
  }
});

test('corrupt files are rejected with typed errors', async (t) => {
  const { bytes } = await build('opt', 'f32', 'bundled');
  const cases: [string, Uint8Array, typeof FormatError | typeof IntegrityError][] = [];
  const magic = bytes.slice();
  magic[1] = 0;
  cases.push(['bad magic', magic, FormatError]);
  const version = bytes.slice();
  version[8] = 9;
  cases.push(['unknown version', version, FormatError]);
  const hdr = bytes.slice();
  hdr[PREAMBLE_BYTES + 20] = hdr[PREAMBLE_BYTES + 20]! ^ 1;
  cases.push(['header byte flipped', hdr, IntegrityError]);
  cases.push(['truncated to the preamble', bytes.slice(0, 20), FormatError]);
  cases.push(['truncated mid-file', bytes.slice(0, bytes.byteLength - 9000), FormatError]);
  const table = bytes.slice();
  table[bytes.byteLength - 3] = table[bytes.byteLength - 3]! ^ 1;
  cases.push(['integrity table flipped', table, IntegrityError]);
  const hugeHeader = bytes.slice();
  new DataView(hugeHeader.buffer).setUint32(12, 0xffffffff, true);
  cases.push(['header length past EOF', hugeHeader, FormatError]);
  for (const [name, b, type] of cases) {
    await t.throwsAsync(openFlm(new MemorySource(b)), { instanceOf: type }, name);
  }
});

test('semantic header errors are named', async (t) => {
  const { bytes, header } = await build('opt', 'f32', 'bundled');
  const mutate = async (f: (h: FlmHeader) => void, message: RegExp) => {
    const h = structuredClone(header);
    f(h);
    await t.throwsAsync(openFlm(new MemorySource(await withHeader(bytes, h))), { instanceOf: FormatError, message });
  };
  await mutate((h) => (h.tensors[0]!.offset = bytes.byteLength), /tensors\[0\]\.offset/);
  await mutate((h) => (h.tensors[1]!.shape = [3, 3]), /tensors\[1\]\.length|shape/);
  await mutate((h) => (h.arch.nKvHeads = 3), /nKvHeads/);
  await mutate((h) => (h.sections[1]!.offset += 1), /aligned/);
  await mutate((h) => (h.ffn[0]!.stride = 4), /stride/);
  await mutate((h) => h.tensors.splice(3, 1), /missing|shape/);
  await mutate((h) => ((h as { arch: unknown }).arch = 'x'), /arch/);
  // Rules a header with a recomputed hash could still break (FORMAT.md §4, §7.1, §8).
  await mutate((h) => (h.tensors[2]!.offset += 1), /tensors\[2\]\.offset: not aligned to 64/);
  await mutate((h) => (h.tensors[2]!.offset = h.tensors[1]!.offset), /overlaps/);
  await mutate((h) => (h.ffn[0]!.section = 'ffn.1'), /ffn\[0\]\.section: expected ffn\.0, got ffn\.1/);
});

test('bytes after the integrity table (where the file must end) are refused', async (t) => {
  const { bytes } = await build('opt', 'f32', 'bundled');
  const longer = new Uint8Array(bytes.byteLength + 4096);
  longer.set(bytes);
  await t.throwsAsync(openFlm(new MemorySource(longer)), { instanceOf: FormatError, message: /must end where the table ends.*4096 more bytes/ });
  await t.notThrowsAsync(openFlm(new MemorySource(bytes)));
});

test('q8 headers: an unknown dtype is refused by name; q8 group scales must lie inside the resident section; q8 part geometry is checked', async (t) => {
  const { bytes, header } = await build('llama', 'q8', 'bundled');
  const mutate = async (f: (h: FlmHeader) => void, message: RegExp) => {
    const h = structuredClone(header);
    f(h);
    await t.throwsAsync(openFlm(new MemorySource(await withHeader(bytes, h))), { instanceOf: FormatError, message });
  };
  await mutate((h) => ((h as { dtype: string }).dtype = 'q3'), /dtype: expected one of f32, f16, int8, q8, q4/);
  const res = header.sections[0]!;
  const last = header.tensors.findIndex((x) => x.dtype === 'q8' && x.scalesOffset! + x.shape[0]! * Math.ceil(x.shape[1]! / 32) * 4 === res.offset + res.length);
  t.true(last >= 0, 'the last q8 tensor\'s group scales end the resident section');
  await mutate((h) => (h.tensors[last]!.scalesOffset! += 4), /scalesOffset/);
  await mutate((h) => (h.ffn[0]!.scaleAt += 4), /partBytes|geometry/);
  await mutate((h) => (h.ffn[1]!.biasAt -= 4), /partBytes|geometry/);
});

function isTypedFailure(e: unknown): boolean {
  return e instanceof FormatError || e instanceof IntegrityError;
}

test('fuzz: random bytes only ever open or throw a format error', async (t) => {
  const { bytes } = await build('llama', 'f16', 'bundled');
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 4096 }), fc.boolean(), async (junk, keepMagic) => {
      const b = junk.slice();
      if (keepMagic && b.length >= 16) b.set(bytes.subarray(0, 16));
      try {
        await openFlm(new MemorySource(b));
        return false; // random bytes can't be a valid file
      } catch (e) {
        return isTypedFailure(e);
      }
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('fuzz: mutated header bytes (with a fixed-up hash) only decode or throw FormatError', async (t) => {
  const { bytes, header } = await build('opt', 'int8', 'split');
  const packed = headerPackr.pack(header);
  await fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(packed.byteLength - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), fc.nat(packed.byteLength), (edits, cut) => {
      const b = packed.slice(0, Math.max(1, cut === 0 ? packed.byteLength : cut));
      for (const [i, v] of edits) if (i < b.length) b[i] = v;
      try {
        decodeHeader(b, bytes.byteLength);
        return true;
      } catch (e) {
        return e instanceof FormatError;
      }
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('fuzz: structurally mutated headers only validate or throw FormatError, never overrun the file', async (t) => {
  const { bytes, header } = await build('llama', 'f32', 'split');
  const anyValue = fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(null), fc.boolean(), fc.array(fc.integer(), { maxLength: 3 }), fc.constant(2 ** 53), fc.constant(-1), fc.uint8Array({ maxLength: 8 }));
  await fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(), fc.nat(), anyValue), { minLength: 1, maxLength: 4 }), (edits) => {
      const h = structuredClone(header) as unknown as Record<string, unknown>;
      for (const [pick, pick2, value] of edits) {
        const keys = Object.keys(h);
        const k = keys[pick % keys.length]!;
        const target = h[k];
        if (target && typeof target === 'object' && !(target instanceof Uint8Array)) {
          const inner = Array.isArray(target) ? target : Object.keys(target);
          if (Array.isArray(target)) {
            const el = target[pick2 % Math.max(1, target.length)];
            if (el && typeof el === 'object') {
              const ks = Object.keys(el);
              (el as Record<string, unknown>)[ks[pick2 % ks.length]!] = value;
            } else target[pick2 % Math.max(1, target.length)] = value;
          } else (target as Record<string, unknown>)[(inner as string[])[pick2 % inner.length]!] = value;
        } else h[k] = value;
      }
      try {
        const v = validateHeader(h, bytes.byteLength);
        // Whatever validates must stay inside the file.
        for (const s of v.sections) if (s.offset + s.length > bytes.byteLength) return false;
        for (const te of v.tensors) if (te.offset + te.length > bytes.byteLength) return false;
        return true;
      } catch (e) {
        return e instanceof FormatError;
      }
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('errors carry stable codes', (t) => {
  const e = new FormatError('x');
  t.true(e instanceof FlashlmError);
  t.is(e.code, 'FORMAT');
});
