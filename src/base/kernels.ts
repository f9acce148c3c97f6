import * as tf from '@tensorflow/tfjs';

/**
 * Patches for tfjs 4.22's traps (see TFJS-NOTES.md), installed through tfjs's own extension
 * points. Gradients are global and installed at once; wasm kernels only once the wasm module
 * has registered its own (importing it later would overwrite ours), so call this again after
 * setBackend. Idempotent: each patch checks whether it is already the registered one.
 */
export function installKernelPatches(): void {
  for (const g of GRADIENTS) {
    if (tf.getGradient(g.kernelName) !== g) tf.registerGradient(g);
  }
}

/**
 * BatchMatMul gradient with explicit transposes and flag-free matMuls: the stock one uses the
 * transpose flags, which fall off wasm's XNNPACK path (10-30x slower), and throws on broadcast
 * batch dims. A b broadcast over a's batch (x[B,T,D] @ w[D,K]) is folded into 2-D products.
 */
const batchMatMulGrad: tf.GradConfig = {
  kernelName: tf.BatchMatMul,
  inputsToSave: ['a', 'b'],
  gradFunc: (dy, saved, attrs) => {
    const [a, b] = saved as [tf.Tensor, tf.Tensor];
    const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
    const g = dy as tf.Tensor;
    const T = transposeLast2;
    // C = op(A) op(B): dop(A) = dC op(B)^T, dop(B) = op(A)^T dC.
    const opA = () => (transposeA ? T(a) : a);
    const opB = () => (transposeB ? T(b) : b);
    const dOpA = () => batchMatMul(g, T(opB()));
    const dOpB = () => (batchSize(b) === 1 ? tf.matMul(T(rows(opA())), rows(g)) : batchMatMul(T(opA()), g));
    return {
      a: () => reduceTo(transposeA ? T(dOpA()) : dOpA(), a.shape),
      b: () => reduceTo(transposeB ? T(dOpB()) : dOpB(), b.shape),
    };
  },
};

function transposeLast2(t: tf.Tensor): tf.Tensor {
  const perm = t.shape.map((_, i) => i);
  perm[perm.length - 1] = perm.length - 2;
  perm[perm.length - 2] = perm.length - 1;
  return tf.transpose(t, perm);
}

function batchSize(t: tf.Tensor): number {
  return t.shape.slice(0, -2).reduce((p, d) => p * d, 1);
}

/** [..., M, K] -> [prod(...)*M, K]. */
function rows(t: tf.Tensor): tf.Tensor2D {
  return tf.reshape(t, [-1, t.shape[t.rank - 1]!]);
}

/** x @ y without flags; a y with no batch is applied to all of x's rows in one 2-D product. */
function batchMatMul(x: tf.Tensor, y: tf.Tensor): tf.Tensor {
  if (batchSize(y) !== 1 || x.rank === 2) return tf.matMul(x, y);
  const out = tf.matMul(rows(x), tf.reshape(y, y.shape.slice(-2)));
  return tf.reshape(out, [...x.shape.slice(0, -1), y.shape[y.rank - 1]!]);
}

/** Sum a broadcast gradient back down to the input's shape (batch dims only). */
function reduceTo(g: tf.Tensor, shape: number[]): tf.Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length - 2; i++) {
    if (i < lead || shape[i - lead] === 1) axes.push(i);
  }
  return tf.reshape(axes.length ? tf.sum(g, axes) : g, shape);
}

const GRADIENTS: tf.GradConfig[] = [batchMatMulGrad];
