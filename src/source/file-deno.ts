/**
 * Local files in Deno: `Deno.open` + seek/read, no `node:` import (Deno runs
 * node:fs too, but its own API needs no compatibility layer and no
 * permission beyond --allow-read). Used by src/deno.ts.
 */
import { SourceError } from '../errors.js';
import { mergeHints } from './http-common.js';
import type { ReadHints, Source } from './types.js';

/** The part of Deno's API this file uses (declared here: the build's types are Node's). */
interface DenoFsFile {
  seek(offset: number, whence: number): Promise<number>;
  read(into: Uint8Array): Promise<number | null>;
  stat(): Promise<{ size: number; mtime: Date | null; isFile: boolean }>;
  close(): void;
}
interface DenoApi {
  open(path: string | URL, options: { read: boolean }): Promise<DenoFsFile>;
}

/** `Deno`, or undefined outside Deno. */
export function denoApi(): DenoApi | undefined {
  return (globalThis as unknown as { Deno?: DenoApi }).Deno;
}

/** Local flash read shape: the same measured defaults as Node's FileSource (FILE_HINTS in file-node.ts). */
export const DENO_FILE_HINTS: Readonly<ReadHints> = Object.freeze({ mergeGap: 16 * 1024, maxRead: 1024 * 1024, parallel: 8 });

const SEEK_START = 0;

export class DenoFileSource implements Source {
  /** seek + read is two calls on one file position: reads take turns. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly name: string,
    private readonly file: DenoFsFile,
    readonly size: number,
    readonly identity: string,
    readonly hints: ReadHints,
  ) {}

  static async open(path: string | URL, options: { hints?: Partial<ReadHints> } = {}): Promise<DenoFileSource> {
    const deno = denoApi();
    const name = path instanceof URL ? path.pathname : path;
    if (!deno) throw new SourceError(`${name}: DenoFileSource needs the Deno runtime`);
    const hints = mergeHints(DENO_FILE_HINTS, options.hints);
    let file: DenoFsFile;
    try {
      file = await deno.open(path, { read: true });
    } catch (e) {
      throw new SourceError(`${name}: cannot open: ${(e as Error).message}`, { cause: e });
    }
    try {
      const st = await file.stat();
      if (!st.isFile) throw new SourceError(`${name}: not a regular file`);
      return new DenoFileSource(name, file, st.size, `file:${st.size}:${st.mtime?.getTime() ?? 0}`, hints);
    } catch (e) {
      file.close();
      throw e instanceof SourceError ? e : new SourceError(`${name}: cannot stat: ${(e as Error).message}`, { cause: e });
    }
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    const run = this.queue.then(() => this.readNow(offset, into));
    this.queue = run.catch(() => {});
    return run;
  }

  private async readNow(offset: number, into: Uint8Array): Promise<void> {
    if (this.closed) throw new SourceError(`${this.name}: read after close`);
    const len = into.byteLength;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > this.size) {
      throw new SourceError(`${this.name}: read [${offset}, +${len}) is outside the ${this.size}-byte file`);
    }
    try {
      await this.file.seek(offset, SEEK_START);
      let got = 0;
      while (got < len) {
        const n = await this.file.read(into.subarray(got));
        if (n === null || n === 0) throw new SourceError(`${this.name}: unexpected end of file at ${offset + got}`);
        got += n;
      }
    } catch (e) {
      throw e instanceof SourceError ? e : new SourceError(`${this.name}: read [${offset}, +${len}) failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    this.file.close();
  }
}
