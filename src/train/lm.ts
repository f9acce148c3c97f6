import * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lmLoss, type LmBatch } from '../base/loss.js';
import { assertLogitsFit } from '../base/memory.js';
import { bindingLimitBytes } from '../base/vocab.js';
import type { CausalLM } from '../base/model.js';
import { planTraining } from '../base/load.js';
import {
  BatchSampler,
  DataError,
  evalBatches,
  givenFormat,
  loadDataset,
  modelChatTemplate,
  type Batch,
  type DataFileFormat,
  type Dataset,
  type DatasetStats,
  type LoadDatasetOptions,
  type TruncateSide,
} from '../data/index.js';
import type { DataFormat } from '../data/record.js';
import type { Rng } from '../base/rng.js';
import type { ScheduleKind } from './schedule.js';
import { train, type Batches, type SignalSource, type TrainResult } from './trainer.js';
import type { ProgressMode } from './progress.js';

/**
 * Where the data comes from and how it becomes batches (the `--data …` flags): the row format
 * (columns, templates or chat; a chatTemplate given as text replaces the base's), the file format
 * when its extension does not say, and how over-long rows are cut.
 */
export interface LmDataOptions extends DataFormat {
  data: string;
  valData?: string;
  valSplit?: number;
  taskColumn?: string;
  skipBadRows?: boolean;
  dataFormat?: DataFileFormat;
  truncate?: TruncateSide;
  seqLen: number;
  batchSize: number;
  seed: number;
  /** Tokenized-data cache folder; none by default. */
  cacheDir?: string;
  onDataProgress?: (bytesRead: number, totalBytes: number) => void;
  /** What `data` is for, named in errors about it (default training). */
  role?: LoadDatasetOptions['role'];
}

/** The trainer flags shared by train-adapter, train-gate and train-moe. */
export interface LmTrainOptions extends LmDataOptions {
  out: string;
  /** Optimizer updates; or give epochs. */
  steps?: number;
  epochs?: number;
  lr: number;
  gradAccum?: number;
  warmup?: number;
  schedule?: ScheduleKind;
  weightDecay?: number;
  clip?: number;
  evalEvery?: number;
  saveEvery?: number;
  resume?: string;
  /** Start afresh in a folder that holds a model, adapter or gate but no run (--overwrite). */
  overwrite?: boolean;
  progress?: ProgressMode;
  log?: (msg: string) => void;
  signals?: SignalSource;
  /** After each update (e.g. a routing-bias update, or a memory probe in tests). */
  afterStep?: (step: number) => void;
  /** Non-trained state that checkpoints carry and a resume restores (e.g. a routing bias moved in afterStep). */
  buffers?: Map<string, tf.Variable>;
  /** Runs before each batch's forward pass (e.g. to set per-row expert masks), with the run's seeded stream. */
  beforeBatch?: (b: Batch, training: boolean, rng: Rng, data: LmData) => void;
  /** Runs once the data is loaded, before the first step (e.g. statistics a loss needs). */
  onData?: (data: LmData) => void | Promise<void>;
  /**
   * Runs before each batch's forward and backward pass, outside the gradient tape: the place for
   * host values a loss needs (read asynchronously: a GPU cannot be read inside the pass).
   */
  prepare?: (b: Batch, training: boolean, data: LmData) => Promise<void>;
  /** Replaces the next-token loss (e.g. a router's loss); runs after beforeBatch. */
  loss?: (b: Batch, training: boolean, rng: Rng, data: LmData) => tf.Scalar;
  /** Extra values for each eval entry of metrics.jsonl (e.g. gate weights); gets the validation store. */
  onEval?: (step: number, data: LmData) => Record<string, unknown> | Promise<Record<string, unknown>>;
}

export interface LmData {
  dataset: Dataset;
  sampler: BatchSampler;
}

/** Tokenize the data file(s) with the model's tokenizer. */
export async function loadLmDataset(model: CausalLM, o: LmDataOptions): Promise<Dataset> {
  const tok = model.tokenizer;
  if (!tok) throw new Error(`${model.dir ?? 'the model'} has no tokenizer.json: training from text needs one`);
  return loadDataset({
    ...givenFormat(o),
    path: o.data,
    role: o.role,
    encoder: tok,
    tokenizerId: tokenizerFingerprint(model),
    chatTemplate: () => modelChatTemplate(model.dir, o.chatTemplate),
    taskColumn: o.taskColumn,
    dataFormat: o.dataFormat,
    truncate: o.truncate,
    seqLen: o.seqLen,
    valSplit: o.valData ? undefined : o.valSplit,
    valData: o.valData,
    seed: o.seed,
    skipBadRows: o.skipBadRows,
    cacheDir: o.cacheDir,
    onProgress: o.onDataProgress,
  });
}

/** Tokenize the data file(s), report what was kept, cut and dropped, and draw batches of the training sequences. */
export async function loadLmData(model: CausalLM, o: LmDataOptions, log: (m: string) => void): Promise<LmData> {
  const dataset = await loadLmDataset(model, o);
  const s = dataset.stats;
  log(`data: ${s.rowsRead} rows, ${s.trainExamples} train / ${s.valExamples} val examples, ${s.tokens} tokens` + skippedNote(s) + truncationNote(s, o.seqLen));
  if (s.unlocatedTurns > 0) {
    log(`data: ${s.unlocatedTurns} earlier assistant turns have no loss: the chat template renders them differently once later turns follow (the last turn of every conversation has its loss)`);
  }
  if (s.trainSequences === 0) throw new DataError(noSequences(o, s), o.data, null);
  return { dataset, sampler: new BatchSampler(dataset.train, { batchSize: o.batchSize, seqLen: o.seqLen, seed: o.seed }) };
}

/** ", 12 truncated (prompt cut from the left to fit --seq-len 128), 1 dropped (its completion alone is longer)", or nothing. */
export function truncationNote(s: DatasetStats, seqLen: number): string {
  if (s.truncate === null || (s.truncated === 0 && s.dropped === 0)) return '';
  const left = s.truncate === 'left';
  const cut = s.truncated > 0 ? `, ${s.truncated} truncated (${left ? 'prompt cut from the left' : 'end cut'} to fit --seq-len ${seqLen})` : '';
  const dropped = s.dropped > 0 ? `, ${s.dropped} dropped (${left ? 'the completion alone is longer than' : 'the prompt alone fills'} --seq-len ${seqLen})` : '';
  return cut + dropped;
}

/** Why examples were read but none is a sequence to train on. */
function noSequences(o: LmDataOptions, s: DatasetStats): string {
  if (s.trainExamples === 0 && s.dropped === 0) return `--val-split ${o.valSplit} left none of its ${s.examples} examples for training`;
  if (s.truncate === 'left') return `no ${o.role ?? 'training'} example fits --seq-len ${o.seqLen}: each completion alone is longer`;
  return `no ${o.role ?? 'training'} example fits --seq-len ${o.seqLen}: each prompt fills it, leaving no completion token (--truncate left keeps completions)`;
}

/** ", skipped: 1 blank, 2 with an empty completion (the first data.csv:5), 1 bad over 4 lines (the first data.csv:3: …)", or nothing. */
export function skippedNote(s: DatasetStats): string {
  const parts: string[] = [];
  const blank = s.emptySkipped - s.emptyRows;
  if (blank > 0) parts.push(`${blank} blank`);
  const empty = s.emptyLines[0];
  const lacking = s.mode === 'chat' ? 'no assistant answer' : `an empty ${s.mode === 'text' ? 'text' : 'completion'}`;
  if (empty !== undefined) parts.push(`${s.emptyRows} with ${lacking} (the first ${empty.file}:${empty.line})`);
  const bad = s.badRows[0];
  if (bad !== undefined) parts.push(`${s.badRowsSkipped} bad over ${s.badLinesSkipped} lines (the first ${bad.file}:${bad.line}: ${bad.reason})`);
  return parts.length === 0 ? '' : `, skipped: ${parts.join(', ')}`;
}

/** The model-facing view of a data batch. */
export function toLmBatch(b: Batch): LmBatch {
  const batch: LmBatch = { ids: b.ids, targets: b.targets, lossMask: b.lossMask, attentionMask: Uint8Array.from(b.attentionMask), batch: b.batch, seq: b.seq };
  return b.promptLens ? { ...batch, promptLens: b.promptLens } : batch;
}

/**
 * Train `params` (and nothing else) on next-token loss over the data, with the shared trainer:
 * resume, checkpoints, eval, progress and metrics. `save` writes the caller's artifact.
 */
export async function trainLm(model: CausalLM, params: Map<string, tf.Variable>, save: (dir: string) => void | Promise<void>, o: LmTrainOptions): Promise<TrainResult> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const { dataset, sampler } = await loadLmData(model, o, log);
  await o.onData?.({ dataset, sampler });
  const c = model.config;
  let trainable = 0;
  for (const v of params.values()) trainable += v.size;
  const plan = `training with batch ${o.batchSize} × seq ${o.seqLen}`;
  // Exact now that the trainable parameters exist; loadBase's plan (given the run) came before any weight was read.
  const packing = planTraining(c, { batch: o.batchSize, seq: o.seqLen, trainableParams: trainable }, plan);
  if (model.linears().some((l) => l.packing !== packing)) {
    if (packing === 'per-use') log('packing each frozen weight per product to fit the wasm heap (frozen matMuls 15-45 % slower)');
    for (const l of model.linears()) l.packing = packing;
  }
  assertLogitsFit(o.batchSize * o.seqLen, c.vocabSize, bindingLimitBytes(), plan);
  const accum = o.gradAccum ?? 1;
  const steps = o.steps ?? Math.max(1, Math.ceil(((o.epochs ?? 1) * sampler.stepsPerEpoch) / accum));
  const batches: Batches<Batch> = {
    next: () => sampler.next(),
    state: () => sampler.state(),
    restore: (s) => sampler.restore(s as ReturnType<BatchSampler['state']>),
    tokens: (b) => b.attentionMask.reduce((a, x) => a + x, 0),
    epoch: () => sampler.epoch,
  };
  const val = dataset.val;
  return train({
    params,
    buffers: o.buffers,
    loss: (b, training, rng) => {
      o.beforeBatch?.(b, training, rng, { dataset, sampler });
      return o.loss ? o.loss(b, training, rng, { dataset, sampler }) : lmLoss(model, toLmBatch(b), { training, rng });
    },
    prepare: o.prepare ? (b, training) => o.prepare!(b, training, { dataset, sampler }) : undefined,
    batches,
    evalSet: val ? () => evalBatches(val, { batchSize: o.batchSize, seqLen: o.seqLen }) : undefined,
    save,
    steps,
    lr: o.lr,
    warmup: o.warmup,
    schedule: o.schedule,
    weightDecay: o.weightDecay,
    clip: o.clip,
    gradAccum: accum,
    evalEvery: o.evalEvery,
    saveEvery: o.saveEvery,
    seed: o.seed,
    outDir: o.out,
    resume: o.resume,
    overwrite: o.overwrite,
    progress: o.progress,
    log: o.log,
    signals: o.signals,
    afterStep: o.afterStep,
    onEval: o.onEval ? (step) => o.onEval!(step, { dataset, sampler }) : undefined,
  });
}

/** Identifies the tokenizer for the data cache: a hash of the folder's tokenizer files. */
function tokenizerFingerprint(model: CausalLM): string {
  const h = createHash('sha256');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    const p = model.dir ? join(model.dir, f) : '';
    if (p && existsSync(p)) h.update(readFileSync(p));
  }
  return h.digest('hex').slice(0, 16);
}
