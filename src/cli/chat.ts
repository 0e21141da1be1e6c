/**
 * `flashlm chat MODEL`: an interactive chat in the terminal over the model's
 * chat template. The conversation is kept and rendered whole each turn; the
 * KV cache already holds the earlier turns, so only the new turn is computed.
 * Ctrl-C stops the current answer (what was said stays in the history),
 * Ctrl-D (end of input) quits. Without a terminal, each input line is a user
 * message (for scripts and tests).
 */
import { createInterface } from 'node:readline';
import { AbortedError, type ChatMessage } from '../node.js';
import { generateOptions, openModelCli, rate, type ModelFlags, type SamplingFlags } from './options.js';
import { describeModel, finishNote } from './run.js';
import { ArgumentError } from '../errors.js';
import { CHAT_TEMPLATE_HINT } from '../chat.js';

export interface ChatFlags extends ModelFlags, SamplingFlags {
  system?: string;
}

/** Lets timers and input events run (Ctrl-C) between tokens: the forward pass itself is synchronous. */
const turn = () => new Promise<void>((r) => setImmediate(r));

export async function runChat(modelPath: string, flags: ChatFlags): Promise<void> {
  const model = await openModelCli(modelPath, flags);
  try {
    if (!model.chatTemplate) throw new ArgumentError(`${modelPath} has no chat template: ${CHAT_TEMPLATE_HINT}`);
    process.stderr.write(describeModel(model));
    const tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);
    const rl = createInterface({ input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty, prompt: '> ' });
    if (tty) process.stderr.write('Ctrl-C stops an answer, Ctrl-D quits.\n');
    const history: ChatMessage[] = flags.system ? [{ role: 'system', content: flags.system }] : [];
    let current: AbortController | undefined;
    // A line typed is a turn from that moment: Ctrl-C right after Enter cancels it too.
    let busy = false;
    let cancelled = false;
    rl.on('line', () => (busy = true));
    const interrupt = () => {
      if (busy) {
        cancelled = true;
        current?.abort(new Error('interrupted'));
      } else if (tty) {
        process.stdout.write('\n(Ctrl-D quits)\n');
        rl.prompt();
      } else rl.close();
    };
    rl.on('SIGINT', interrupt); // a terminal: Ctrl-C arrives as a key
    process.on('SIGINT', interrupt); // no terminal: as a signal
    try {
      if (tty) rl.prompt();
      for await (const line of rl) {
        const text = line.trim();
        if (!text) {
          busy = cancelled = false;
          if (tty) rl.prompt();
          continue;
        }
        history.push({ role: 'user', content: text });
        current = new AbortController();
        if (cancelled) current.abort(new Error('interrupted'));
        let answer = '';
        let stopped = false;
        try {
          for await (const piece of model.chat(history, generateOptions(flags, current.signal))) {
            process.stdout.write(piece);
            answer += piece;
            await turn();
          }
        } catch (e) {
          if (e instanceof AbortedError) stopped = true;
          else if (e instanceof ArgumentError) {
            // e.g. the conversation outgrew the context: say so, forget this message, go on
            process.stderr.write(`\nflashlm: ${e.message}\n`);
            history.pop();
            current = undefined;
            busy = cancelled = false;
            if (tty) rl.prompt();
            continue;
          } else throw e;
        }
        current = undefined;
        busy = cancelled = false;
        // An answer stopped before its first word: forget the question too; otherwise keep what was said.
        if (stopped && !answer) history.pop();
        else history.push({ role: 'assistant', content: answer });
        process.stdout.write('\n');
        const tm = model.timings!;
        process.stderr.write(finishNote(model));
        process.stderr.write(
          `[${stopped ? 'stopped; ' : ''}prompt: ${tm.promptTokens} tokens, ${tm.reusedTokens} reused, ${rate(tm.promptTokens - tm.reusedTokens, tm.promptMs)}; ` +
            `generated: ${tm.tokens} tokens, ${rate(tm.tokens - 1, tm.decodeMs)}]\n`,
        );
        if (tty) rl.prompt();
      }
    } finally {
      process.off('SIGINT', interrupt);
      rl.close();
    }
    if (tty) process.stdout.write('\n');
  } finally {
    await model.close();
  }
}
