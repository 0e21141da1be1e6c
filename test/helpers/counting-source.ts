/**
 * A network stand-in for cache-tier tests (OPFS, memory): bytes in memory,
 * every read (and readRanges call) recorded, each answer a task later so
 * concurrent reads overlap.
 */
import { SourceError } from '../../src/errors.js';
import { MemorySource } from '../../src/source/memory.js';
import type { Source } from '../../src/source/types.js';

export interface CountingOptions {
  identity?: string;
  name?: string;
  /** Offer readRanges (a multi-range server). */
  ranges?: boolean;
  alignment?: number;
}

export class CountingSource implements Source {
  reads: [number, number][] = [];
  rangeCalls: [number, number][][] = [];
  closed = false;
  /** The next read fails with a SourceError. */
  failNext = false;
  readonly identity: string;
  readonly name: string;
  readonly alignment?: number;
  readonly readRanges?: Source['readRanges'];
  readonly multiRange?: () => Promise<boolean>;

  constructor(
    readonly bytes: Uint8Array,
    opts: CountingOptions = {},
  ) {
    this.identity = opts.identity ?? 'http:etag:"v1"';
    this.name = opts.name ?? 'https://cdn.example/model.flm';
    this.alignment = opts.alignment;
    if (opts.ranges) {
      this.multiRange = async () => true;
      this.readRanges = async (offsets, lengths, ats, from, to, into) => {
        const call: [number, number][] = [];
        for (let i = from; i < to; i++) call.push([offsets[i]!, lengths[i]!]);
        this.rangeCalls.push(call);
        await new Promise((r) => setTimeout(r, 0));
        for (let i = 0; i < call.length; i++) into.set(this.bytes.subarray(call[i]![0], call[i]![0] + call[i]![1]), ats[from + i]!);
      };
    }
  }

  get size() {
    return this.bytes.byteLength;
  }

  async read(offset: number, into: Uint8Array) {
    this.reads.push([offset, into.byteLength]);
    await new Promise((r) => setTimeout(r, 0)); // let concurrent reads overlap
    if (this.failNext) {
      this.failNext = false;
      throw new SourceError('network down');
    }
    await new MemorySource(this.bytes).read(offset, into);
  }

  get readBytes() {
    return this.reads.reduce((s, r) => s + r[1], 0);
  }

  async close() {
    this.closed = true;
  }
}

/** `len` bytes of `src` at `offset`, in a new buffer. */
export async function readAt(src: Source, offset: number, len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len);
  await src.read(offset, out);
  return out;
}
