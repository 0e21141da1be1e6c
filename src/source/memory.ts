import { SourceError } from '../errors.js';
import type { Sink, Source } from './types.js';

/** A source over bytes already in memory (tests, embedding, small models). */
export class MemorySource implements Source {
  readonly identity: string;
  constructor(
    readonly bytes: Uint8Array,
    readonly name = 'memory',
  ) {
    this.identity = `memory:${bytes.byteLength}`;
  }
  get size(): number {
    return this.bytes.byteLength;
  }
  async read(offset: number, into: Uint8Array): Promise<void> {
    if (!(offset >= 0) || offset + into.byteLength > this.bytes.byteLength) {
      throw new SourceError(`${this.name}: read [${offset}, +${into.byteLength}) is outside the ${this.bytes.byteLength}-byte source`);
    }
    into.set(this.bytes.subarray(offset, offset + into.byteLength));
  }
  async readInto(offset: number, into: Uint8Array, at: number, length: number): Promise<void> {
    if (!(offset >= 0) || offset + length > this.bytes.byteLength) {
      throw new SourceError(`${this.name}: read [${offset}, +${length}) is outside the ${this.bytes.byteLength}-byte source`);
    }
    if (!(at >= 0 && length >= 0 && at + length <= into.byteLength)) throw new RangeError(`readInto: [${at}, +${length}) is outside the ${into.byteLength}-byte buffer`);
    into.set(this.bytes.subarray(offset, offset + length), at);
  }
  async close(): Promise<void> {}
}

/** A sink that assembles the file in memory (tests, browsers). */
export class MemorySink implements Sink {
  private buf = new Uint8Array(1 << 16);
  private end = 0;
  async write(offset: number, bytes: Uint8Array): Promise<void> {
    const need = offset + bytes.byteLength;
    if (need > this.buf.byteLength) {
      const grown = new Uint8Array(Math.max(need, this.buf.byteLength * 2));
      grown.set(this.buf.subarray(0, this.end));
      this.buf = grown;
    }
    this.buf.set(bytes, offset);
    this.end = Math.max(this.end, need);
  }
  async finish(size: number): Promise<void> {
    if (size < this.end) throw new SourceError(`sink: final size ${size} is smaller than what was written (${this.end})`);
    await this.write(size, new Uint8Array(0));
    this.end = size;
  }
  /** The finished file. */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.end);
  }
}
