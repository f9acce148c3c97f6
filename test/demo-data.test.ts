import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CORPUS_DOCS, CORPUS_FILE, writeCorpus } from '../src/data/corpus.js';
import { writeDemoData } from '../src/data/demo.js';
import { demoFamily } from '../src/data/families.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(tmp.cleanup);
const rows = (path: string): string[][] => readFileSync(path, 'utf8').trim().split('\n').slice(1).map((l) => l.split(','));

describe('demo data', () => {
  it('writes one file per task, the router file and held-out test files; no prompt names its task; one answer per prompt', () => {
    const files = writeDemoData({ out: tmp.dir, rows: 50, gateRows: 80, testRows: 10 });
    const tasks = demoFamily().tasks.map((t) => t.name);
    expect(Object.keys(files.tasks)).toEqual(tasks);
    const answers = new Map<string, string>();
    const trainingPrompts = new Set<string>();
    for (const f of [...Object.values(files.tasks), files.gate]) {
      for (const [prompt, completion, t] of rows(join(tmp.dir, f))) {
        expect(tasks).toContain(t);
        for (const name of tasks) expect(prompt, `${f}: '${prompt}' names task ${name}`).not.toContain(name);
        expect(answers.get(prompt!) ?? completion).toBe(completion);
        answers.set(prompt!, completion!);
        trainingPrompts.add(prompt!);
      }
    }
    expect(new Set(rows(join(tmp.dir, files.gate)).map((r) => r[2]))).toEqual(new Set(tasks));
    const test = rows(join(tmp.dir, files.test));
    expect(test).toHaveLength(10 * tasks.length);
    for (const [prompt] of test) expect(trainingPrompts.has(prompt!), `test prompt '${prompt}' is in a training file`).toBe(false);
    expect(rows(join(tmp.dir, files.testUnlabelled))).toEqual(test.map((r) => r.slice(0, 2)));
  });

  it('the committed CSVs are what the generator writes', () => {
    const files = writeDemoData({ out: tmp.dir });
    writeCorpus(join(tmp.dir, CORPUS_FILE), CORPUS_DOCS, 0);
    const shipped = join(import.meta.dirname, '..', 'recipes', 'data');
    for (const f of [...Object.values(files.tasks), files.gate, files.test, files.testUnlabelled, CORPUS_FILE]) {
      expect(readFileSync(join(tmp.dir, f), 'utf8'), f).toBe(readFileSync(join(shipped, f), 'utf8'));
    }
  });
});
