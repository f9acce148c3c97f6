import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import type { LoraConfig } from '../adapters/config.js';
import { trainAdapter } from '../adapters/train-adapter.js';
import { writeFileAtomic, writeJsonAtomic } from '../base/atomic.js';
import type { Arch } from '../base/config.js';
import { initBase } from '../base/init.js';
import { summaryTable } from './summary-table.js';
import { GATE_CONFIG } from '../gating/gate-io.js';
import { loadModel } from '../gating/mole-model.js';
import { DEFAULT_GATE_LR, gateStatsOn, routerSettings, trainGate, type RouterFlags } from '../gating/train-gate.js';
import { trainMoe, upcycleFolder } from '../moe/train-moe.js';
import { collectRun } from '../report/collect.js';
import { renderReport } from '../report/page.js';
import type { Summary } from '../report/summary.js';
import { loadLmData, type LmTrainOptions } from '../train/lm.js';
import { pretrain } from '../train/pretrain.js';
import type { ProgressMode } from '../train/progress.js';
import type { TrainResult } from '../train/trainer.js';
import { evalSettings } from './eval-step.js';
import { COLUMNS, TRAINER, type Step, type StepType } from './format.js';

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

type F = Record<string, unknown>;

/** The fields of a step that belong to `keys` (its trainer or column fields). */
function pick(f: F, keys: Record<string, unknown>): F {
  return Object.fromEntries(Object.entries(f).filter(([k]) => k in keys));
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

/** The trainer and column fields of a step as trainLm options, with the CLI's defaults. */
function trainerOptions(f: F, out: string, ctx: StepContext): LmTrainOptions {
  return {
    batchSize: 8,
    seqLen: 256,
    lr: 1e-3,
    seed: 0,
    ...(pick(f, { ...TRAINER, ...COLUMNS }) as Partial<LmTrainOptions>),
    data: f.data as string,
    out,
    // An interrupted run left checkpoints: pick up from the last one.
    resume: existsSync(join(out, 'latest')) ? out : undefined,
    overwrite: owned(out, ctx),
    progress: ctx.progress,
    log: ctx.log,
  };
}

/** Run one step: the same library call the matching CLI command makes. */
export async function runStep(step: Step, ctx: StepContext): Promise<TrainResult['status']> {
  const f = step.fields;
  switch (step.type) {
    case 'init-base':
      await initBase({
        arch: f.arch as Arch,
        layers: f.layers as number,
        hidden: f.hidden as number,
        heads: f.heads as number,
        kvHeads: f.kvHeads as number | undefined,
        ffn: f.ffn as number,
        vocab: f.vocab as number | undefined,
        maxPositions: f.maxPositions as number | undefined,
        tieWordEmbeddings: f.tie as boolean | undefined,
        seed: f.seed as number | undefined,
        out: step.out,
        overwrite: owned(step.out, ctx),
      });
      return 'done';
    case 'pretrain':
      return (await pretrain({ ...trainerOptions(f, step.out, ctx), model: f.model as string })).status;
    case 'train-adapter': {
      const lora: Partial<LoraConfig> = {};
      if (f.rank !== undefined) lora.r = f.rank as number;
      if (f.alpha !== undefined) lora.loraAlpha = f.alpha as number;
      if (f.dropout !== undefined) lora.loraDropout = f.dropout as number;
      if (f.rslora !== undefined) lora.useRslora = f.rslora as boolean;
      if (f.targets !== undefined) lora.targetModules = f.targets as string[];
      return (await trainAdapter({ ...trainerOptions(f, step.out, ctx), model: f.model as string, name: (f.name as string | undefined) ?? step.id, lora })).status;
    }
    case 'train-gate': {
      const flags = { ...f, temperature: f.temperature as 'learn' | number | undefined } as RouterFlags;
      const settings = routerSettings(flags);
      const lr = (f.lr as number | undefined) ?? DEFAULT_GATE_LR[settings.router!];
      const r = await trainGate({ ...trainerOptions(f, step.out, ctx), lr, model: f.model as string, experts: f.experts as [string, string][], ...settings });
      return r.status;
    }
    case 'upcycle':
      await upcycleFolder({
        model: f.model as string,
        out: step.out,
        experts: f.experts as number,
        topK: f.topK as number,
        shared: f.shared as number | undefined,
        noise: f.noise as number | undefined,
        seed: f.seed as number | undefined,
        overwrite: owned(step.out, ctx),
        warn: ctx.log,
      });
      return 'done';
    case 'train-moe':
      return (
        await trainMoe({
          ...trainerOptions(f, step.out, ctx),
          model: f.model as string,
          routerOnly: f.routerOnly as boolean | undefined,
          auxCoef: f.auxCoef as number | undefined,
          zCoef: f.zCoef as number | undefined,
          balanceBias: f.balanceBias as number | undefined,
        })
      ).status;
    case 'eval': {
      const s = await evalSettings({ ...(f as Omit<Parameters<typeof evalSettings>[0], 'log'>), log: ctx.log });
      writeJsonAtomic(step.out, s);
      printSummary(s, ctx);
      return 'done';
    }
    case 'gates': {
      const m = await loadModel(f.model as string, { warn: ctx.log });
      try {
        for (const [name, dir] of f.experts as [string, string][]) m.addExpert(name, dir);
        await m.useGate(f.gate as string);
        const seqLen = (f.seqLen as number | undefined) ?? 256;
        const { dataset } = await loadLmData(m.base, { ...pick(f, COLUMNS), data: f.data as string, seqLen, batchSize: 8, seed: 0 }, () => {});
        writeJsonAtomic(step.out, await gateStatsOn(m.composition, dataset.train, dataset.taskNames, seqLen, Infinity));
      } finally {
        m.dispose();
      }
      return 'done';
    }
    case 'report': {
      const dir = (f.dir as string | undefined) ?? ctx.run;
      if (!existsSync(dir)) throw new Error(`report: ${dir} does not exist`);
      writeFileAtomic(step.out, renderReport(collectRun(dir), new Date()));
      ctx.print(`report: ${step.out}\n`);
      return 'done';
    }
  }
}

/** A skipped step's result, shown again: an eval's table, so a rerun of a finished recipe still prints it. */
export function replayStep(step: Step, ctx: StepContext): void {
  if (step.type === 'eval') printSummary(JSON.parse(readFileSync(step.out, 'utf8')) as Summary, ctx);
}

function printSummary(s: Summary, ctx: StepContext): void {
  ctx.print(`exact match (%) by setting and task:\n${summaryTable(s)}\n`);
}
