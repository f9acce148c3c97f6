import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { Rng, type RngState } from '../src/base/rng.js';
import { LOCK_FILE } from '../src/base/lock.js';
import { LATEST_FILE, PARAMS_FILE, STATE_FILE } from '../src/train/checkpoint.js';
import { readMetrics } from '../src/train/metrics.js';
import { DEAD_STEPS, TrainError, interrupts, train, type Batches, type SignalSource, type TrainSpec } from '../src/train/trainer.js';

beforeAll(async () => {
  await initBackend();
});

const disposers: (() => void)[] = [];
afterEach(() => {
  while (disposers.length) disposers.pop()!();
});

// A toy task: 3-class labels from a fixed random linear map of 6 features.
const D = 6;
const H = 8;
const C = 3;
const N = 48;
const BATCH = 4;
const data = (() => {
  const rng = new Rng(1234);
  const x = rng.normalArray(N * D, 1);
  const w = rng.normalArray(D * C, 1);
  const y = new Int32Array(N);
  for (let n = 0; n < N; n++) {
    let best = 0;
    let bestScore = -Infinity;
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += x[n * D + d]! * w[d * C + c]!;
      if (s > bestScore) [best, bestScore] = [c, s];
    }
    y[n] = best;
  }
  return { x, y };
})();

interface Batch {
  x: tf.Tensor2D;
  y: tf.Tensor2D;
  rows: number;
}

function makeBatch(idx: number[]): Batch {
  const x = new Float32Array(idx.length * D);
  idx.forEach((n, i) => x.set(data.x.subarray(n * D, (n + 1) * D), i * D));
  // The trainer frees a batch's tensor fields after use; the one-hot's scratch goes here.
  return {
    x: tf.tensor2d(x, [idx.length, D]),
    y: tf.tidy(() => tf.oneHot(tf.tensor1d(idx.map((n) => data.y[n]!), 'int32'), C).toFloat() as tf.Tensor2D),
    rows: idx.length,
  };
}

/** Shuffled epochs over the first 40 rows; its state is the shuffle RNG, the epoch and the position. */
class Sampler implements Batches<Batch> {
  private rng: Rng;
  private order: number[] = [];
  private pos = 0;
  private ep = 0;
  private epochStart: RngState;

  constructor(seed: number) {
    this.rng = new Rng(seed);
    this.epochStart = this.rng.state();
    this.shuffle();
  }

  private shuffle(): void {
    this.epochStart = this.rng.state();
    this.order = this.rng.shuffle(Array.from({ length: 40 }, (_, i) => i)) as number[];
  }

  next(): Batch {
    if (this.pos + BATCH > this.order.length) {
      this.ep += 1;
      this.pos = 0;
      this.shuffle();
    }
    const idx = this.order.slice(this.pos, this.pos + BATCH);
    this.pos += BATCH;
    return makeBatch(idx);
  }

  state(): unknown {
    return { epochStart: this.epochStart, pos: this.pos, epoch: this.ep };
  }

  restore(s: unknown): void {
    const st = s as { epochStart: RngState; pos: number; epoch: number };
    this.rng = new Rng(st.epochStart);
    this.shuffle();
    this.pos = st.pos;
    this.ep = st.epoch;
  }

  tokens(b: Batch): number {
    return b.rows;
  }

  epoch(): number {
    return this.ep;
  }
}

/** A 2-layer MLP, initialised from a fixed seed, plus a step-counter buffer bumped by afterStep. */
function makeModel(): { params: Map<string, tf.Variable>; buffers: Map<string, tf.Variable> } {
  const rng = new Rng(99);
  const params = new Map<string, tf.Variable>([
    ['w1', tf.variable(tf.tensor2d(rng.normalArray(D * H, 0.5), [D, H]))],
    ['b1', tf.variable(tf.zeros([H]))],
    ['w2', tf.variable(tf.tensor2d(rng.normalArray(H * C, 0.5), [H, C]))],
    ['b2', tf.variable(tf.zeros([C]))],
  ]);
  const buffers = new Map([['updates', tf.variable(tf.zeros([1]), false)]]);
  disposers.push(() => {
    for (const v of [...params.values(), ...buffers.values()]) v.dispose();
  });
  return { params, buffers };
}

function mlpLoss(params: Map<string, tf.Variable>, b: Batch, training: boolean, rng: Rng): tf.Scalar {
  let h = tf.relu(tf.matMul(b.x, params.get('w1')!).add(params.get('b1')!));
  if (training) {
    // Dropout from the run's RNG, so resume must restore that stream too.
    const keep = Float32Array.from(rng.uniformArray(b.rows * H, 0, 1), (u) => (u < 0.8 ? 1 / 0.8 : 0));
    h = h.mul(tf.tensor2d(keep, [b.rows, H]));
  }
  const logits = tf.matMul(h, params.get('w2')!).add(params.get('b2')!);
  const logp = logits.sub(logits.logSumExp(1, true));
  return logp.mul(b.y).sum(1).mean().neg() as tf.Scalar;
}

function evalSet(): Iterable<Batch> {
  return [0, 1].map((i) => makeBatch([40 + 4 * i, 41 + 4 * i, 42 + 4 * i, 43 + 4 * i]));
}

const noSignals: SignalSource = () => () => {};

function spec(outDir: string, over: Partial<TrainSpec<Batch>> = {}): TrainSpec<Batch> {
  const { params, buffers } = makeModel();
  const updates = buffers.get('updates')!;
  return {
    params,
    buffers,
    loss: (b, training, rng) => mlpLoss(params, b, training, rng),
    batches: new Sampler(5),
    evalSet: () => evalSet(),
    onEval: () => ({ w2_norm: tf.tidy(() => params.get('w2')!.norm().dataSync()[0]) }),
    afterStep: () => tf.tidy(() => updates.assign(updates.add(1))),
    save: () => {},
    steps: 10,
    lr: 0.05,
    warmup: 2,
    schedule: 'cosine',
    weightDecay: 0.01,
    clip: 0.5,
    gradAccum: 2,
    evalEvery: 4,
    saveEvery: 3,
    seed: 7,
    outDir,
    progress: 'off',
    log: () => {},
    signals: noSignals,
    ...over,
  };
}

const tmp = (): string => mkdtempSync(join(tmpdir(), 'molora-train-'));
const withoutTiming = (dir: string) => readMetrics(join(dir, 'metrics.jsonl')).map(({ tokens_per_s: _t, ...e }) => e);
const trainLosses = (dir: string) => readMetrics(join(dir, 'metrics.jsonl')).filter((e) => 'loss' in e).map((e) => e.loss as number);

describe('trainer', () => {
  it('a run interrupted at step 5 and resumed follows the uninterrupted loss curve', async () => {
    const straightDir = tmp();
    const straight = spec(straightDir);
    const done = await train(straight);
    expect(done).toMatchObject({ status: 'done', step: 10, checkpoint: join(straightDir, 'checkpoint-10') });
    const want = trainLosses(straightDir);
    expect(want).toHaveLength(10);
    expect(want[9]).toBeLessThan(want[0]!);

    const dir = tmp();
    let interrupt = (): void => {};
    let removed = false;
    const messages: string[] = [];
    const first = spec(dir, {
      log: (m) => messages.push(m),
      signals: (h) => {
        interrupt = h;
        return () => (removed = true);
      },
    });
    const afterStep = first.afterStep!;
    first.afterStep = (s) => {
      afterStep(s);
      if (s === 5) interrupt();
    };
    const stopped = await train(first);
    expect(stopped).toMatchObject({ status: 'interrupted', step: 5, checkpoint: join(dir, 'checkpoint-5') });
    expect(removed).toBe(true);
    expect(messages.at(-1)).toBe(
      `Interrupted after step 5/10. Checkpoint written to ${join(dir, 'checkpoint-5')}. To continue, run the same command with --resume ${dir}`,
    );
    expect(readFileSync(join(dir, LATEST_FILE), 'utf8').trim()).toBe('checkpoint-5');

    const second = spec(dir, { resume: dir });
    const resumed = await train(second);
    expect(resumed).toMatchObject({ status: 'done', step: 10 });
    expect(second.buffers!.get('updates')!.dataSync()[0]).toBe(10);
    const got = trainLosses(dir);
    got.forEach((l, i) => expect(Math.abs(l - want[i]!)).toBeLessThan(1e-6));
    expect(withoutTiming(dir)).toEqual(withoutTiming(straightDir));
    expect(resumed.best).toEqual(done.best);
    const final = (d: string) => JSON.parse(readFileSync(join(d, 'checkpoint-10', STATE_FILE), 'utf8'));
    expect(final(dir).rng).toEqual(final(straightDir).rng);
    expect(final(dir).sampler).toEqual(final(straightDir).sampler);
    expect(readFileSync(join(dir, 'checkpoint-10', PARAMS_FILE))).toEqual(readFileSync(join(straightDir, 'checkpoint-10', PARAMS_FILE)));
    expect(readdirSync(dir).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-10', 'checkpoint-3', 'checkpoint-5', 'checkpoint-6', 'checkpoint-9']);
  });

  it('logs eval loss, perplexity and extras, tracks the best, and writes the caller artifact', async () => {
    const dir = tmp();
    const saved: string[] = [];
    const run = spec(dir, { save: (d) => void saved.push(d) });
    const { best } = await train(run);
    const evals = readMetrics(join(dir, 'metrics.jsonl')).filter((e) => 'val_loss' in e);
    expect(evals.map((e) => e.step)).toEqual([4, 8, 10]);
    for (const e of evals) expect(e.perplexity).toBeCloseTo(Math.exp(e.val_loss as number), 10);
    // The last eval saw the final parameters: its loss (both eval batches hold 4 rows, so the
    // token-weighted mean is the plain mean) and the extra are those of the model as it ends.
    const w = run.params;
    const valLoss = tf.tidy(() => [...evalSet()].map((b) => mlpLoss(w, b, false, new Rng(0)).dataSync()[0]!)).reduce((a, l) => a + l / 2, 0);
    expect(evals.at(-1)!.val_loss).toBeCloseTo(valLoss, 6);
    expect(evals.at(-1)!.w2_norm).toBeCloseTo(tf.tidy(() => w.get('w2')!.norm().dataSync()[0]!), 6);
    expect(new Set(evals.map((e) => e.w2_norm)).size).toBe(3);
    const bestEval = evals.reduce((a, b) => ((b.val_loss as number) < (a.val_loss as number) ? b : a));
    expect(best).toEqual({ step: bestEval.step, val_loss: bestEval.val_loss });
    const train0 = readMetrics(join(dir, 'metrics.jsonl'))[0]!;
    expect(Object.keys(train0)).toEqual(['step', 'loss', 'lr', 'grad_norm', 'tokens_per_s']);
    expect(train0.lr).toBeCloseTo(0.025, 12); // warmup: 1/2 of the peak
    // Every checkpoint goes through a temp folder that is renamed into place, then the end goes to outDir.
    expect(saved.at(-1)).toBe(dir);
    expect(saved.slice(0, -1).every((d) => d.includes('.tmp'))).toBe(true);
    const state = JSON.parse(readFileSync(join(dir, 'checkpoint-10', STATE_FILE), 'utf8'));
    expect(state).toMatchObject({ step: 10, epoch: 1, best, schedule: { kind: 'cosine', lr: 0.05, warmup: 2, total: 10 } });
    expect(state.last).toMatchObject({ step: 10, val_loss: evals.at(-1)!.val_loss });
  });

  it('is deterministic with the seed', async () => {
    const [a, b, c] = [tmp(), tmp(), tmp()];
    await train(spec(a, { steps: 4, evalEvery: 0, saveEvery: 0 }));
    await train(spec(b, { steps: 4, evalEvery: 0, saveEvery: 0 }));
    await train(spec(c, { steps: 4, evalEvery: 0, saveEvery: 0, seed: 8 }));
    expect(trainLosses(a)).toEqual(trainLosses(b));
    expect(trainLosses(a)).not.toEqual(trainLosses(c));
  });

  it('stops on a NaN loss naming the step and keeping the last good checkpoint', async () => {
    const dir = tmp();
    let calls = 0;
    let removed = false;
    const s = spec(dir, { signals: () => () => (removed = true) });
    const loss = s.loss;
    // gradAccum 2: the 13th micro-batch is the first of update 7.
    s.loss = (b, training, rng) => (training && ++calls >= 13 ? loss(b, training, rng).mul(NaN) : loss(b, training, rng));
    const err = await train(s).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TrainError);
    expect((err as TrainError).message).toBe(
      `step 7: loss is NaN; stopped before updating. The last good checkpoint, ${join(dir, 'checkpoint-6')}, was kept; resume from it (perhaps with a lower lr or clipping).`,
    );
    expect((err as TrainError).step).toBe(7);
    expect(removed).toBe(true);
    expect(readFileSync(join(dir, LATEST_FILE), 'utf8').trim()).toBe('checkpoint-6');
    expect(existsSync(join(dir, 'checkpoint-7'))).toBe(false);
    expect(trainLosses(dir)).toHaveLength(6);
    // The kept checkpoint resumes.
    const resumed = await train(spec(dir, { resume: join(dir, 'checkpoint-6') }));
    expect(resumed.status).toBe('done');
  });

  it('keeps tf.memory().numTensors flat across 50 steps', async () => {
    const counts: number[] = [];
    const s = spec(tmp(), { steps: 50, evalEvery: 10, saveEvery: 25 });
    const afterStep = s.afterStep!;
    s.afterStep = (step) => {
      afterStep(step);
      counts.push(tf.memory().numTensors);
    };
    const beforeTrain = tf.memory().numTensors;
    await train(s);
    expect(new Set(counts).size).toBe(1);
    // Only the model's own variables remain once the run is over.
    expect(tf.memory().numTensors).toBe(beforeTrain);
  });

  it('refuses to start a fresh run over an existing one, and bad settings', async () => {
    const dir = tmp();
    await train(spec(dir, { steps: 2, evalEvery: 0 }));
    await expect(train(spec(dir, { steps: 2 }))).rejects.toThrow(/already holds a run .*resume it, or choose an empty output folder/);
    await expect(train(spec(tmp(), { gradAccum: 0 }))).rejects.toThrow(/gradAccum must be a positive integer/);
    await expect(train(spec(tmp(), { schedule: 'step' as never }))).rejects.toThrow(/schedule 'step'/);
    await expect(train(spec(tmp(), { resume: join(dir, 'missing') }))).rejects.toThrow(/missing: not found/);
  });

  it('the default interrupt source takes SIGINT and SIGTERM, asks once, then steps aside so a second signal exits', () => {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      const n = [process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')];
      const asked: (string | undefined)[] = [];
      const remove = interrupts((s) => asked.push(s));
      expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual([n[0]! + 1, n[1]! + 1]);
      process.emit(signal);
      expect(asked).toEqual([signal]);
      expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual(n);
      remove();
      expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual(n);
    }
  });

  it('stops a diverged run (lr 1e8): exploded parameters are neither stepped on nor checkpointed', async () => {
    // Adam moves each weight by about lr at once; loss and gradients stay finite, so only the
    // parameters' magnitude shows the run is wrecked.
    const dir = tmp();
    const err = await train(spec(dir, { lr: 1e8, saveEvery: 0, evalEvery: 0 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TrainError);
    expect((err as TrainError).message).toMatch(/^step 2: a parameter reached \d\.\d\de\+7 in magnitude \(more than 1000000\): the run diverged; stopped before updating\. No checkpoint had been written yet\.$/);
    expect(trainLosses(dir)).toHaveLength(1);
    const saving = tmp();
    const err1 = await train(spec(saving, { lr: 1e8, saveEvery: 1, evalEvery: 0 })).catch((e: unknown) => e);
    expect((err1 as TrainError).message).toMatch(/^step 1: not saving a checkpoint, parameter '\w+' holds -?\d{7,}\S* at index \d+; the run diverged\. No checkpoint had been written yet\.$/);
    expect(readdirSync(saving).filter((f) => f.startsWith('checkpoint-'))).toEqual([]);
  });

  it(`stops a dead run, whose gradient is exactly 0 for ${DEAD_STEPS} updates in a row, keeping the last checkpoint`, async () => {
    const dir = tmp();
    const s = spec(dir, { steps: DEAD_STEPS + 10, saveEvery: 5, evalEvery: 0 });
    const loss = s.loss;
    s.loss = (b, training, rng) => loss(b, training, rng).mul(0);
    const err = await train(s).catch((e: unknown) => e);
    expect((err as TrainError).message).toBe(
      `step ${DEAD_STEPS}: the gradient has been exactly 0 for ${DEAD_STEPS} updates in a row: the run is dead (saturated) and learns nothing; stopped before updating. ` +
        `The last good checkpoint, ${join(dir, 'checkpoint-15')}, was kept; resume from it (perhaps with a lower lr or clipping).`,
    );
    expect(readFileSync(join(dir, LATEST_FILE), 'utf8').trim()).toBe('checkpoint-15');
  });

  it('holds the output folder locked while it runs, and lets go however the run ends', async () => {
    const dir = tmp();
    const seen: unknown[] = [];
    const s = spec(dir, { steps: 2, afterStep: () => seen.push(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid) });
    await train(s);
    expect(seen).toEqual([process.pid, process.pid]);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    const failing = spec(tmp(), { steps: 2 });
    failing.loss = () => {
      throw new Error('boom');
    };
    await expect(train(failing)).rejects.toThrow('boom');
    expect(existsSync(join(failing.outDir, LOCK_FILE))).toBe(false);
  });

  it('a run starting or resuming in a folder removes the temps a killed run left there', async () => {
    const dir = tmp();
    mkdirSync(join(dir, '.checkpoint-4.99999.tmp'));
    writeFileSync(join(dir, '.checkpoint-4.99999.tmp', PARAMS_FILE), 'half');
    writeFileSync(join(dir, '.adapter_model.safetensors.99999.1700000000000.tmp'), 'half');
    writeFileSync(join(dir, 'notes.tmp'), 'the user\'s');
    await train(spec(dir, { steps: 3, saveEvery: 0, evalEvery: 0 }));
    mkdirSync(join(dir, '.checkpoint-5.99999.tmp'));
    await train(spec(dir, { steps: 4, resume: dir, saveEvery: 0, evalEvery: 0 }));
    expect(readdirSync(dir).sort()).toEqual(['checkpoint-3', 'checkpoint-4', LATEST_FILE, 'metrics.jsonl', 'notes.tmp']);
  });
});
