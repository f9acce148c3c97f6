import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isHeldOutWord, MOE_DATA_DIR, MOE_RULES, writeMoeDemoData } from '../src/data/moe-demo.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(tmp.cleanup);
const rows = (path: string): string[][] => readFileSync(path, 'utf8').trim().split('\n').slice(1).map((l) => l.split(','));
const wordOf = (prompt: string): string => /^\w+: ([a-z]+) =$/.exec(prompt)![1]!;

describe('MoE demo data', () => {
  it('holds out test words: no test word occurs in training under any task, and each answer follows its rule', () => {
    const files = writeMoeDemoData({ out: tmp.dir, rows: 400, testRows: 100, seed: 3 });
    const train = rows(files.train);
    const test = rows(files.test);
    expect(train).toHaveLength(400);
    expect(test).toHaveLength(100);
    const trainWords = new Set(train.map(([p]) => wordOf(p!)));
    for (const [i, [prompt, completion, task]] of [...train, ...test].entries()) {
      const w = wordOf(prompt!);
      expect(prompt, `row ${i}`).toBe(`${task}: ${w} =`);
      expect(completion, prompt).toBe(` ${MOE_RULES[task!]!(w)}`);
      expect(isHeldOutWord(w, 3), prompt).toBe(i >= train.length);
    }
    expect(test.filter(([p]) => trainWords.has(wordOf(p!)))).toEqual([]);
    expect(new Set(test.map((r) => r[2]))).toEqual(new Set(Object.keys(MOE_RULES)));
    // About a quarter of all words are test words, the rest training words.
    const words = Array.from({ length: 26 * 26 }, (_, i) => String.fromCharCode(97 + Math.floor(i / 26), 97 + (i % 26)));
    expect(words.filter((w) => isHeldOutWord(w, 3)).length / words.length).toBeCloseTo(0.25, 1);
  });

  it('the committed recipes/data/moe CSVs are what the generator writes', () => {
    const files = writeMoeDemoData({ out: tmp.dir });
    const shipped = join(import.meta.dirname, '..', 'recipes', 'data', MOE_DATA_DIR);
    expect(readFileSync(files.train, 'utf8')).toBe(readFileSync(join(shipped, 'train.csv'), 'utf8'));
    expect(readFileSync(files.test, 'utf8')).toBe(readFileSync(join(shipped, 'test.csv'), 'utf8'));
  });
});
