import { openModel } from '../node.js';
import { fmtBytes } from '../engine/arena.js';

export interface RunFlags {
  prompt: string;
  tokens: number;
  temp: number;
  topP: number;
  seed?: number;
  memory?: string;
  context?: number;
}

/** `flashlm run`: streams the continuation to stdout; Ctrl-C stops generation cleanly. */
export async function runGenerate(modelPath: string, flags: RunFlags): Promise<void> {
  const t0 = performance.now();
  const model = await openModel(modelPath, { memory: flags.memory, contextLength: flags.context });
  const abort = new AbortController();
  const onSigint = () => abort.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  const tLoad = performance.now();
  let n = 0;
  try {
    for await (const text of model.generate(flags.prompt, { maxTokens: flags.tokens, temperature: flags.temp, topP: flags.topP, seed: flags.seed, signal: abort.signal })) {
      process.stdout.write(text);
      n++;
    }
    process.stdout.write('\n');
  } finally {
    process.off('SIGINT', onSigint);
    await model.close();
  }
  const dt = (performance.now() - tLoad) / 1000;
  const mem = model.memory;
  process.stderr.write(`loaded in ${((tLoad - t0) / 1000).toFixed(2)} s; ${n} pieces in ${dt.toFixed(2)} s; arena ${fmtBytes(mem.arenaBytes)}\n`);
}
