import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { openSafetensors } from '../src/base/safetensors.js';
import { moeLayers } from '../src/moe/moe.js';
import { trainMoe, upcycleFolder, type TrainMoeOptions } from '../src/moe/train-moe.js';
import { readMetrics } from '../src/train/metrics.js';
import type { SignalSource } from '../src/train/trainer.js';
import { maxAbsDiff, tempDir } from './helpers.js';
import { taskCsv, TASK_COLUMNS, writeDenseBase } from './moe-train-fixtures.js';

const tmp = tempDir();
const dense = join(tmp.dir, 'dense');
const moe = join(tmp.dir, 'moe');
const quiet = { warn: () => {} };

function folderTensors(dir: string): Map<string, Float32Array> {
  const f = openSafetensors(join(dir, 'model.safetensors'));
  return new Map([...f.tensors.keys()].map((k) => [k, f.read(k).data as Float32Array]));
}

const opts = (out: string, extra: Partial<TrainMoeOptions> = {}): TrainMoeOptions => ({
  model: moe,
  data: join(tmp.dir, 'train.csv'),
  ...TASK_COLUMNS,
  valSplit: 0.1,
  seqLen: 24,
  batchSize: 16,
  lr: 3e-3,
  seed: 0,
  out,
  progress: 'off',
  log: () => {},
  ...extra,
});

beforeAll(async () => {
  await initBackend();
  await writeDenseBase(dense);
  // Noisy copies: with identical experts a router's choice would not change the output at all.
  await upcycleFolder({ model: dense, out: moe, experts: 4, topK: 2, noise: 0.01, seed: 1, warn: () => {} });
  taskCsv(tmp.dir);
});
afterAll(() => tmp.cleanup());

describe('train-moe', () => {
  it('trains routers and experts: the loss falls, numTensors stays flat, evals log per-layer routing, the folder loads', async () => {
    const out = join(tmp.dir, 'full');
    const counts: number[] = [];
    const r = await trainMoe(opts(out, { steps: 30, evalEvery: 15, afterStep: () => counts.push(tf.memory().numTensors) }));
    expect(r.status).toBe('done');
    expect(new Set(counts.slice(1)).size).toBe(1);
    const lines = readMetrics(join(out, 'metrics.jsonl'));
    const first = lines.find((l) => 'loss' in l)!.loss as number;
    const evals = lines.filter((l) => 'val_loss' in l);
    expect(evals.map((e) => e.step)).toEqual([15, 30]);
    expect(first).toBeGreaterThan(5);
    expect(evals.at(-1)!.val_loss as number).toBeLessThan(0.5);
    for (const e of evals) {
      const router = e.router as Record<string, { tokens: number; load: number[]; aux: number; z_loss: number; entropy: number }>;
      expect(Object.keys(router)).toEqual(['0', '1']);
      for (const l of Object.values(router)) {
        expect(l.load).toHaveLength(4);
        expect(l.load.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 3);
        expect(l.tokens).toBeGreaterThan(0);
        expect(l.aux).toBeGreaterThanOrEqual(2 - 1e-3);
        expect(l.entropy).toBeGreaterThan(0);
        expect(l.entropy).toBeLessThanOrEqual(Math.log(4) + 1e-6);
        expect(l.z_loss).toBeGreaterThan(0);
      }
    }
    // Every expert and router weight moved; attention, norms and embeddings did not.
    const [before, after] = [folderTensors(moe), folderTensors(out)];
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [k, v] of after) {
      const moved = maxAbsDiff(v, before.get(k)!) > 0;
      expect(moved, k).toBe(/block_sparse_moe\.(gate|experts\.\d+\.w[123])\.weight$/.test(k));
    }
    const back = loadBase(out, quiet);
    expect(moeLayers(back)).toHaveLength(2);
    expect(back.tokenizer).not.toBeNull();
    back.dispose();
  });

  it('--router-only changes only the router weights', async () => {
    const out = join(tmp.dir, 'router-only');
    await trainMoe(opts(out, { steps: 8, lr: 1e-2, routerOnly: true, auxCoef: 0.1, zCoef: 1e-3 }));
    const [before, after] = [folderTensors(moe), folderTensors(out)];
    for (const [k, v] of after) expect(maxAbsDiff(v, before.get(k)!) > 0, k).toBe(/\.gate\.weight$/.test(k));
    const back = loadBase(out, quiet);
    // The coefficients the run used are recorded in the saved config.
    expect(back.config.moe).toMatchObject({ auxLossCoef: 0.1, zLossCoef: 1e-3 });
    back.dispose();
  });

  it('with --balance-bias an interrupted run resumes to the same losses and routing bias (buffers included)', async () => {
    const straight = join(tmp.dir, 'bias-straight');
    await trainMoe(opts(straight, { steps: 8, balanceBias: 0.01 }));
    const cut = join(tmp.dir, 'bias-cut');
    let stop = (): void => {};
    const signals: SignalSource = (onInterrupt) => {
      stop = onInterrupt;
      return () => {};
    };
    const first = await trainMoe(opts(cut, { steps: 8, balanceBias: 0.01, signals, afterStep: (s) => s === 3 && stop() }));
    expect(first).toMatchObject({ status: 'interrupted', step: 3 });
    const second = await trainMoe(opts(cut, { steps: 8, balanceBias: 0.01, resume: cut }));
    expect(second).toMatchObject({ status: 'done', step: 8 });

    const losses = (dir: string): number[] => readMetrics(join(dir, 'metrics.jsonl')).filter((l) => 'loss' in l).map((l) => l.loss as number);
    expect(losses(cut)).toHaveLength(8);
    losses(cut).forEach((l, i) => expect(Math.abs(l - losses(straight)[i]!)).toBeLessThan(1e-6));
    const [a, b] = [folderTensors(straight), folderTensors(cut)];
    const biases = [...a.keys()].filter((k) => k.endsWith('.gate.e_score_correction_bias'));
    expect(biases).toEqual(['model.layers.0.block_sparse_moe.gate.e_score_correction_bias', 'model.layers.1.block_sparse_moe.gate.e_score_correction_bias']);
    for (const k of biases) {
      expect(maxAbsDiff(a.get(k)!, new Float32Array(4))).toBeGreaterThan(0);
      expect(maxAbsDiff(a.get(k)!, b.get(k)!)).toBeLessThan(1e-7);
    }
    for (const [k, v] of a) expect(maxAbsDiff(v, b.get(k)!), k).toBeLessThan(1e-6);
    // The saved folder loads with its routing bias in place, nothing ignored.
    const warnings: string[] = [];
    const loaded = loadBase(straight, { warn: (m) => warnings.push(m) });
    expect(warnings).toEqual([]);
    moeLayers(loaded).forEach((m, i) => expect(maxAbsDiff(m.router.enableBalancingBias().dataSync(), a.get(biases[i]!)!)).toBe(0));
    loaded.dispose();
  });

  it('refuses a dense model and a bad γ', async () => {
    await expect(trainMoe(opts(join(tmp.dir, 'dense-out'), { model: dense, steps: 1 }))).rejects.toThrow(/model_type llama has no sparse MoE FFN to train \(upcycle a dense model first/);
    await expect(trainMoe(opts(join(tmp.dir, 'bad-gamma'), { steps: 1, balanceBias: -1 }))).rejects.toThrow(/balance bias γ must be positive, got -1/);
  });
});
