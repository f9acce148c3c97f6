import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { RMSNorm } from '../src/base/norm.js';
import { Rng } from '../src/base/rng.js';
import { maxAbsDiff } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

const rand = (shape: number[], seed: number, scale = 1) =>
  tf.tensor(new Rng(seed).uniformArray(shape.reduce((p, d) => p * d, 1), -scale, scale), shape);

/** The textbook chain, differentiated by tfjs. */
const textbook = (x: tf.Tensor, w: tf.Tensor, eps: number) => x.mul(x.square().mean(-1, true).add(eps).rsqrt()).mul(w);

describe('RMSNorm', () => {
  it('value and hand-written gradient equal the stock ops and their gradient', () => {
    const x = rand([7, 12], 1, 3) as tf.Tensor2D;
    const w = rand([12], 2) as tf.Tensor1D;
    const dy = rand([7, 12], 3);
    const norm = new RMSNorm('n', w, 1e-5);
    expect(maxAbsDiff(norm.forward(x).dataSync(), textbook(x, w, 1e-5).dataSync())).toBeLessThan(1e-6);
    const ours = tf.grad((t) => norm.forward(t as tf.Tensor2D).mul(dy).sum())(x);
    const ref = tf.grad((t) => textbook(t, w, 1e-5).mul(dy).sum())(x);
    expect(maxAbsDiff(ours.dataSync(), ref.dataSync())).toBeLessThan(1e-5);
  });

  it('a trainable weight gets its gradient too', () => {
    const x = rand([5, 8], 4) as tf.Tensor2D;
    const w = tf.variable(rand([8], 5), true) as unknown as tf.Tensor1D;
    const dy = rand([5, 8], 6);
    const norm = new RMSNorm('n', w, 1e-6);
    const ours = tf.variableGrads(() => norm.forward(x).mul(dy).sum() as tf.Scalar, [w as unknown as tf.Variable]);
    const ref = tf.variableGrads(() => textbook(x, w, 1e-6).mul(dy).sum() as tf.Scalar, [w as unknown as tf.Variable]);
    const name = (w as unknown as tf.Variable).name;
    expect(maxAbsDiff(ours.grads[name]!.dataSync(), ref.grads[name]!.dataSync())).toBeLessThan(1e-5);
  });
});
