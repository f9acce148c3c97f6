import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import type { ForwardContext } from '../src/base/context.js';
import { Linear, type LinearHook } from '../src/base/linear.js';
import { loadBase } from '../src/base/load.js';
import type { InputHook } from '../src/base/model.js';
import { MODEL_FIXTURES } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

describe('Linear.addHook', () => {
  // y = x·W with W = [[1, 2], [3, 4]] ([in, out]); each hook adds a constant row, so every sum is exact.
  const lin = new Linear('model.layers.0.mlp.up_proj', tf.tensor2d([[1, 2], [3, 4]]), null, false);
  const x = tf.tensor2d([[1, 1]]);
  const tokenMask = tf.ones([1, 1]) as tf.Tensor2D;
  const ctx: ForwardContext = { batch: 1, seq: 1, training: false, tokenMask, realTokens: new Float32Array([1]), aux: [], rng: null };
  const run = (c: ForwardContext = ctx): number[] => tf.tidy(() => Array.from(lin.forward(x, c).dataSync()));
  const adds = (v: number): LinearHook => ({ delta: () => tf.tensor2d([[v, v]]) });
  afterAll(() => {
    lin.dispose();
    x.dispose();
    tokenMask.dispose();
  });

  it('adds each hook\'s delta until its remover runs; removing twice changes nothing', () => {
    const ten = adds(10);
    const hundred = adds(100);
    const removeTen = lin.addHook(ten);
    const removeHundred = lin.addHook(hundred);
    expect(run()).toEqual([114, 116]);
    expect(run({ ...ctx, plain: true })).toEqual([4, 6]);
    removeTen();
    expect(run()).toEqual([104, 106]);
    removeTen();
    expect(lin.hooks).toEqual([hundred]);
    removeHundred();
    expect(run()).toEqual([4, 6]);
    expect(lin.hooks).toEqual([]);
  });

  it('refuses the same hook twice, naming the layer, and hands out only a frozen copy of its hooks', () => {
    const h = adds(1);
    const remove = lin.addHook(h);
    expect(() => lin.addHook(h)).toThrow(/model\.layers\.0\.mlp\.up_proj: this hook is already added/);
    const seen = lin.hooks;
    expect(() => (seen as LinearHook[]).push(adds(5))).toThrow(TypeError);
    expect(run()).toEqual([5, 7]);
    remove();
    expect(seen).toEqual([h]);
    expect(lin.hooks).toEqual([]);
  });
});

describe('CausalLM.addInputHook', () => {
  it('runs each hook before every pass that is not plain, until its remover runs; refuses one hook twice', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), { warn: () => {} });
    const seen: number[][] = [];
    const hook: InputHook = (input) => seen.push(Array.from(input.ids));
    const pass = (plain = false): void => tf.dispose(model.hidden({ ids: Int32Array.from([4, 8]), batch: 1, seq: 2 }, { plain }).h);
    const remove = model.addInputHook(hook);
    expect(() => model.addInputHook(hook)).toThrow(/model input hooks: this hook is already added/);
    pass();
    pass(true);
    expect(seen).toEqual([[4, 8]]);
    const listed = model.inputHooks;
    expect(() => (listed as InputHook[]).push(() => {})).toThrow(TypeError);
    remove();
    remove();
    pass();
    expect(seen).toEqual([[4, 8]]);
    expect([listed, model.inputHooks]).toEqual([[hook], []]);
    model.dispose();
  });
});
