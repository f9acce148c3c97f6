import * as tf from '@tensorflow/tfjs';
import { installKernelPatches } from './kernels.js';

// The fast matMul gradient is a global registration: make sure it is in place for any caller,
// with or without initBackend.
installKernelPatches();

function expectRank(t: tf.Tensor, rank: number, op: string, name: string): void {
  if (t.rank !== rank) throw new Error(`${op}: ${name} must be rank ${rank}, got shape [${t.shape}]`);
}

/**
 * Plain 2-D a[M,K] @ b[K,P]: the only matMul on wasm's XNNPACK path. Its gradient (the
 * BatchMatMul override in kernels.ts) is two more plain 2-D matMuls after explicit transposes.
 */
export function matMul(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  expectRank(a, 2, 'matMul', 'a');
  expectRank(b, 2, 'matMul', 'b');
  if (a.shape[1] !== b.shape[0]) {
    throw new Error(`matMul: inner dims differ, a [${a.shape}] @ b [${b.shape}]`);
  }
  return tf.matMul(a, b);
}

/** x[N,in] @ wT[in,out] (+ bias[out]). Never fused: wasm's fused matMul is wrong and its gradient slow. */
export function linear(x: tf.Tensor2D, wT: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  const y = matMul(x, wT);
  if (!bias) return y;
  if (bias.rank !== 1 || bias.shape[0] !== wT.shape[1]) {
    throw new Error(`linear: bias shape [${bias.shape}] does not match wT [${wT.shape}]`);
  }
  return tf.add(y, bias);
}

function checkBatch(a: tf.Tensor3D, b: tf.Tensor3D, op: string, inner: number): void {
  expectRank(a, 3, op, 'a');
  expectRank(b, 3, op, 'b');
  if (a.shape[0] !== b.shape[0] || a.shape[2] !== b.shape[inner]) {
    throw new Error(`${op}: shapes do not match, a [${a.shape}] b [${b.shape}]`);
  }
}

/**
 * Batched a[N,M,K] @ b[N,K,P] as N plain 2-D matMuls: wasm's batched kernel is a naive loop
 * (~1 GFLOP/s) while each 2-D slice runs on XNNPACK. Forward and backward are one tape node.
 */
function sliceMatMul(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  if (a.shape[0] === 1) return tf.matMul(a, b);
  const as = tf.unstack(a) as tf.Tensor2D[];
  const bs = tf.unstack(b) as tf.Tensor2D[];
  return tf.stack(as.map((ai, i) => tf.matMul(ai, bs[i]!))) as tf.Tensor3D;
}

function t3(x: tf.Tensor3D): tf.Tensor3D {
  return tf.transpose(x, [0, 2, 1]);
}

const bmmGrad = tf.customGrad((...args) => {
  const [a, b, save] = args as [tf.Tensor3D, tf.Tensor3D, tf.GradSaveFunc];
  save([a, b]);
  return {
    value: sliceMatMul(a, b),
    gradFunc: (dy, saved) => {
      const [sa, sb] = saved as tf.Tensor3D[];
      const g = dy as tf.Tensor3D;
      return [sliceMatMul(g, t3(sb!)), sliceMatMul(t3(sa!), g)];
    },
  };
});

const bmmTGrad = tf.customGrad((...args) => {
  const [a, b, save] = args as [tf.Tensor3D, tf.Tensor3D, tf.GradSaveFunc];
  save([a, b]);
  return {
    value: sliceMatMul(a, t3(b)),
    gradFunc: (dy, saved) => {
      const [sa, sb] = saved as tf.Tensor3D[];
      const g = dy as tf.Tensor3D;
      return [sliceMatMul(g, sb!), sliceMatMul(t3(g), sa!)];
    },
  };
});

/** [N,M,K] x [N,K,P] -> [N,M,P]. */
export function bmm(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  checkBatch(a, b, 'bmm', 1);
  return bmmGrad(a, b) as tf.Tensor3D;
}

/** [N,M,K] x [N,P,K]^T -> [N,M,P], e.g. Q K^T. */
export function bmmT(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  checkBatch(a, b, 'bmmT', 2);
  return bmmTGrad(a, b) as tf.Tensor3D;
}

/** Elements summed per chunk: short enough that float32 accumulation stays accurate. */
const SUM_CHUNK = 256;

/**
 * Sum of all elements, reduced in chunks of SUM_CHUNK: wasm sums sequentially in float32 and
 * drifts by ~1% at 1e6 elements, ~9% at 1e7.
 */
export function stableSum(x: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    let v = tf.reshape(x, [-1]) as tf.Tensor1D;
    while (v.size > SUM_CHUNK) {
      const rowsN = Math.ceil(v.size / SUM_CHUNK);
      const padded = rowsN * SUM_CHUNK === v.size ? v : tf.pad(v, [[0, rowsN * SUM_CHUNK - v.size]]);
      v = tf.sum(tf.reshape(padded, [rowsN, SUM_CHUNK]), 1);
    }
    return tf.sum(v);
  });
}

/** sqrt(sum of squares) over all tensors, e.g. for gradient clipping. */
export function globalNorm(ts: tf.Tensor[]): tf.Scalar {
  if (ts.length === 0) throw new Error('globalNorm: no tensors');
  return tf.tidy(() => tf.sqrt(tf.addN(ts.map((t) => stableSum(tf.square(t))))));
}
