import type { Source } from '../../src/source/types.js';

/** `len` bytes of `src` at `offset`, in a new buffer. */
export async function readAt(src: Source, offset: number, len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len);
  await src.read(offset, out);
  return out;
}
