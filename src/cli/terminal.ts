/** What every long-running command shares: Ctrl-C as an AbortSignal, and a progress bar only on a TTY. */
import cliProgress from 'cli-progress';

/** Ctrl-C aborts `signal` (so the command stops cleanly and removes temp files) until `release()`. */
export function interruptSignal(): { signal: AbortSignal; release(): void } {
  const abort = new AbortController();
  const onSigint = () => abort.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  return { signal: abort.signal, release: () => process.off('SIGINT', onSigint) };
}

/** A cli-progress bar on stderr when it is a terminal; undefined otherwise (no escape codes in pipes and logs). */
export function progressBar(format: string): cliProgress.SingleBar | undefined {
  if (!process.stderr.isTTY) return undefined;
  return new cliProgress.SingleBar({ stream: process.stderr, format, hideCursor: true }, cliProgress.Presets.shades_classic);
}
