import { join } from 'node:path';
import type { Rng } from '../base/rng.js';
import { contentHash, isValidation } from './split.js';
import { letters, writeTaskCsv, type SyntheticTask } from './synthetic.js';

/**
 * The MoE demo's tasks, "<task>: <word> =" → " <answer>" over random lowercase words of 2 to 4
 * letters. Each answer is computed from the word, so a model can answer words it never trained
 * on, and exact match on held-out words measures what was learned rather than memorised. `len`
 * and `vowel` need only what attention already pools over the word; `first` and `last` need
 * attention to point at one letter, which training only the FFNs (train-moe) cannot teach.
 */
export const MOE_RULES: Record<string, (w: string) => string> = {
  first: (w) => w[0]!,
  last: (w) => w[w.length - 1]!,
  len: (w) => String(w.length),
  vowel: (w) => (/[aeiou]/.test(w) ? 'yes' : 'no'),
};

/** About this fraction of all words are held out for testing. */
export const MOE_HELD_OUT_FRACTION = 0.25;

/** The folder, under recipes/data, that writeMoeDemoData fills for recipes/moe-upcycle.json. */
export const MOE_DATA_DIR = 'moe';

/**
 * Whether a word is a test word: decided by a hash of the word alone, so no task trains on a
 * word that any task is tested on.
 */
export function isHeldOutWord(word: string, seed: number): boolean {
  return isValidation(contentHash([word]), seed, MOE_HELD_OUT_FRACTION);
}

/** The tasks, drawing only training words (`heldOut` false) or only test words (true). */
export function moeDemoTasks(heldOut: boolean, seed = 0): SyntheticTask[] {
  return Object.entries(MOE_RULES).map(([name, rule]) => ({
    name,
    example: (rng: Rng) => {
      const w = wordOn(heldOut, rng, seed);
      return { prompt: `${name}: ${w} =`, completion: ` ${rule(w)}` };
    },
  }));
}

function wordOn(heldOut: boolean, rng: Rng, seed: number): string {
  for (;;) {
    const w = letters(rng, 2 + rng.int(3));
    if (isHeldOutWord(w, seed) === heldOut) return w;
  }
}

export interface MoeDemoDataOptions {
  out: string;
  rows?: number;
  testRows?: number;
  seed?: number;
}

/** Write `<out>/train.csv` and `<out>/test.csv` (prompt,completion,task); no test word occurs in training. */
export function writeMoeDemoData(o: MoeDemoDataOptions): { train: string; test: string } {
  const seed = o.seed ?? 0;
  const files = { train: join(o.out, 'train.csv'), test: join(o.out, 'test.csv') };
  writeTaskCsv(files.train, moeDemoTasks(false, seed), o.rows ?? 3000, seed + 300);
  writeTaskCsv(files.test, moeDemoTasks(true, seed), o.testRows ?? 200, seed + 400);
  return files;
}
