/**
 * Chat templates: rendered by @huggingface/jinja exactly as Python's Jinja2
 * renders them the way transformers' apply_chat_template sets it up (Debian's
 * python3-jinja2: sandboxed, trim_blocks, lstrip_blocks, raise_exception), on
 * templates in the styles of Llama 3, Llama 2, ChatML and Zephyr; tokenized
 * with no special tokens added (the template writes BOS itself: never twice);
 * read from the tokenizer_config.json the converter keeps in the .flm, or
 * given with `chatTemplate`; multi-turn chat reuses the KV cache and equals a
 * fresh model's answer.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openModel, renderChat, type ChatMessage, type ChatTemplate } from '../src/node.js';
import { MemorySource } from '../src/source/memory.js';
import { OPT_DIR, STORIES_BIN, STORIES_TOK, convertToBytes } from './helpers/models.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/chat/', import.meta.url));
const template = (name: string) => readFileSync(FIXTURES + name + '.jinja', 'utf8');

const CONVERSATIONS: ChatMessage[][] = [
  [{ role: 'user', content: 'Hello!' }],
  [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is 2+2?' }],
  [
    { role: 'system', content: 'You answer in rhymes.\nAlways.' },
    { role: 'user', content: '  Tell me about the sea  ' },
    { role: 'assistant', content: 'The sea is wide, the sea is deep.' },
    { role: 'user', content: 'And the sky? "Quotes", \\backslashes\\ and {{ braces }} and <tags> & ünïcødé 🌊' },
  ],
  [{ role: 'user', content: '' }, { role: 'assistant', content: 'ok' }],
  [{ role: 'tool', content: 'x' }],
  [{ role: 'assistant', content: 'first' }],
];

const SPECIALS = [
  { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' },
  { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' },
];

function python(templateSource: string, cases: { messages: ChatMessage[]; add_generation_prompt: boolean; special: Record<string, string> }[]): (string | { error: string })[] {
  const out = execFileSync('python3', [FIXTURES + 'render.py'], { input: JSON.stringify({ template: templateSource, cases }) });
  return JSON.parse(out.toString('utf8'));
}

for (const name of ['llama3', 'llama2', 'chatml', 'zephyr']) {
  test(`${name}: @huggingface/jinja renders what Python's jinja2 renders`, (t) => {
    const source = template(name);
    const cases = SPECIALS.flatMap((special) => CONVERSATIONS.flatMap((messages) => [true, false].map((add_generation_prompt) => ({ messages, add_generation_prompt, special }))));
    const expected = python(source, cases);
    let compared = 0;
    for (const [i, c] of cases.entries()) {
      const tpl: ChatTemplate = { source, special: c.special };
      const want = expected[i]!;
      if (typeof want === 'object') {
        // the template raised (e.g. roles out of order): so does ours, with the same message
        t.throws(() => renderChat(tpl, c.messages, { addGenerationPrompt: c.add_generation_prompt }), { message: new RegExp(want.error.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')) });
      } else {
        t.is(renderChat(tpl, c.messages, { addGenerationPrompt: c.add_generation_prompt }), want, `${name} case ${i}`);
      }
      compared++;
    }
    t.is(compared, cases.length);
  });
}

/** The OPT fixture converted with a chat template in its tokenizer_config.json (as a Hugging Face chat model ships it). */
async function optWithTemplate(source: string): Promise<Uint8Array> {
  const dir = mkdtempSync(join(tmpdir(), 'flashlm-chat-opt-'));
  try {
    cpSync(OPT_DIR, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
    cfg.chat_template = source;
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg, null, 2));
    return await convertToBytes(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the template in tokenizer_config.json is used; tokenized with no special tokens added: BOS once, from the template', async (t) => {
  const bytes = await optWithTemplate(template('zephyr'));
  const model = await openModel(new MemorySource(bytes));
  try {
    t.truthy(model.chatTemplate);
    t.is(model.chatTemplate!.special['bos_token'], '</s>');
    const messages: ChatMessage[] = [{ role: 'user', content: 'Hello there' }];
    const text = model.renderChat(messages);
    t.true(text.startsWith('</s>\n<|user|>\nHello there</s>'), JSON.stringify(text));
    const ids = model.encodeChat(messages);
    t.deepEqual(ids, model.tokenizer.encode(text, { addSpecialTokens: false }));
    t.is(ids[0], 2, 'the template wrote BOS (</s> = 2 for OPT)');
    t.not(ids[1], 2, 'and nothing added a second one');
    t.deepEqual(model.tokenizer.encode(text).slice(0, 2), [2, 2], '(encode with special tokens would have doubled it)');
  } finally {
    await model.close();
  }
});

test('multi-turn chat: the second turn reuses the first from the KV cache and answers as a fresh model does', async (t) => {
  const bytes = await optWithTemplate(template('zephyr'));
  const model = await openModel(new MemorySource(bytes));
  const fresh = await openModel(new MemorySource(bytes));
  try {
    const history: ChatMessage[] = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'In the morning she' }];
    let a1 = '';
    for await (const piece of model.chat(history, { maxTokens: 24 })) a1 += piece;
    const first = model.timings!;
    t.is(first.reusedTokens, 0);
    t.true(a1.length > 0);
    history.push({ role: 'assistant', content: a1 }, { role: 'user', content: 'and then?' });
    let a2 = '';
    for await (const piece of model.chat(history, { maxTokens: 24 })) a2 += piece;
    const second = model.timings!;
    t.true(second.reusedTokens >= first.promptTokens, `reused ${second.reusedTokens}, first prompt ${first.promptTokens}`);
    let b2 = '';
    for await (const piece of fresh.chat(history, { maxTokens: 24 })) b2 += piece;
    t.is(a2, b2);
    t.is(fresh.timings!.reusedTokens, 0);
  } finally {
    await model.close();
    await fresh.close();
  }
});

test('a model without a template: a one-line error naming --chat-template FILE; the chatTemplate option gives one', async (t) => {
  const bytes = await convertToBytes(STORIES_BIN, { tokenizer: STORIES_TOK });
  const bare = await openModel(new MemorySource(bytes));
  try {
    t.is(bare.chatTemplate, undefined);
    const e = await t.throwsAsync(async () => {
      for await (const _ of bare.chat([{ role: 'user', content: 'hi' }])) break;
    });
    t.regex(e!.message, /--chat-template FILE/);
    t.false(e!.message.includes('\n'));
  } finally {
    await bare.close();
  }
  const model = await openModel(new MemorySource(bytes), { chatTemplate: template('llama2') });
  try {
    const messages = [{ role: 'user', content: 'Once upon a time' }];
    t.is(model.renderChat(messages), '<s>[INST] Once upon a time [/INST]');
    // llama2.c's tokenizer: <s> written by the template is BOS (1), once
    const ids = model.encodeChat(messages);
    t.is(ids[0], 1);
    t.not(ids[1], 1);
    let out = '';
    for await (const piece of model.chat(messages, { maxTokens: 10 })) out += piece;
    t.true(out.length > 0);
  } finally {
    await model.close();
  }
});
