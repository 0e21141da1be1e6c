/**
 * Integrity hashing: xxHash64 (seed 0) through `xxhash-wasm`, a maintained
 * WebAssembly build that runs unchanged in Node, Deno, browsers and workerd.
 * Chosen over a cryptographic hash because every streamed chunk is verified on
 * the hot path; the threat is corruption and mixed file versions, not forgery.
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
