import test from 'ava';
import fc from 'fast-check';
import { readFileSync, readdirSync } from 'node:fs';
import { TokenizerError } from '../src/errors.js';
import { createTokenizer, parseLlama2cTokenizer, type Llama2cVocab, type Tokenizer } from '../src/tokenizer/index.js';

const models = new URL('../../shared/models/', import.meta.url);
const optJson = readFileSync(new URL('opt-relu-6m/tokenizer.json', models), 'utf8');
const optConfig = readFileSync(new URL('opt-relu-6m/tokenizer_config.json', models), 'utf8');
const optRef = JSON.parse(readFileSync(new URL('opt-relu-6m/REFERENCE.json', models), 'utf8')) as { prompt: string; prompt_ids: number[] };
const tok512 = new Uint8Array(readFileSync(new URL('stories260K/tok512.bin', models)));

const opt = await createTokenizer({ kind: 'hf', json: optJson, config: optConfig });
/** Same vocabulary without a config: tokenizers.js then applies clean_up_tokenization in decode. */
const optCleanup = await createTokenizer({ kind: 'hf', json: optJson });
const llama = await createTokenizer({ kind: 'llama2c', data: tok512 });
const vocab512 = parseLlama2cTokenizer(tok512);

const SAMPLES = [
  'In the morning she',
  'Once upon a time, there was a little girl named Lily.',
  'Café crème, Müller & Söhne — naïve façade.',
  '日本語のテキスト',
  'emoji 😀👍🏽 and flags 🇫🇷, zwj 👩‍💻',
  '  leading and  double spaces\tand tabs\nnew\r\nlines  ',
  "don't stop . ok ? yes ! it's",
  '\uFEFFbom at start',
  'Hmmm... !lll .ooo -ppp', // equal-score pairs overlap ('ll' twice in 'lll'): run.c merges the leftmost
];

/** Random text over all code points (no lone surrogates), skewed towards multi-byte UTF-8. */
const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.string({ unit: fc.constantFrom('a', ' ', 'é', 'ü', '日', '本', '😀', '.', "'", 'n', 's', 't'), maxLength: 30 }),
);
/** OPT encodes literal special-token text as the special token, which decode then skips. */
const noOptSpecials = (s: string): boolean => !/<s>|<\/s>|<pad>|<unk>/.test(s);

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function streamAll(t: Tokenizer, ids: readonly number[], context?: readonly number[]): string[] {
  const s = t.streamDecoder(context);
  const chunks = ids.map((id) => s.push(id));
  chunks.push(s.flush());
  return chunks;
}

async function rejectsTokenizerError(t: import('ava').ExecutionContext, p: Promise<unknown>): Promise<void> {
  await t.throwsAsync(p, { instanceOf: TokenizerError });
}

// ---------------------------------------------------------------- HF (OPT)

test('hf: OPT prompt ids match the reference exactly', (t) => {
  t.deepEqual(opt.encode(optRef.prompt), optRef.prompt_ids);
  t.deepEqual(opt.encode('In the morning she'), [2, 970, 264, 1998, 514]);
  t.is(opt.bosId, 2);
  t.is(opt.eosId, 2);
  t.is(opt.vocabSize, 4096);
  t.deepEqual(opt.encode(''), [2]);
  t.is(optCleanup.bosId, 2, 'without a config, BOS comes from the post-processor template');
});

test('hf: decode round-trips samples, special tokens skipped', (t) => {
  for (const s of SAMPLES) {
    const ids = opt.encode(s);
    t.is(ids[0], 2);
    t.is(opt.decode(ids), s, s);
    t.is(opt.decode(ids.slice(1)), s, s);
  }
  t.is(opt.decode([]), '');
  t.is(opt.decode([2, 0, 1, 3, 970]), 'In');
  t.is(opt.tokenText(2), '</s>');
  t.is(opt.tokenText(264), ' the');
});

test('hf: decode round-trips random unicode (fast-check)', (t) => {
  fc.assert(
    fc.property(anyText.filter(noOptSpecials), (s) => {
      const ids = opt.encode(s);
      return ids[0] === 2 && opt.decode(ids.slice(1)) === s && opt.decode(ids) === s;
    }),
  );
  t.pass();
});

test('hf: stream withholds a split emoji until its last byte', (t) => {
  const ids = opt.encode('a😀b'); // the emoji is 4 byte-level tokens
  const chunks = streamAll(opt, ids);
  t.deepEqual(chunks.filter((c) => c !== ''), ['a', '😀', 'b']);
  t.false(chunks.some((c) => c.includes('\uFFFD')));
});

test('hf: stream of encodings == text, no U+FFFD, no half characters (fast-check)', (t) => {
  fc.assert(
    fc.property(anyText.filter(noOptSpecials), (s) => {
      for (const tk of [opt, optCleanup]) {
        const ids = tk.encode(s);
        const chunks = streamAll(tk, ids);
        if (chunks.join('') !== tk.decode(ids)) return false;
        if (chunks.some((c) => c.includes('\uFFFD') || LONE_SURROGATE.test(c))) return false;
      }
      return streamAll(opt, opt.encode(s)).join('') === s;
    }),
  );
  t.pass();
});

test('hf: stream of random ids == decode(all), with and without cleanup (fast-check)', (t) => {
  const ids = fc.array(fc.oneof(fc.integer({ min: 0, max: 4095 }), fc.integer({ min: 0, max: 300 })), { maxLength: 40 });
  fc.assert(
    fc.property(ids, (ids) => streamAll(opt, ids).join('') === opt.decode(ids) && streamAll(optCleanup, ids).join('') === optCleanup.decode(ids)),
  );
  t.pass();
});

test('hf: cleanup-enabled stream matches decode on the rules that straddle tokens', (t) => {
  const ids = optCleanup.encode("Hello . I don 't know , you 're right ' s");
  t.is(streamAll(optCleanup, ids).join(''), optCleanup.decode(ids));
  t.is(optCleanup.decode(optCleanup.encode('a . b')), 'a. b');
});

test('hf: stream context prints nothing and continues seamlessly', (t) => {
  const prompt = opt.encode('In the morning she');
  const gen = [330, 383, 290, 264, 810];
  t.is(streamAll(opt, gen, prompt).join(''), opt.decode(gen));
  t.is(streamAll(opt, gen, prompt).join(''), ' was not to the way');
});

test('hf: bad ids and malformed tokenizer.json throw TokenizerError', async (t) => {
  t.throws(() => opt.decode([4096]), { instanceOf: TokenizerError });
  t.throws(() => opt.decode([-1]), { instanceOf: TokenizerError });
  t.throws(() => opt.decode([1.5]), { instanceOf: TokenizerError });
  t.throws(() => opt.streamDecoder().push(99999), { instanceOf: TokenizerError });
  t.throws(() => opt.tokenText(5000), { instanceOf: TokenizerError });
  await rejectsTokenizerError(t, createTokenizer({ kind: 'hf', json: '{not json' }));
  await rejectsTokenizerError(t, createTokenizer({ kind: 'hf', json: '[1,2]' }));
  await rejectsTokenizerError(t, createTokenizer({ kind: 'hf', json: '{"version":"1.0"}' }));
  await rejectsTokenizerError(t, createTokenizer({ kind: 'hf', json: optJson, config: 'nope' }));
  const noModelType = JSON.parse(optJson) as { model: Record<string, unknown> };
  noModelType.model = { type: 'NoSuchModel' };
  await rejectsTokenizerError(t, createTokenizer({ kind: 'hf', json: JSON.stringify(noModelType) }));
  await rejectsTokenizerError(t, createTokenizer({ kind: 'gguf' } as never));
  await rejectsTokenizerError(t, createTokenizer(undefined as never));
});

// A tiny SentencePiece-style tokenizer.json built like Llama 2's (Metaspace
// replace + byte fallback + Strip of the first space): the decoder's output
// depends on position, which the stream's context token must handle.
const spJson = (() => {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const p of ['▁', 'a', 'b', '▁a', '▁b', 'ab', '▁ab']) vocab[p] = Object.keys(vocab).length;
  return JSON.stringify({
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: ['▁ a', '▁ b', 'a b', '▁ ab'] },
  });
})();
const spText = fc.string({ unit: fc.constantFrom('a', 'b', ' ', '日', 'é', '😀'), maxLength: 20 });

test('hf (sentencepiece-style): round trip, byte fallback, position-dependent stream (fast-check)', async (t) => {
  const sp = await createTokenizer({ kind: 'hf', json: spJson, config: JSON.stringify({ clean_up_tokenization_spaces: false, bos_token: '<s>', eos_token: '</s>' }) });
  t.is(sp.bosId, 1);
  t.is(sp.eosId, 2);
  t.deepEqual(sp.encode('日b'), [1, 259, 0xe6 + 3, 0x97 + 3, 0xa5 + 3, 261]);
  const b = sp.encode(' b').slice(-1); // '▁b'
  t.is(streamAll(sp, b).join(''), 'b', 'a sequence start strips the first space, as decode does');
  t.is(streamAll(sp, b, sp.encode('a')).join(''), ' b', 'with the prompt as context the space stays');
  fc.assert(
    fc.property(spText, (s) => {
      const ids = sp.encode(s);
      const chunks = streamAll(sp, ids);
      return sp.decode(ids) === s && chunks.join('') === s && !chunks.some((c) => c.includes('\uFFFD'));
    }),
  );
  fc.assert(
    fc.property(spText, spText, (p, g) => {
      const prompt = sp.encode(p);
      const gen = sp.encode(p + g).slice(prompt.length);
      // When the prompt's tokens are a prefix of the whole's, the stream after it prints exactly the rest.
      fc.pre(JSON.stringify(sp.encode(p + g).slice(0, prompt.length)) === JSON.stringify(prompt));
      return streamAll(sp, gen, prompt).join('') === sp.decode([...prompt, ...gen]).slice(sp.decode(prompt).length);
    }),
  );
  fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: sp.vocabSize - 1 }), { maxLength: 30 }), (ids) => streamAll(sp, ids).join('') === sp.decode(ids)));
  t.pass();
});

// ---------------------------------------------------------------- llama2.c

const key = (bytes: Uint8Array): string => String.fromCharCode(...bytes);

/** run.c's bpe_encode, transcribed literally (O(n^2) rescans), as the oracle for the heap-based encoder. */
function referenceEncode(v: Llama2cVocab, text: string): number[] {
  const lookup = new Map<string, number>();
  v.pieces.forEach((p, id) => lookup.has(key(p)) || lookup.set(key(p), id));
  const toks: number[] = [];
  if (text !== '') toks.push(lookup.get(' ')!);
  const bytes = new TextEncoder().encode(text);
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i]! & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[i]!);
    if (i + 1 < bytes.length && (bytes[i + 1]! & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup.get(String.fromCharCode(...buf));
    if (id !== undefined) toks.push(id);
    else for (const b of buf) toks.push(b + 3);
    buf = [];
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i + 1 < toks.length; i++) {
      const id = lookup.get(key(v.pieces[toks[i]!]!) + key(v.pieces[toks[i + 1]!]!));
      if (id !== undefined && v.scores[id]! > best) {
        best = v.scores[id]!;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    toks.splice(bestIdx, 2, bestId);
  }
  return [1, ...toks];
}

/** The greedy fixpoint: no adjacent pair of the result concatenates to a vocab token. */
function noMergeLeft(v: Llama2cVocab, ids: number[]): boolean {
  const inVocab = new Set(v.pieces.map(key));
  for (let i = 1; i + 1 < ids.length; i++) {
    if (inVocab.has(key(v.pieces[ids[i]!]!) + key(v.pieces[ids[i + 1]!]!))) return false;
  }
  return true;
}

const pieceId = (s: string): number => vocab512.pieces.findIndex((p) => key(p) === key(new TextEncoder().encode(s)));

test('llama2c: parses tok512.bin', (t) => {
  t.is(vocab512.pieces.length, 512);
  t.is(vocab512.maxTokenLength, 7);
  t.is(llama.vocabSize, 512);
  t.is(llama.bosId, 1);
  t.is(llama.eosId, 2);
  t.is(llama.tokenText(3 + 0xe6), '<0xE6>');
});

test('llama2c: encodes sentences as run.c does', (t) => {
  t.deepEqual(llama.encode(''), [1]);
  t.deepEqual(
    llama.encode('Once upon a time').map((id) => llama.tokenText(id)),
    ['\n<s>\n', ' Once', ' upon', ' a', ' time'],
  );
  for (const s of SAMPLES) {
    const ids = llama.encode(s);
    t.is(ids[0], 1);
    t.deepEqual(ids, referenceEncode(vocab512, s), s);
    t.true(noMergeLeft(vocab512, ids), s);
    t.is(llama.decode(ids), s, s);
  }
});

test('llama2c: byte fallback for characters outside the 512-token vocab', (t) => {
  const space = pieceId(' ');
  t.true(space > 258);
  t.deepEqual(llama.encode('日'), [1, space, 0xe6 + 3, 0x97 + 3, 0xa5 + 3]);
  t.is(llama.decode([1, space, 0xe6 + 3, 0x97 + 3, 0xa5 + 3]), '日');
  t.deepEqual(llama.encode('é'), [1, space, pieceId('é')], "'é' is in the vocab: no byte tokens");
});

test('llama2c: leading space stripped only after BOS', (t) => {
  const once = pieceId(' Once');
  t.is(llama.decode([1, once, once]), 'Once Once');
  t.is(llama.decode([once]), ' Once');
  t.is(streamAll(llama, [once, once]).join(''), ' Once Once');
  t.is(streamAll(llama, [once, once], [1]).join(''), 'Once Once', 'context [BOS] as when generating from an empty prompt');
});

test('llama2c: heap encoder == run.c transcription, fixpoint, round trip (fast-check)', (t) => {
  fc.assert(
    fc.property(anyText, (s) => {
      const ids = llama.encode(s);
      return (
        JSON.stringify(ids) === JSON.stringify(referenceEncode(vocab512, s)) &&
        noMergeLeft(vocab512, ids) &&
        llama.decode(ids) === s
      );
    }),
  );
  t.pass();
});

test('llama2c: stream == decode(all) for random ids and encodings, no U+FFFD on valid text (fast-check)', (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 511 }), { maxLength: 40 }), (ids) => streamAll(llama, ids).join('') === llama.decode(ids)),
  );
  fc.assert(
    fc.property(anyText, (s) => {
      const chunks = streamAll(llama, llama.encode(s));
      return chunks.join('') === s && !chunks.some((c) => c.includes('\uFFFD') || LONE_SURROGATE.test(c));
    }),
  );
  t.pass();
});

test('llama2c: malformed tokenizer.bin throws TokenizerError', async (t) => {
  const withInt32 = (at: number, v: number): Uint8Array => {
    const d = tok512.slice();
    new DataView(d.buffer).setInt32(at, v, true);
    return d;
  };
  const bad: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['header only partly there', tok512.slice(0, 2)],
    ['truncated in a record header', tok512.slice(0, 4 + 8 + 5 + 3)],
    ['truncated in token bytes', tok512.slice(0, tok512.length - 1)],
    ['negative length', withInt32(4 + 4, -1)],
    ['length over max_token_length', withInt32(4 + 4, 8)],
    ['length past the end', withInt32(tok512.length - 3 - 4, 7)],
    ['max_token_length 0', withInt32(0, 0)],
    ['too few tokens', tok512.slice(0, 4 + 3 * 8 + 5 + 5 + 6)],
  ];
  for (const [what, data] of bad) {
    await t.throwsAsync(createTokenizer({ kind: 'llama2c', data }), { instanceOf: TokenizerError }, what);
  }
  t.throws(() => llama.decode([512]), { instanceOf: TokenizerError });
  t.throws(() => llama.streamDecoder([1, -3]), { instanceOf: TokenizerError });
});

// ---------------------------------------------------------------- portability

test('src/tokenizer imports no node: module', (t) => {
  const dir = new URL('../src/tokenizer/', import.meta.url);
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
    const src = readFileSync(new URL(f, dir), 'utf8');
    t.false(/from\s+['"]node:|import\(\s*['"]node:|require\(/.test(src), f);
  }
});
