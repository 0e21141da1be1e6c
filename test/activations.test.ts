/**
 * Gated FFN activations in the kernels (assembly/activation.ts act_gate/act_up:
 * SiLU, ReLU, FATReLU, dReLU) through every gated kernel family and dtype:
 *  - ffn_swiglu_* (h against a float64 reference written from the definitions;
 *    exact zeros where the reference is clearly inactive), its _ptrs form bit for bit;
 *  - gate_act_* + ffn_gated_*_ptrs (the gate-mode split) give the same h;
 *  - ffn_swiglu_*_batch equals the one-token kernel per token, bit for bit;
 *  - the threads build (pool.ts, 1-3 threads) is byte-identical to the single-threaded module.
 */
import test, { type ExecutionContext } from 'ava';
import { createArena, loadKernels, DEFAULT_MT_WASM_URL, DEFAULT_WASM_URL } from '../src/kernels/load.js';
import { createPool, poolBytes, type KernelPool } from '../src/kernels/pool.js';
import { mirror, sameOnPools, type Mirror } from './helpers/mirror.js';
import type { Kernels } from '../src/kernels/types.js';
import { rng, normalish, buildRecords, dot64, quantErrBound, F32_REL, type Dtype, type FfnLayout } from './helpers/kernel-reference.js';

const ARENA = 64 << 20;
const DATA = 8 << 20;
const T_BATCH = 3;
const LIMITS = { maxPositions: 64, maxNeurons: 1024, maxDim: 1024, batchScratchBytes: 0 };

let st: Kernels;
let mt: Kernels;
const pools = new Map<number, KernelPool>();

test.before(async () => {
  st = await loadKernels(createArena(ARENA), DEFAULT_WASM_URL);
  mt = await loadKernels(createArena(ARENA, { shared: true }), DEFAULT_MT_WASM_URL);
  LIMITS.batchScratchBytes = mt.batch_scratch_bytes(T_BATCH, 512);
  let region = Math.ceil(mt.heap_base() / 64) * 64;
  for (const threads of [1, 2, 3]) {
    const bytes = poolBytes(mt, threads, LIMITS);
    pools.set(threads, await createPool(mt, { threads, region, ...LIMITS, minWork: 0 }));
    region += Math.ceil(bytes / 64) * 64;
  }
  if (region > DATA) throw new Error('pool regions overlap the test data');
  arenas = mirror(st, mt, DATA);
});

test.after.always(async () => {
  for (const p of pools.values()) await p.close();
});

/** Same bytes at the same offsets in both arenas (pointer tables valid in both); made once the modules are. */
let arenas: Mirror;
const put = (src: ArrayBufferView): number => arenas.put(src);
const out = (n: number): number => arenas.out(n);
const f32 = (k: Kernels, p: number, n: number) => new Float32Array(k.memory.buffer, p, n).slice();
const bitsEqual = (a: Float32Array, b: Float32Array) => a.length === b.length && new Uint32Array(a.buffer).every((v, i) => v === new Uint32Array(b.buffer)[i]);

/** The single-threaded call, then each pool's: outputs [ptr, f32 count] byte for byte. */
const check = (t: ExecutionContext, what: string, outputs: [number, number][], call: (k: Kernels) => void): void => sameOnPools(t, arenas, st, pools, what, outputs, call);

const sfx = (d: Dtype) => (d === 'int8' ? 'i8' : d);

/** The activations under test: kernel code, threshold, and the definition (float64). */
const ACTS = [
  { name: 'silu', afn: 0, athr: 0 },
  { name: 'relu', afn: 1, athr: 0 },
  { name: 'fatrelu', afn: 2, athr: 0.05 },
  { name: 'drelu', afn: 3, athr: 0 },
] as const;
type Act = (typeof ACTS)[number];
const gateHalf = (a: Act, g: number): number => (a.afn === 0 ? g / (1 + Math.exp(-g)) : a.afn === 2 ? (g > Math.fround(a.athr) ? g : 0) : Math.max(g, 0));
const upHalf = (a: Act, u: number): number => (a.afn === 3 ? Math.max(u, 0) : u);

for (const dtype of ['f32', 'f16', 'int8', 'q8'] as Dtype[]) {
  for (const a of ACTS) {
    test.serial(`${a.name} ${dtype}: ffn_swiglu (+_ptrs, gate split, batch) against the definition; threads byte-identical`, (t) => {
      let seed = 100 * a.afn + dtype.length;
      const s = sfx(dtype);
      for (const [d, n] of [[29, 70], [136, 203]] as const) {
        arenas.reset();
        const r = rng(seed++);
        const L: FfnLayout = { dtype, kind: 'swiglu', d, n, hasBias: false, bundled: d % 2 === 0 };
        const R = buildRecords(L, [0, 1, 2].map(() => normalish(r, n * d, 0.3)), null, r);
        const base = put(R.bytes);
        const p = R.partOff.map((o) => base + o);
        const xs = Array.from({ length: T_BATCH }, () => normalish(r, d));
        const X = put(Float32Array.from(xs.flatMap((x) => [...x])));
        const O = out(d), H = out(n);

        // reference: h within the dots' error bounds; clearly inactive neurons exactly 0
        st[`ffn_swiglu_${s}`](O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, a.afn, a.athr);
        const h = f32(st, H, n);
        const qe = dtype === 'int8' || dtype === 'q8' ? quantErrBound(xs[0]!) : null;
        const err = (part: Float32Array, i: number, abs: number) => {
          let e = F32_REL * abs + 1e-30;
          if (qe) for (let j = 0; j < d; j++) e += Math.abs(part[i * d + j]!) * qe[j]!;
          return e;
        };
        let zeros = 0, checked = 0;
        for (let i = 0; i < n; i++) {
          const g = dot64(R.deq[0]!, i * d, xs[0]!, d), u = dot64(R.deq[1]!, i * d, xs[0]!, d);
          const eg = err(R.deq[0]!, i, g.abs), eu = err(R.deq[1]!, i, u.abs);
          const edge = a.afn === 0 ? Infinity : a.afn === 2 ? Math.fround(a.athr) : 0;
          if (Math.abs(g.v - edge) <= eg || (a.afn === 3 && Math.abs(u.v) <= eu)) continue; // at the kink/jump: either side is right
          const want = gateHalf(a, g.v) * upHalf(a, u.v);
          const tol = 1.1 * eg * (Math.abs(u.v) + eu) + Math.abs(gateHalf(a, g.v)) * eu + F32_REL * Math.abs(want);
          checked++;
          if (want === 0) {
            zeros++;
            t.true(h[i] === 0, `${a.name} ${dtype} neuron ${i}: inactive must be exactly ±0, got ${h[i]}`);
          } else t.true(Math.abs(h[i]! - want) <= tol, `${a.name} ${dtype} neuron ${i}: ${h[i]} vs ${want} ± ${tol}`);
        }
        t.true(checked > n / 2);
        if (a.afn !== 0) t.true(zeros > n / 4, `${a.name}: inactive neurons (${zeros})`);
        const o1 = f32(st, O, d);

        // _ptrs over all neurons: bit for bit
        const table = new Uint32Array(n * 3);
        for (let i = 0; i < n; i++) for (let q = 0; q < 3; q++) table[3 * i + q] = p[q]! + i * R.stride;
        const P = put(table), O2 = out(d), H2 = out(n);
        st[`ffn_swiglu_${s}_ptrs`](O2, X, d, P, n, H2, a.afn, a.athr);
        t.true(bitsEqual(f32(st, O2, d), o1) && bitsEqual(f32(st, H2, n), h), `${a.name} ${dtype} _ptrs`);

        // gate split: gate_act = the gate half; ffn_gated over every neuron gives the same h and out
        const ACT = out(n);
        st[`gate_act_${s}`](ACT, X, d, n, p[0]!, R.stride, a.afn, a.athr);
        const act = f32(st, ACT, n);
        for (let i = 0; i < n; i++) {
          const g = dot64(R.deq[0]!, i * d, xs[0]!, d);
          const edge = a.afn === 2 ? Math.fround(a.athr) : 0;
          if (a.afn !== 0 && g.v < edge - err(R.deq[0]!, i, g.abs)) t.is(act[i], 0, `gate_act ${a.name} ${dtype} neuron ${i}`);
        }
        const ud = new Uint32Array(n * 2);
        for (let i = 0; i < n; i++) { ud[2 * i] = p[1]! + i * R.stride; ud[2 * i + 1] = p[2]! + i * R.stride; }
        const PD = put(ud), O3 = out(d), H3 = out(n);
        st[`ffn_gated_${s}_ptrs`](O3, X, d, PD, n, ACT, H3, a.afn, a.athr);
        const h3 = f32(st, H3, n);
        for (let i = 0; i < n; i++) t.true(Math.abs(h3[i]! - h[i]!) <= 1e-5 * (1 + Math.abs(h[i]!)) && (h3[i] === 0) === (h[i] === 0), `${a.name} ${dtype} gated h ${i}: ${h3[i]} vs ${h[i]}`);

        // batch: each token bit-identical to the one-token kernel
        const OB = out(T_BATCH * d), HB = out(T_BATCH * n), S = put(new Uint8Array(st.batch_scratch_bytes(T_BATCH, d)));
        st[`ffn_swiglu_${s}_batch`](OB, d * 4, X, d * 4, T_BATCH, d, n, p[0]!, p[1]!, p[2]!, R.stride, HB, S, a.afn, a.athr);
        for (let k = 0; k < T_BATCH; k++) {
          const O1 = out(d), H1 = out(n);
          st[`ffn_swiglu_${s}`](O1, X + k * d * 4, d, n, p[0]!, p[1]!, p[2]!, R.stride, H1, a.afn, a.athr);
          t.true(bitsEqual(f32(st, OB + k * d * 4, d), f32(st, O1, d)), `${a.name} ${dtype} batch token ${k}`);
        }

        // threads: byte-identical over 1-3 threads
        check(t, `ffn_swiglu_${s} ${a.name}`, [[O, d], [H, n]], (k) => k[`ffn_swiglu_${s}`](O, X, d, n, p[0]!, p[1]!, p[2]!, R.stride, H, a.afn, a.athr));
        check(t, `ffn_swiglu_${s}_ptrs ${a.name}`, [[O2, d], [H2, n]], (k) => k[`ffn_swiglu_${s}_ptrs`](O2, X, d, P, n, H2, a.afn, a.athr));
        check(t, `gate_act_${s} ${a.name}`, [[ACT, n]], (k) => k[`gate_act_${s}`](ACT, X, d, n, p[0]!, R.stride, a.afn, a.athr));
        check(t, `ffn_gated_${s}_ptrs ${a.name}`, [[O3, d], [H3, n]], (k) => k[`ffn_gated_${s}_ptrs`](O3, X, d, PD, n, ACT, H3, a.afn, a.athr));
        check(t, `ffn_swiglu_${s}_batch ${a.name}`, [[OB, T_BATCH * d]], (k) =>
          k[`ffn_swiglu_${s}_batch`](OB, d * 4, X, d * 4, T_BATCH, d, n, p[0]!, p[1]!, p[2]!, R.stride, HB, S, a.afn, a.athr));
      }
    });
  }
}
