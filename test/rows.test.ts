/**
 * The rows layout of a resident gated FFN (assembly/rows.ts, src/engine/ffn.ts
 * rowsLayout / toRows): the records of a layer rearranged into [gate | up]
 * records and the down matrix D [d][n] with its column scales. Against the
 * records kernels on the same bytes: the activations bit for bit, the output
 * within the float64 reference's bounds (its sums round differently, and int8
 * and q8 quantize the coefficients h * scale as the dots quantize x); the
 * batched form bit for bit per token. Threads: test/threads.test.ts.
 */
import test from 'ava';
import { createArena, loadKernels } from '../src/kernels/load.js';
import type { Kernels } from '../src/kernels/types.js';
import { rowsLayout, toRows, GATED_ACT_CODES } from '../src/engine/ffn.js';
import { Arena, rng, normalish, firstBitMismatch, buildRecords, ffnRef, quantErrBound, scaleAtOf, type Dtype, type FfnLayout, type FfnRecords } from './helpers/kernel-reference.js';
import { entryOf } from './helpers/records.js';

let k: Kernels;
let A: Arena;

test.before(async () => {
  k = await loadKernels(createArena(128 << 20));
  A = new Arena(k);
});

const T_OF: Record<Dtype, number> = { f32: 0, f16: 1, int8: 2, q8: 3 };
const SILU = { afn: GATED_ACT_CODES.silu, athr: 0 };

/** Per output column, the error the int8 / q8 coefficients' int16 quantization may add: sum_i |q_ij| * step(c_i). */
function coefficientTol(L: FfnLayout, R: FfnRecords, h: Float32Array): Float64Array {
  const tol = new Float64Array(L.d);
  if (L.dtype !== 'int8' && L.dtype !== 'q8') return tol;
  const dv = new DataView(R.bytes.buffer, R.bytes.byteOffset);
  const downAt = (i: number) => R.partOff[2]! + i * R.stride;
  const groups = L.dtype === 'int8' ? 1 : Math.ceil(L.d / 32);
  for (let g = 0; g < groups; g++) {
    const s = Float32Array.from({ length: L.n }, (_, i) => dv.getFloat32(downAt(i) + scaleAtOf(L.dtype, L.d) + 4 * g, true));
    const err = quantErrBound(Float32Array.from(h, (v, i) => v * s[i]!));
    const j0 = L.dtype === 'int8' ? 0 : 32 * g, j1 = L.dtype === 'int8' ? L.d : Math.min(L.d, j0 + 32);
    for (let j = j0; j < j1; j++) {
      for (let i = 0; i < L.n; i++) tol[j] += Math.abs(dv.getInt8(downAt(i) + j)) * err[i]!;
    }
  }
  return tol;
}

test('rowsLayout: SiLU-gated f32/f16/int8/q8 layers fit their own section; relu, the ReLU-family gates and q4 keep records', (t) => {
  const r = rng(3);
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const [d, n] of [[8, 4], [31, 5], [100, 300], [768, 64]] as const) {
      const L: FfnLayout = { dtype, kind: 'swiglu', d, n, hasBias: false, bundled: true };
      const R = buildRecords(L, [0, 1, 2].map(() => normalish(r, n * d, 0.3)), null, r);
      const lay = rowsLayout(entryOf(L, R), SILU, R.bytes.length);
      t.truthy(lay, `${dtype} ${d}x${n}`);
      t.true(lay!.scales + 4 * lay!.groups * n <= R.bytes.length);
      t.is(lay!.groups, dtype === 'int8' ? 1 : dtype === 'q8' ? Math.ceil(d / 32) : 0);
      t.is(rowsLayout(entryOf(L, R), { afn: GATED_ACT_CODES.relu, athr: 0 }, R.bytes.length), null, 'ReLU-gated: the records skip zero activations');
      t.is(rowsLayout(entryOf(L, R), { afn: GATED_ACT_CODES.fatrelu, athr: 0.1 }, R.bytes.length), null);
      t.is(rowsLayout(entryOf(L, R), SILU, R.bytes.length - 64 * n), null, 'a section too short for it');
    }
  }
  const relu: FfnLayout = { dtype: 'f32', kind: 'relu', d: 16, n: 8, hasBias: true, bundled: true };
  const R = buildRecords(relu, [0, 1].map(() => normalish(r, 128, 0.3)), null, r);
  t.is(rowsLayout({ ...entryOf(relu, R), parts: ['up', 'down'] }, SILU, R.bytes.length), null);
  t.is(rowsLayout({ ...entryOf(relu, R), dtype: 'q4', parts: ['gate', 'up', 'down'] }, SILU, 1 << 20), null);
});

test('ffn_rows: activations bit-identical to the records kernel, output within the float64 bounds; ffn_rows_batch equals ffn_rows per token', (t) => {
  let seed = 40;
  for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
    for (const [d, n] of [[8, 4], [29, 70], [64, 200], [100, 131], [203, 300]] as const) {
      for (const bundled of [true, false]) {
        A.reset();
        const r = rng(seed++);
        const L: FfnLayout = { dtype, kind: 'swiglu', d, n, hasBias: false, bundled };
        const R = buildRecords(L, [0, 1, 2].map(() => normalish(r, n * d, 0.3)), null, r);
        const e = entryOf(L, R);
        const what = `${dtype} d=${d} n=${n} ${bundled ? 'bundled' : 'split'}`;
        // the records kernel on the bytes as built
        const rec = A.putBytes(R.bytes);
        const x = normalish(r, d);
        const X = A.putF32(x);
        const O1 = A.out(d), H1 = A.out(n);
        const s = dtype === 'int8' ? 'i8' : dtype;
        k[`ffn_swiglu_${s}`](O1, X, d, n, rec + R.partOff[0]!, rec + R.partOff[1]!, rec + R.partOff[2]!, R.stride, H1, SILU.afn, SILU.athr);
        // the same bytes in the rows layout, in place
        const base = A.putBytes(R.bytes);
        const lay = rowsLayout(e, SILU, R.bytes.length)!;
        toRows(e, lay, new Uint8Array(k.memory.buffer, base, R.bytes.length));
        const O2 = A.out(d), H2 = A.out(n);
        const rows = [T_OF[dtype], O2, X, d, n, base, base + R.partBytes, lay.stride, base + lay.down, base + lay.scales] as const;
        k.ffn_rows(...rows, H2, SILU.afn, SILU.athr);
        t.is(firstBitMismatch(A.f32(H2, n), A.f32(H1, n)), null, `${what}: h`);
        const ref = ffnRef(L, R, x);
        const extra = coefficientTol(L, R, A.f32(H2, n));
        const got = A.f32(O2, d);
        let worst = 0;
        for (let j = 0; j < d; j++) worst = Math.max(worst, Math.abs(got[j]! - ref.out[j]!) / (ref.outTol[j]! + extra[j]!));
        t.true(worst <= 1, `${what}: out within ${worst.toFixed(3)} of its bound`);
        // a prompt block: each token as ffn_rows alone
        for (const T of [1, 3, 6]) {
          const xs = Array.from({ length: T }, () => normalish(r, d));
          const ld = (d + 3) * 4;
          const XB = A.alloc(T * ld);
          xs.forEach((v, i) => A.u8.set(new Uint8Array(v.buffer), XB + i * ld));
          const OB = A.out(T * (d + 1)), HB = A.alloc(T * n * 4), scratch = A.alloc(k.batch_scratch_bytes(T, Math.max(d, n)));
          k.ffn_rows_batch(T_OF[dtype], OB, (d + 1) * 4, XB, ld, T, d, n, base, base + R.partBytes, lay.stride, base + lay.down, base + lay.scales, HB, scratch, SILU.afn, SILU.athr);
          const one = A.out(d), h = A.out(n);
          for (let i = 0; i < T; i++) {
            k.ffn_rows(T_OF[dtype], one, XB + i * ld, d, n, base, base + R.partBytes, lay.stride, base + lay.down, base + lay.scales, h, SILU.afn, SILU.athr);
            t.is(firstBitMismatch(A.f32(OB + i * (d + 1) * 4, d), A.f32(one, d)), null, `${what} T=${T} token ${i}`);
          }
        }
      }
    }
  }
});
