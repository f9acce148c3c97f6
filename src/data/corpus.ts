import { writeFileAtomic } from '../base/atomic.js';
import { Rng } from '../base/rng.js';

/** The shipped corpus: recipes/data/corpus.csv, this many documents. */
export const CORPUS_FILE = 'corpus.csv';
export const CORPUS_DOCS = 3000;

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(xs.length)]!;
const NOUNS = ['cat', 'dog', 'bird', 'child', 'farmer', 'teacher', 'river', 'tree', 'house', 'boat', 'garden', 'city', 'road', 'book', 'song'] as const;
const VERBS = ['sees', 'likes', 'finds', 'paints', 'follows', 'builds', 'reads', 'hears', 'visits', 'keeps'] as const;
const ADJS = ['small', 'tall', 'quiet', 'bright', 'old', 'green', 'happy', 'long', 'warm', 'dark'] as const;
const PLACES = ['near the hill', 'in the morning', 'by the sea', 'after school', 'under the bridge', 'at night'] as const;
const letters = (rng: Rng, n: number): string => Array.from({ length: n }, () => String.fromCharCode(97 + rng.int(26))).join('');

/** One English-like sentence from a tiny grammar. */
function sentence(rng: Rng): string {
  const np = (): string => `the ${rng.int(2) ? pick(rng, ADJS) + ' ' : ''}${pick(rng, NOUNS)}`;
  const s = `${np()} ${pick(rng, VERBS)} ${np()}${rng.int(3) === 0 ? ' ' + pick(rng, PLACES) : ''}.`;
  return s[0]!.toUpperCase() + s.slice(1);
}

/**
 * Lines in the demo's "<task>: <input> =" → " <answer>" format, for tasks the demo does not use
 * (copying and spelling), so the base learns the format and the byte-level vocabulary without
 * learning the demo's answers: the adapters still have something to add.
 */
function formatLine(rng: Rng): string {
  const w = rng.int(2) ? pick(rng, NOUNS) : letters(rng, 2 + rng.int(3));
  switch (rng.int(3)) {
    case 0:
      return `copy: ${w} = ${w}`;
    case 1:
      return `first: ${w} = ${w[0]}`;
    default:
      return `spell: ${w} = ${[...w].join(' ')}`;
  }
}

/** Write `docs` rows of a one-column (`text`) CSV: short documents mixing sentences and format lines. */
export function writeCorpus(path: string, docs: number, seed = 0): void {
  const rng = new Rng(seed);
  const lines = ['text'];
  for (let i = 0; i < docs; i++) {
    const parts = Array.from({ length: 2 + rng.int(3) }, () => (rng.int(3) === 0 ? formatLine(rng) : sentence(rng)));
    lines.push(`"${parts.join('\n').replace(/"/g, '""')}"`);
  }
  writeFileAtomic(path, lines.join('\n') + '\n');
}
