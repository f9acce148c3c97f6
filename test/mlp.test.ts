import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { siluMul } from '../src/base/mlp.js';
import { Rng } from '../src/base/rng.js';
import { maxAbsDiff } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

const rand = (shape: number[], seed: number, scale = 1) =>
  tf.tensor(new Rng(seed).uniformArray(shape.reduce((p, d) => p * d, 1), -scale, scale), shape);

describe('siluMul', () => {
  it('value and hand-written gradients equal the stock chain g·σ(g)·u and its gradient', () => {
    const g = rand([6, 10], 1, 6);
    const u = rand([6, 10], 2, 2);
    const dy = rand([6, 10], 3);
    const stock = (a: tf.Tensor, b: tf.Tensor) => a.mul(a.sigmoid()).mul(b);
    expect(maxAbsDiff(siluMul(g, u).dataSync(), stock(g, u).dataSync())).toBeLessThan(1e-6);
    const ours = tf.grads((a, b) => siluMul(a!, b!).mul(dy).sum())([g, u]);
    const ref = tf.grads((a, b) => stock(a!, b!).mul(dy).sum())([g, u]);
    ours.forEach((t, i) => expect(maxAbsDiff(t.dataSync(), ref[i]!.dataSync())).toBeLessThan(1e-5));
  });
});
