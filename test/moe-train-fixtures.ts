import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { saveModel } from '../src/base/export.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import { Rng } from '../src/base/rng.js';

/** Shared by the train-moe, MixLoRA and MoE CLI tests: a learnable task and a base that can fit it. */

/** "<category> <3 random letters> =" → " <the category's word>". */
export function writeTask(path: string, n: number, seed: number): void {
  const answers: Record<string, string> = { color: 'red', fruit: 'fig', pet: 'cat' };
  const rng = new Rng(seed);
  const rows: string[] = [];
  for (let i = 0; i < n; i++) {
    const cat = Object.keys(answers)[rng.int(3)]!;
    const word = Array.from({ length: 3 }, () => String.fromCharCode(97 + rng.int(26))).join('');
    rows.push(`${cat} ${word} =, ${answers[cat]}`);
  }
  writeFileSync(path, ['prompt,completion', ...rows].join('\n') + '\n');
}

/**
 * A tiny random Llama folder whose lm_head is scaled up: with init std 0.02 a frozen head bounds
 * the logits to about ±0.6 after the final norm, so no FFN-only training could fit a task.
 */
export async function writeDenseBase(dir: string): Promise<void> {
  const raw = `${dir}-raw`;
  await initBase({ arch: 'llama', layers: 2, hidden: 32, heads: 2, ffn: 64, out: raw, seed: 1 });
  const m = loadBase(raw, { warn: () => {} });
  const head = m.parts.head;
  const old = head.weightT;
  head.weightT = old.mul(25);
  old.dispose();
  await saveModel(m, dir);
  m.dispose();
}

export const TASK_COLUMNS = { promptColumn: 'prompt', completionColumn: 'completion' } as const;

export function taskCsv(dir: string): string {
  const path = join(dir, 'train.csv');
  writeTask(path, 300, 1);
  return path;
}
