import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraConfig } from '../adapters/config.js';
import { trainAdapter } from '../adapters/train.js';
import { writeJsonAtomic } from '../base/atomic.js';
import type { Summary } from '../report/summary.js';
import { evaluate, type EvalReport } from '../train/evaluate.js';
import { loadLmData, type LmTrainOptions } from '../train/lm.js';
import { GATE_CONFIG } from './gate-io.js';
import type { GateOptions } from './mole.js';
import { loadModel } from './session.js';
import { gateStatsOn, trainGate } from './train.js';

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
  /** Prompts to decode under each setting for the samples list. */
  samplePrompts?: { task: string; prompt: string; reference: string }[];
  progress?: LmTrainOptions['progress'];
  log?: (m: string) => void;
}

const COLUMNS = { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task' };

/**
 * The MoLE experiment end to end: one LoRA expert per task, a gate over them on mixed data, then
 * every setting scored on the test set (base, each adapter alone, static equal weights, the gate,
 * the gate with each expert masked), gate weights per task, samples, and summary.json. Stages
 * whose output already exists are skipped, so an interrupted run picks up where it stopped.
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

  const m = await loadModel(o.base, { warn: log });
  try {
    for (const t of tasks) m.addExpert(t, expertDir(t));
    const test = await loadLmData(m.base, { data: o.testData, ...COLUMNS, seqLen: o.gate.seqLen, batchSize: o.gate.batchSize, seed: 0 }, () => {});
    const score = (): EvalReport => evaluate(m.base, test.dataset.train, { batchSize: o.gate.batchSize, seqLen: o.gate.seqLen, useCache: m.cacheSafe });
    const settings: Record<string, EvalReport> = {};
    const samples: NonNullable<Summary['samples']> = [];
    const sample = (setting: string): void => {
      for (const s of o.samplePrompts ?? []) samples.push({ ...s, setting, output: m.generate(s.prompt, { maxNewTokens: 16 }).text ?? '' });
    };
    m.composition.detach();
    settings.base = score();
    m.composition.attach();
    for (const t of tasks) {
      m.only(t);
      settings[`adapter:${t}`] = score();
    }
    m.mask(null).useWeights(Object.fromEntries(tasks.map((t) => [t, 1 / tasks.length])));
    settings['static-equal'] = score();
    m.useGate(gateDir);
    settings.gate = score();
    sample('gate');
    for (const t of tasks) {
      m.mask([t]);
      settings[`gate-mask:${t}`] = score();
      sample(`gate-mask:${t}`);
    }
    m.mask(null);
    const stats = gateStatsOn(m.composition, test.dataset.train, test.dataset.taskNames, o.gate.seqLen, Infinity);
    const matrix = (gates: typeof stats.gates): number[][] => gates.map((g) => g.meanWeight);
    const summary: Summary = {
      tasks,
      experts: tasks,
      settings,
      gates: {
        layers: stats.gates.map((g) => g.gate),
        experts: [...stats.experts],
        overall: matrix(stats.gates),
        by_task: Object.fromEntries(Object.entries(stats.byTask).map(([t, g]) => [t, matrix(g)])),
        entropy: stats.gates.map((g) => g.entropy),
      },
      samples,
    };
    writeJsonAtomic(join(o.out, 'summary.json'), summary);
    return summary;
  } finally {
    m.dispose();
  }
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

