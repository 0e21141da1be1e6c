/** Node file source and sink (node:fs); the engine core never imports this module. */
import { constants as fsConstants, read as fsRead } from 'node:fs';
import { open, rename, rm, statfs, type FileHandle } from 'node:fs/promises';
import { SourceError } from '../errors.js';
import { mergeHints } from './http-common.js';
import type { ReadHints, Sink, Source } from './types.js';

export interface FileSourceOptions {
  /**
   * Bypass the page cache (Linux O_DIRECT). Reads then go straight to the
   * device, so memory use is what the arena says and benchmarks measure the
   * disk; `alignment` becomes 4096. Fails with a SourceError where O_DIRECT
   * is not available (other OSes, tmpfs, procfs, ...).
   */
  direct?: boolean;
  /** Overrides of the measured default hints. */
  hints?: Partial<ReadHints>;
}

/**
 * Default read shape for local flash, measured by bench/sources.ts (O_DIRECT,
 * 512 MiB file, virtio SSD): a read costs ~0.13 ms + bytes at ~1.1 GB/s one
 * at a time, ~0.04 ms amortized with 8 in flight, so reading through a gap
 * beats a separate read up to ~46-63 KiB. bench:flash on the OPT fixture
 * (window k=4, O_DIRECT) ran as fast with a 16 KiB gap as with 64 KiB while
 * reading 3x fewer bytes (5.8% vs 16% of the FFN), so mergeGap is 16 KiB; throughput
 * plateaus (~1-1.3 GB/s) from 256 KiB-1 MiB reads with 4+ in flight
 * (maxRead 1 MiB, so long ranges still spread over the queue); 8 in flight
 * beat 4 by 20-50% and 16 added little (parallel 8 for buffered reads, whose
 * hits never reach the disk; direct reads: directHints, as many as libuv's
 * pool runs at once).
 */
export const FILE_HINTS: Readonly<ReadHints> = Object.freeze({ mergeGap: 16 * 1024, maxRead: 1024 * 1024, parallel: 8 });

/** libuv's thread-pool bounds (uv_threadpool: MAX_THREADPOOL_SIZE, and the size when UV_THREADPOOL_SIZE is unset). */
const MAX_POOL = 1024;
const DEFAULT_POOL = 4;

/**
 * The size of libuv's thread pool as libuv computes it when the pool starts:
 * UV_THREADPOOL_SIZE through atoi (0 or not a number: 1; above 1024: 1024),
 * 4 when unset. Node runs each file read on that pool as one blocking pread
 * per thread, so this is how many reads can be in flight. The variable
 * counts only if it is in the environment before the pool's first job, and
 * loading an ES module entry is one: the flashlm launcher (bin/flashlm.js,
 * CommonJS) sets it from --io-depth (default 16); a program using flashlm
 * sets it when starting Node (`UV_THREADPOOL_SIZE=16 node app.mjs`) or in a
 * CommonJS entry before its first import.
 */
export function threadPoolSize(env: Record<string, string | undefined> = process.env): number {
  const v = env.UV_THREADPOOL_SIZE;
  if (v === undefined) return DEFAULT_POOL;
  const n = Number.parseInt(v.trim(), 10);
  if (!Number.isFinite(n) || n === 0) return 1;
  return n < 0 || n > MAX_POOL ? MAX_POOL : n;
}

/**
 * Default hints of a direct (O_DIRECT) source: FILE_HINTS with `parallel` the
 * size of libuv's pool, at least FILE_HINTS' 8. Each direct read holds a pool
 * thread for its whole latency (~0.1-0.4 ms), so the pool caps the device's
 * queue depth; a few reads queued beyond it keep the threads busy between
 * completions (pool 4: 8 in flight beat 4 by 20-40%). bench/sources.ts
 * --only=depth (2.5 GB file; a virtio disk whose 16 KiB random reads top out
 * at ~0.5 GB/s with fio, 16 in flight): 16 KiB reads plateau at ~0.12 GB/s
 * with the default pool of 4 and reach ~0.2-0.26 GB/s with 32-64 threads at
 * 32+ in flight; end to end (window, OPT-1.3B shape) I/O per token fell 30%
 * from 4 to 16 and no further at 32 or 64, hence the launcher's 16.
 */
export function directHints(env: Record<string, string | undefined> = process.env): ReadHints {
  return { ...FILE_HINTS, parallel: Math.max(FILE_HINTS.parallel, threadPoolSize(env)) };
}

/** O_DIRECT granularity used for offsets, lengths and buffer addresses. */
export const DIRECT_ALIGNMENT = 4096;
/** The aligned bounce buffer for unaligned direct reads (allocated once per source). */
const BOUNCE_BYTES = 1024 * 1024;
/** statfs f_type of filesystems whose files live in the page cache itself (others without O_DIRECT fail the open with EINVAL). */
const MEMORY_FS: Record<number, string> = { 0x01021994: 'tmpfs', 0x858458f6: 'ramfs' };

export interface DirectReadStats {
  /** Reads that went from the device straight into the caller's buffer. */
  direct: number;
  /** Reads (or their tails) that went through the bounce buffer: unaligned offset, length or buffer. */
  bounced: number;
}

export class FileSource implements Source {
  readonly alignment?: number;
  /** Counts by path taken (direct mode only); lets tests and benchmarks see the fallback. */
  readonly stats: DirectReadStats = { direct: 0, bounced: 0 };
  /** Buffers known to sit at an unaligned address (byteOffset aligned, pread said EINVAL). */
  private readonly misaligned = new WeakSet<ArrayBufferLike>();
  /** Serializes use of the single bounce buffer. */
  private bounceLock: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly name: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly identity: string,
    /** Page-aligned (WebAssembly.Memory) when direct; undefined otherwise. */
    private readonly bounce: Uint8Array | undefined,
    readonly hints: ReadHints,
  ) {
    if (bounce) this.alignment = DIRECT_ALIGNMENT;
  }

  get direct(): boolean {
    return this.bounce !== undefined;
  }

  static async open(path: string, options: FileSourceOptions = {}): Promise<FileSource> {
    const hints = mergeHints(options.direct ? directHints() : FILE_HINTS, options.hints);
    if (options.direct) return FileSource.openDirect(path, hints);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw new SourceError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close().catch(() => {});
      throw new SourceError(`${path}: ${st.isDirectory() ? 'is a directory' : 'not a regular file'}, not a .flm file`);
    }
    return new FileSource(path, fh, st.size, `file:${st.size}:${st.mtimeMs}`, undefined, hints);
  }

  private static async openDirect(path: string, hints: ReadHints): Promise<FileSource> {
    const O_DIRECT = (fsConstants as { O_DIRECT?: number }).O_DIRECT;
    if (!O_DIRECT) {
      throw new SourceError(`${path}: direct I/O (O_DIRECT) is not available on ${process.platform}; open without { direct: true }`);
    }
    // Kernels since 6.6 accept O_DIRECT on tmpfs, but there it is the page cache: refuse rather than pretend.
    const fsType = await statfs(path).then(
      (s) => MEMORY_FS[s.type],
      () => undefined, // a missing file is reported by open() below
    );
    if (fsType) throw new SourceError(`${path}: is on ${fsType}, which cannot bypass the page cache; direct I/O needs a file on a disk`);
    let fh: FileHandle;
    try {
      fh = await open(path, fsConstants.O_RDONLY | O_DIRECT);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EINVAL') throw new SourceError(`${path}: the filesystem does not support direct I/O (O_DIRECT: EINVAL)`, { cause: e });
      throw new SourceError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new SourceError(`${path}: ${st.isDirectory() ? 'is a directory' : 'not a regular file'}, not a .flm file`);
      // WebAssembly memory is mmap'ed: its base is page-aligned, which an ArrayBuffer's is not.
      const bounce = new Uint8Array(new WebAssembly.Memory({ initial: BOUNCE_BYTES / 65536 }).buffer);
      // Some filesystems accept the flag at open and fail the reads: find out now.
      if (st.size > 0) {
        try {
          await fh.read(bounce, 0, DIRECT_ALIGNMENT, 0);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          const why = code === 'EINVAL' ? 'the filesystem does not support direct I/O (aligned read: EINVAL)' : `cannot read: ${(e as Error).message}`;
          throw new SourceError(`${path}: ${why}`, { cause: e });
        }
      }
      return new FileSource(path, fh, st.size, `file:${st.size}:${st.mtimeMs}`, bounce, hints);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    return this.readInto(offset, into, 0, into.byteLength);
  }

  /**
   * One pread into `into[at, at + length)`: fs.read's callback form on the
   * handle's fd. FileHandle.read costs more per read: 20 KiB O_DIRECT random
   * reads, 16 in flight, on the 2-core VM went from 460-570 to 565-680 MB/s
   * and from 27-30 to 23 µs of CPU per read.
   */
  private pread(into: Uint8Array, at: number, length: number, position: number): Promise<number> {
    return new Promise((resolve, reject) => fsRead(this.fh.fd, into, at, length, position, (e, n) => (e ? reject(e) : resolve(n))));
  }

  /** read() into `into[at, at + length)`: pread fills the caller's buffer at that offset, no view needed. */
  async readInto(offset: number, into: Uint8Array, at: number, length: number): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new SourceError(`${this.name}: invalid read offset ${offset}`);
    if (!(at >= 0 && length >= 0 && at + length <= into.byteLength)) throw new RangeError(`readInto: [${at}, +${length}) is outside the ${into.byteLength}-byte buffer`);
    if (this.bounce) return this.readDirect(offset, at === 0 && length === into.byteLength ? into : into.subarray(at, at + length));
    let done = 0;
    while (done < length) {
      const bytesRead = await this.pread(into, at + done, length - done, offset + done);
      if (bytesRead === 0) {
        throw new SourceError(`${this.name}: unexpected end of file at ${offset + done} (wanted [${offset}, +${length}) of ${this.size})`);
      }
      done += bytesRead;
    }
  }

  /**
   * Aligned offset, length and buffer: one pread straight into `into` for
   * the whole blocks inside the file. A read may run past the end of the
   * file; the block holding EOF then goes through the bounce buffer, because
   * the kernel zero-fills a direct read's buffer past EOF (ext4 clears the
   * whole requested range) and the bytes past the end must stay untouched.
   * Anything unaligned goes through the bounce buffer and must lie inside
   * the file.
   */
  private async readDirect(offset: number, into: Uint8Array): Promise<void> {
    const A = DIRECT_ALIGNMENT;
    const len = into.byteLength;
    if (len === 0) return;
    const alignedRange = offset % A === 0 && len % A === 0;
    if (!alignedRange && offset + len > this.size) {
      throw new SourceError(`${this.name}: read [${offset}, +${len}) runs past the end of the ${this.size}-byte file (allowed only for ${A}-aligned reads)`);
    }
    if (!alignedRange || into.byteOffset % A !== 0 || this.misaligned.has(into.buffer)) {
      this.stats.bounced++;
      return this.bounced(offset, into);
    }
    const wholeBlocksEnd = this.size - (this.size % A);
    const directLen = Math.max(0, Math.min(len, wholeBlocksEnd - offset));
    const tailLen = Math.max(0, Math.min(len, this.size - offset) - directLen);
    let done = 0;
    while (done < directLen) {
      let bytesRead: number;
      try {
        bytesRead = await this.pread(into, done, directLen - done, offset + done);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EINVAL' && done === 0) {
          // byteOffset is aligned but the buffer's base is not (a plain ArrayBuffer): bounce, and remember.
          this.misaligned.add(into.buffer);
          this.stats.bounced++;
          return this.bounced(offset, into);
        }
        throw this.ioError(offset, len, e);
      }
      if (bytesRead === 0) throw this.eofError(offset + done, offset, len);
      done += bytesRead;
      if (done % A !== 0 && done < directLen) {
        // A short read mid-file that left us unaligned: finish through the bounce buffer.
        this.stats.bounced++;
        return this.bounced(offset + done, into.subarray(done, directLen + tailLen));
      }
    }
    if (directLen > 0) this.stats.direct++;
    if (tailLen > 0) {
      this.stats.bounced++;
      await this.bounced(offset + directLen, into.subarray(directLen, directLen + tailLen));
    }
  }

  /** Reads [pos, pos + dst.length) ∩ file through the aligned bounce buffer, one covering aligned block range at a time. */
  private bounced(pos: number, dst: Uint8Array): Promise<void> {
    const run = this.bounceLock.then(async () => {
      const A = DIRECT_ALIGNMENT;
      const bounce = this.bounce!;
      const want = Math.max(0, Math.min(dst.byteLength, this.size - pos));
      let done = 0;
      while (done < want) {
        const p = pos + done;
        const skip = p % A;
        const base = p - skip;
        const n = Math.min(want - done, bounce.byteLength - skip);
        const span = Math.ceil((skip + n) / A) * A;
        let got = 0;
        while (got < skip + n) {
          let bytesRead: number;
          try {
            ({ bytesRead } = await this.fh.read(bounce, got, span - got, base + got));
          } catch (e) {
            throw this.ioError(base + got, span - got, e);
          }
          if (bytesRead === 0) throw this.eofError(base + got, pos, dst.byteLength);
          got += bytesRead;
          if (got % A !== 0 && got < skip + n) throw new SourceError(`${this.name}: short unaligned direct read at ${base} (${got} of ${span} bytes)`);
        }
        dst.set(bounce.subarray(skip, skip + n), done);
        done += n;
      }
    });
    this.bounceLock = run.catch(() => {});
    return run;
  }

  private ioError(offset: number, len: number, e: unknown): SourceError {
    return new SourceError(`${this.name}: read [${offset}, +${len}) failed: ${(e as Error).message}`, { cause: e });
  }

  private eofError(at: number, offset: number, len: number): SourceError {
    return new SourceError(`${this.name}: unexpected end of file at ${at} (wanted [${offset}, +${len}) of ${this.size}; did the file shrink?)`);
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
