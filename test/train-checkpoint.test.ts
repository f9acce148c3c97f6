import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { writeSafetensors } from '../src/base/safetensors.js';
import {
  BUFFERS_FILE,
  LATEST_FILE,
  OPTIMIZER_FILE,
  PARAMS_FILE,
  STATE_FILE,
  loadCheckpoint,
  resolveCheckpoint,
  saveCheckpoint,
  type TrainState,
} from '../src/train/checkpoint.js';
import { AdamW } from '../src/train/optimizer.js';

beforeAll(async () => {
  await initBackend();
});

const disposers: (() => void)[] = [];
afterEach(() => {
  while (disposers.length) disposers.pop()!();
});

function setup(): { dir: string; params: Map<string, tf.Variable>; buffers: Map<string, tf.Variable>; opt: AdamW } {
  const dir = mkdtempSync(join(tmpdir(), 'molora-ckpt-'));
  const params = new Map([
    ['layer.w', tf.variable(tf.tensor([[1, 2, 3], [4, 5, 6]]))],
    ['layer.b', tf.variable(tf.tensor([0.5, -0.5, 0.25]))],
  ]);
  const buffers = new Map([['bias', tf.variable(tf.tensor([7, 8]), false)]]);
  const opt = new AdamW(params);
  const g = new Map([...params].map(([n, v]) => [n, tf.onesLike(v)] as [string, tf.Tensor]));
  opt.apply(g, 0.1);
  for (const t of g.values()) t.dispose();
  disposers.push(() => {
    opt.dispose();
    for (const v of [...params.values(), ...buffers.values()]) v.dispose();
  });
  return { dir, params, buffers, opt };
}

function state(step: number): TrainState {
  return {
    step,
    epoch: 2,
    rng: [1, 2, 3, 4294967295],
    sampler: { order: [3, 1, 2], pos: 1 },
    schedule: { kind: 'cosine', lr: 1e-3, minLr: 0, warmup: 2, total: 10 },
    last: { step, loss: 1.5 },
    best: { step: 1, val_loss: 1.25 },
  };
}

describe('training checkpoints', () => {
  it('round-trip parameters, buffers, moments and state; latest names the newest', async () => {
    const { dir, params, buffers, opt } = setup();
    const path = await saveCheckpoint(dir, { state: state(4), params, buffers, optimizer: opt, extra: (d) => writeFileSync(join(d, 'adapter.txt'), 'mine') });
    expect(path).toBe(join(dir, 'checkpoint-4'));
    expect(readdirSync(path).sort()).toEqual(['adapter.txt', BUFFERS_FILE, OPTIMIZER_FILE, PARAMS_FILE, STATE_FILE].sort());
    expect(readFileSync(join(dir, LATEST_FILE), 'utf8').trim()).toBe('checkpoint-4');
    // No temp folders are left beside it.
    expect(readdirSync(dir).sort()).toEqual(['checkpoint-4', LATEST_FILE]);

    const ck = loadCheckpoint(resolveCheckpoint(dir), params, buffers);
    expect(ck.dir).toBe(path);
    expect(ck.state).toEqual(state(4));
    expect(Array.from(ck.params.get('layer.w')!)).toEqual([1, 2, 3, 4, 5, 6].map((x) => Math.fround(x - 0.1 * 1)));
    expect(Array.from(ck.buffers.get('bias')!)).toEqual([7, 8]);
    expect(ck.optimizer.step).toBe(4);
    expect(ck.optimizer.moments['layer.b.exp_avg']).toEqual((await opt.state()).moments['layer.b.exp_avg']);
    expect(resolveCheckpoint(path)).toBe(path);

    await saveCheckpoint(dir, { state: state(8), params, buffers, optimizer: opt });
    expect(resolveCheckpoint(dir)).toBe(join(dir, 'checkpoint-8'));
    // Writing a step again replaces that checkpoint whole.
    await saveCheckpoint(dir, { state: { ...state(4), epoch: 3 }, params, buffers, optimizer: opt });
    expect(loadCheckpoint(join(dir, 'checkpoint-4'), params, buffers).state.epoch).toBe(3);
    expect(readdirSync(dir).sort()).toEqual(['checkpoint-4', 'checkpoint-8', LATEST_FILE]);
  });

  it('refuses to save non-finite parameters and keeps the good checkpoint', async () => {
    const { dir, params, buffers, opt } = setup();
    await saveCheckpoint(dir, { state: state(2), params, buffers, optimizer: opt });
    const good = readFileSync(join(dir, 'checkpoint-2', PARAMS_FILE));
    params.get('layer.b')!.assign(tf.tensor([0, NaN, 0]));
    await expect(saveCheckpoint(dir, { state: state(3), params, buffers, optimizer: opt })).rejects.toThrow(/parameter 'layer.b' holds NaN at index 1/);
    expect(readdirSync(dir).sort()).toEqual(['checkpoint-2', LATEST_FILE]);
    expect(readFileSync(join(dir, 'checkpoint-2', PARAMS_FILE))).toEqual(good);
  });

  it('gives clear errors naming the file', async () => {
    const { dir, params, buffers, opt } = setup();
    expect(() => resolveCheckpoint(join(dir, 'nope'))).toThrow(/nope: not found/);
    expect(() => resolveCheckpoint(dir)).toThrow(/neither a checkpoint \(no state.json\) nor a run folder \(no latest file\)/);
    writeFileSync(join(dir, LATEST_FILE), 'checkpoint-99\n');
    expect(() => resolveCheckpoint(dir)).toThrow(/latest: names 'checkpoint-99', which is not a checkpoint folder/);

    const ck = await saveCheckpoint(dir, { state: state(1), params, buffers, optimizer: opt });
    const other = new Map([...params, ['extra', tf.variable(tf.zeros([1]))]]);
    disposers.push(() => other.get('extra')!.dispose());
    expect(() => loadCheckpoint(ck, other, buffers)).toThrow(new RegExp(`${PARAMS_FILE}: has no tensor 'extra' for trained parameter 'extra'`));
    expect(() => loadCheckpoint(ck, new Map([['layer.w', params.get('layer.w')!]]), buffers)).toThrow(/holds tensors this run does not have \(layer.b\)/);
    const wide = new Map([...params, ['layer.b', tf.variable(tf.zeros([4]))]]);
    disposers.push(() => wide.get('layer.b')!.dispose());
    expect(() => loadCheckpoint(ck, wide, buffers)).toThrow(/params.safetensors: tensor 'layer.b' has shape \[3\], this run's trained parameter is \[4\]/);
    expect(() => loadCheckpoint(ck, params, new Map())).toThrow(/buffers.safetensors: holds tensors this run does not have \(bias\)/);

    writeSafetensors(join(ck, OPTIMIZER_FILE), { 'layer.w.exp_avg': { dtype: 'F32', shape: [2, 3], data: new Float32Array(6) } });
    expect(() => loadCheckpoint(ck, params, buffers)).toThrow(/optimizer.safetensors: has no tensor 'layer.w.exp_avg_sq' for optimizer moment 'layer.w'/);

    const statePath = join(ck, STATE_FILE);
    writeFileSync(statePath, '{"format": "molora-train-checkpoint", ');
    expect(() => loadCheckpoint(ck, params, buffers)).toThrow(/state.json: invalid JSON/);
    writeFileSync(statePath, JSON.stringify({ format: 'molora-train-checkpoint', version: 1, ...state(1), rng: [1, 2] }));
    expect(() => loadCheckpoint(ck, params, buffers)).toThrow(/state.json: 'rng' must be four unsigned 32-bit integers/);
    writeFileSync(statePath, JSON.stringify({ format: 'molora-train-checkpoint', version: 2, ...state(1) }));
    expect(() => loadCheckpoint(ck, params, buffers)).toThrow(/checkpoint version 2 is not supported/);
    writeFileSync(statePath, JSON.stringify({ ...state(1) }));
    expect(() => loadCheckpoint(ck, params, buffers)).toThrow(/not a molora training checkpoint/);
  });
});
