import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Rng } from '../src/base/rng.js';
import { assertInputsHeldOut, familyRows, isTestInput, taskFamilies, writeFamily } from '../src/data/families.js';
import { tempDir } from './helpers.js';

const prompts = (path: string): string[] => readFileSync(path, 'utf8').trim().split('\n').slice(1).map((l) => l.split(',')[0]!);

describe('composition benchmark families', () => {
  const families = taskFamilies();

  it('has at least 4 families of at least 3 tasks; no prompt names its task', () => {
    expect(families.length).toBeGreaterThanOrEqual(4);
    for (const f of families) {
      expect(f.tasks.length).toBeGreaterThanOrEqual(3);
      for (const row of familyRows(f.tasks, 60, 1, 'train', 0)) {
        for (const t of f.tasks) for (const word of t.name.split('-')) expect(row.prompt, `${f.name}: '${row.prompt}'`).not.toContain(word);
      }
    }
  });

  it("tasks share a vocabulary, and one task's rule answers another task's inputs wrongly", () => {
    for (const f of families) {
      for (const [j, tj] of f.tasks.entries()) {
        const rows = familyRows([tj], 100, 2 + j, 'train', 0);
        for (const r of rows) expect(r.prompt + r.completion).toMatch(/^[a-z ~^|=?!.]+$/);
        for (const ti of f.tasks.filter((t) => t !== tj)) {
          const same = rows.filter((r) => ti.answer(r.input) === r.completion).length;
          expect(same, `${f.name}: ${ti.name}'s rule on ${tj.name}'s inputs`).toBeLessThanOrEqual(10);
        }
      }
    }
    const tail = families.find((f) => f.name === 'tail')!;
    const rng = new Rng(3);
    const input = tail.tasks[0]!.input(rng);
    const shown = tail.tasks.map((t) => t.prompt(input));
    // Prompts of one input differ only in their last token, and the answers differ.
    for (const p of shown) expect(p.slice(0, -1)).toBe(shown[0]!.slice(0, -1));
    expect(new Set(tail.tasks.map((t) => t.answer(input))).size).toBe(tail.tasks.length);
  });

  it('writes files whose test inputs no training, router or validation row holds, and the check catches a leak', () => {
    const tmp = tempDir();
    try {
      for (const f of families) {
        const files = writeFamily(tmp.dir, f, { taskRows: 100, gateRows: 150, testRows: 20, seed: 4 });
        const training = new Set([...Object.values(files.tasks), files.gate].flatMap(prompts));
        for (const p of prompts(files.test)) expect(training.has(p), `${f.name}: '${p}'`).toBe(false);
      }
      const rows = familyRows(families[0]!.tasks, 10, 5, 'train', 0);
      expect(() => assertInputsHeldOut(rows, [rows[3]!], 'leaky')).toThrow(/leaky: test input '.*' .* also occurs in the training rows/);
      expect(rows.every((r) => !isTestInput(r.input, 0))).toBe(true);
    } finally {
      tmp.cleanup();
    }
  });
});
