/**
 * Activation statistics of a .flm measured through the dense engine
 * (src/synth/measure.ts): per layer, the active fraction per token, the share
 * of activations of the most active tenth of the neurons, and the turnover
 * (active neurons not active in the `window` tokens before).
 *
 *   node --import=tsx scripts/synth-stats.ts MODEL.flm [--tokens 32] [--window 5] [--prompt TEXT]
 *
 * The whole model is loaded (dense): up to about 3.5 GB of weights (wasm32).
 * Prints a table, then one JSON line.
 */
import { openFlm } from '../src/format/reader.js';
import { FileSource } from '../src/source/file-node.js';
import { createTokenizer } from '../src/tokenizer/index.js';
import { measureActivity } from '../src/synth/measure.js';

const argv = process.argv.slice(2);
const flag = (name: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const path = argv.find((a, i) => !a.startsWith('--') && !argv[i - 1]?.startsWith('--'));
if (!path) throw new Error('usage: synth-stats.ts MODEL.flm [--tokens N] [--window K] [--prompt TEXT]');
const tokens = Number(flag('tokens') ?? 32);
const window = Number(flag('window') ?? 5);
const text = flag('prompt') ?? 'There were four of us - George, and William Samuel Harris, and myself, and Montmorency. We were sitting in my room, smoking, and talking about how bad we were.';

const source = await FileSource.open(path);
try {
  const file = await openFlm(source);
  const tok = await createTokenizer(file.header.tokenizer);
  const prompt = tok.encode(text);
  const t0 = performance.now();
  const r = await measureActivity(file, prompt, tokens, window);
  const s = (performance.now() - t0) / 1000;
  console.log(`${path}: ${prompt.length} prompt + ${tokens} generated tokens, window ${window}, ${s.toFixed(1)} s`);
  console.log('layer  active/token  top-10% share  new@window  never active');
  const rows = r.layers.map((l, i) => {
    const never = l.firing.filter((v) => v === 0).length / l.firing.length;
    console.log(`${String(i).padStart(5)}  ${(100 * l.activeFraction).toFixed(2).padStart(11)}%  ${(100 * l.top10Share).toFixed(1).padStart(12)}%  ${(100 * l.newFraction).toFixed(1).padStart(9)}%  ${(100 * never).toFixed(1).padStart(11)}%`);
    return { activeFraction: l.activeFraction, top10Share: l.top10Share, newFraction: l.newFraction, neverActive: never };
  });
  const mean = (f: (x: (typeof rows)[number]) => number) => rows.reduce((a, x) => a + f(x), 0) / rows.length;
  const summary = { activeFraction: mean((x) => x.activeFraction), top10Share: mean((x) => x.top10Share), newFraction: mean((x) => x.newFraction) };
  console.log(`mean   ${(100 * summary.activeFraction).toFixed(2).padStart(11)}%  ${(100 * summary.top10Share).toFixed(1).padStart(12)}%  ${(100 * summary.newFraction).toFixed(1).padStart(9)}%`);
  console.log(JSON.stringify({ model: path, promptTokens: prompt.length, tokens, window, seconds: s, ...summary, layers: rows }));
} finally {
  await source.close();
}
