/**
 * Two kernel modules' arenas holding the same bytes at the same offsets, so
 * pointer tables are valid in both: tests run a kernel single-threaded and on
 * pools of threads and compare the outputs byte for byte.
 */
import type { ExecutionContext } from 'ava';
import type { KernelPool } from '../../src/kernels/pool.js';
import type { Kernels } from '../../src/kernels/types.js';

export interface Mirror {
  /** `bytes` at the next 16-aligned offset (plus `misalign`), in both arenas; its offset. */
  alloc(bytes: number, misalign?: number): number;
  /** Copies `src` into both arenas; its offset. */
  put(src: ArrayBufferView, misalign?: number): number;
  /** An output of `n` f32 slots filled with a NaN sentinel (so unwritten outputs show). */
  out(n: number, misalign?: number): number;
  /** First byte offset where the two arenas differ in [p, p + bytes), or -1. */
  diff(p: number, bytes: number): number;
  /** Starts placing at the first offset again. */
  reset(): void;
}

/** Places from `start` up to `end` (a RangeError past it) in the arenas of `a` and `b`. */
export function mirror(a: Kernels, b: Kernels, start: number, end = Math.min(a.memory.buffer.byteLength, b.memory.buffer.byteLength)): Mirror {
  let cur = start;
  const alloc = (bytes: number, misalign = 0): number => {
    const p = ((cur + 15) & ~15) + misalign;
    cur = p + bytes + 16;
    if (cur > end) throw new RangeError('test arena exhausted');
    return p;
  };
  const put = (src: ArrayBufferView, misalign = 0): number => {
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    const p = alloc(bytes.length, misalign);
    new Uint8Array(a.memory.buffer).set(bytes, p);
    new Uint8Array(b.memory.buffer).set(bytes, p);
    return p;
  };
  return {
    alloc,
    put,
    out: (n, misalign = 0) => put(new Uint32Array(n).fill(0x7fc0dead), misalign),
    diff(p, bytes) {
      const x = new Uint8Array(a.memory.buffer, p, bytes), y = new Uint8Array(b.memory.buffer, p, bytes);
      for (let i = 0; i < bytes; i++) if (x[i] !== y[i]) return i;
      return -1;
    },
    reset: () => void (cur = start),
  };
}

/**
 * Runs `call` with the single-threaded kernels `st`, then with each pool's
 * (on the mirror's other arena), each from the outputs' initial bytes; the
 * outputs [ptr, f32 count] must match byte for byte.
 */
export function sameOnPools(t: ExecutionContext, m: Mirror, st: Kernels, pools: ReadonlyMap<number, KernelPool>, what: string, outputs: [number, number][], call: (k: Kernels) => void): void {
  const init = outputs.map(([p, n]) => new Uint8Array(st.memory.buffer, p, n * 4).slice());
  call(st);
  for (const [threads, pool] of pools) {
    outputs.forEach(([p], i) => new Uint8Array(pool.kernels.memory.buffer).set(init[i]!, p));
    call(pool.kernels);
    for (const [p, n] of outputs) {
      const at = m.diff(p, n * 4);
      t.is(at, -1, `${what}, ${threads} thread(s): first differing byte ${at} of ${n * 4}`);
    }
  }
}
