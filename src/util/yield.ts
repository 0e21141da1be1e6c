/**
 * Lets timers, signals (Ctrl-C) and I/O callbacks run between long
 * synchronous steps, in every runtime: setImmediate where it exists (Node,
 * Deno), else a MessageChannel message (browsers, edge isolates), which
 * unlike setTimeout(0) is not clamped to 4 ms.
 */
export function yieldToEventLoop(): Promise<void> {
  const g = globalThis as { setImmediate?: (cb: () => void) => void };
  if (typeof g.setImmediate === 'function') return new Promise((r) => g.setImmediate!(r));
  if (typeof MessageChannel === 'function') {
    return new Promise((r) => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => {
        ch.port1.close();
        r();
      };
      ch.port2.postMessage(0);
    });
  }
  return new Promise((r) => setTimeout(r, 0));
}
