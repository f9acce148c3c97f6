import type { Command } from 'commander';
import { loraConfigOf, mixLoraOf, TRAIN_ADAPTER_OPTIONS } from '../adapters/lora-options.js';
import { trainAdapter } from '../adapters/train-adapter.js';
import { escapeNote, readTemplateArg } from '../data/index.js';
import { dataFormatOf, type DataFormat } from '../data/record.js';
import type { LmTrainOptions } from '../train/lm.js';
import { COLUMN_OPTIONS, lmTrainOptionsOf, type TrainSettings } from '../train/train-options.js';
import { byteProgress } from '../train/job-progress.js';
import { addOptions, optionValues } from './options.js';

/** Which columns hold what, and how rows become examples: shared by every command that reads data. */
export function addColumnFlags(c: Command): Command {
  return addOptions(c, COLUMN_OPTIONS);
}

/**
 * The row-format flags with their @files read, as given (unset keys left out); notes templates
 * holding a literal backslash-n, which a shell's '…\n…' gives where a line break was meant.
 */
export function readFormatFlags(o: DataFormat, warn: (msg: string) => void = (m) => process.stderr.write(`molora: ${m}\n`)): DataFormat {
  const f = dataFormatOf(o);
  for (const k of ['promptTemplate', 'completionTemplate', 'system', 'chatTemplate'] as const) {
    const v = f[k];
    if (v === undefined) continue;
    f[k] = readTemplateArg(v);
    const note = k === 'chatTemplate' ? null : escapeNote(f[k]!, `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
    if (note) warn(note);
  }
  return f;
}

/** The shared settings as trainer options (templates read from their @files), with a progress bar on the data read. */
export function lmOptions(o: TrainSettings & { out: string }): LmTrainOptions & { stopProgress: () => void } {
  if (o.valData && o.valSplit !== undefined) throw new Error('give --val-data or --val-split, not both');
  const format = readFormatFlags(o);
  const bar = byteProgress(`reading ${o.data}`);
  return { ...lmTrainOptionsOf(o, o.out), ...format, onDataProgress: bar.update, stopProgress: bar.stop };
}

export async function runTrainAdapter(flags: Record<string, unknown>): Promise<void> {
  const o = optionValues(TRAIN_ADAPTER_OPTIONS, flags);
  const mixlora = mixLoraOf(o);
  const opts = lmOptions(o);
  try {
    const r = await trainAdapter({ ...opts, model: o.model, name: o.name, lora: loraConfigOf(o), mixlora });
    // The trainer has already said how to resume an interrupted run.
    if (r.status === 'interrupted') process.exitCode = 130;
    else process.stderr.write(`molora: trained ${r.step} steps; ${mixlora ? 'MixLoRA' : 'PEFT'} adapter in ${o.out}\n`);
  } finally {
    opts.stopProgress();
  }
}
