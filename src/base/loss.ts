import * as tf from '@tensorflow/tfjs';
import type { CausalLM, ForwardOptions } from './model.js';

/**
 * Mean next-token cross-entropy over the positions where `weights` is non-zero:
 * CE = logsumexp(z) − z[target]. The target logit is picked with a gather on the flattened
 * logits rather than a one-hot product over the vocabulary (a V-times larger tensor).
 * Returns the summed loss and the weight total too, so callers can aggregate exactly.
 */
export function crossEntropy(
  logits: tf.Tensor2D,
  targets: Int32Array,
  weights: Float32Array,
): { mean: tf.Scalar; sum: tf.Scalar; count: number } {
  const [N, V] = logits.shape;
  if (targets.length !== N || weights.length !== N) {
    throw new Error(`crossEntropy: ${N} logit rows but ${targets.length} targets and ${weights.length} weights`);
  }
  const flatIdx = new Int32Array(N);
  let count = 0;
  for (let i = 0; i < N; i++) {
    const t = targets[i]!;
    if (weights[i] !== 0 && (t < 0 || t >= V)) throw new Error(`crossEntropy: target ${t} at row ${i} is outside the vocabulary (${V})`);
    flatIdx[i] = i * V + Math.max(0, Math.min(V - 1, t));
    count += weights[i]!;
  }
  const picked = tf.gather(logits.reshape([N * V]), tf.tensor1d(flatIdx, 'int32'));
  const perToken = logits.logSumExp(-1).sub(picked);
  const sum = perToken.mul(tf.tensor1d(weights)).sum() as tf.Scalar;
  return { mean: sum.div(Math.max(count, 1e-9)) as tf.Scalar, sum, count };
}

/** A language-modelling batch: ids[t] predicts targets[t]; lossMask weights each position. */
export interface LmBatch {
  ids: Int32Array;
  targets: Int32Array;
  lossMask: Float32Array;
  attentionMask?: Uint8Array;
  batch: number;
  seq: number;
}

/** Task loss plus every auxiliary loss the plug-ins left in the context (gate balance, router losses). */
export function lmLoss(model: CausalLM, b: LmBatch, opts: ForwardOptions = {}): tf.Scalar {
  const { h, ctx } = model.hidden(b, opts);
  const ce = crossEntropy(model.parts.head.forward(h, ctx), b.targets, b.lossMask).mean;
  return ctx.aux.reduce((acc, a) => acc.add(a.value), ce);
}
