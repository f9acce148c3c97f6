import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { keywordTasks, writeTaskCsv } from '../data/synthetic.js';
import { initBase } from '../base/init.js';
import { composeExperiment } from '../gating/experiment.js';
import type { Summary } from '../report/summary.js';

export interface BenchComposeOptions {
  out: string;
  /** Rows per task for its adapter, rows of mixed data for the gate, test rows. */
  rows: number;
  testRows: number;
  adapterSteps: number;
  gateSteps: number;
  gateLr: number;
  seed: number;
  progress?: 'auto' | 'bar' | 'lines' | 'off';
}

/**
 * The fuller composition experiment on synthetic keyword tasks and a tiny random base: the same
 * stages as the quickstart, sized up from the test suite's fast version.
 */
export async function benchCompose(o: BenchComposeOptions): Promise<Summary> {
  const tasks = keywordTasks({ color: 'red', fruit: 'fig', pet: 'cat', tool: 'saw' });
  const data = join(o.out, 'data');
  const base = join(o.out, 'base');
  if (!existsSync(join(base, 'model.safetensors'))) initBase({ arch: 'llama', layers: 2, hidden: 64, heads: 4, ffn: 128, out: base, seed: o.seed });
  const taskData: Record<string, string> = {};
  tasks.forEach((t, i) => {
    taskData[t.name] = join(data, `${t.name}.csv`);
    writeTaskCsv(taskData[t.name]!, tasks, o.rows, o.seed + i + 1, t.name);
  });
  writeTaskCsv(join(data, 'mixed.csv'), tasks, o.rows * tasks.length, o.seed + 100);
  writeTaskCsv(join(data, 'test.csv'), tasks, o.testRows, o.seed + 200);
  return composeExperiment({
    base,
    out: o.out,
    taskData,
    mixedData: join(data, 'mixed.csv'),
    testData: join(data, 'test.csv'),
    adapter: { steps: o.adapterSteps, lr: 1e-2, batchSize: 16, seqLen: 32, seed: o.seed, lora: { r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj', 'lm_head'] } },
    gate: { steps: o.gateSteps, lr: o.gateLr, batchSize: 16, seqLen: 32, seed: o.seed, options: { granularity: 'prefix', temperature: { mode: 'fixed', value: 1 } }, maskDropout: 0.7 },
    samples: 1,
    progress: o.progress,
  });
}
