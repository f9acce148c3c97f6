import { join } from 'node:path';
import type { Rng } from '../base/rng.js';
import { writeTaskCsv, type SyntheticTask } from './synthetic.js';

const TABLES: Record<string, Record<string, string>> = {
  color: { sky: 'blue', grass: 'green', snow: 'white', coal: 'black', blood: 'red', sun: 'yellow', plum: 'purple', rust: 'orange' },
  opposite: { hot: 'cold', up: 'down', big: 'small', fast: 'slow', old: 'new', wet: 'dry', day: 'night', open: 'shut' },
  sound: { cat: 'meow', dog: 'woof', cow: 'moo', duck: 'quack', sheep: 'baa', owl: 'hoot', pig: 'oink', bee: 'buzz' },
};

/**
 * The demo's lookup tasks: "<task>: <word> =" → " <answer>", eight words per task. The answer
 * depends on the word, so each task is a skill of its own held by its own adapter, and a
 * composition must route each prompt to the right one. Each table is small enough for a LoRA on
 * the tiny base to learn in about a minute on two cores.
 */
export function demoTasks(): SyntheticTask[] {
  return Object.entries(TABLES).map(([name, table]) => {
    const words = Object.keys(table);
    return {
      name,
      example: (rng: Rng) => {
        const w = words[rng.int(words.length)]!;
        return { prompt: `${name}: ${w} =`, completion: ` ${table[w]}` };
      },
    };
  });
}

export interface DemoDataOptions {
  out: string;
  /** Training rows per task file; mixed.csv gets this many per task. */
  rows?: number;
  testRows?: number;
  seed?: number;
}

/** The files writeDemoData produces, relative to its folder. */
export interface DemoDataFiles {
  tasks: Record<string, string>;
  mixed: string;
  test: string;
}

/**
 * Write the demo CSVs (prompt,completion,task): one training file per task, mixed.csv for the
 * gate and test.csv for scoring, each from its own seed so no file is a prefix of another.
 */
export function writeDemoData(o: DemoDataOptions): DemoDataFiles {
  const tasks = demoTasks();
  const rows = o.rows ?? 400;
  const seed = o.seed ?? 0;
  const files: DemoDataFiles = { tasks: {}, mixed: 'mixed.csv', test: 'test.csv' };
  tasks.forEach((t, i) => {
    files.tasks[t.name] = `${t.name}.csv`;
    writeTaskCsv(join(o.out, `${t.name}.csv`), tasks, rows, seed + i + 1, t.name);
  });
  writeTaskCsv(join(o.out, files.mixed), tasks, rows * tasks.length, seed + 100);
  writeTaskCsv(join(o.out, files.test), tasks, o.testRows ?? 150, seed + 200);
  return files;
}
