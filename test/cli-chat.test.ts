/**
 * The CLI's chat and sampling surface, as a user runs the built bin: `run
 * --chat`, `chat` over stdin lines (history kept, the KV cache reused across
 * turns), the sampling flags, stop strings and the context-full note.
 */
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { openModel, type ChatMessage } from '../src/node.js';
import { STORIES_BIN, STORIES_GOLDEN, STORIES_TOK } from './helpers/models.js';

const BIN = fileURLToPath(new URL('../bin/flashlm.js', import.meta.url));
const TEMPLATE = fileURLToPath(new URL('./fixtures/chat/zephyr.jinja', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'flashlm-cli-chat-'));
const MODEL = join(dir, 'stories.flm');
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

async function flashlm(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    c.stdin.end(input ?? '');
  });
}

test.before(async () => {
  await promisify(execFile)(process.execPath, [BIN, 'convert', STORIES_BIN, '--tokenizer', STORIES_TOK, '-o', MODEL]);
});

test('run: --top-k 1 is greedy at any temperature; --stop cuts before the stop string; --repeat-penalty changes the text', async (t) => {
  const k1 = await flashlm(['run', MODEL, '-n', '256', '--temp', '0.9', '--top-k', '1', '--seed', '4']);
  t.is(k1.code, 0, k1.stderr);
  t.is(k1.stdout, STORIES_GOLDEN + '\n');
  const stop = await flashlm(['run', MODEL, '-n', '256', '--stop', 'ball', '--stop', 'red']);
  t.is(stop.stdout, STORIES_GOLDEN.slice(0, STORIES_GOLDEN.indexOf('red')) + '\n');
  const nl = await flashlm(['run', MODEL, '-n', '256', '--stop', '\\n']);
  t.is(nl.stdout, STORIES_GOLDEN.split('\n')[0] + '\n');
  const rp = await flashlm(['run', MODEL, '-n', '60', '--repeat-penalty', '1.5', '--repeat-last-n', '32', '--presence-penalty', '0.5', '--frequency-penalty', '0.5', '--min-p', '0.1']);
  t.is(rp.code, 0, rp.stderr);
  const plain = await flashlm(['run', MODEL, '-n', '60']);
  t.true(STORIES_GOLDEN.startsWith(plain.stdout.trimEnd()));
  t.not(rp.stdout, plain.stdout);
  const bad = await flashlm(['run', MODEL, '--min-p', '3']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /min-p/);
});

test('run: stderr notes a full context', async (t) => {
  const r = await flashlm(['run', MODEL, '-n', '100', '--context', '24']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /note: generation stopped: the context is full \(24 tokens/);
  const n = await flashlm(['run', MODEL, '-n', '10', '--context', '24']);
  t.notRegex(n.stderr, /context is full/);
});

test('run --chat: the template\'s rendering, the library\'s answer; without a template a one-line error naming --chat-template FILE', async (t) => {
  const none = await flashlm(['run', MODEL, '--chat', '-p', 'hi']);
  t.is(none.code, 1);
  t.regex(none.stderr, /^flashlm: .*--chat-template FILE.*$/m);
  t.is(none.stderr.trim().split('\n').filter((l) => l.startsWith('flashlm:')).length, 1);
  const r = await flashlm(['run', MODEL, '--chat', '--chat-template', TEMPLATE, '--system', 'Be kind.', '-p', 'Once upon a time', '-n', '30']);
  t.is(r.code, 0, r.stderr);
  const model = await openModel(MODEL, { chatTemplate: await import('node:fs').then((fs) => fs.readFileSync(TEMPLATE, 'utf8')) });
  try {
    let want = '';
    for await (const p of model.chat([{ role: 'system', content: 'Be kind.' }, { role: 'user', content: 'Once upon a time' }], { maxTokens: 30 })) want += p;
    t.is(r.stdout, want + '\n');
  } finally {
    await model.close();
  }
});

test('chat: each stdin line is a turn; history is kept and the KV cache reused; the answers are the library\'s', async (t) => {
  const r = await flashlm(['chat', MODEL, '--chat-template', TEMPLATE, '-n', '20'], 'Hello there\n\nTell me more\n');
  t.is(r.code, 0, r.stderr);
  const turns = [...r.stderr.matchAll(/\[prompt: (\d+) tokens, (\d+) reused, .*; generated: (\d+) tokens/g)];
  t.is(turns.length, 2, r.stderr);
  t.is(Number(turns[0]![2]), 0);
  t.true(Number(turns[1]![2]) >= Number(turns[0]![1]), 'the second turn reuses at least the first prompt');
  const model = await openModel(MODEL, { chatTemplate: await import('node:fs').then((fs) => fs.readFileSync(TEMPLATE, 'utf8')) });
  try {
    const history: ChatMessage[] = [];
    let want = '';
    for (const q of ['Hello there', 'Tell me more']) {
      history.push({ role: 'user', content: q });
      let a = '';
      for await (const p of model.chat(history, { maxTokens: 20 })) a += p;
      history.push({ role: 'assistant', content: a });
      want += a + '\n';
    }
    t.is(r.stdout, want);
  } finally {
    await model.close();
  }
});

test('chat in a terminal: Ctrl-C stops the answer (the chat goes on), Ctrl-C at the prompt only hints, Ctrl-D quits', async (t) => {
  const r = await new Promise<string>((resolve, reject) => {
    const c = spawn('python3', [fileURLToPath(new URL('./helpers/pty-chat.py', import.meta.url)), process.execPath, BIN, 'chat', MODEL, '--chat-template', TEMPLATE, '-n', '20'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let s = '';
    c.stdout.on('data', (d: Buffer) => (s += d.toString()));
    c.on('error', reject);
    c.on('close', () => resolve(s));
  });
  t.regex(r, /Ctrl-C stops an answer, Ctrl-D quits/);
  // Ctrl-C right after Enter: that answer is cancelled before its first token
  t.regex(r, /\[stopped; prompt: \d+ tokens, 0 reused, .*; generated: 0 tokens/);
  // the chat goes on: the next turn answers (the cancelled, unanswered message was dropped)
  const next = /\[prompt: (\d+) tokens, (\d+) reused, .*; generated: (\d+) tokens/.exec(r);
  t.truthy(next, r);
  t.true(Number(next![3]) > 0, r);
  t.regex(r, /\(Ctrl-D quits\)/);
  t.regex(r, /EXIT 0\n$/);
});
