import { writeFileAtomic } from '../base/atomic.js';
import { Rng } from '../base/rng.js';

/** A prompt/completion task with one exact answer per prompt. */
export interface SyntheticTask {
  name: string;
  example(rng: Rng): { prompt: string; completion: string };
}

/** `n` random lowercase letters. */
export const letters = (rng: Rng, n: number): string => Array.from({ length: n }, () => String.fromCharCode(97 + rng.int(26))).join('');

/** Write `n` rows of prompt,completion,task drawn from the tasks (one task when `only` names it). */
export function writeTaskCsv(path: string, tasks: SyntheticTask[], n: number, seed: number, only?: string): void {
  const rng = new Rng(seed);
  const pool = only ? tasks.filter((t) => t.name === only) : tasks;
  if (pool.length === 0) throw new Error(`no task named '${only}' (tasks: ${tasks.map((t) => t.name).join(', ')})`);
  const quote = (s: string): string => (/[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const lines = ['prompt,completion,task'];
  for (let i = 0; i < n; i++) {
    const t = pool[rng.int(pool.length)]!;
    const { prompt, completion } = t.example(rng);
    lines.push([prompt, completion, t.name].map(quote).join(','));
  }
  writeFileAtomic(path, lines.join('\n') + '\n');
}
