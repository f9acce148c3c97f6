import * as tf from '@tensorflow/tfjs';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { holding, type FolderLock } from '../base/lock.js';
import { readHost } from '../base/host.js';
import { globalNorm } from '../base/ops.js';
import { claimOutput, refuseArtifact, type Input } from '../base/output.js';
import { Rng } from '../base/rng.js';
import {
  CheckpointError,
  LATEST_FILE,
  MAX_PARAM,
  loadCheckpoint,
  removeStaleTemps,
  resolveCheckpoint,
  saveCheckpoint,
  type BestMetric,
  type TrainState,
} from './checkpoint.js';
import { accumulateGrads, clipCoef, DEFAULT_CLIP, disposeAccumulated } from './grads.js';
import { MetricsLog } from './metrics.js';
import { AdamW } from './optimizer.js';
import { Progress, type ProgressMode } from './progress.js';
import { lrAt, validateSchedule, type ScheduleConfig, type ScheduleKind } from './schedule.js';

/** The training data: an endless, resumable stream of batches. */
export interface Batches<B> {
  /**
   * The next batch. It is fetched (and prepared) before the step's gradient tape; tensors it
   * holds as fields are freed after the step, and any other tensor next() makes at once.
   */
  next(): B;
  /** JSON-serialisable position in the stream, stored in checkpoints… */
  state(): unknown;
  /** …and handed back on resume, so the resumed run sees the same batches in the same order. */
  restore(s: unknown): void;
  /** Tokens in a batch: throughput, and the weight of each eval batch in the mean. */
  tokens(b: B): number;
  epoch?(): number;
}

/** Installs an interrupt handler and returns its remover; the handler gets the signal's name when there is one. */
export type SignalSource = (onInterrupt: (signal?: string) => void) => () => void;

/** Exactly-zero gradients for this many updates in a row: the run is dead (saturated), not learning. */
export const DEAD_STEPS = 20;

export interface TrainSpec<B> {
  /** Exactly these train and carry optimizer state. */
  params: Map<string, tf.Variable>;
  /** Non-trained state a resume must restore (e.g. an aux-loss-free routing bias updated in afterStep). */
  buffers?: Map<string, tf.Variable>;
  /**
   * Forward pass and loss of one batch (aux losses included), run inside tidy/variableGrads.
   * `rng` is the run's seeded stream (dropout, router jitter); it is checkpointed with the run.
   */
  loss(batch: B, training: boolean, rng: Rng): tf.Scalar;
  batches: Batches<B>;
  /**
   * Runs before each batch's forward and backward pass (training and eval), outside the gradient
   * tape: where a loss's host inputs are read asynchronously (a GPU cannot be read inside a pass).
   */
  prepare?: (batch: B, training: boolean) => Promise<void>;
  /** Validation batches, for mean loss and perplexity at each eval; each batch's tensor fields are freed after its loss. */
  evalSet?: () => Iterable<B>;
  /** Extra values logged with each eval (e.g. gate weights). */
  onEval?: (step: number) => Record<string, unknown> | Promise<Record<string, unknown>>;
  /** Runs after each optimizer update, with the number of updates done. */
  afterStep?: (step: number) => void;
  /** Caller's own artifact (e.g. the PEFT adapter): into each checkpoint folder, and into outDir at the end. */
  save(dir: string): void | Promise<void>;
  /** Optimizer updates in the whole run. */
  steps: number;
  lr: number;
  /** Updates of linear warmup; default 0. */
  warmup?: number;
  /** Default cosine. */
  schedule?: ScheduleKind;
  /** Where cosine/linear decay ends; default 0. */
  minLr?: number;
  /** AdamW decoupled weight decay; default 0. */
  weightDecay?: number;
  /** Max global gradient norm; default DEFAULT_CLIP (1.0); 0 turns clipping off. */
  clip?: number;
  /** Micro-batches per update; default 1. */
  gradAccum?: number;
  /** Eval every this many updates and at the end; 0 (default) only at the end. */
  evalEvery?: number;
  /** Checkpoint every this many updates; the end always gets one. 0 (default): end only. */
  saveEvery?: number;
  seed?: number;
  outDir: string;
  /** A run folder (its latest checkpoint) or a checkpoint folder to continue from. */
  resume?: string;
  /** Start a fresh run in a folder that holds a model, adapter or gate (but no run). */
  overwrite?: boolean;
  progress?: ProgressMode;
  /** Where messages go (interruption, warnings, eval results); stderr by default. */
  log?: (msg: string) => void;
  /** Interrupt source; SIGINT and SIGTERM by default. */
  signals?: SignalSource;
}

export interface TrainResult {
  status: 'done' | 'interrupted';
  /** Updates done, counting those before a resume. */
  step: number;
  /** The last checkpoint written or resumed from. */
  checkpoint: string | null;
  lastLoss: number | null;
  best: BestMetric | null;
}

/** A run that had to stop: names the step and what was kept. */
export class TrainError extends Error {
  override name = 'TrainError';

  constructor(
    message: string,
    readonly step: number,
    readonly checkpoint: string | null,
  ) {
    super(message);
  }
}

/**
 * SIGINT (Ctrl-C) and SIGTERM (kill, a job scheduler's stop): the first asks the loop to stop
 * after the current step and checkpoint; a second, with the handlers removed, gets Node's
 * default (exit).
 */
export const interrupts: SignalSource = (onInterrupt) => {
  const handlers = (['SIGINT', 'SIGTERM'] as const).map((signal) => {
    const handler = (): void => {
      remove();
      onInterrupt(signal);
    };
    return [signal, handler] as const;
  });
  const remove = (): void => {
    for (const [signal, handler] of handlers) process.off(signal, handler);
  };
  for (const [signal, handler] of handlers) process.on(signal, handler);
  return remove;
};

export interface RunFolder {
  out: string;
  resume?: string;
  overwrite?: boolean;
  log?: (m: string) => void;
}

/**
 * Lock a training run's output folder and check it, before any work (before the data is read):
 * it must be none of the inputs; a fresh run needs a folder without a run in it, and overwrite to
 * replace a model, adapter or gate there. Temp files a killed run left go.
 */
export function claimRunFolder(o: RunFolder, inputs: Input[] = []): FolderLock {
  const lock = claimOutput({ out: o.out, inputs, log: o.log }, (out) => {
    if (o.resume) return;
    if (existsSync(join(out, LATEST_FILE))) {
      throw new Error(`${out} already holds a run (it has a '${LATEST_FILE}' checkpoint pointer): resume it, or choose an empty output folder`);
    }
    if (!o.overwrite) refuseArtifact(out);
  });
  removeStaleTemps(o.out);
  return lock;
}

/** `work` with the run folder claimed (claimRunFolder), released however it ends; a refusal rejects. */
export async function inRunFolder<T>(o: RunFolder, inputs: Input[], work: () => Promise<T>): Promise<T> {
  return holding(claimRunFolder(o, inputs), work);
}

/**
 * The training loop. One step: k micro-batches of forward/backward, one host read of
 * [loss, grad norm, largest parameter], a divergence check, clipping folded into the AdamW
 * update, then logging, eval and checkpoints when due. Resume restores parameters, buffers,
 * moments, step, RNG and the data stream, so the loss curve continues as if never stopped.
 */
/** The loop's settings, checked before anything is claimed or read. */
interface LoopSettings {
  /** Micro-batches accumulated into one update (gradient accumulation). */
  accumSteps: number;
  clip: number;
  evalEvery: number;
  saveEvery: number;
  schedule: ScheduleConfig;
}

function checkSpec<B>(spec: TrainSpec<B>): LoopSettings {
  const accumSteps = spec.gradAccum ?? 1;
  const clip = spec.clip ?? DEFAULT_CLIP;
  const evalEvery = spec.evalEvery ?? 0;
  const saveEvery = spec.saveEvery ?? 0;
  const schedule: ScheduleConfig = {
    kind: spec.schedule ?? 'cosine',
    lr: spec.lr,
    minLr: spec.minLr ?? 0,
    warmup: spec.warmup ?? 0,
    total: spec.steps,
  };
  validateSchedule(schedule);
  for (const [what, v] of [['gradAccum', accumSteps], ['evalEvery', evalEvery], ['saveEvery', saveEvery]] as const) {
    if (!Number.isInteger(v) || v < (what === 'gradAccum' ? 1 : 0)) throw new Error(`${what} must be a ${what === 'gradAccum' ? 'positive' : 'non-negative'} integer, got ${v}`);
  }
  if (!(clip >= 0)) throw new Error(`clip must be >= 0, got ${clip}`);
  if (spec.params.size === 0) throw new Error('nothing to train: params is empty');
  for (const [name, v] of spec.params) if (!v.trainable) throw new Error(`parameter '${name}' is a non-trainable variable`);
  return { accumSteps, clip, evalEvery, saveEvery, schedule };
}

/** What a run carries from step to step, and what its checkpoints record besides the tensors. */
interface RunState {
  step: number;
  rng: Rng;
  best: BestMetric | null;
  /** The last checkpoint written (or resumed from). */
  checkpoint: string | null;
  /** The last step's figures (and its eval's), for the checkpoint's state. */
  last: Record<string, unknown> | null;
  lastLoss: number | null;
  /** Consecutive updates with no gradient at all (see divergence). */
  zeroSteps: number;
}

/**
 * Resumable training loop over any variables: accumulate, check for divergence, update, log,
 * evaluate, checkpoint; SIGINT/SIGTERM finish the step and write a checkpoint.
 */
export async function train<B>(spec: TrainSpec<B>): Promise<TrainResult> {
  const settings = checkSpec(spec);
  const { outDir } = spec;
  // Callers that read data first claimed the folder before reading it; then this only counts.
  const lock = claimRunFolder({ ...spec, out: outDir });
  let progress: Progress | null = null;
  const say = spec.log ?? ((m: string) => (progress ? progress.log(m) : process.stderr.write(m + '\n')));
  const optimizer = new AdamW(spec.params, { weightDecay: spec.weightDecay ?? 0 });
  let removeHandler = (): void => {};
  try {
    const run: RunState = { step: 0, rng: new Rng(spec.seed ?? 0), best: null, checkpoint: null, last: null, lastLoss: null, zeroSteps: 0 };
    if (spec.resume) resume(spec, run, optimizer, settings.schedule, say);
    const metrics = new MetricsLog(outDir, spec.resume ? run.step : null);
    progress = new Progress({ total: spec.steps, start: run.step, mode: spec.progress ?? 'auto' });
    let interrupted = false;
    removeHandler = (spec.signals ?? interrupts)((signal) => {
      interrupted = true;
      say(`${signal ?? 'interrupt'}: finishing this step, then writing a checkpoint (interrupt again to quit at once)`);
    });
    while (run.step < spec.steps) {
      const t0 = performance.now();
      const { loss, gradNorm, lr, tokens } = await step(spec, settings, run, optimizer);
      spec.afterStep?.(run.step);
      const seconds = (performance.now() - t0) / 1000;
      run.lastLoss = loss;
      run.last = { step: run.step, loss, lr, grad_norm: gradNorm };
      metrics.write({ step: run.step, loss, lr, grad_norm: gradNorm, tokens_per_s: tokens / seconds });
      progress.update({ step: run.step, loss, lr, tokens, seconds });
      const { evalEvery, saveEvery } = settings;
      if ((evalEvery > 0 && run.step % evalEvery === 0) || run.step === spec.steps) await evalAt(spec, run, metrics, say);
      if ((saveEvery > 0 && run.step % saveEvery === 0) || run.step === spec.steps || interrupted) {
        run.checkpoint = await save(spec, run, optimizer, settings.schedule);
      }
      if (interrupted) {
        say(`Interrupted after step ${run.step}/${spec.steps}. Checkpoint written to ${run.checkpoint}. To continue, run the same command with --resume ${outDir}`);
        return { status: 'interrupted', step: run.step, checkpoint: run.checkpoint, lastLoss: run.lastLoss, best: run.best };
      }
      // Let signals and timers (the progress bar) through: they only run between event-loop turns.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    await spec.save(outDir);
    return { status: 'done', step: run.step, checkpoint: run.checkpoint, lastLoss: run.lastLoss, best: run.best };
  } finally {
    removeHandler();
    progress?.stop();
    optimizer.dispose();
    lock.release();
  }
}

/** Load a checkpoint's tensors, moments, RNG, sampler position and counters into this run. */
function resume<B>(spec: TrainSpec<B>, run: RunState, optimizer: AdamW, schedule: ScheduleConfig, say: (m: string) => void): void {
  const buffers = spec.buffers ?? new Map<string, tf.Variable>();
  const ck = loadCheckpoint(resolveCheckpoint(spec.resume!), spec.params, buffers);
  assignAll(spec.params, ck.params);
  assignAll(buffers, ck.buffers);
  optimizer.load(ck.optimizer);
  run.rng = new Rng(ck.state.rng);
  spec.batches.restore(ck.state.sampler);
  run.step = ck.state.step;
  run.best = ck.state.best;
  run.checkpoint = ck.dir;
  const was = JSON.stringify(ck.state.schedule);
  if (was !== JSON.stringify(schedule)) {
    say(`warning: resuming with a different schedule (${was} → ${JSON.stringify(schedule)}); the lr curve changes from here`);
  }
  say(`resumed from ${ck.dir} at step ${run.step}/${spec.steps}`);
}

/** One update: accumulate the micro-batches' gradients, read loss and norm, refuse divergence, apply. */
async function step<B>(spec: TrainSpec<B>, o: LoopSettings, run: RunState, optimizer: AdamW): Promise<{ loss: number; gradNorm: number; lr: number; tokens: number }> {
  const { params, batches } = spec;
  const lr = lrAt(run.step, o.schedule);
  let tokens = 0;
  const micro: B[] = [];
  let acc: ReturnType<typeof accumulateGrads>;
  try {
    for (let i = 0; i < o.accumSteps; i++) {
      const b = keepBatch(() => batches.next());
      micro.push(b);
      await spec.prepare?.(b, true);
      tokens += batches.tokens(b);
    }
    acc = accumulateGrads(params, o.accumSteps, (i) => spec.loss(micro[i]!, true, run.rng));
  } finally {
    disposeBatches(micro);
  }
  try {
    // The only host read of a step: loss, gradient norm, and the largest parameter magnitude.
    const host = await readHost(() => tf.stack([acc.loss, globalNorm([...acc.grads.values()]), largestMagnitude(params)]));
    const loss = host[0]! / o.accumSteps;
    const gradNorm = host[1]! / o.accumSteps;
    run.zeroSteps = gradNorm === 0 ? run.zeroSteps + 1 : 0;
    const why = divergence(loss, gradNorm, host[2]!, run.zeroSteps);
    if (why) throw new TrainError(`step ${run.step + 1}: ${why}; stopped before updating. ${kept(run.checkpoint)}`, run.step + 1, run.checkpoint);
    optimizer.apply(acc.grads, lr, clipCoef(gradNorm, o.clip) / o.accumSteps);
    run.step += 1;
    return { loss, gradNorm, lr, tokens };
  } finally {
    disposeAccumulated(acc);
  }
}

/** Evaluate, log, and keep the best validation loss. */
async function evalAt<B>(spec: TrainSpec<B>, run: RunState, metrics: MetricsLog, say: (m: string) => void): Promise<void> {
  const ev = await evaluate(spec, run.rng, run.step);
  if (!ev) return;
  metrics.write(ev);
  run.last = { ...run.last, ...ev };
  if (typeof ev.val_loss === 'number' && Number.isFinite(ev.val_loss) && (!run.best || ev.val_loss < run.best.val_loss)) {
    run.best = { step: run.step, val_loss: ev.val_loss };
  }
  say(describeEval(ev));
}

/** A checkpoint of this run; a diverged run (the checkpoint refuses its tensors) is a TrainError. */
async function save<B>(spec: TrainSpec<B>, run: RunState, optimizer: AdamW, schedule: ScheduleConfig): Promise<string> {
  const state: TrainState = {
    step: run.step,
    epoch: spec.batches.epoch?.() ?? null,
    rng: run.rng.state(),
    sampler: spec.batches.state() ?? null,
    schedule,
    last: run.last,
    best: run.best,
  };
  try {
    return await saveCheckpoint(spec.outDir, { state, params: spec.params, buffers: spec.buffers ?? new Map<string, tf.Variable>(), optimizer, extra: (dir) => spec.save(dir) });
  } catch (e) {
    if (!(e instanceof CheckpointError)) throw e;
    throw new TrainError(`step ${run.step}: not saving a checkpoint, ${e.message}; the run diverged. ${kept(run.checkpoint)}`, run.step, run.checkpoint);
  }
}

/**
 * Why a step must not update: a non-finite loss or gradient; parameters the last update blew up
 * (still finite, so a checkpoint would take them, but the model is wrecked); or no gradient at
 * all for DEAD_STEPS updates (saturated: the loss sticks and nothing is learned).
 */
function divergence(loss: number, gradNorm: number, peak: number, zeroSteps: number): string | null {
  if (!Number.isFinite(loss)) return `loss is ${loss}`;
  if (!Number.isFinite(gradNorm)) return `gradient norm is ${gradNorm}`;
  if (!(peak <= MAX_PARAM)) return `a parameter reached ${peak.toPrecision(3)} in magnitude (more than ${MAX_PARAM}): the run diverged`;
  if (zeroSteps >= DEAD_STEPS) return `the gradient has been exactly 0 for ${zeroSteps} updates in a row: the run is dead (saturated) and learns nothing`;
  return null;
}

function largestMagnitude(params: Map<string, tf.Variable>): tf.Scalar {
  return tf.max(tf.stack([...params.values()].map((v) => tf.max(tf.abs(v))))) as tf.Scalar;
}

function kept(checkpoint: string | null): string {
  return checkpoint
    ? `The last good checkpoint, ${checkpoint}, was kept; resume from it (perhaps with a lower lr or clipping).`
    : 'No checkpoint had been written yet.';
}

/**
 * A batch made by `make`: its tensor fields kept until disposeBatches, other tensors it made freed
 * now. Only fields are looked at: walking a batch's typed arrays element by element is slow.
 */
function keepBatch<B>(make: () => B): B {
  let batch: B;
  tf.tidy(() => {
    batch = make();
    for (const t of batchTensors(batch)) tf.keep(t);
  });
  return batch!;
}

function disposeBatches<B>(batches: B[]): void {
  for (const b of batches) tf.dispose(batchTensors(b));
}

function batchTensors(b: unknown): tf.Tensor[] {
  if (b instanceof tf.Tensor) return [b];
  return b && typeof b === 'object' ? Object.values(b).filter((v): v is tf.Tensor => v instanceof tf.Tensor) : [];
}

function assignAll(vars: Map<string, tf.Variable>, values: Map<string, Float32Array>): void {
  tf.tidy(() => {
    for (const [name, v] of vars) v.assign(tf.tensor(values.get(name)!, v.shape));
  });
}

/** Token-weighted mean validation loss and its perplexity, plus the caller's extras. */
async function evaluate<B>(spec: TrainSpec<B>, rng: Rng, step: number): Promise<Record<string, unknown> & { step: number } | null> {
  if (!spec.evalSet && !spec.onEval) return null;
  const out: Record<string, unknown> & { step: number } = { step };
  const evalSet = spec.evalSet;
  if (evalSet) {
    const weights: number[] = [];
    const kept: tf.Scalar[] = [];
    let losses: Float32Array;
    try {
      // Each batch (and any tensors it holds) goes after its loss; its activations go with its tidy.
      const it = evalSet()[Symbol.iterator]();
      for (;;) {
        let done = false;
        const b = keepBatch(() => {
          const n = it.next();
          done = n.done === true;
          return n.value as B;
        });
        if (done) break;
        try {
          await spec.prepare?.(b, false);
          weights.push(spec.batches.tokens(b));
          kept.push(tf.tidy(() => spec.loss(b, false, rng)));
        } finally {
          disposeBatches([b]);
        }
      }
      if (kept.length === 0) throw new Error('evalSet yielded no batches');
      losses = await readHost(() => tf.stack(kept));
    } finally {
      tf.dispose(kept);
    }
    let sum = 0;
    let total = 0;
    losses.forEach((x, i) => {
      sum += x * weights[i]!;
      total += weights[i]!;
    });
    const valLoss = sum / total;
    out.val_loss = valLoss;
    out.perplexity = Math.exp(valLoss);
  }
  return { ...out, ...(await spec.onEval?.(step)) };
}

function describeEval(ev: Record<string, unknown> & { step: number }): string {
  const parts = [`eval step ${ev.step}`];
  if (typeof ev.val_loss === 'number') parts.push(`val_loss ${ev.val_loss.toFixed(4)}`, `perplexity ${(ev.perplexity as number).toFixed(3)}`);
  return parts.join(' | ');
}
