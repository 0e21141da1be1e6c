/** What every long-running command shares: Ctrl-C as an AbortSignal, and a progress bar only on a TTY. */
import cliProgress from 'cli-progress';

/** Signals that end a command: Ctrl-C, `kill`, a closed terminal. */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * SIGINT, SIGTERM and SIGHUP abort `signal` (so the command stops cleanly and
 * removes its temp files) until `release()`; without these handlers SIGTERM
 * and SIGHUP would end the process at once and leave the temp file behind.
 */
export function interruptSignal(): { signal: AbortSignal; release(): void } {
  const abort = new AbortController();
  const onSignal = (name: NodeJS.Signals) => abort.abort(new Error(name === 'SIGINT' ? 'interrupted' : `stopped by ${name}`));
  for (const s of STOP_SIGNALS) process.once(s, onSignal);
  return { signal: abort.signal, release: () => { for (const s of STOP_SIGNALS) process.off(s, onSignal); } };
}

/** Resolves once SIGINT or SIGTERM arrives and `close` has finished (long-running servers). */
export function untilStopped(close: () => Promise<void>): Promise<void> {
  return new Promise<void>((done) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void close().then(done);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

/** A cli-progress bar on stderr when it is a terminal; undefined otherwise (no escape codes in pipes and logs). */
export function progressBar(format: string): cliProgress.SingleBar | undefined {
  if (!process.stderr.isTTY) return undefined;
  return new cliProgress.SingleBar({ stream: process.stderr, format, hideCursor: true }, cliProgress.Presets.shades_classic);
}
