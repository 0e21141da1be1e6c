/**
 * Where a command may write its .flm: checked before any work starts, so a
 * long conversion never ends in a failed rename, and never over a user's
 * file. Refuses the command's own inputs (the checkpoint, a file inside a
 * checkpoint folder, the tokenizer, the model being calibrated), a
 * directory, a missing or unwritable folder, and an existing file that is
 * not a .flm unless `force` is set.
 */
import { access, constants, realpath, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ArgumentError } from '../errors.js';

/** The real path of p (symlinks resolved), or undefined when it does not exist. */
async function real(p: string): Promise<string | undefined> {
  return realpath(p).catch(() => undefined);
}

export async function checkOutput(output: string, inputs: (string | undefined)[], options: { force?: boolean } = {}): Promise<void> {
  const out = resolve(output);
  const st = await stat(out).catch(() => undefined);
  if (st?.isDirectory()) throw new ArgumentError(`-o ${output}: is a directory; give a file name (e.g. ${output.replace(/\/$/, '')}/model.flm)`);
  const folder = dirname(out);
  const fst = await stat(folder).catch(() => undefined);
  if (!fst?.isDirectory()) throw new ArgumentError(`-o ${output}: the folder ${folder} does not exist`);
  try {
    await access(folder, constants.W_OK);
  } catch {
    throw new ArgumentError(`-o ${output}: the folder ${folder} is not writable`);
  }
  if (!st) return;
  const target = await real(out);
  for (const input of inputs) {
    if (!input) continue;
    const inp = await real(resolve(input));
    if (!inp) continue;
    const ist = await stat(inp).catch(() => undefined);
    if (target === inp || (ist?.isDirectory() && target!.startsWith(inp + '/'))) {
      throw new ArgumentError(`-o ${output}: would overwrite an input (${input}); choose another name`);
    }
  }
  if (!/\.flm$/i.test(out) && !options.force) {
    throw new ArgumentError(`-o ${output}: exists and is not a .flm file; use --force to replace it`);
  }
}

/**
 * A write that failed in the OS (ENOSPC, EFBIG, EIO, EACCES...) names the
 * file: Node's message for a failed write() has no path ("ENOSPC: no space
 * left on device, write"). Other errors pass unchanged.
 */
export function namedWriteError(e: unknown, output: string): unknown {
  const code = (e as { code?: unknown } | null)?.code;
  const syscall = (e as { syscall?: unknown } | null)?.syscall;
  if (e instanceof Error && typeof code === 'string' && typeof syscall === 'string' && !('path' in e)) {
    e.message = `${output}: ${e.message}`;
  }
  return e;
}
