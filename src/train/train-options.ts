import { bool, choice, defaultOf, float, int, path, required, string, template, type Opt, type Values } from '../base/options.js';
import type { LmTrainOptions } from './lm.js';
import { DATA_FILE_FORMATS, TRUNCATE_SIDES } from '../data/index.js';
import { PROGRESS_MODES } from './progress.js';
import { DEFAULT_CLIP } from './grads.js';
import { SCHEDULE_KINDS } from './schedule.js';

/**
 * The option tables every command that reads data shares (src/base/options.ts): which columns
 * hold what and how rows become examples (COLUMN_OPTIONS), the training data's extra settings
 * (DATA_OPTIONS) and the optimisation settings of every trainer (TRAINER_OPTIONS). Names are
 * LmTrainOptions' fields; the CLI's flags are the same names kebab-cased.
 */
export const COLUMN_OPTIONS = {
  data: required(path('the data: a CSV with a header row, or a JSONL file (.jsonl, .ndjson) with one object per line, whose keys are the columns', { arg: 'file' })),
  dataFormat: choice(DATA_FILE_FORMATS, `read --data (and --val-data) as ${DATA_FILE_FORMATS.join(' or ')} whatever the file name says`, { arg: 'format' }),
  textColumn: string("column of documents: plain LM loss, packed and eos-separated (the default, with column 'text')"),
  promptColumn: string('prompt column; with a completion, loss (and exact match) on the completion only'),
  completionColumn: string('completion column'),
  promptTemplate: template("the prompt as a template over the columns, used verbatim, line breaks included (in bash: $'SMS: {masseges}\\nLabel:'); {{ and }} are literal braces; @file.txt reads it from a file. Instead of --prompt-column"),
  completionTemplate: template("the completion as a template, e.g. ' {label}' (the leading space matters); @file.txt reads it. Instead of --completion-column"),
  messagesColumn: string("chat rows: a column holding a JSON list of {\"role\", \"content\"} messages, rendered with the base's chat template; loss on the assistant turns"),
  userColumn: string('chat rows: the user turn, with --assistant-column (the answer, with loss)'),
  assistantColumn: string('chat rows: the assistant turn, with --user-column'),
  system: template('chat rows from --user-column/--assistant-column: a system message before each; @file.txt reads it'),
  chatTemplate: template("a Jinja chat template (@file.jinja reads it) instead of the base's tokenizer_config.json chat_template"),
  taskColumn: string("column naming each row's task: per-task reports, gating, mask dropout"),
} as const;

export const DATA_OPTIONS = {
  valData: path('validation file (CSV or JSONL) with the same columns', { arg: 'file' }),
  valSplit: float('hold out this fraction of rows for validation, deterministic by seed', 0, 0.9, { arg: 'fraction' }),
  truncate: choice(
    TRUNCATE_SIDES,
    'prompt/completion and chat rows longer than --seq-len: left (default) cuts the prompt from the left after its bos and keeps the whole completion, leaving out only rows whose completion alone does not fit; right cuts the end, leaving out rows whose prompt fills --seq-len',
    { arg: 'side' },
  ),
  skipBadRows: bool('skip and count bad rows (ragged, badly quoted, non-UTF-8, not a JSON object, missing or non-text values) instead of stopping; still stops if they span more than 1% of the lines (10 in a small file)'),
  cacheDir: path('cache the tokenized data here (reused when the data file, its format and the tokenizer are unchanged)'),
} as const;

/** The peak learning rate's entry; train-gate gives it another default and help. */
export const LR_OPTION: Opt<number> = float('peak learning rate', 0, Infinity, { arg: 'lr', default: 1e-3 });

export const TRAINER_OPTIONS = {
  epochs: int('passes over the training data (ignored when --steps is given)', 1, { default: 1 }),
  steps: int('optimizer updates', 1),
  lr: LR_OPTION,
  batchSize: int('sequences per micro-batch', 1, { default: 8 }),
  gradAccum: int('micro-batches per update', 1, { default: 1 }),
  seqLen: int('tokens per sequence; longer examples are truncated and counted', 2, { default: 256 }),
  warmup: int('linear warm-up updates', 0, { default: 0 }),
  schedule: choice(SCHEDULE_KINDS, `learning-rate schedule after warm-up: ${SCHEDULE_KINDS.join(', ')}`, { default: 'cosine' }),
  weightDecay: float('AdamW decoupled weight decay', 0, Infinity, { arg: 'wd', default: 0 }),
  clip: float('clip gradients to this global norm (HF Trainer\'s max_grad_norm); 0 = off', 0, Infinity, { arg: 'norm', default: DEFAULT_CLIP }),
  evalEvery: int('validation loss/perplexity every n updates (and at the end); 0 = end only', 0, { default: 0 }),
  saveEvery: int('checkpoint every n updates (and at the end); 0 = end only', 0, { default: 0 }),
  seed: int('seed for init, data order, split and dropout', 0, { default: 0 }),
  // A recipe resumes, overwrites its own unfinished outputs and shows progress by itself.
  resume: path('continue the run in this output folder (or from one checkpoint folder)', { scope: 'cli' }),
  overwrite: bool('start afresh in an output folder that holds a model, adapter or gate (but no run to resume)', { scope: 'cli' }),
  progress: choice(PROGRESS_MODES, 'auto (bar on a TTY, lines otherwise), bar, lines or off', { arg: 'mode', default: 'auto', scope: 'cli' }),
} as const;

/** A recipe's pretrain step (full-parameter training; no CLI command). */
export const PRETRAIN_OPTIONS = {
  model: required(path('model folder to train')),
  ...COLUMN_OPTIONS,
  ...DATA_OPTIONS,
  ...TRAINER_OPTIONS,
} as const;

export type TrainSettings = Values<typeof COLUMN_OPTIONS> & Values<typeof DATA_OPTIONS> & Values<typeof TRAINER_OPTIONS>;

const SHARED_KEYS = new Set(Object.keys({ ...COLUMN_OPTIONS, ...DATA_OPTIONS, ...TRAINER_OPTIONS }));

/**
 * The shared settings of a command's values as trainLm options. Only the four trainLm cannot do
 * without take the table's defaults here; the CLI has commander fill every default, while a recipe
 * leaves the rest (clip, epochs…) to the trainer, whose defaults are the same values.
 */
export function lmTrainOptionsOf(v: TrainSettings, out: string): LmTrainOptions {
  const shared = Object.fromEntries(Object.entries(v).filter(([k, x]) => SHARED_KEYS.has(k) && x !== undefined));
  const t = TRAINER_OPTIONS;
  return { ...shared, data: v.data, out, lr: v.lr ?? defaultOf(t.lr), batchSize: v.batchSize ?? defaultOf(t.batchSize), seqLen: v.seqLen ?? defaultOf(t.seqLen), seed: v.seed ?? defaultOf(t.seed) };
}
