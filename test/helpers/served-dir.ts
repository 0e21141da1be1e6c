/**
 * A temporary directory that nginx serves on 127.0.0.1 for one test file:
 * started before its tests, stopped and removed after them. `place` writes
 * bytes where both the file source (path) and the HTTP source (url) read them.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNginx, type Nginx } from './nginx.js';

export interface ServedDir {
  dir: string;
  /** Writes `bytes` as `name` (world-readable: nginx's worker may be another user); its path and URL. */
  place(name: string, bytes: Uint8Array): { path: string; url: string };
  /** The URL of a file in the directory (once the tests have started). */
  url(name: string): string;
}

export function servedDir(prefix: string): ServedDir {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  let nginx: Nginx | undefined;
  test.before(async () => {
    nginx = await startNginx({ root: dir });
  });
  test.after.always(async () => {
    await nginx?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const url = (name: string) => {
    if (!nginx) throw new Error('servedDir: nginx starts in test.before');
    return nginx.url('/' + name);
  };
  return {
    dir,
    url,
    place(name, bytes) {
      const path = join(dir, name);
      writeFileSync(path, bytes);
      chmodSync(path, 0o644);
      return { path, url: url(name) };
    },
  };
}
