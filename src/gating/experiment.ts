import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraConfig } from '../adapters/config.js';
import { trainAdapter } from '../adapters/train.js';
import { writeJsonAtomic } from '../base/atomic.js';
import type { Summary } from '../report/summary.js';
import { evalSettings } from '../recipes/eval-step.js';
import type { LmTrainOptions } from '../train/lm.js';
import { GATE_CONFIG } from './gate-io.js';
import { trainGate } from './train.js';
import type { GateOptions } from './mole.js';

/** Trainer settings for one stage of the experiment (the data columns are fixed: prompt, completion, task). */
export type StageOptions = Pick<LmTrainOptions, 'steps' | 'lr' | 'batchSize' | 'seqLen' | 'warmup' | 'schedule' | 'clip' | 'seed'>;

export interface ComposeExperimentOptions {
  base: string;
  out: string;
  /** Task name → its own training CSV; each expert is named after its task. */
  taskData: Record<string, string>;
  mixedData: string;
  testData: string;
  adapter: StageOptions & { lora: Partial<LoraConfig> };
  gate: StageOptions & { options: Partial<GateOptions>; maskDropout?: number };
  /** Test prompts per task to decode under the gate, with and without each mask. */
  samples?: number;
  progress?: LmTrainOptions['progress'];
  log?: (m: string) => void;
}

const COLUMNS = { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task' };

/**
 * The MoLE experiment end to end: one LoRA expert per task, a gate over them on mixed data, then
 * every setting scored on the test set by the recipes' eval step (base, each adapter alone, static
 * equal weights, the gate, the gate with each expert masked), and summary.json. Stages whose
 * output already exists are skipped, so an interrupted run picks up where it stopped.
 */
export async function composeExperiment(o: ComposeExperimentOptions): Promise<Summary> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const tasks = Object.keys(o.taskData);
  const expertDir = (t: string): string => join(o.out, 'adapters', t);
  const gateDir = join(o.out, 'gate');
  const stage = (s: StageOptions) => ({ ...COLUMNS, ...s, progress: o.progress, log });
  for (const t of tasks) {
    if (existsSync(join(expertDir(t), 'adapter_model.safetensors'))) log(`adapter '${t}' already trained: skipping`);
    else await trainAdapter({ ...stage(o.adapter), model: o.base, data: o.taskData[t]!, out: expertDir(t), name: t, lora: o.adapter.lora, resume: resumable(expertDir(t)) });
  }
  if (existsSync(join(gateDir, GATE_CONFIG))) log('gate already trained: skipping');
  else {
    await trainGate({
      ...stage(o.gate),
      model: o.base,
      data: o.mixedData,
      out: gateDir,
      experts: tasks.map((t) => [t, expertDir(t)]),
      gate: o.gate.options,
      maskDropout: o.gate.maskDropout,
      resume: resumable(gateDir),
    });
  }

  const summary = await evalSettings({
    model: o.base,
    data: o.testData,
    ...COLUMNS,
    experts: tasks.map((t) => [t, expertDir(t)]),
    gate: gateDir,
    samples: o.samples ?? 0,
    batchSize: o.gate.batchSize,
    seqLen: o.gate.seqLen,
    log,
  });
  writeJsonAtomic(join(o.out, 'summary.json'), summary);
  return summary;
}

/** Resume an interrupted stage from its last checkpoint, if it left one. */
function resumable(dir: string): string | undefined {
  return existsSync(join(dir, 'latest')) ? dir : undefined;
}

/** The mask-effect table: settings × tasks, exact match in %. */
export function summaryTable(s: Summary): string {
  const tasks = s.tasks ?? [];
  const lines = [['setting', ...tasks, 'overall'].join('\t')];
  for (const [name, r] of Object.entries(s.settings ?? {})) {
    const pct = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}`);
    lines.push([name, ...tasks.map((t) => pct(r.tasks[t]?.exact_match)), pct(r.overall?.exact_match)].join('\t'));
  }
  return lines.join('\n');
}

