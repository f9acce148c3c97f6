import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CORPUS_DOCS, CORPUS_FILE, writeCorpus } from '../src/data/corpus.js';
import { demoTasks, writeDemoData } from '../src/data/demo.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(tmp.cleanup);
const rows = (path: string): string[][] => readFileSync(path, 'utf8').trim().split('\n').slice(1).map((l) => l.split(','));

describe('demo data', () => {
  it('writes one file per task, mixed and test, with a task column and one answer per prompt', () => {
    const files = writeDemoData({ out: tmp.dir, rows: 50, testRows: 30 });
    expect(Object.keys(files.tasks).length).toBeGreaterThanOrEqual(3);
    const answers = new Map<string, string>();
    for (const [task, f] of Object.entries(files.tasks)) {
      const r = rows(join(tmp.dir, f));
      expect(r).toHaveLength(50);
      for (const [prompt, completion, t] of r) {
        expect(t).toBe(task);
        expect(prompt!.startsWith(`${task}: `)).toBe(true);
        expect(completion).toMatch(/^ \S+$/);
        // Exact-match answers: a prompt always gets the same completion.
        expect(answers.get(prompt!) ?? completion).toBe(completion);
        answers.set(prompt!, completion!);
      }
    }
    const mixed = rows(join(tmp.dir, files.mixed));
    expect(new Set(mixed.map((r) => r[2]))).toEqual(new Set(Object.keys(files.tasks)));
    for (const [prompt, completion] of rows(join(tmp.dir, files.test))) expect(answers.get(prompt!) ?? completion).toBe(completion);
  });

  it('the committed CSVs are what the generator writes', () => {
    writeDemoData({ out: tmp.dir });
    writeCorpus(join(tmp.dir, CORPUS_FILE), CORPUS_DOCS, 0);
    const shipped = join(import.meta.dirname, '..', 'recipes', 'data');
    for (const t of [...demoTasks().map((t) => `${t.name}.csv`), 'mixed.csv', 'test.csv', CORPUS_FILE]) {
      expect(readFileSync(join(tmp.dir, t), 'utf8'), t).toBe(readFileSync(join(shipped, t), 'utf8'));
    }
  });
});
