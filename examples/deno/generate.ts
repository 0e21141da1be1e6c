/**
 * Generate with flashlm under Deno, from a local .flm or an http(s) URL:
 *
 *   deno run -A examples/deno/generate.ts MODEL -p PROMPT -n N [--temp T]
 *       [--top-p P] [--seed S] [--strategy dense|naive|hybrid|predictor|window]
 *       [--memory 512M] [--context N] [--threads N] [--stats]
 *
 * Prints only the generated text on stdout; diagnostics go to stderr.
 * `flashlm` resolves through the package's `deno` export condition
 * (dist/deno.js: fetch for URLs, Deno.open for paths). Outside this
 * repository, import from 'npm:flashlm' instead.
 */
import { openModel, FlashlmError, STRATEGIES } from 'flashlm';

// Derived rather than imported: resolves the same with the package's types or without them.
type Strategy = (typeof STRATEGIES)[number];

const USAGE = 'usage: deno run -A examples/deno/generate.ts MODEL -p PROMPT -n N [--temp T] [--top-p P] [--seed S] [--strategy S] [--memory SIZE] [--context N] [--threads N] [--stats]';

function fail(message: string): never {
  console.error(`generate: ${message}\n${USAGE}`);
  Deno.exit(2);
}

function parse(argv: string[]) {
  const o = { model: '', prompt: '', tokens: 256, temp: 0, topP: 0.9, seed: undefined as number | undefined, strategy: 'dense' as Strategy, memory: undefined as string | undefined, context: undefined as number | undefined, threads: undefined as number | undefined, stats: false };
  const num = (flag: string, v: string | undefined, int: boolean) => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < 0 || (int && !Number.isInteger(n))) fail(`${flag} needs a ${int ? 'non-negative integer' : 'non-negative number'}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '-p': case '--prompt': o.prompt = value() ?? fail('-p needs a prompt'); break;
      case '-n': case '--tokens': o.tokens = num(flag, value(), true); break;
      case '--temp': o.temp = num(flag, value(), false); break;
      case '--top-p': o.topP = num(flag, value(), false); break;
      case '--seed': o.seed = num(flag, value(), true); break;
      case '--memory': o.memory = value() ?? fail('--memory needs a size'); break;
      case '--context': o.context = num(flag, value(), true); break;
      case '--threads': o.threads = num(flag, value(), true); break;
      case '--strategy': {
        const s = value() as Strategy;
        if (!STRATEGIES.includes(s)) fail(`--strategy must be one of ${STRATEGIES.join(', ')}`);
        o.strategy = s;
        break;
      }
      case '--stats': o.stats = true; break;
      case '-h': case '--help': console.log(USAGE); Deno.exit(0); break;
      default:
        if (flag.startsWith('-')) fail(`unknown option ${flag}`);
        if (o.model) fail(`one model, got ${o.model} and ${a}`);
        o.model = a;
    }
  }
  if (!o.model) fail('MODEL is required');
  return o;
}

const o = parse(Deno.args);
const out = Deno.stdout;
const enc = new TextEncoder();
const abort = new AbortController();
Deno.addSignalListener('SIGINT', () => abort.abort(new Error('interrupted')));
try {
  const model = await openModel(o.model, { strategy: o.strategy, memory: o.memory, contextLength: o.context, threads: o.threads });
  try {
    for await (const text of model.generate(o.prompt, { maxTokens: o.tokens, temperature: o.temp, topP: o.topP, seed: o.seed, signal: abort.signal })) {
      await out.write(enc.encode(text));
    }
    if (out.isTerminal()) await out.write(enc.encode('\n'));
    if (o.stats) console.error(JSON.stringify({ ...model.stats.summary(), threads: model.threading.threads, timings: model.timings }));
  } finally {
    await model.close();
  }
} catch (e) {
  if (e instanceof FlashlmError) {
    console.error(`generate: ${e.message}`);
    Deno.exit(1);
  }
  throw e;
}
// Deno.addSignalListener keeps the process alive: leave explicitly.
Deno.exit(0);
