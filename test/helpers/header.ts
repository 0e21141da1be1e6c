/** Rewriting a .flm header in tests and the fuzzer: so that mutations reach the reader's rules, not its hash check. */
import { PREAMBLE_BYTES } from '../../src/format/layout.js';
import { headerPackr } from '../../src/format/writer.js';
import { getHasher } from '../../src/format/hash.js';

/** `bytes` with `header` encoded in place of the file's header, its length and hash fixed up. */
export async function withHeader(bytes: Uint8Array, header: unknown): Promise<Uint8Array> {
  const hasher = await getHasher();
  const packed = headerPackr.pack(header);
  const out = new Uint8Array(Math.max(bytes.byteLength, PREAMBLE_BYTES + packed.byteLength));
  out.set(bytes);
  const dv = new DataView(out.buffer);
  dv.setUint32(12, packed.byteLength, true);
  dv.setBigUint64(16, hasher.u64(packed), true);
  out.set(packed, PREAMBLE_BYTES);
  return out;
}
