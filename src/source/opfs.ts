/**
 * The OPFS cache tier (browsers): CDN -> OPFS -> arena. Wraps another Source
 * (an HttpSource, usually) and keeps the chunks it reads in the
 * origin-private file system, so a second visit reads them locally.
 *
 * Layout, under `<root>/<directory>/<key>/` where key = xxh64 of the
 * source's name (its URL without the query string):
 *   meta.json  {version, name, identity, size, chunkBytes, lastUsed}
 *   data       slot i holds one chunk at [i·chunkBytes, (i+1)·chunkBytes)
 *   slots      int32 per slot: the chunk it holds, or -1
 * All three are opened with sync access handles (dedicated workers only:
 * `createSyncAccessHandle` does not exist on the main thread), which also
 * lock the model against eviction by another tab while it is in use.
 *
 * Policy:
 * - Reads are rounded out to whole chunks (default 64 KiB) on a miss;
 *   cached chunks are copied straight from the data file into `into`.
 * - Bounded: at most `maxBytes` over all models. Room is made by deleting
 *   other models' caches, least recently used first (never one that is open
 *   elsewhere), then by evicting this model's least recently used chunks.
 * - Stale: a cached copy whose identity (size + ETag, or Last-Modified)
 *   differs from the source's is discarded, with a notice. A source without
 *   a validator is not cached (a change could not be noticed).
 * - Failure: a full quota, a model locked by another tab, or any other
 *   storage error turns the cache off for this source with a notice; reads
 *   go on from the network (CDN only). It never fails a read that the
 *   network can serve.
 * - Crash safety: a slot is marked empty (-1) before its data is rewritten
 *   and gets its chunk number only after the data is written; the .flm block
 *   hashes verify every read on top of that.
 *
 * Platform-neutral: the storage is reached through the structural interfaces
 * below (OPFS handles satisfy them), so the policy is tested in Node with an
 * in-memory directory.
 */
import { getHasher } from '../format/hash.js';
import type { Source, TierCounters } from './types.js';
import { WrappingSource } from './wrapping.js';

/** The parts of FileSystemSyncAccessHandle used here. */
export interface SyncHandle {
  read(into: Uint8Array, options: { at: number }): number;
  write(bytes: Uint8Array, options: { at: number }): number;
  getSize(): number;
  truncate(size: number): void;
  flush(): void;
  close(): void;
}

/** The parts of FileSystemFileHandle used here. */
export interface FileHandleLike {
  createSyncAccessHandle(): Promise<SyncHandle>;
  getFile(): Promise<{ size: number; text(): Promise<string> }>;
}

/** The parts of FileSystemDirectoryHandle used here. */
export interface DirectoryLike {
  getDirectoryHandle(name: string, options?: { create?: boolean }): Promise<DirectoryLike>;
  getFileHandle(name: string, options?: { create?: boolean }): Promise<FileHandleLike>;
  removeEntry(name: string, options?: { recursive?: boolean }): Promise<void>;
  keys(): AsyncIterable<string>;
}

export interface OpfsCacheOptions {
  /** Most bytes kept over all models (chunk data). Default 1 GiB. */
  maxBytes?: number;
  /** Cache granularity: misses are read from the network in whole chunks. Default 64 KiB. */
  chunkBytes?: number;
  /** Folder under the OPFS root. Default 'flashlm-cache'. */
  directory?: string;
  /** Told when the cache discards a stale copy or turns itself off (quota full, locked, no validator). */
  onNotice?: (message: string) => void;
  /** The storage root. Default: `navigator.storage.getDirectory()`. */
  root?: DirectoryLike;
  /** Tries to take the sync handles when another tab holds them. Default 5 (100 ms apart). */
  lockRetries?: number;
}

export interface OpfsCounters {
  /** Chunks served from OPFS, and the bytes of `into` they filled. */
  hitChunks: number;
  hitBytes: number;
  /** Chunks that had to come from the network. */
  missChunks: number;
  /** Chunks another read was already fetching (waited for, not asked again). */
  sharedChunks: number;
  /** Reads sent to the wrapped source, and the bytes they brought. */
  networkReads: number;
  networkBytes: number;
  /** Chunks written to OPFS, and chunks evicted to make room. */
  storedChunks: number;
  evictedChunks: number;
  /** Other models' caches deleted to make room. */
  evictedModels: number;
}

const VERSION = 1;
const DEFAULT_MAX = 1 << 30;
const DEFAULT_CHUNK = 64 * 1024;
const EMPTY = -1;

interface Meta {
  version: number;
  name: string;
  identity: string;
  size: number;
  chunkBytes: number;
  lastUsed: number;
}

interface Store {
  dir: DirectoryLike;
  meta: SyncHandle;
  data: SyncHandle;
  slots: SyncHandle;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

const errName = (e: unknown) => (e && typeof e === 'object' && 'name' in e ? String((e as { name: unknown }).name) : '');
const errText = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function readAll(h: SyncHandle): Uint8Array {
  const out = new Uint8Array(h.getSize());
  let at = 0;
  while (at < out.byteLength) {
    const n = h.read(out.subarray(at), { at });
    if (n <= 0) break;
    at += n;
  }
  return out.subarray(0, at);
}

function writeAll(h: SyncHandle, bytes: Uint8Array, at: number): void {
  let done = 0;
  while (done < bytes.byteLength) {
    const n = h.write(bytes.subarray(done), { at: at + done });
    if (!(n > 0)) throw new Error(`short write at ${at + done}`);
    done += n;
  }
}

function writeMeta(h: SyncHandle, meta: Meta): void {
  const bytes = enc.encode(JSON.stringify(meta));
  h.truncate(0);
  writeAll(h, bytes, 0);
  h.flush();
}

async function defaultRoot(): Promise<DirectoryLike> {
  const storage = (globalThis as { navigator?: { storage?: { getDirectory?: () => Promise<unknown> } } }).navigator?.storage;
  if (!storage?.getDirectory) throw new Error('this runtime has no origin-private file system (navigator.storage.getDirectory)');
  return (await storage.getDirectory()) as DirectoryLike;
}

/** The cache folder name of a source: xxh64 of its name. */
export async function cacheKey(name: string): Promise<string> {
  return (await getHasher()).hex(enc.encode(name));
}

/**
 * A Source that answers from OPFS when it can and from `inner` otherwise,
 * storing what it fetched. See the file comment for the policy.
 */
export class OpfsCachedSource extends WrappingSource implements Source {
  readonly counters: OpfsCounters = { hitChunks: 0, hitBytes: 0, missChunks: 0, sharedChunks: 0, networkReads: 0, networkBytes: 0, storedChunks: 0, evictedChunks: 0, evictedModels: 0 };
  /** Notices so far (also passed to onNotice). */
  readonly notices: string[] = [];
  /** The run stats' view of the counters: bytes served from OPFS against bytes from the network. */
  get tier(): TierCounters {
    return this.counters;
  }

  private store: Store | undefined;
  /** chunk -> slot, in least-recently-used-first order. */
  private readonly lru = new Map<number, number>();
  private slotChunk = new Int32Array(0);
  private slotCount = 0;
  private readonly free: number[] = [];
  /** Slots this model may use now; grows when another model's cache is deleted. */
  private allowedSlots = 0;
  /** Other models' caches that may be deleted for room: oldest first. */
  private others: { key: string; bytes: number }[] = [];
  private closed = false;

  private constructor(
    inner: Source,
    readonly chunkBytes: number,
    private readonly maxBytes: number,
    private readonly onNotice: ((message: string) => void) | undefined,
  ) {
    super(inner);
  }

  /** True while chunks are read from and written to OPFS (false once it degraded to the network only). */
  get enabled(): boolean {
    return this.store !== undefined;
  }

  /** Chunks of this model now in OPFS, and their bytes. */
  get cachedChunks(): number {
    return this.lru.size;
  }
  get cachedBytes(): number {
    return this.lru.size * this.chunkBytes;
  }

  /**
   * Wraps `inner`. Never throws for storage reasons: without a usable OPFS
   * the source reads from `inner` only (see `enabled` and the notices).
   */
  static async open(inner: Source, options: OpfsCacheOptions = {}): Promise<OpfsCachedSource> {
    const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK;
    const maxBytes = options.maxBytes ?? DEFAULT_MAX;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 4096) throw new RangeError(`chunkBytes must be an integer >= 4096, got ${chunkBytes}`);
    if (!(maxBytes >= 0) || !Number.isFinite(maxBytes)) throw new RangeError(`maxBytes must be a finite number >= 0, got ${maxBytes}`);
    const src = new OpfsCachedSource(inner, chunkBytes, maxBytes, options.onNotice);
    if (/unvalidated/.test(inner.identity)) {
      src.notice(`${inner.name}: the server sends no ETag or Last-Modified, so a cached copy could not be checked: not caching it`);
      return src;
    }
    if (maxBytes < chunkBytes) return src;
    try {
      await src.attach(options);
    } catch (e) {
      src.detach();
      src.notice(
        errName(e) === 'QuotaExceededError'
          ? `${inner.name}: storage quota is full: not caching, reading from the network only`
          : `${inner.name}: OPFS cache unavailable (${errText(e)}): reading from the network only`,
      );
    }
    return src;
  }

  private notice(message: string): void {
    this.notices.push(message);
    try {
      this.onNotice?.(message);
    } catch {
      // a listener's error is not the source's
    }
  }

  private async attach(options: OpfsCacheOptions): Promise<void> {
    const root = await (options.root ? Promise.resolve(options.root) : defaultRoot());
    const top = await root.getDirectoryHandle(options.directory ?? 'flashlm-cache', { create: true });
    const key = await cacheKey(this.inner.name);
    const dir = await top.getDirectoryHandle(key, { create: true });
    const retries = options.lockRetries ?? 5;
    let store: Store | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        store = await openStore(dir);
        break;
      } catch (e) {
        if (errName(e) !== 'NoModificationAllowedError' || attempt >= retries) {
          if (errName(e) === 'NoModificationAllowedError') {
            this.notice(`${this.inner.name}: the OPFS cache is in use by another tab or worker: reading from the network only`);
            return;
          }
          throw e;
        }
        await sleep(100);
      }
    }
    this.store = store;
    const meta = this.loadMeta(store);
    const fresh: Meta = { version: VERSION, name: this.inner.name, identity: this.inner.identity, size: this.inner.size, chunkBytes: this.chunkBytes, lastUsed: Date.now() };
    if (!meta || meta.version !== VERSION || meta.identity !== this.inner.identity || meta.size !== this.inner.size || meta.chunkBytes !== this.chunkBytes) {
      if (meta && meta.identity !== this.inner.identity) {
        this.notice(`${this.inner.name}: the cached copy is stale (${meta.identity} -> ${this.inner.identity}): discarded`);
      }
      // Order: forget the slots, then the data, then say what the folder now holds.
      store.slots.truncate(0);
      store.data.truncate(0);
      store.slots.flush();
      store.data.flush();
    } else {
      this.loadSlots(store);
    }
    writeMeta(store.meta, fresh);

    // Room: maxBytes less the other models' caches (deleted oldest first when this one needs their room).
    this.topDir = top;
    this.others = await listOthers(top, key);
    const othersBytes = this.others.reduce((s, o) => s + o.bytes, 0);
    this.allowedSlots = Math.max(0, Math.floor((this.maxBytes - othersBytes) / this.chunkBytes));
    // What is already cached for this model counts against the bound as well (maxBytes may have shrunk).
    await this.deleteOthersUntil(this.slotCount);
    if (this.slotCount > this.allowedSlots) this.shrinkTo(this.allowedSlots);
  }

  /** Deletes other models' caches, least recently used first, until `slots` fit (or none is left). */
  private async deleteOthersUntil(slots: number): Promise<void> {
    while (slots > this.allowedSlots && this.others.length > 0) {
      const victim = this.others.shift()!;
      try {
        await this.topDir!.removeEntry(victim.key, { recursive: true });
        this.allowedSlots = Math.min(Math.floor(this.maxBytes / this.chunkBytes), this.allowedSlots + Math.floor(victim.bytes / this.chunkBytes));
        this.counters.evictedModels++;
      } catch {
        // open in another tab: leave it
      }
    }
  }

  private topDir: DirectoryLike | undefined;

  private loadMeta(store: Store): Meta | undefined {
    try {
      const text = dec.decode(readAll(store.meta));
      if (!text) return undefined;
      const m = JSON.parse(text) as Meta;
      return typeof m === 'object' && m !== null ? m : undefined;
    } catch {
      return undefined;
    }
  }

  private loadSlots(store: Store): void {
    const raw = readAll(store.slots);
    const dataBytes = store.data.getSize();
    const n = Math.min(Math.floor(raw.byteLength / 4), Math.ceil(dataBytes / this.chunkBytes));
    const view = new DataView(raw.buffer, raw.byteOffset, n * 4);
    const chunks = Math.ceil(this.inner.size / this.chunkBytes);
    this.ensureSlots(n);
    this.slotCount = n;
    for (let s = 0; s < n; s++) {
      const c = view.getInt32(s * 4, true);
      // A chunk out of range, seen twice, or whose bytes run past the data's end is not trusted.
      const ok = c >= 0 && c < chunks && !this.lru.has(c) && this.slotEnd(s, c) <= dataBytes;
      this.slotChunk[s] = ok ? c : EMPTY;
      if (ok) this.lru.set(c, s);
      else this.free.push(s);
    }
  }

  /** The end offset in `data` of chunk c's bytes in slot s. */
  private slotEnd(s: number, c: number): number {
    return s * this.chunkBytes + this.chunkLength(c);
  }

  private chunkLength(c: number): number {
    return Math.min(this.chunkBytes, this.inner.size - c * this.chunkBytes);
  }

  private ensureSlots(n: number): void {
    if (n <= this.slotChunk.length) return;
    const grown = new Int32Array(Math.max(n, this.slotChunk.length * 2, 64)).fill(EMPTY);
    grown.set(this.slotChunk);
    this.slotChunk = grown;
  }

  /** Drops every slot at or past `n` and truncates the files. */
  private shrinkTo(n: number): void {
    const store = this.store!;
    for (let s = n; s < this.slotCount; s++) {
      const c = this.slotChunk[s]!;
      if (c !== EMPTY) this.lru.delete(c);
      this.slotChunk[s] = EMPTY;
    }
    this.slotCount = n;
    for (let i = this.free.length - 1; i >= 0; i--) if (this.free[i]! >= n) this.free.splice(i, 1);
    store.slots.truncate(n * 4);
    store.data.truncate(n * this.chunkBytes);
  }

  private setSlot(s: number, c: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, c, true);
    writeAll(this.store!.slots, b, s * 4);
    this.slotChunk[s] = c;
  }

  /** A slot to write a new chunk into, or undefined when there is no room at all. */
  private async takeSlot(): Promise<number | undefined> {
    const f = this.free.pop();
    if (f !== undefined) return f;
    await this.deleteOthersUntil(this.slotCount + 1);
    if (this.slotCount < this.allowedSlots) {
      const s = this.slotCount++;
      this.ensureSlots(this.slotCount);
      return s;
    }
    // Evict this model's least recently used chunk.
    const oldest = this.lru.keys().next();
    if (oldest.done) return undefined;
    const s = this.lru.get(oldest.value)!;
    this.lru.delete(oldest.value);
    this.setSlot(s, EMPTY);
    this.counters.evictedChunks++;
    return s;
  }

  /** Writes chunk c (its bytes) into OPFS; turns the cache off on a storage error. */
  private async storeChunk(c: number, bytes: Uint8Array): Promise<void> {
    if (!this.store || this.readOnly || this.lru.has(c)) return;
    const s = await this.takeSlot();
    if (s === undefined || !this.store || this.lru.has(c)) {
      if (s !== undefined) this.free.push(s);
      return;
    }
    try {
      if (this.slotChunk[s] !== EMPTY) this.setSlot(s, EMPTY);
      writeAll(this.store.data, bytes, s * this.chunkBytes);
      this.setSlot(s, c);
    } catch (e) {
      this.slotChunk[s] = EMPTY;
      this.free.push(s);
      if (this.readOnly || !this.store) return; // a concurrent write already said so
      const quota = errName(e) === 'QuotaExceededError';
      this.notice(
        quota
          ? `${this.inner.name}: storage quota is full: the OPFS cache stops growing, reading from the network only (${this.lru.size} chunks stay cached)`
          : `${this.inner.name}: OPFS write failed (${errText(e)}): reading from the network only`,
      );
      if (quota) this.readOnly = true;
      else this.detach();
      return;
    }
    this.lru.set(c, s);
    this.counters.storedChunks++;
  }

  /** After a full quota: cached chunks are still served, nothing new is stored. */
  private readOnly = false;

  async read(offset: number, into: Uint8Array): Promise<void> {
    const len = into.byteLength;
    if (len === 0 || !this.store) {
      if (len > 0) this.countNetwork(len);
      return this.inner.read(offset, into);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > this.inner.size) {
      return this.inner.read(offset, into); // the inner source reports the error
    }
    const C = this.chunkBytes;
    const first = Math.floor(offset / C);
    const last = Math.floor((offset + len - 1) / C);
    const runs: [number, number][] = [];
    const waits: Promise<void>[] = [];
    for (let c = first; c <= last; c++) {
      const s = this.lru.get(c);
      if (s !== undefined && this.copyFromSlot(c, s, offset, into)) continue;
      const pending = this.inflight.get(c);
      if (pending) {
        // Another read is fetching this chunk: take its bytes rather than asking again.
        this.counters.sharedChunks++;
        waits.push(pending.then((bytes) => this.copyChunk(c, bytes, offset, into)));
        continue;
      }
      this.counters.missChunks++;
      const run = runs[runs.length - 1];
      if (run && run[1] === c - 1) run[1] = c;
      else runs.push([c, c]);
    }
    if (this.readOnly) {
      // Nothing new will be stored: read exactly the missing bytes, not whole chunks.
      const exact = runs.map(async ([a, b]) => {
        const lo = Math.max(offset, a * C);
        const hi = Math.min(offset + len, (b + 1) * C);
        this.countNetwork(hi - lo);
        await this.inner.read(lo, into.subarray(lo - offset, hi - offset));
      });
      await Promise.all([...exact, ...waits]);
      return;
    }
    await Promise.all([...runs.map((r) => this.fetchRun(r[0], r[1], offset, into)), ...waits]);
  }

  /** Chunks being fetched now -> their bytes. */
  private readonly inflight = new Map<number, Promise<Uint8Array>>();

  /** Copies the part of chunk c (its bytes) that `into` wants. */
  private copyChunk(c: number, bytes: Uint8Array, offset: number, into: Uint8Array): void {
    const start = c * this.chunkBytes;
    const lo = Math.max(offset, start);
    const hi = Math.min(offset + into.byteLength, start + bytes.byteLength);
    into.set(bytes.subarray(lo - start, hi - start), lo - offset);
  }

  /** Copies the part of chunk c that `into` wants from its slot; false (and the slot dropped) on a storage error. */
  private copyFromSlot(c: number, s: number, offset: number, into: Uint8Array): boolean {
    const C = this.chunkBytes;
    const lo = Math.max(offset, c * C);
    const hi = Math.min(offset + into.byteLength, c * C + this.chunkLength(c));
    try {
      const dst = into.subarray(lo - offset, hi - offset);
      const n = this.store!.data.read(dst, { at: s * C + (lo - c * C) });
      if (n !== dst.byteLength) throw new Error(`short read from the cache (${n} of ${dst.byteLength})`);
    } catch (e) {
      this.notice(`${this.inner.name}: OPFS read failed (${errText(e)}): reading from the network only`);
      this.detach();
      return false;
    }
    this.lru.delete(c);
    this.lru.set(c, s);
    this.counters.hitChunks++;
    this.counters.hitBytes += hi - lo;
    return true;
  }

  private countNetwork(bytes: number): void {
    this.counters.networkReads++;
    this.counters.networkBytes += bytes;
  }

  /** Reads chunks [a, b] from the network in one request, fills `into`'s part, stores the chunks. */
  private async fetchRun(a: number, b: number, offset: number, into: Uint8Array): Promise<void> {
    const C = this.chunkBytes;
    const start = a * C;
    const end = Math.min((b + 1) * C, this.inner.size);
    const buf = new Uint8Array(end - start);
    this.countNetwork(buf.byteLength);
    const fetched = this.inner.read(start, buf).then(() => buf);
    for (let c = a; c <= b; c++) {
      const part = fetched.then((all) => all.subarray(c * C - start, c * C - start + this.chunkLength(c)));
      part.catch(() => {}); // waiters see the failure; nobody waiting is not an unhandled rejection
      this.inflight.set(c, part);
    }
    try {
      await fetched;
    } finally {
      for (let c = a; c <= b; c++) this.inflight.delete(c);
    }
    const lo = Math.max(offset, start);
    const hi = Math.min(offset + into.byteLength, end);
    into.set(buf.subarray(lo - start, hi - start), lo - offset);
    if (this.readOnly || this.closed) return;
    for (let c = a; c <= b; c++) {
      if (!this.store) return;
      await this.storeChunk(c, buf.subarray(c * C - start, c * C - start + this.chunkLength(c)));
    }
  }

  /** Closes the OPFS handles; reads go to the network from now on. */
  private detach(): void {
    const s = this.store;
    this.store = undefined;
    this.lru.clear();
    if (!s) return;
    for (const h of [s.meta, s.data, s.slots]) {
      try {
        h.flush();
      } catch {
        // closing anyway
      }
      try {
        h.close();
      } catch {
        // already closed
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.detach();
    await this.inner.close();
  }
}

async function openStore(dir: DirectoryLike): Promise<Store> {
  const opened: SyncHandle[] = [];
  try {
    for (const name of ['meta.json', 'data', 'slots']) {
      const fh = await dir.getFileHandle(name, { create: true });
      opened.push(await fh.createSyncAccessHandle());
    }
  } catch (e) {
    for (const h of opened) h.close();
    throw e;
  }
  return { dir, meta: opened[0]!, data: opened[1]!, slots: opened[2]! };
}

/** The other models' caches with their sizes, least recently used first. */
async function listOthers(top: DirectoryLike, self: string): Promise<{ key: string; bytes: number }[]> {
  const out: { key: string; bytes: number; lastUsed: number }[] = [];
  for await (const key of top.keys()) {
    if (key === self) continue;
    try {
      const d = await top.getDirectoryHandle(key);
      const data = await (await d.getFileHandle('data')).getFile();
      let lastUsed = 0;
      try {
        lastUsed = Number((JSON.parse(await (await (await d.getFileHandle('meta.json')).getFile()).text()) as Meta).lastUsed) || 0;
      } catch {
        // no or bad meta: oldest
      }
      out.push({ key, bytes: data.size, lastUsed });
    } catch {
      // not a model folder (or being written): count it as nothing
    }
  }
  return out.sort((x, y) => x.lastUsed - y.lastUsed).map(({ key, bytes }) => ({ key, bytes }));
}
