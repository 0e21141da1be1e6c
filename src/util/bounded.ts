/** Runs `tasks` with at most `parallel` in flight; rejects with the first failure. */
export async function runBounded(tasks: readonly (() => Promise<void>)[], parallel: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, parallel), tasks.length) }, worker));
}
