import type { Command } from 'commander';
import type { LoraConfig } from '../adapters/config.js';
import { trainAdapter } from '../adapters/train-adapter.js';
import { DATA_FILE_FORMATS, escapeNote, readTemplateArg, TRUNCATE_SIDES } from '../data/index.js';
import { dataFormatOf, type DataFormat } from '../data/record.js';
import { SCHEDULE_KINDS, type ScheduleKind } from '../train/schedule.js';
import type { ProgressMode } from '../train/progress.js';
import type { LmTrainOptions } from '../train/lm.js';
import { choice, float, int } from './args.js';
import { mixLoraOptions, type MixLoraFlags } from './mixlora-flags.js';
import { byteProgress } from '../train/job-progress.js';

/** Which columns hold what, and how rows become examples: shared by every command that reads data. */
export function addColumnFlags(c: Command): Command {
  return c
    .requiredOption('--data <file>', 'the data: a CSV with a header row, or a JSONL file (.jsonl, .ndjson) with one object per line, whose keys are the columns')
    .option('--data-format <format>', `read --data (and --val-data) as ${DATA_FILE_FORMATS.join(' or ')} whatever the file name says`, choice(DATA_FILE_FORMATS))
    .option('--text-column <name>', "column of documents: plain LM loss, packed and eos-separated (the default, with column 'text')")
    .option('--prompt-column <name>', 'prompt column; with a completion, loss (and exact match) on the completion only')
    .option('--completion-column <name>', 'completion column')
    .option('--prompt-template <text>', "the prompt as a template over the columns, used verbatim, line breaks included (in bash: $'SMS: {masseges}\\nLabel:'); {{ and }} are literal braces; @file.txt reads it from a file. Instead of --prompt-column")
    .option('--completion-template <text>', "the completion as a template, e.g. ' {label}' (the leading space matters); @file.txt reads it. Instead of --completion-column")
    .option('--messages-column <name>', "chat rows: a column holding a JSON list of {\"role\", \"content\"} messages, rendered with the base's chat template; loss on the assistant turns")
    .option('--user-column <name>', 'chat rows: the user turn, with --assistant-column (the answer, with loss)')
    .option('--assistant-column <name>', 'chat rows: the assistant turn, with --user-column')
    .option('--system <text>', 'chat rows from --user-column/--assistant-column: a system message before each; @file.txt reads it')
    .option('--chat-template <text>', "a Jinja chat template (@file.jinja reads it) instead of the base's tokenizer_config.json chat_template")
    .option('--task-column <name>', "column naming each row's task: per-task reports, gating, mask dropout");
}

/** The data flags every training command shares. */
export function addDataFlags(c: Command): Command {
  return addColumnFlags(c)
    .option('--val-data <file>', 'validation file (CSV or JSONL) with the same columns')
    .option('--val-split <fraction>', 'hold out this fraction of rows for validation, deterministic by seed', float(0, 0.9))
    .option(
      '--truncate <side>',
      'prompt/completion and chat rows longer than --seq-len: left (default) cuts the prompt from the left after its bos and keeps the whole completion, leaving out only rows whose completion alone does not fit; right cuts the end, leaving out rows whose prompt fills --seq-len',
      choice(TRUNCATE_SIDES),
    )
    .option('--skip-bad-rows', 'skip and count bad rows (ragged, badly quoted, non-UTF-8, not a JSON object, missing or non-text values) instead of stopping; still stops if they span more than 1% of the lines (10 in a small file)')
    .option('--cache-dir <dir>', 'cache the tokenized data here (reused when the data file, its format and the tokenizer are unchanged)');
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

/** The shared flags as trainer options (templates read from their @files), with a progress bar on the data read. */
export function lmOptions(o: CliTrainFlags): LmTrainOptions & { stopProgress: () => void } {
  if (o.valData && o.valSplit !== undefined) throw new Error('give --val-data or --val-split, not both');
  const format = readFormatFlags(o);
  const bar = byteProgress(`reading ${o.data}`);
  return { ...o, ...format, onDataProgress: bar.update, stopProgress: bar.stop };
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
