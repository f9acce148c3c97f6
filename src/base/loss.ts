import * as tf from '@tensorflow/tfjs';
import type { CausalLM, ForwardOptions } from './model.js';

/**
 * Mean next-token cross-entropy over the positions where `weights` is non-zero:
 * CE = logsumexp(z) − z[target]. The probabilities come from softmax (XNNPACK's, 5x faster than
 * exp on wasm), and so does logsumexp: p at the row's max is exp(0)/Σexp(z − max), so
 * logsumexp(z) = max(z) − log(max(p)), which cannot underflow since max(p) ≥ 1/V. The gradient
 * is written by hand, (p − onehot)·w, reusing p: the stock one builds a [N, V] equality mask
 * through logsumexp's max and a one-hot product over the vocabulary. Returns the summed loss and
 * the weight total too, so callers can aggregate exactly.
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
  const idx = tf.tensor1d(flatIdx, 'int32');
  const w = tf.tensor1d(weights);
  const ce = tf.customGrad((z, save) => {
    const zz = z as tf.Tensor2D;
    const p = tf.softmax(zz);
    const lse = zz.max(-1).sub(p.max(-1).log());
    // Tensors a gradient needs must be saved: the forward scope frees everything else.
    (save as tf.GradSaveFunc)([p, w, idx]);
    const picked = tf.gather(zz.reshape([N * V]), idx);
    return {
      value: lse.sub(picked).mul(w).sum() as tf.Scalar,
      gradFunc: (dy, saved) => {
        const [sp, sw, sidx] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D];
        const scale = sw.mul(dy as tf.Scalar);
        const onehot = tf.unsortedSegmentSum(scale, sidx, N * V).reshape([N, V]);
        return sp.mul(scale.reshape([N, 1])).sub(onehot);
      },
    };
  });
  const sum = ce(logits) as tf.Scalar;
  return { mean: sum.div(Math.max(count, 1e-9)) as tf.Scalar, sum, count };
}

/** A language-modelling batch: ids[t] predicts targets[t]; lossMask weights each position. */
export interface LmBatch {
  ids: Int32Array;
  targets: Int32Array;
  lossMask: Float32Array;
  attentionMask?: Uint8Array;
  /** See TokenBatch.promptLens. */
  promptLens?: Int32Array;
  batch: number;
  seq: number;
}

/** Task loss plus every auxiliary loss the plug-ins left in the context (gate balance, router losses). */
export function lmLoss(model: CausalLM, b: LmBatch, opts: ForwardOptions = {}): tf.Scalar {
  const { h, ctx } = model.hidden(b, opts);
  const ce = crossEntropy(model.parts.head.forward(h, ctx), b.targets, b.lossMask).mean;
  return ctx.aux.reduce((acc, a) => acc.add(a.value), ce);
}
