/**
 * The `flashlm` command (Node). Parsing by commander (subcommands, help and
 * validation for free); progress bars by cli-progress, only on a TTY.
 * Generated text goes to stdout; every diagnostic goes to stderr.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { FlashlmError } from '../errors.js';
import { STRATEGIES } from '../plan.js';
import { runConvert } from './convert.js';
import { runSynth } from './synth.js';
import { SHAPE_NAMES } from '../synth/shapes.js';
import { runInspect } from './inspect.js';
import { runGenerate } from './run.js';
import { runCalibrate } from './calibrate.js';
import { runEval } from './eval.js';
import { runServe } from './host.js';
import { runApiServer } from './serve.js';
import { runChat } from './chat.js';
import { addHttpOptions, addModelOptions, addSamplingOptions, addWeightOptions } from './options.js';

const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string };

const int = (name: string, min: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
  return n;
};
const float = (name: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};

export function buildCli(): Command {
  const program = new Command('flashlm')
    .description('Run language models bigger than memory by streaming weights from flash.')
    .version(pkg.version)
    .showHelpAfterError();

  const convert = program
    .command('convert')
    .description('convert a checkpoint (a Hugging Face folder: OPT, Llama, Mistral, Qwen2, Qwen3, Phi-3 and sparse Llamas; or a llama2.c .bin) to a .flm file')
    .argument('<input>', 'Hugging Face model folder, or llama2.c checkpoint (.bin)')
    .requiredOption('-o, --output <file>', 'the .flm file to write')
    .option('--tokenizer <file>', 'tokenizer file (tokenizer.json, or llama2.c tokenizer.bin)')
    .option('--activation <act>', 'gated FFN activation over config.json\'s hidden_act: relu, fatrelu=T (ProSparse), drelu (TurboSparse), silu');
  addWeightOptions(convert, 'f32', 'e.g. --dtype q4 --resident-dtype int8').action(runConvert);

  const synth = program
    .command('synth')
    .description('write a model file of a real shape (OPT 1.3B/6.7B/13B, Llama-2-7B) with random weights whose ReLU activations are as sparse, skewed and changing as a trained sparse model\'s')
    .addOption(new Option('--shape <shape>', 'model shape').choices([...SHAPE_NAMES]).makeOptionMandatory())
    .requiredOption('-o, --output <file>', 'the .flm file to write')
    .option('--seed <s>', 'random seed (the same seed writes the same file)', int('seed', 0), 1)
    .option('--layers <n>', 'only the first n layers (quick runs)', int('layers', 1))
    .option('--tokenizer <file>', 'a tokenizer.json to embed instead of the bundled OPT one (padded to the shape\'s vocabulary)');
  addWeightOptions(synth, 'f16', 'e.g. --resident-dtype int8 for 6.7B and up').action(runSynth);

  addHttpOptions(program
    .command('inspect')
    .description('print a .flm file\'s architecture, dims, dtypes and sections')
    .argument('<model>', '.flm file (path or URL)')
    .option('--json', 'print the header as JSON'))
    .action(runInspect);

  const run = program
    .command('run')
    .description('generate text; the continuation streams to stdout')
    .argument('<model>', '.flm file (path or URL)')
    .option('-p, --prompt <text>', 'prompt', '')
    .option('--chat', 'the prompt is a user message: render it with the model\'s chat template and print the answer')
    .option('--system <text>', 'with --chat: a system message before it');
  addSamplingOptions(run);
  addModelOptions(run)
    .option('--measure-predictor', 'also compute the true active sets to report predictor recall/precision')
    .addOption(new Option('--stats <format>', 'per-token statistics to stderr').choices(['table', 'json']))
    .action(runGenerate);

  const chat = program
    .command('chat')
    .description('interactive chat in the terminal with the model\'s chat template (history kept; Ctrl-C stops an answer, Ctrl-D quits)')
    .argument('<model>', '.flm file (path or URL)')
    .option('--system <text>', 'a system message to start the conversation');
  addSamplingOptions(chat);
  addModelOptions(chat).action(runChat);

  const serve = program
    .command('serve')
    .description('an OpenAI-compatible HTTP API for one model: /v1/models, /v1/completions, /v1/chat/completions (streaming or not)')
    .argument('<model>', '.flm file (path or URL)')
    .option('--port <p>', 'port (0: any free port)', int('port', 0), 8080)
    .option('--host <h>', 'address to listen on', '127.0.0.1')
    .option('--api-key <key>', 'require "Authorization: Bearer <key>" (default: the FLASHLM_API_KEY environment variable, else none)')
    .option('--model-name <name>', 'the model id the API reports (default: the file name without .flm)')
    .option('--queue <n>', 'requests waiting for the model before 429', int('queue', 0), 16)
    .option('--max-body <bytes>', 'largest request body in bytes', int('max-body', 1), 1 << 20)
    .option('--log', 'log each request to stderr');
  addModelOptions(serve).action(runApiServer);

  program
    .command('host')
    .description('serve a folder for local development: HTTP Range/206, ETag, and COOP/COEP for cross-origin isolation')
    .argument('<dir>', 'folder to serve (models, the browser example, dist/, wasm/)')
    .option('--port <p>', 'port (0: any free port)', int('port', 0), 8080)
    .option('--host <h>', 'address to listen on', '127.0.0.1')
    .option('--log', 'log each request to stderr')
    .action(runServe);

  program
    .command('calibrate')
    .description('train the per-layer neuron predictors (ReLU models) or gate thresholds (gated models; with predictors: --gate-mode predicted) on calibration text and write a copy of the model with them')
    .argument('<model>', '.flm file')
    .requiredOption('--text <files...>', 'calibration text files (plain text)')
    .requiredOption('-o, --output <file>', 'the .flm file to write (FFN sections copied byte for byte)')
    .option('--rank <r>', 'predictor rank for every layer (default dModel/8 within [16, 128])', int('rank', 1))
    .option('--rank-per-layer <list>', 'comma-separated rank per layer', (v: string) => v.split(',').map((x) => int('rank', 1)(x.trim())))
    .option('--tokens <n>', 'calibration tokens (fitting + threshold tuning + held out)', int('tokens', 64), 32768)
    .option('--recall <r>', 'recall target of the per-layer thresholds', float('recall', 0.01, 1), 0.95)
    .option('--margin <m>', 'tune thresholds for recall + margin on the tuning tokens, so held-out text keeps the target', float('margin', 0, 0.5), 0.01)
    .option('--holdout <f>', 'share of the windows held out for the report (as many again tune the thresholds)', float('holdout', 0.01, 0.33), 0.1)
    .option('--epochs <n>', 'training passes over the fitting tokens', int('epochs', 1), 4)
    .option('--context <n>', 'tokens per calibration window', int('context', 2), 256)
    .addOption(new Option('--init <method>', 'initial predictor: data-weighted low-rank of the up projection, its plain truncated SVD, or random').choices(['data', 'svd', 'random']).default('data'))
    .option('--seed <s>', 'random seed', int('seed', 0), 1)
    .option('--gate-sparsity <s>', 'gated (SwiGLU) models: share of neurons the per-layer |silu(gate·x)| thresholds skip', float('gate-sparsity', 0, 0.99), 0.7)
    .addOption(
      new Option('--gate-mode <mode>', 'gated models: keep the gate rows resident and read up/down of neurons over the thresholds, or train predictors of those neurons and read whole bundles')
        .choices(['resident', 'predicted'])
        .default('resident'),
    )
    .option('--no-lookahead', 'skip the lookahead predictors (layer L\'s neurons from layer L-1\'s FFN input, to start reads a layer early)')
    .option('-t, --threads <n>', 'kernel threads, the main one included (default: every core)', int('threads', 1))
    .option('--json', 'print the per-layer report as JSON')
    .option('--force', 'replace an existing output file that is not a .flm')
    .action(runCalibrate);

  addHttpOptions(program
    .command('eval')
    .description('perplexity over a text with a strategy, and top-1 agreement and mean KL against dense')
    .argument('<model>', '.flm file (path or URL)')
    .requiredOption('--text <files...>', 'text files to score')
    .addOption(new Option('--strategy <s>', 'what stays resident and what is streamed').choices([...STRATEGIES]).default('dense'))
    .addOption(new Option('--sparsity <s>', 'how predictor/window choose neurons (default: the file\'s predictors or gate thresholds, else oracle)').choices(['predictor', 'oracle', 'off', 'gate']))
    .option('--window <k>', 'window strategy: keep neurons used in the last k tokens', int('window', 1), 4)
    .option('--memory <size>', 'arena budget, e.g. 512M, 2G (default: what the strategy needs)')
    .option('--context <n>', 'tokens per scoring window', int('context', 2), 256)
    .option('--tokens <n>', 'score about this many tokens (evenly spaced windows); default all', int('tokens', 1))
    .option('-t, --threads <n>', 'kernel threads, the main one included (default: every core)', int('threads', 1))
    .option('--direct', 'read local files with O_DIRECT (bypass the page cache)')
    .addOption(new Option('--stats <format>', 'run statistics to stderr (json: the last line is one JSON object)').choices(['table', 'json'])))
    .action(runEval);

  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    if (e instanceof FlashlmError || isSystemError(e)) {
      process.stderr.write(`flashlm: ${(e as Error).message}\n`);
      process.exitCode = 1;
      return;
    }
    throw e; // a bug: keep the stack trace
  }
}

/** An operating-system error (ENOENT, EISDIR, EACCES, ENOSPC, EADDRINUSE, ...): the user's environment, said in one line. */
function isSystemError(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return e instanceof Error && typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && typeof (e as { syscall?: unknown }).syscall === 'string';
}
