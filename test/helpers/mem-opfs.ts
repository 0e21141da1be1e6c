/**
 * An in-memory stand-in for the origin-private file system, shaped like the
 * handles OpfsCachedSource uses: directories, files, exclusive sync access
 * handles (NoModificationAllowedError while one is open), and a quota over
 * all file bytes (QuotaExceededError, as Chromium throws from write/truncate).
 */
import type { DirectoryLike, FileHandleLike, SyncHandle } from '../../src/source/opfs.js';

class NamedError extends Error {
  constructor(
    override readonly name: string,
    message: string,
  ) {
    super(message);
  }
}

export class MemStorage {
  used = 0;
  constructor(public quota = Infinity) {}
  /** Operations that fail on purpose from now on (e.g. 'read'). */
  failing = new Set<string>();
}

export class MemFile implements FileHandleLike {
  bytes = new Uint8Array(0);
  locked = false;
  constructor(private readonly storage: MemStorage) {}

  resize(n: number): void {
    const delta = n - this.bytes.byteLength;
    if (delta > 0 && this.storage.used + delta > this.storage.quota) throw new NamedError('QuotaExceededError', 'quota exceeded');
    const next = new Uint8Array(n);
    next.set(this.bytes.subarray(0, Math.min(n, this.bytes.byteLength)));
    this.bytes = next;
    this.storage.used += delta;
  }

  async createSyncAccessHandle(): Promise<SyncHandle> {
    if (this.locked) throw new NamedError('NoModificationAllowedError', 'file is locked');
    this.locked = true;
    let open = true;
    const check = () => {
      if (!open) throw new NamedError('InvalidStateError', 'handle closed');
    };
    const storage = this.storage;
    return {
      read: (into, { at }) => {
        check();
        if (storage.failing.has('read')) throw new NamedError('NotReadableError', 'injected read failure');
        const n = Math.max(0, Math.min(into.byteLength, this.bytes.byteLength - at));
        into.set(this.bytes.subarray(at, at + n));
        return n;
      },
      write: (bytes, { at }) => {
        check();
        if (storage.failing.has('write')) throw new NamedError('InvalidModificationError', 'injected write failure');
        if (at + bytes.byteLength > this.bytes.byteLength) this.resize(at + bytes.byteLength);
        this.bytes.set(bytes, at);
        return bytes.byteLength;
      },
      getSize: () => (check(), this.bytes.byteLength),
      truncate: (n) => (check(), this.resize(n)),
      flush: () => check(),
      close: () => {
        if (open) {
          open = false;
          this.locked = false;
        }
      },
    };
  }

  async getFile(): Promise<{ size: number; text(): Promise<string> }> {
    const copy = this.bytes.slice();
    return { size: copy.byteLength, text: async () => new TextDecoder().decode(copy) };
  }
}

export class MemDir implements DirectoryLike {
  readonly entries = new Map<string, MemDir | MemFile>();
  constructor(readonly storage: MemStorage = new MemStorage()) {}

  async getDirectoryHandle(name: string, o?: { create?: boolean }): Promise<DirectoryLike> {
    let e = this.entries.get(name);
    if (!e && o?.create) this.entries.set(name, (e = new MemDir(this.storage)));
    if (!e) throw new NamedError('NotFoundError', `${name} not found`);
    if (!(e instanceof MemDir)) throw new NamedError('TypeMismatchError', `${name} is a file`);
    return e;
  }

  async getFileHandle(name: string, o?: { create?: boolean }): Promise<FileHandleLike> {
    let e = this.entries.get(name);
    if (!e && o?.create) this.entries.set(name, (e = new MemFile(this.storage)));
    if (!e) throw new NamedError('NotFoundError', `${name} not found`);
    if (!(e instanceof MemFile)) throw new NamedError('TypeMismatchError', `${name} is a folder`);
    return e;
  }

  private locked(): boolean {
    return [...this.entries.values()].some((e) => (e instanceof MemFile ? e.locked : e.locked()));
  }

  private release(): void {
    for (const e of this.entries.values()) {
      if (e instanceof MemFile) {
        this.storage.used -= e.bytes.byteLength;
      } else e.release();
    }
  }

  async removeEntry(name: string, o?: { recursive?: boolean }): Promise<void> {
    const e = this.entries.get(name);
    if (!e) throw new NamedError('NotFoundError', `${name} not found`);
    if (e instanceof MemDir && e.entries.size > 0 && !o?.recursive) throw new NamedError('InvalidModificationError', 'not empty');
    if (e instanceof MemFile ? e.locked : e.locked()) throw new NamedError('NoModificationAllowedError', `${name} is in use`);
    if (e instanceof MemFile) this.storage.used -= e.bytes.byteLength;
    else e.release();
    this.entries.delete(name);
  }

  async *keys(): AsyncIterable<string> {
    for (const k of [...this.entries.keys()]) yield k;
  }

  /** Bytes of every file below. */
  bytes(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e instanceof MemFile ? e.bytes.byteLength : e.bytes();
    return n;
  }
}
