// XXH64 (xxHash 64-bit, https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md)
// over bytes already in the arena, so verifying a streamed chunk needs no copy
// into another module's memory. It is the reference algorithm step for step:
// four lanes over 32-byte stripes, the lanes merged, then 8-, 4- and 1-byte
// tails and the avalanche. Loads are little-endian and may be unaligned (wasm
// loads are both). The host checks it against xxhash-wasm (test/xxh64.test.ts).

import { SLOT } from "./arena";

// @ts-ignore: decorator
@inline const P1: u64 = 0x9E3779B185EBCA87;
// @ts-ignore: decorator
@inline const P2: u64 = 0xC2B2AE3D27D4EB4F;
// @ts-ignore: decorator
@inline const P3: u64 = 0x165667B19E3779F9;
// @ts-ignore: decorator
@inline const P4: u64 = 0x85EBCA77C2B2AE63;
// @ts-ignore: decorator
@inline const P5: u64 = 0x27D4EB2F165667C5;

// SLOT (arena.ts, this instance's scratch): 8 bytes for callers that have no
// arena space of their own (xxh64_slot()).

// @ts-ignore: decorator
@inline function round(acc: u64, input: u64): u64 {
  return rotl<u64>(acc + input * P2, 31) * P1;
}

// @ts-ignore: decorator
@inline function merge(h: u64, v: u64): u64 {
  return (h ^ round(0, v)) * P1 + P4;
}

/** xxh64 of the `len` bytes at `ptr` with the given seed. */
function hash(ptr: usize, len: usize, seed: u64): u64 {
  let h: u64;
  if (len >= 32) {
    let v1 = seed + P1 + P2;
    let v2 = seed + P2;
    let v3 = seed;
    let v4 = seed - P1;
    // Two stripes per iteration. The four lanes are independent chains, so
    // the CPU already overlaps them: 1, 2 and 4 stripes per iteration measured
    // the same (11-13 GB/s on a 2-core EPYC VM), the bound being the two
    // 64-bit multiplies per 8 bytes. (wasm SIMD has no fast i64x2.mul on x64.)
    // Loops count iterations, never compare with ptr + k: that wraps when the
    // bytes end exactly at the top of a 4 GiB memory.
    for (let n = len >> 6; n; n--) {
      v1 = round(v1, load<u64>(ptr));
      v2 = round(v2, load<u64>(ptr, 8));
      v3 = round(v3, load<u64>(ptr, 16));
      v4 = round(v4, load<u64>(ptr, 24));
      v1 = round(v1, load<u64>(ptr, 32));
      v2 = round(v2, load<u64>(ptr, 40));
      v3 = round(v3, load<u64>(ptr, 48));
      v4 = round(v4, load<u64>(ptr, 56));
      ptr += 64;
    }
    if (len & 32) {
      v1 = round(v1, load<u64>(ptr));
      v2 = round(v2, load<u64>(ptr, 8));
      v3 = round(v3, load<u64>(ptr, 16));
      v4 = round(v4, load<u64>(ptr, 24));
      ptr += 32;
    }
    h = rotl<u64>(v1, 1) + rotl<u64>(v2, 7) + rotl<u64>(v3, 12) + rotl<u64>(v4, 18);
    h = merge(h, v1);
    h = merge(h, v2);
    h = merge(h, v3);
    h = merge(h, v4);
  } else {
    h = seed + P5;
  }
  h += <u64>len;
  // The tail: len mod 32 bytes, as 8-byte words, then at most one 4-byte word, then single bytes.
  for (let n = (len >> 3) & 3; n; n--) {
    h = rotl<u64>(h ^ round(0, load<u64>(ptr)), 27) * P1 + P4;
    ptr += 8;
  }
  if (len & 4) {
    h = rotl<u64>(h ^ (<u64>load<u32>(ptr) * P1), 23) * P2 + P3;
    ptr += 4;
  }
  for (let n = len & 3; n; n--) {
    h = rotl<u64>(h ^ (<u64>load<u8>(ptr) * P5), 11) * P1;
    ptr++;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

/**
 * xxh64 of the `len` bytes at `ptr` with seed `seedHi·2^32 + seedLo` (0, 0 for
 * the .flm integrity hash), written as a u64 little-endian to `out` (any alignment).
 */
export function xxh64(ptr: usize, len: usize, seedLo: u32, seedHi: u32, out: usize): void {
  store<u64>(out, hash(ptr, len, (<u64>seedHi << 32) | <u64>seedLo));
}

/** An 8-byte slot in the module's static area (below heap_base) that callers may pass as xxh64's `out`. */
export function xxh64_slot(): usize {
  return SLOT;
}
