/** Node file source and sink (node:fs); the engine core never imports this module. */
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { SourceError } from '../errors.js';
import type { Sink, Source } from './types.js';

export class FileSource implements Source {
  private constructor(
    readonly name: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly identity: string,
  ) {}

  static async open(path: string): Promise<FileSource> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw new SourceError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
    }
    const st = await fh.stat();
    return new FileSource(path, fh, st.size, `file:${st.size}:${st.mtimeMs}`);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    let done = 0;
    while (done < into.byteLength) {
      const { bytesRead } = await this.fh.read(into, done, into.byteLength - done, offset + done);
      if (bytesRead === 0) {
        throw new SourceError(`${this.name}: unexpected end of file at ${offset + done} (wanted [${offset}, +${into.byteLength}) of ${this.size})`);
      }
      done += bytesRead;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/**
 * Writes to `path + '.tmp-<pid>'` and renames onto `path` on finish, so a
 * failed or interrupted conversion never leaves a partial file under the real name.
 */
export class FileSink implements Sink {
  private constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
    private readonly tmp: string,
  ) {}

  static async create(path: string): Promise<FileSink> {
    const tmp = `${path}.tmp-${process.pid}`;
    const fh = await open(tmp, 'w');
    return new FileSink(fh, path, tmp);
  }

  async write(offset: number, bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.fh.write(bytes, done, bytes.byteLength - done, offset + done);
      done += bytesWritten;
    }
  }

  async finish(size: number): Promise<void> {
    await this.fh.truncate(size);
    await this.fh.sync();
    await this.fh.close();
    await rename(this.tmp, this.path);
  }

  /** Drop the temporary file (after an error). */
  async abort(): Promise<void> {
    await this.fh.close().catch(() => {});
    await rm(this.tmp, { force: true });
  }
}
