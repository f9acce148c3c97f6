import * as tf from '@tensorflow/tfjs';

export interface Accumulated {
  /** Sum of the k micro-batch losses. */
  loss: tf.Scalar;
  /** Sum of the k micro-batch gradients, by parameter name; a parameter no loss reached is absent. */
  grads: Map<string, tf.Tensor>;
}

/**
 * Forward and backward over k micro-batches, summing losses and gradients. Each micro-batch runs
 * in its own tidy, so its activations (and any tensors `micro` creates, such as the batch) are
 * freed before the next one; only the running sums survive, and the caller disposes them.
 * The mean is the sum times 1/k, which the caller folds into the optimizer's gradient scale.
 */
export function accumulateGrads(params: Map<string, tf.Variable>, k: number, micro: (i: number) => tf.Scalar): Accumulated {
  const names = [...params.keys()];
  const vars = [...params.values()];
  let loss: tf.Scalar | null = null;
  const grads = new Map<string, tf.Tensor>();
  try {
    for (let i = 0; i < k; i++) {
      const prevLoss = loss;
      const next = tf.tidy(() => {
        const r = tf.variableGrads(() => micro(i), vars);
        const sums: Record<string, tf.Tensor> = {};
        names.forEach((name, j) => {
          const g = r.grads[vars[j]!.name];
          if (!g) return;
          const acc = grads.get(name);
          sums[name] = acc ? acc.add(g) : g;
        });
        return { loss: prevLoss ? prevLoss.add(r.value) : r.value, sums };
      });
      prevLoss?.dispose();
      loss = next.loss as tf.Scalar;
      for (const name of names) {
        const g = next.sums[name];
        if (!g) continue;
        grads.get(name)?.dispose();
        grads.set(name, g);
      }
    }
  } catch (e) {
    // A failing micro-batch must not strand the sums of the ones before it.
    loss?.dispose();
    for (const g of grads.values()) g.dispose();
    throw e;
  }
  return { loss: loss!, grads };
}

/** Free what accumulateGrads returned. */
export function disposeAccumulated(a: Accumulated): void {
  a.loss.dispose();
  for (const g of a.grads.values()) g.dispose();
}

/**
 * The gradient-norm clip every trainer, command and recipe uses unless told otherwise: 1.0, the
 * default of Hugging Face Trainer's max_grad_norm (the CLI's --clip and a recipe's "clip" share it).
 */
export const DEFAULT_CLIP = 1;

/**
 * PyTorch clip_grad_norm_'s scale for gradients of global norm `norm`: maxNorm / (norm + 1e-6)
 * when that is below 1, else 1. maxNorm 0 turns clipping off.
 */
export function clipCoef(norm: number, maxNorm: number): number {
  if (maxNorm <= 0) return 1;
  return Math.min(1, maxNorm / (norm + 1e-6));
}
