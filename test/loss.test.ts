import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { crossEntropy } from '../src/base/loss.js';
import { maxAbsDiff } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

describe('crossEntropy', () => {
  it('value and hand-written gradient equal the textbook log-softmax / one-hot form', () => {
    const N = 6;
    const V = 11;
    const logits = tf.randomNormal([N, V], 0, 3, 'float32', 1) as tf.Tensor2D;
    const targets = Int32Array.from([0, 10, 3, 3, 7, 5]);
    const weights = Float32Array.from([1, 1, 0, 2, 1, 0.5]);
    const ours = tf.valueAndGrad((z: tf.Tensor) => crossEntropy(z as tf.Tensor2D, targets, weights).mean)(logits);
    const textbook = tf.valueAndGrad((z: tf.Tensor) => {
      const lp = tf.logSoftmax(z);
      const nll = lp.mul(tf.oneHot(tf.tensor1d(targets, 'int32'), V)).sum(-1).neg();
      return nll.mul(tf.tensor1d(weights)).sum().div(weights.reduce((a, b) => a + b, 0)) as tf.Scalar;
    })(logits);
    expect(Math.abs(ours.value.dataSync()[0]! - textbook.value.dataSync()[0]!)).toBeLessThan(1e-5);
    expect(maxAbsDiff(ours.grad.dataSync(), textbook.grad.dataSync())).toBeLessThan(1e-6);
    tf.dispose([logits, ours.value, ours.grad, textbook.value, textbook.grad]);
  });

  it('stays exact when the target is far below the max (no underflow through the probabilities)', () => {
    const z = tf.tensor2d([[0, -300, 5, 1], [40, 41, -80, 39]]);
    const { mean } = crossEntropy(z, Int32Array.from([1, 2]), Float32Array.from([1, 1]));
    const lse = (r: number[]) => Math.max(...r) + Math.log(r.reduce((s, v) => s + Math.exp(v - Math.max(...r)), 0));
    const ref = (lse([0, -300, 5, 1]) + 300 + lse([40, 41, -80, 39]) + 80) / 2;
    expect(Math.abs(mean.dataSync()[0]! - ref) / ref).toBeLessThan(1e-6);
    tf.dispose([z, mean]);
  });

  it('names a target outside the vocabulary', () => {
    const z = tf.zeros([2, 4]) as tf.Tensor2D;
    expect(() => crossEntropy(z, Int32Array.from([1, 4]), Float32Array.from([1, 1]))).toThrow(/target 4 at row 1 is outside the vocabulary \(4\)/);
    z.dispose();
  });
});
