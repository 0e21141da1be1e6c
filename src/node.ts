/**
 * flashlm for Node: the platform-neutral API plus local files (paths and
 * file: URLs) as model sources, and the converters.
 */
import { fileURLToPath } from 'node:url';
import './index.js'; // registers the portable openers first
import { registerSourceOpener } from './model.js';
import { FileSource } from './source/file-node.js';
import { nodeHttpOpener } from './source/http-node.js';

registerSourceOpener(async (input, options) => {
  const open = (path: string) => FileSource.open(path, { direct: options.direct });
  if (input instanceof URL) return input.protocol === 'file:' ? open(fileURLToPath(input)) : undefined;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) return input.startsWith('file://') ? open(fileURLToPath(input)) : undefined;
  return open(input);
});

// Openers are tried newest first: undici's pool wins over fetch for http(s) in Node.
registerSourceOpener(nodeHttpOpener);

export * from './index.js';
export { NodeHttpSource, nodeHttpOpener, createNodeHttpOpener, type NodeHttpSourceOptions } from './source/http-node.js';
export { FileSource, FileSink, FILE_HINTS, type FileSourceOptions } from './source/file-node.js';
export { openCheckpoint } from './convert/index.js';
