/**
 * The fixed WebAssembly memory arena. Everything the engine touches per token
 * lives here, laid out once at open with a bump allocator; nothing is
 * allocated afterwards, and the memory never grows past its budget.
 */
import { ArgumentError, BudgetError } from '../errors.js';

export const WASM_PAGE = 65536;
/** wasm32 addresses 4 GiB at most. */
export const MAX_ARENA_BYTES = 65536 * WASM_PAGE;

/** Anything that hands out arena regions: the arena itself, or a counter that sizes a layout before the arena exists. */
export interface Allocator {
  alloc(name: string, bytes: number, align?: number): number;
}

/**
 * Runs a layout without memory: the same allocation code that places regions
 * in the arena, so the planner's size and the real layout cannot disagree.
 */
export class CountingAllocator implements Allocator {
  bytes = 0;
  alloc(_name: string, bytes: number, align = 64): number {
    const ptr = alignUp(this.bytes, align);
    this.bytes = ptr + bytes;
    return ptr;
  }
}

export class Arena implements Allocator {
  private top: number;
  /** Named regions, for stats and error messages. */
  readonly regions: { name: string; ptr: number; bytes: number }[] = [];

  constructor(
    readonly memory: WebAssembly.Memory,
    /** First usable byte (after the kernel module's static data). */
    readonly base: number,
  ) {
    this.top = alignUp(base, 64);
  }

  /** Total arena bytes (the budget). */
  get size(): number {
    return this.memory.buffer.byteLength;
  }

  get used(): number {
    return this.top;
  }

  get free(): number {
    return this.size - this.top;
  }

  /** Reserves `bytes` (64-byte aligned); throws BudgetError when the arena is full. */
  alloc(name: string, bytes: number, align = 64): number {
    const ptr = alignUp(this.top, align);
    if (ptr + bytes > this.size) {
      throw new BudgetError(
        `memory budget of ${fmtBytes(this.size)} cannot hold ${name} (${fmtBytes(bytes)}); ${fmtBytes(this.size - ptr)} left after ${this.regions.map((r) => `${r.name} ${fmtBytes(r.bytes)}`).join(', ')}`,
      );
    }
    this.top = ptr + bytes;
    this.regions.push({ name, ptr, bytes });
    return ptr;
  }

  u8(ptr: number, bytes: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, ptr, bytes);
  }

  f32(ptr: number, count: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, count);
  }
}

export const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** Parses '512M', '2GiB', '1.5G', '100000' (bytes); anything else is an ArgumentError. */
export function parseBytes(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(s);
  if (!m) throw new ArgumentError(`${JSON.stringify(s)} is not a memory size: use bytes or a number with K, M, G or T (e.g. 512M, 1.5G, 2GiB)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.floor(parseFloat(m[1]!) * mult);
}

/** A size option as given (bytes, or a string parseBytes reads); undefined stays undefined. */
export function sizeOption(v: number | string | undefined): number | undefined {
  return typeof v === 'string' ? parseBytes(v) : v;
}
