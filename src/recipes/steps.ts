import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import { loraConfigOf, mixLoraOf } from '../adapters/lora-options.js';
import { trainAdapter } from '../adapters/train-adapter.js';
import { writeFileAtomic, writeJsonAtomic } from '../base/atomic.js';
import { initBase } from '../base/init.js';
import { summaryTable } from './summary-table.js';
import { GATE_CONFIG } from '../gating/gate-io.js';
import { loadModel } from '../gating/mole-model.js';
import { gateLr, routerSettings } from '../gating/gate-options.js';
import { gateStatsOn, trainGate } from '../gating/train-gate.js';
import { trainMoe, upcycleFolder } from '../moe/train-moe.js';
import { collectRun } from '../report/collect.js';
import { renderReport } from '../report/page.js';
import { parseSummary, type Summary } from '../report/summary.js';
import { loadLmData, type LmTrainOptions } from '../train/lm.js';
import { pretrain } from '../train/pretrain.js';
import type { ProgressMode } from '../train/progress.js';
import type { TrainResult } from '../train/trainer.js';
import { defaultOf } from '../base/options.js';
import { lmTrainOptionsOf, TRAINER_OPTIONS, type TrainSettings } from '../train/train-options.js';
import { evalSettings } from './eval-step.js';
import type { Step, StepOf, StepType } from './format.js';

export interface StepContext {
  run: string;
  progress: ProgressMode;
  log: (m: string) => void;
  /** Where tables meant for the user go (stdout by default). */
  print: (text: string) => void;
}

/** The file whose presence shows a step's output was written (the folder's main artifact, or the file itself). */
export function outputOf(step: Step): string {
  const main: Partial<Record<StepType, string>> = {
    'init-base': 'model.safetensors',
    pretrain: 'model.safetensors',
    upcycle: 'model.safetensors',
    'train-moe': 'model.safetensors',
    'train-adapter': 'adapter_model.safetensors',
    'train-gate': GATE_CONFIG,
  };
  const f = main[step.type];
  return f ? join(step.out, f) : step.out;
}

/**
 * Whether a step may replace what its output already holds: inside the run folder the output is
 * the recipe's own, and one without its marker is an unfinished attempt to redo. Elsewhere nothing
 * is replaced.
 */
function owned(out: string, ctx: StepContext): boolean {
  const r = relative(ctx.run, out);
  return r !== '' && !r.startsWith('..') && !isAbsolute(r);
}

/** A training step's shared fields as trainLm options, resuming an interrupted run and reporting through ctx. */
function trainerOptions(f: TrainSettings, out: string, ctx: StepContext): LmTrainOptions {
  return {
    ...lmTrainOptionsOf(f, out),
    // An interrupted run left checkpoints: pick up from the last one.
    resume: existsSync(join(out, 'latest')) ? out : undefined,
    overwrite: owned(out, ctx),
    progress: ctx.progress,
    log: ctx.log,
  };
}

type Status = TrainResult['status'];

/** Run one step: the same library call the matching CLI command makes. */
export async function runStep(step: Step, ctx: StepContext): Promise<Status> {
  switch (step.type) {
    case 'init-base':
      return initBaseStep(step, ctx);
    case 'pretrain':
      return (await pretrain({ ...trainerOptions(step.fields, step.out, ctx), model: step.fields.model })).status;
    case 'train-adapter':
      return trainAdapterStep(step, ctx);
    case 'train-gate':
      return trainGateStep(step, ctx);
    case 'upcycle':
      return upcycleStep(step, ctx);
    case 'train-moe':
      return trainMoeStep(step, ctx);
    case 'eval':
      return evalStep(step, ctx);
    case 'gates':
      return gatesStep(step, ctx);
    case 'report':
      return reportStep(step, ctx);
  }
}

async function initBaseStep({ fields: f, out }: StepOf<'init-base'>, ctx: StepContext): Promise<Status> {
  await initBase({ ...f, tieWordEmbeddings: f.tie, out, overwrite: owned(out, ctx) });
  return 'done';
}

async function trainAdapterStep({ fields: f, out, id }: StepOf<'train-adapter'>, ctx: StepContext): Promise<Status> {
  const mixlora = mixLoraOf(f);
  return (await trainAdapter({ ...trainerOptions(f, out, ctx), model: f.model, name: f.name ?? id, lora: loraConfigOf(f), mixlora })).status;
}

async function trainGateStep({ fields: f, out }: StepOf<'train-gate'>, ctx: StepContext): Promise<Status> {
  const settings = routerSettings(f);
  const lr = gateLr(f.lr, settings);
  return (await trainGate({ ...trainerOptions(f, out, ctx), lr, model: f.model, experts: f.experts, ...settings })).status;
}

async function upcycleStep({ fields: f, out }: StepOf<'upcycle'>, ctx: StepContext): Promise<Status> {
  await upcycleFolder({ ...f, out, overwrite: owned(out, ctx), warn: ctx.log });
  return 'done';
}

async function trainMoeStep({ fields: f, out }: StepOf<'train-moe'>, ctx: StepContext): Promise<Status> {
  const o = { ...trainerOptions(f, out, ctx), model: f.model, routerOnly: f.routerOnly, auxCoef: f.auxCoef, zCoef: f.zCoef, balanceBias: f.balanceBias };
  return (await trainMoe(o)).status;
}

async function evalStep({ fields: f, out }: StepOf<'eval'>, ctx: StepContext): Promise<Status> {
  const s = await evalSettings({ ...f, log: ctx.log });
  writeJsonAtomic(out, s);
  printSummary(s, ctx);
  return 'done';
}

async function gatesStep({ fields: f, out }: StepOf<'gates'>, ctx: StepContext): Promise<Status> {
  const m = await loadModel(f.model, { warn: ctx.log });
  try {
    for (const [name, dir] of f.experts) m.addExpert(name, dir);
    await m.useGate(f.gate);
    const seqLen = f.seqLen ?? defaultOf(TRAINER_OPTIONS.seqLen);
    const { dataset } = await loadLmData(m.base, { ...f, seqLen, batchSize: 8, seed: 0 }, () => {});
    writeJsonAtomic(out, await gateStatsOn(m.composition, dataset.train, dataset.taskNames, seqLen, Infinity));
  } finally {
    m.dispose();
  }
  return 'done';
}

function reportStep({ fields: f, out }: StepOf<'report'>, ctx: StepContext): Status {
  const dir = f.dir ?? ctx.run;
  if (!existsSync(dir)) throw new Error(`report: ${dir} does not exist`);
  writeFileAtomic(out, renderReport(collectRun(dir), new Date()));
  ctx.print(`report: ${out}\n`);
  return 'done';
}

/** A skipped step's result, shown again: an eval's table, so a rerun of a finished recipe still prints it. */
export function replayStep(step: Step, ctx: StepContext): void {
  if (step.type !== 'eval') return;
  const { value, problems } = parseSummary(JSON.parse(readFileSync(step.out, 'utf8')));
  if (problems.length) throw new Error(`${step.out}: ${problems.join('; ')}`);
  printSummary(value, ctx);
}

function printSummary(s: Summary, ctx: StepContext): void {
  ctx.print(`exact match (%) by setting and task:\n${summaryTable(s)}\n`);
}
