import type { ReadHints, Source } from './types.js';

/** A Source in front of another (a cache tier): what describes the file is the inner source's. */
export abstract class WrappingSource {
  constructor(readonly inner: Source) {}

  get name(): string {
    return this.inner.name;
  }
  get size(): number {
    return this.inner.size;
  }
  get identity(): string {
    return this.inner.identity;
  }
  get hints(): ReadHints | undefined {
    return this.inner.hints;
  }
  get alignment(): number | undefined {
    return this.inner.alignment;
  }
}
