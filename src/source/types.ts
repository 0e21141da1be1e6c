/**
 * The flash tier: anything that can read `into.byteLength` bytes at a 64-bit
 * file offset (JS numbers are exact to 2^53, so offsets are never 32-bit).
 */
export interface Source {
  /** For messages: a path or URL. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Changes when the underlying file changes (ETag, mtime+size, ...). */
  readonly identity: string;
  /** Fill `into` entirely with the bytes at [offset, offset + into.byteLength); throws SourceError otherwise. */
  read(offset: number, into: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** A destination for the .flm writer: positioned writes, then the final size. */
export interface Sink {
  write(offset: number, bytes: Uint8Array): Promise<void>;
  /** All writes are done; the file is `size` bytes (gaps read as zeros). */
  finish(size: number): Promise<void>;
}
