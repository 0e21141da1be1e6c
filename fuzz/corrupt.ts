/**
 * The corrupted-file fuzzer's cases: byte flips in every region of a real
 * .flm, truncations, and header-field mutations re-encoded with a correct
 * header hash (so the reader's own rules, not the hash, must catch them).
 * Case i of a fixture is a pure function of (seed, i): any case can be
 * replayed alone (`npm run fuzz -- --replay fixture:kind:i`).
 */
import { FlashlmError } from '../src/errors.js';
import { PREAMBLE_BYTES, type FlmHeader } from '../src/format/layout.js';
import { decodeHeader } from '../src/format/reader.js';
import { rng } from '../src/util/random.js';
import { withHeader } from '../test/helpers/header.js';
import { openModel } from '../src/node.js';
import { MemorySource } from '../src/source/memory.js';

export type Kind = 'flip' | 'truncate' | 'header';
export const KINDS: readonly Kind[] = ['flip', 'truncate', 'header'];

/**
 * same: the reference text; error: a typed one-line error; relabel: another
 * text from a header that swapped two interchangeable entries (below); the
 * rest fail the run.
 */
export type Outcome = 'same' | 'error' | 'relabel' | 'stack' | 'hang' | 'crash' | 'different';
export const OUTCOMES: readonly Outcome[] = ['same', 'error', 'relabel', 'stack', 'hang', 'crash', 'different'];
export const FAILING: ReadonlySet<Outcome> = new Set(['stack', 'hang', 'crash', 'different']);

export interface Mutation {
  bytes: Uint8Array;
  /**
   * The header swapped the names (or offsets) of two entries of the same
   * shape, dtype and size (two layers' FFN sections, layers.0.wq and
   * layers.1.wq): a well-formed file of another model, every hash right.
   * No reader rule can tell (the header hash is what vouches for names), so
   * other output from it is its own class, not a failure.
   */
  relabel?: boolean;
  /** What was done, for replay and reports (e.g. "flip ffn.3 +1234 ^0x40"). */
  what: string;
}

/** The regions of a file a flip can land in: preamble, header, each section, the gaps between them, the integrity table. */
export function regions(bytes: Uint8Array, h: FlmHeader): { name: string; start: number; end: number }[] {
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(12, true);
  const out = [
    { name: 'preamble', start: 0, end: PREAMBLE_BYTES },
    { name: 'header', start: PREAMBLE_BYTES, end: PREAMBLE_BYTES + headerLength },
  ];
  const spans = [...h.sections.map((s) => ({ name: s.name, start: s.offset, end: s.offset + s.length })), { name: 'integrity', start: h.integrity.offset, end: h.integrity.offset + h.integrity.length }];
  spans.sort((a, b) => a.start - b.start);
  let at = PREAMBLE_BYTES + headerLength;
  for (const s of spans) {
    if (s.start > at) out.push({ name: 'padding', start: at, end: s.start });
    out.push(s);
    at = Math.max(at, s.end);
  }
  return out.filter((r) => r.end > r.start);
}

export function headerOf(bytes: Uint8Array): FlmHeader {
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(12, true);
  return decodeHeader(bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + len), bytes.byteLength);
}

/**
 * Header fields a mutation may touch: every structural one (tables, sizes,
 * dtypes, layout, shape-defining dims). Values that only change what a
 * well-formed model computes (normEps, ropeTheta, ropeStyle, preNorm, token
 * ids, the tokenizer's text, meta) are left out: a changed epsilon is a
 * different valid model, not a corrupt file, and no reader rule can tell.
 */
const SEMANTIC = new Set(['normEps', 'ropeTheta', 'ropeStyle', 'preNorm', 'bosId', 'eosId', 'stopIds', 'tokenizer', 'meta', 'threshold', 'gate', 'ropeScaling', 'slidingWindow']);

type Path = (string | number)[];

function paths(node: unknown, at: Path, out: Path[]): void {
  if (node === null || typeof node !== 'object' || node instanceof Uint8Array) return;
  const keys: (string | number)[] = Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node);
  for (const k of keys) {
    if (typeof k === 'string' && SEMANTIC.has(k)) continue;
    const p = [...at, k];
    out.push(p);
    paths((node as Record<string | number, unknown>)[k], p, out);
  }
}

function parentOf(root: unknown, p: Path): Record<string | number, unknown> {
  let n = root as Record<string | number, unknown>;
  for (const k of p.slice(0, -1)) n = n[k] as Record<string | number, unknown>;
  return n;
}

const BIG = [2 ** 31, 2 ** 32, 2 ** 32 + 64, 2 ** 53, -1, -64, 0, 1, 0.5, NaN, Infinity];

/** One random edit of a header field (value), of a table (swap, duplicate, drop), or of a cross-reference. */
function mutateHeader(h: FlmHeader, r: () => number, all: Path[], numbers: number[], strings: string[]): { what: string; relabel?: boolean } {
  const said = mutateHeaderOnce(h, r, all, numbers, strings);
  return typeof said === 'string' ? { what: said } : said;
}

/** Two table entries that differ only by name and place: same dtype, shape, size, section (tensors) or length and block geometry (sections). */
function interchangeable(table: string, a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  const same = (k: string) => JSON.stringify(a[k]) === JSON.stringify(b[k]);
  if (table === 'tensors') return same('dtype') && same('shape') && same('length') && same('section');
  if (table === 'sections') return String(a.name).startsWith('ffn.') && String(b.name).startsWith('ffn.') && same('length') && same('blockBytes') && same('blockCount');
  return false;
}

function mutateHeaderOnce(h: FlmHeader, r: () => number, all: Path[], numbers: number[], strings: string[]): string | { what: string; relabel: boolean } {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const mode = r();
  const root = h as unknown as Record<string, unknown>;
  if (mode < 0.15) {
    // Table edits: swap two entries' offsets, point one at another, swap names, drop or duplicate an entry.
    const table = pick(['sections', 'tensors', 'ffn'] as const);
    const rows = h[table] as unknown as Record<string, unknown>[];
    // (An earlier edit of this header may have broken the table itself: then there is nothing to swap.)
    if (!Array.isArray(rows) || rows.length < 2) return `${table}: no table to edit`;
    const i = Math.floor(r() * rows.length);
    let j = Math.floor(r() * (rows.length - 1));
    if (j >= i) j++;
    const field = table === 'ffn' ? pick(['section', 'layer', 'partOffsets', 'stride']) : pick(['offset', 'name', 'length', 'offset+length']);
    const op = pick(['swap', 'copy', 'drop', 'dup']);
    if (op === 'drop') {
      rows.splice(i, 1);
      return `${table}: drop [${i}]`;
    }
    if (op === 'dup') {
      rows.splice(j, 0, structuredClone(rows[i]!));
      return `${table}: duplicate [${i}] at ${j}`;
    }
    // Swapping where two interchangeable entries are (sections: their names; tensors: names or offsets) relabels a valid file.
    const relabel = op === 'swap' && interchangeable(table, rows[i]!, rows[j]!) && (table === 'tensors' ? field !== 'length' : field === 'name');
    const isRow = (x: unknown) => x !== null && typeof x === 'object' && !Array.isArray(x);
    if (!isRow(rows[i]) || !isRow(rows[j])) return `${table}: [${i}] or [${j}] is no longer an entry`;
    for (const f of field.split('+')) {
      const a = rows[i]![f];
      if (op === 'swap') rows[i]![f] = rows[j]![f];
      else rows[i]![f] = structuredClone(rows[j]![f]);
      if (op === 'swap') rows[j]![f] = a;
    }
    return { what: `${table}: ${op} ${field} of [${i}] and [${j}]${relabel ? ' (interchangeable)' : ''}`, relabel };
  }
  const p = pick(all);
  const parent = parentOf(root, p);
  const key = p[p.length - 1]!;
  const old = parent[key];
  const name = p.join('.');
  if (mode < 0.22) {
    if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete parent[key];
    return `${name}: deleted`;
  }
  let v: unknown;
  if (typeof old === 'number') {
    const x = r();
    v =
      x < 0.12 ? old + 1 : x < 0.24 ? old - 1 : x < 0.34 ? old + 64 : x < 0.42 ? old - 64 : x < 0.5 ? old + 4096 : x < 0.56 ? old * 2 : x < 0.62 ? Math.floor(old / 2) :
      x < 0.8 ? pick(numbers) : x < 0.95 ? pick(BIG) : pick(['1', null, true, [old]]);
  } else if (typeof old === 'string') {
    const x = r();
    v = x < 0.7 ? pick(strings) : x < 0.8 ? '' : x < 0.9 ? old + 'x' : pick([0, null, ['x']]);
  } else if (typeof old === 'boolean') {
    v = r() < 0.8 ? !old : pick([0, 1, 'true', null]);
  } else if (Array.isArray(old)) {
    const x = r();
    if (x < 0.3 && old.length > 0) v = old.slice(0, -1);
    else if (x < 0.5 && old.length > 0) v = [...old, old[old.length - 1]];
    else if (x < 0.7 && old.length > 1) v = [...old].reverse();
    else if (x < 0.85) v = [];
    else v = pick([null, 0, 'x', {}]);
  } else {
    v = pick([null, 0, 'x', [], {}]);
  }
  parent[key] = v;
  return `${name}: ${short(old)} -> ${short(v)}`;
}

function short(v: unknown): string {
  const s = typeof v === 'number' && !Number.isFinite(v) ? String(v) : JSON.stringify(v) ?? String(v);
  return s.length > 40 ? s.slice(0, 37) + '...' : s;
}

/** The numbers and strings found in a header (mutations reuse them: plausible values are the dangerous ones). */
function vocabulary(h: FlmHeader, all: Path[]): { numbers: number[]; strings: string[] } {
  const numbers = new Set<number>();
  const strings = new Set<string>();
  const root = h as unknown as Record<string, unknown>;
  for (const p of all) {
    const v = parentOf(root, p)[p[p.length - 1]!];
    if (typeof v === 'number') numbers.add(v);
    if (typeof v === 'string' && v.length < 64) strings.add(v);
  }
  return { numbers: [...numbers], strings: [...strings] };
}

/** A fixture's mutation generator: case i of kind k is the same bytes on every run with the same seed. */
export class Mutator {
  private readonly header: FlmHeader;
  private readonly regions: ReturnType<typeof regions>;
  private readonly paths: Path[] = [];
  private readonly vocab: { numbers: number[]; strings: string[] };

  constructor(
    readonly bytes: Uint8Array,
    readonly seed: number,
  ) {
    this.header = headerOf(bytes);
    this.regions = regions(bytes, this.header);
    paths(this.header, [], this.paths);
    this.vocab = vocabulary(this.header, this.paths);
  }

  regionNames(): string[] {
    return [...new Set(this.regions.map((r) => r.name.replace(/^ffn\.\d+$/, 'ffn.N')))];
  }

  async make(kind: Kind, i: number): Promise<Mutation> {
    const r = rng((this.seed * 1_000_003 + KINDS.indexOf(kind) * 7_919 + i * 2_654_435_761) >>> 0);
    for (let w = 0; w < 3; w++) r();
    const n = this.bytes.byteLength;
    if (kind === 'flip') {
      // Region first, then offset: a 32-byte preamble gets as many flips as a 1 MB section.
      const reg = this.regions[Math.floor(r() * this.regions.length)]!;
      const flips = 1 + Math.floor(r() * r() * 4);
      const b = this.bytes.slice();
      const where: string[] = [];
      for (let f = 0; f < flips; f++) {
        const at = reg.start + Math.floor(r() * (reg.end - reg.start));
        const mask = 1 + Math.floor(r() * 255);
        b[at] = b[at]! ^ mask;
        where.push(`+${at - reg.start}^0x${mask.toString(16)}`);
      }
      return { bytes: b, what: `flip ${reg.name} ${where.join(' ')}` };
    }
    if (kind === 'truncate') {
      // Half uniform, half within 64 bytes of a region boundary (where length checks live).
      let len: number;
      if (r() < 0.5) len = Math.floor(r() * n);
      else {
        const reg = this.regions[Math.floor(r() * this.regions.length)]!;
        len = Math.max(0, Math.min(n - 1, (r() < 0.5 ? reg.start : reg.end) + Math.floor(r() * 129) - 64));
      }
      return { bytes: this.bytes.slice(0, len), what: `truncate to ${len} of ${n}` };
    }
    const h = structuredClone(this.header);
    const edits = 1 + Math.floor(r() * r() * 3);
    const said: string[] = [];
    let relabel = false;
    for (let e = 0; e < edits; e++) {
      const all: Path[] = [];
      paths(h, [], all);
      const m = mutateHeader(h, r, all.length ? all : this.paths, this.vocab.numbers, this.vocab.strings);
      said.push(m.what);
      relabel ||= m.relabel === true;
    }
    return { bytes: await withHeader(this.bytes, h), what: `header ${said.join('; ')}`, relabel };
  }
}

export interface RunSpec {
  strategy: 'dense' | 'window';
  prompt: string;
  tokens: number;
  contextLength: number;
}

/** Opens and generates as `flashlm run` does (same API path), returning the text. */
export async function generate(bytes: Uint8Array, spec: RunSpec): Promise<string> {
  const model = await openModel(new MemorySource(bytes), { strategy: spec.strategy, threads: 1, contextLength: spec.contextLength });
  try {
    let out = '';
    for await (const s of model.generate(spec.prompt, { maxTokens: spec.tokens, temperature: 0 })) out += s;
    return out;
  } finally {
    await model.close();
  }
}

export interface CaseResult {
  outcome: Outcome;
  /** Error class name (typed errors), or the message of a stack trace / the output that differed. */
  detail: string;
  ms: number;
}

/** Runs one mutated file; the verdict `flashlm run` would earn (src/cli/main.ts prints FlashlmErrors in one line and rethrows the rest). */
export async function runCase(bytes: Uint8Array, spec: RunSpec, reference: string, hangMs: number, relabel = false): Promise<CaseResult> {
  const t0 = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<'hang'>((resolve) => (timer = setTimeout(() => resolve('hang'), hangMs)));
  try {
    const got = await Promise.race([generate(bytes, spec), hang]);
    const ms = performance.now() - t0;
    if (got === 'hang') return { outcome: 'hang', detail: `no end after ${hangMs} ms`, ms };
    return got === reference ? { outcome: 'same', detail: '', ms } : { outcome: relabel ? 'relabel' : 'different', detail: JSON.stringify(got.slice(0, 80)), ms };
  } catch (e) {
    const ms = performance.now() - t0;
    if (e instanceof FlashlmError) return { outcome: 'error', detail: `${e.name}: ${e.message.slice(0, 160)}`, ms };
    return { outcome: 'stack', detail: `${(e as Error)?.name}: ${(e as Error)?.message}`.slice(0, 200), ms };
  } finally {
    clearTimeout(timer);
  }
}
