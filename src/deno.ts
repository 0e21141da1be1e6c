/**
 * flashlm for Deno (the package's `deno` export condition): the portable API
 * (http(s) URLs through fetch) plus local paths and file: URLs through
 * `Deno.open`. No `node:` module, no undici.
 */
import './index.js'; // registers the portable openers first
import { registerSourceOpener } from './model.js';
import { DenoFileSource } from './source/file-deno.js';

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

registerSourceOpener(async (input) => {
  if (input instanceof URL) return input.protocol === 'file:' ? DenoFileSource.open(input) : undefined;
  if (SCHEME.test(input)) return input.startsWith('file://') ? DenoFileSource.open(new URL(input)) : undefined;
  return DenoFileSource.open(input);
});

export * from './index.js';
export { DenoFileSource, DENO_FILE_HINTS } from './source/file-deno.js';
