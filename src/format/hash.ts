/**
 * Integrity hashing: xxHash64 (seed 0). Chosen over a cryptographic hash
 * because every streamed chunk is verified on the hot path; the threat is
 * corruption and mixed file versions, not forgery.
 *
 * Two implementations of the same function exist, on purpose:
 *
 * - `xxhash-wasm` (getHasher): a maintained WebAssembly build that runs
 *   unchanged in Node, Deno, browsers and workerd, on any Uint8Array. It runs
 *   in a memory of its own, so it first copies the input there. The writer,
 *   the header, the integrity table and every read outside an arena use it.
 * - our kernel `xxh64` (assembly/xxh64.ts, through ArenaHasher): hashes bytes
 *   in place in the kernels' arena, where streamed FFN chunks and sections
 *   are read. No copy: that copy was most of the per-token "unpack" time.
 *
 * They are kept identical by test/xxh64.test.ts (the kernel against
 * `h64Raw` on random lengths, offsets and seeds, and the reference vectors),
 * and ArenaHasher checks the kernel against `h64Raw` once when it is created.
 */
import xxhash from 'xxhash-wasm';

export interface Hasher {
  /** xxh64 of the bytes as 16 lowercase hex digits. */
  hex(bytes: Uint8Array): string;
  /** xxh64 of the bytes as an unsigned 64-bit integer. */
  u64(bytes: Uint8Array): bigint;
}

let pending: Promise<Hasher> | undefined;

export function getHasher(): Promise<Hasher> {
  pending ??= xxhash().then((api) => ({
    hex: (bytes: Uint8Array) => hex64(api.h64Raw(bytes)),
    u64: (bytes: Uint8Array) => api.h64Raw(bytes),
  }));
  return pending;
}

export function hex64(v: bigint): string {
  return v.toString(16).padStart(16, '0');
}

/** The kernel exports ArenaHasher uses (see `Kernels.xxh64` in src/kernels/types.ts). */
export interface XxhKernels {
  readonly memory: WebAssembly.Memory;
  xxh64(ptr: number, len: number, seedLo: number, seedHi: number, out: number): void;
  xxh64_slot(): number;
}

const MASK32 = 0xffffffffn;

/**
 * xxh64 through the kernels, over views of their memory, in place. The result
 * goes to the module's 8-byte slot (`xxh64_slot()`) and is read back as two
 * u32 halves, so the hot path (`matches`) creates no BigInt.
 */
export class ArenaHasher {
  private readonly slot: number;
  /** kernels.memory.buffer as last seen (the getter is slow enough to matter per record). */
  private buffer: ArrayBuffer;
  private view: DataView;

  /** Throws if the module's xxh64 disagrees with xxhash-wasm (a wrong or stale kernels build). */
  constructor(readonly kernels: XxhKernels, reference: Hasher) {
    this.slot = kernels.xxh64_slot() >>> 0;
    this.buffer = kernels.memory.buffer;
    this.view = new DataView(this.buffer);
    // Self-check on the slot itself (its 8 bytes: the 8-byte tail path, and the ABI).
    const probe = new Uint8Array(this.buffer, this.slot, 8);
    probe.set([0x89, 0x46, 0x4c, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]);
    const want = reference.u64(probe.slice());
    if (this.hash(this.slot, 8) !== want || this.hash(this.slot, 0) !== 0xef46db3751d8e999n) {
      throw new Error('kernels xxh64 does not match xxhash-wasm (rebuild the kernels: npm run build:wasm)');
    }
  }

  /** True when `bytes` is a view of the kernels' memory (so it can be hashed in place). */
  owns(bytes: Uint8Array): boolean {
    if (bytes.buffer === this.buffer) return true;
    const buffer = this.kernels.memory.buffer;
    if (buffer === this.buffer || bytes.buffer !== buffer) return false;
    this.buffer = buffer; // the memory grew: a new buffer (fixed arenas never do)
    this.view = new DataView(buffer);
    return true;
  }

  /** xxh64 of `len` bytes at arena offset `ptr`, seed 0, equals `hi·2^32 + lo`? */
  matches(ptr: number, len: number, lo: number, hi: number): boolean {
    this.kernels.xxh64(ptr, len, 0, 0, this.slot);
    if (this.buffer.byteLength === 0) this.refresh(); // detached: the memory grew since (fixed arenas never do)
    return this.view.getUint32(this.slot, true) === lo && this.view.getUint32(this.slot + 4, true) === hi;
  }

  private refresh(): void {
    this.buffer = this.kernels.memory.buffer;
    this.view = new DataView(this.buffer);
  }

  /** xxh64 of `len` bytes at arena offset `ptr` (the seed is a u64). */
  hash(ptr: number, len: number, seed = 0n): bigint {
    this.kernels.xxh64(ptr, len, Number(seed & MASK32), Number((seed >> 32n) & MASK32), this.slot);
    if (this.buffer.byteLength === 0) this.refresh();
    return this.view.getBigUint64(this.slot, true);
  }

  /** xxh64 of a view of the kernels' memory (see owns()). */
  u64(bytes: Uint8Array, seed = 0n): bigint {
    if (!this.owns(bytes)) throw new RangeError('ArenaHasher: bytes are not a view of the kernels\' memory');
    return this.hash(bytes.byteOffset, bytes.byteLength, seed);
  }
}
