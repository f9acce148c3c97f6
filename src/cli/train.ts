import type { Command } from 'commander';
import type { LoraConfig } from '../adapters/config.js';
import { trainAdapter } from '../adapters/train-adapter.js';
import { SCHEDULE_KINDS, type ScheduleKind } from '../train/schedule.js';
import type { ProgressMode } from '../train/progress.js';
import type { LmTrainOptions } from '../train/lm.js';
import { choice, float, int } from './args.js';
import { mixLoraOptions, type MixLoraFlags } from './mixlora-flags.js';
import { byteProgress } from '../train/job-progress.js';

/** Which CSV columns hold what: shared by every command that reads a CSV. */
export function addColumnFlags(c: Command): Command {
  return c
    .requiredOption('--data <file.csv>', 'the CSV (header row required)')
    .option('--text-column <name>', 'column of documents: plain LM loss, packed and eos-separated', 'text')
    .option('--prompt-column <name>', 'prompt column; with --completion-column, loss (and exact match) on the completion only')
    .option('--completion-column <name>', 'completion column (needs --prompt-column)')
    .option('--task-column <name>', "column naming each row's task: per-task reports, gating, mask dropout");
}

/** The CSV flags every training command shares. */
export function addDataFlags(c: Command): Command {
  return addColumnFlags(c)
    .option('--val-data <file.csv>', 'validation CSV with the same columns')
    .option('--val-split <fraction>', 'hold out this fraction of rows for validation, deterministic by seed', float(0, 0.9))
    .option('--skip-bad-rows', 'skip and count ragged, badly quoted or non-UTF-8 rows instead of stopping; still stops if they span more than 1% of the lines (10 in a small file)')
    .option('--cache-dir <dir>', 'cache the tokenized data here (reused when the CSV and tokenizer are unchanged)');
}

/** The optimisation flags every training command shares; `lr` overrides the learning rate's default and help. */
export function addTrainerFlags(c: Command, lr: { help: string; default?: number } = { help: 'peak learning rate', default: 1e-3 }): Command {
  return c
    .option('--epochs <n>', 'passes over the training data (ignored when --steps is given)', int(1), 1)
    .option('--steps <n>', 'optimizer updates', int(1))
    .option('--lr <lr>', lr.help, float(0), lr.default)
    .option('--batch-size <n>', 'sequences per micro-batch', int(1), 8)
    .option('--grad-accum <n>', 'micro-batches per update', int(1), 1)
    .option('--seq-len <n>', 'tokens per sequence; longer examples are truncated and counted', int(2), 256)
    .option('--warmup <n>', 'linear warm-up updates', int(0), 0)
    .option('--schedule <kind>', `learning-rate schedule after warm-up: ${SCHEDULE_KINDS.join(', ')}`, choice(SCHEDULE_KINDS), 'cosine')
    .option('--weight-decay <wd>', 'AdamW decoupled weight decay', float(0), 0)
    .option('--clip <norm>', 'clip gradients to this global norm; 0 = off', float(0), 1)
    .option('--eval-every <n>', 'validation loss/perplexity every n updates (and at the end); 0 = end only', int(0), 0)
    .option('--save-every <n>', 'checkpoint every n updates (and at the end); 0 = end only', int(0), 0)
    .option('--seed <n>', 'seed for init, data order, split and dropout', int(0), 0)
    .option('--resume <dir>', 'continue the run in this output folder (or from one checkpoint folder)')
    .option('--overwrite', 'start afresh in an output folder that holds a model, adapter or gate (but no run to resume)')
    .option('--progress <mode>', 'auto (bar on a TTY, lines otherwise), bar, lines or off', choice(['auto', 'bar', 'lines', 'off'] as const), 'auto');
}

export type CliTrainFlags = Omit<LmTrainOptions, 'schedule' | 'progress'> & { schedule: ScheduleKind; progress: ProgressMode };

/** The shared flags as trainer options, with a progress bar on the CSV read. */
export function lmOptions(o: CliTrainFlags): LmTrainOptions & { stopProgress: () => void } {
  if (o.completionColumn && !o.promptColumn) throw new Error('--completion-column needs --prompt-column');
  if (o.promptColumn && !o.completionColumn) throw new Error('--prompt-column needs --completion-column');
  if (o.valData && o.valSplit !== undefined) throw new Error('give --val-data or --val-split, not both');
  const bar = byteProgress(`reading ${o.data}`);
  return { ...o, onDataProgress: bar.update, stopProgress: bar.stop };
}

export async function runTrainAdapter(
  o: CliTrainFlags & {
    model: string;
    name?: string;
    rank: number;
    alpha: number;
    dropout: number;
    rslora?: boolean;
    targets: string[];
    targetRegex?: string;
    layers?: number[];
    init: LoraConfig['init'];
  } & MixLoraFlags,
): Promise<void> {
  const opts = lmOptions(o);
  const lora: Partial<LoraConfig> = {
    r: o.rank,
    loraAlpha: o.alpha,
    loraDropout: o.dropout,
    useRslora: o.rslora ?? false,
    targetModules: o.targetRegex ?? o.targets,
    layersToTransform: o.layers ?? null,
    init: o.init,
  };
  try {
    const mixlora = mixLoraOptions(o);
    const r = await trainAdapter({ ...opts, model: o.model, name: o.name, lora, mixlora });
    // The trainer has already said how to resume an interrupted run.
    if (r.status === 'interrupted') process.exitCode = 130;
    else process.stderr.write(`molora: trained ${r.step} steps; ${mixlora ? 'MixLoRA' : 'PEFT'} adapter in ${o.out}\n`);
  } finally {
    opts.stopProgress();
  }
}
