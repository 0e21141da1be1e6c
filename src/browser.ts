/**
 * flashlm for browsers (the package's `browser` export condition, and the
 * bundle dist/bundle/flashlm.js): the portable API plus the OPFS cache tier.
 * No `node:` module, no undici (test/browser-graph.test.ts checks).
 *
 * Run the engine in a dedicated worker: the OPFS tier needs sync access
 * handles, which exist only there, and generation keeps the thread busy.
 */
import './index.js';
import type { SourceOpener } from './model.js';
import { HttpSource, type HttpSourceOptions } from './source/http.js';
import { OpfsCachedSource, type OpfsCacheOptions } from './source/opfs.js';

export * from './index.js';
export { OpfsCachedSource, cacheKey, type OpfsCacheOptions, type OpfsCounters, type DirectoryLike, type FileHandleLike, type SyncHandle } from './source/opfs.js';

/**
 * Opens an http(s) URL through the OPFS cache tier (CDN -> OPFS -> arena).
 * `registerSourceOpener(createCachedHttpOpener())` makes every
 * `openModel(url)` cached; or call it yourself to keep the source's counters.
 */
export function createCachedHttpOpener(options: OpfsCacheOptions & { http?: HttpSourceOptions } = {}): SourceOpener {
  return async (input) => {
    const isHttp = typeof input === 'string' ? /^https?:\/\//i.test(input) : input.protocol === 'http:' || input.protocol === 'https:';
    if (!isHttp) return undefined;
    return OpfsCachedSource.open(await HttpSource.open(input, options.http), options);
  };
}
