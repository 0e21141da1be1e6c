/** Token windows from text: spread over the whole text (calibration), or cut in a row (evaluation). */
import type { Tokenizer } from '../tokenizer/types.js';

/**
 * About `tokens` tokens in windows of `context`, sampled evenly across the
 * texts (proportionally to their length) so that every part of a corpus is
 * seen without tokenizing all of it. Each window starts at a line start and is
 * encoded on its own (so it begins as the tokenizer begins a text, e.g. with BOS).
 */
export function sampleWindows(tok: Tokenizer, texts: readonly string[], tokens: number, context: number): number[][] {
  const count = Math.max(1, Math.ceil(tokens / context));
  const chars = texts.reduce((s, t) => s + t.length, 0);
  if (!chars) return [];
  const windows: number[][] = [];
  let left = tokens;
  for (let w = 0; w < count && left > 0; w++) {
    // Global character position of this window's start, mapped into a text.
    let at = Math.floor(((w + 0.5) * chars) / count);
    let ti = 0;
    while (at >= texts[ti]!.length) at -= texts[ti++]!.length;
    const text = texts[ti]!;
    const start = at === 0 ? 0 : lineStart(text, at);
    const want = Math.min(context, left);
    let span = want * 8;
    let ids: number[] = [];
    for (;;) {
      ids = tok.encode(text.slice(start, start + span));
      if (ids.length > want || start + span >= text.length) break;
      span *= 2;
    }
    const win = ids.slice(0, want);
    if (win.length < 2) continue;
    windows.push(win);
    left -= win.length;
  }
  return windows;
}

/** The first line start at or after `at` (or `at` itself when there is none). */
function lineStart(text: string, at: number): number {
  const nl = text.indexOf('\n', at);
  return nl >= 0 && nl + 1 < text.length ? nl + 1 : at;
}

/**
 * The whole text as consecutive windows for scoring: window i feeds tokens
 * [i·context, (i+1)·context) and is scored on the next token of each, so
 * every token but the first is predicted exactly once. `maxTokens` keeps
 * evenly spaced windows adding up to about that many scored tokens.
 */
export function scoringWindows(ids: readonly number[], context: number, maxTokens = Infinity): { input: number[]; target: number[] }[] {
  const all: { input: number[]; target: number[] }[] = [];
  for (let s = 0; s + 1 < ids.length; s += context) {
    const end = Math.min(s + context, ids.length - 1);
    all.push({ input: ids.slice(s, end), target: ids.slice(s + 1, end + 1) });
  }
  const want = Math.ceil(maxTokens / context);
  if (want >= all.length) return all;
  const out: { input: number[]; target: number[] }[] = [];
  for (let i = 0; i < want; i++) out.push(all[Math.floor(((i + 0.5) * all.length) / want)]!);
  return out;
}
