/**
 * Two kernel modules' arenas holding the same bytes at the same offsets, so
 * pointer tables are valid in both: tests that run a kernel single-threaded
 * and on a pool of threads compare their outputs byte for byte.
 */
import type { Kernels } from '../../src/kernels/types.js';

export interface Mirror {
  /** Copies `src` into both arenas (16-aligned, plus `misalign` bytes); its offset. */
  put(src: ArrayBufferView, misalign?: number): number;
  /** An output of `n` f32 slots, filled with a NaN pattern. */
  out(n: number): number;
  /** Starts placing at the first offset again. */
  reset(): void;
}

export function mirror(a: Kernels, b: Kernels, start: number): Mirror {
  let cur = start;
  const put = (src: ArrayBufferView, misalign = 0): number => {
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    const p = ((cur + 15) & ~15) + misalign;
    cur = p + bytes.length + 16;
    new Uint8Array(a.memory.buffer).set(bytes, p);
    new Uint8Array(b.memory.buffer).set(bytes, p);
    return p;
  };
  return { put, out: (n) => put(new Uint32Array(n).fill(0x7fc0dead)), reset: () => void (cur = start) };
}
