import * as tf from '@tensorflow/tfjs';
import { installKernelPatches, MERGE_HEADS, SPLIT_HEADS, type HeadsAttrs } from './kernels.js';

// Gradients are global registrations: make sure they are in place for any caller, with or
// without initBackend (which also installs the wasm kernels these ops rely on for speed).
installKernelPatches();

function expectRank(t: tf.Tensor, rank: number, op: string, name: string): void {
  if (t.rank !== rank) throw new Error(`${op}: ${name} must be rank ${rank}, got shape [${t.shape}]`);
}

/** Plain 2-D a[M,K] @ b[K,P], XNNPACK's direct path on wasm; its gradient is two 2-D products. */
export function matMul(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  expectRank(a, 2, 'matMul', 'a');
  expectRank(b, 2, 'matMul', 'b');
  if (a.shape[1] !== b.shape[0]) {
    throw new Error(`matMul: inner dims differ, a [${a.shape}] @ b [${b.shape}]`);
  }
  return tf.matMul(a, b);
}

/**
 * x[N,in] @ wT[in,out] (+ bias[out]). Not tf.fused.matMul: its gradient computes every input's
 * gradient eagerly (wasted on frozen weights) and the op leaks a tensor per call.
 */
export function linear(x: tf.Tensor2D, wT: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  return addBias(matMul(x, wT), wT, bias);
}

/**
 * linear() for a weight that does not train, whose input gradient dy @ w uses w = wTᵀ from
 * `transposed` (called at the first backward pass, so only layers that need it build it) rather
 * than a transpose and an XNNPACK repacking of wT on every backward pass (7.4 → 10.7 ms at
 * [512,688]x[688,256]; the swapped (wT·dyᵀ)ᵀ costs about as much). A kept w keeps its own packed
 * operator, like wT. Linear uses it under the 'transposed' plan (memory.ts).
 */
export function frozenLinear(x: tf.Tensor2D, wT: tf.Tensor2D, transposed: () => tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  const f = tf.customGrad((xx) => ({
    value: matMul(xx as tf.Tensor2D, wT),
    gradFunc: (dy) => {
      const w = transposed();
      if (w.shape[0] !== wT.shape[1] || w.shape[1] !== wT.shape[0]) {
        throw new Error(`frozenLinear: w [${w.shape}] is not the transpose of wT [${wT.shape}]`);
      }
      return matMul(dy as tf.Tensor2D, w);
    },
  }));
  return addBias(f(x) as tf.Tensor2D, wT, bias);
}

function addBias(y: tf.Tensor2D, wT: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
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
 * [N,M,K] x [N,K,P] -> [N,M,P]. One op: the patched wasm kernel runs each slice on XNNPACK
 * (18 GFLOP/s at [64,256,64]x[64,64,256], against 1.2 for the stock loop), and the gradient is
 * two more such products, computed only for the inputs that need it.
 */
export function bmm(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  checkBatch(a, b, 'bmm', 1);
  return tf.matMul(a, b);
}

/** [N,M,K] x [N,P,K]^T -> [N,M,P], e.g. Q K^T; the kernel materialises the transpose. */
export function bmmT(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  checkBatch(a, b, 'bmmT', 2);
  return tf.matMul(a, b, false, true);
}

/** Attention's head layout: B rows of tokens, KV key/value heads with G query heads each. */
export type HeadShape = Omit<HeadsAttrs, 'scale'>;

/** RoPE's cos and sin for each token, [B·T, 1, d] (Rope.tables). */
export interface RopeTables {
  cos: tf.Tensor3D;
  sin: tf.Tensor3D;
}

/**
 * [B·T, KV·G·d] → [B·KV, T·G, d]: the G query heads that share a K/V head stacked along the rows
 * (row (t, g)), so every attention product is a batch of 2-D ones; each d-vector rotated by RoPE
 * when tables are given, and times scale. With RoPE it is one JS pass (molora's kernel, 0.35 ms
 * at [512, 256] against 0.9 for the six stock ops); without, wasm's transpose is the fastest.
 */
export function splitHeads(x: tf.Tensor2D, s: HeadShape, rope: RopeTables | null, scale = 1): tf.Tensor3D {
  return (runHeads(SPLIT_HEADS, x, s, rope, scale) ?? splitHeadsOps(x, s, rope, scale)) as tf.Tensor3D;
}

/** splitHeads' inverse, and its gradient: [B·KV, T·G, d] → [B·T, KV·G·d], rotated back, times scale. */
export function mergeHeads(x: tf.Tensor3D, s: HeadShape, rope: RopeTables | null, scale = 1): tf.Tensor2D {
  return (runHeads(MERGE_HEADS, x, s, rope, scale) ?? mergeHeadsOps(x, s, rope, scale)) as tf.Tensor2D;
}

/** The RoPE kernel (kernels.ts), or null without tables or where the backend has none. */
function runHeads(name: string, x: tf.Tensor, s: HeadShape, rope: RopeTables | null, scale: number): tf.Tensor | null {
  if (!rope || !tf.getKernel(name, tf.getBackend())) return null;
  const attrs: HeadsAttrs = { batch: s.batch, kvHeads: s.kvHeads, groups: s.groups, scale };
  // The inputs as an array, as the kernel's gradient expects.
  return tf.engine().runKernel(name, [x, rope.cos, rope.sin] as unknown as tf.NamedTensorMap,
    attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
}

/** splitHeads from stock ops: what backends without molora's kernels run, and its reference. */
export function splitHeadsOps(x: tf.Tensor2D, s: HeadShape, rope: RopeTables | null, scale = 1): tf.Tensor3D {
  const { batch: B, kvHeads: KV, groups: G } = s;
  const [BT, HD] = x.shape;
  const [T, d] = [BT / B, HD / (KV * G)];
  let h: tf.Tensor = x.reshape([BT, KV * G, d]);
  // q' = q·cos + rotate_half(q)·sin (REFERENCE.md §1).
  if (rope) h = h.mul(rope.cos).add(rotateHalf(h).mul(rope.sin));
  if (scale !== 1) h = h.mul(scale);
  return h.reshape([B, T, KV, G * d]).transpose([0, 2, 1, 3]).reshape([B * KV, T * G, d]);
}

/** mergeHeads from stock ops. */
export function mergeHeadsOps(x: tf.Tensor3D, s: HeadShape, rope: RopeTables | null, scale = 1): tf.Tensor2D {
  const { batch: B, kvHeads: KV, groups: G } = s;
  const [, TG, d] = x.shape;
  const T = TG / G;
  let h: tf.Tensor = x.reshape([B, KV, T, G * d]).transpose([0, 2, 1, 3]).reshape([B * T, KV * G, d]);
  if (rope) h = h.mul(rope.cos).sub(rotateHalf(h).mul(rope.sin));
  if (scale !== 1) h = h.mul(scale);
  return h.reshape([B * T, KV * G * d]);
}

/** (x₁, x₂) → (−x₂, x₁) over the halves of the last axis. */
function rotateHalf(x: tf.Tensor): tf.Tensor {
  const [x1, x2] = tf.split(x, 2, -1) as [tf.Tensor, tf.Tensor];
  return tf.concat([x2.neg(), x1], -1);
}

/** Elements summed per chunk: short enough that float32 accumulation stays accurate. */
const SUM_CHUNK = 256;

/**
 * Sum of all elements, reduced in chunks of SUM_CHUNK, then chunks of those sums. tf.sum on wasm
 * accumulates long runs in float32: 1e7 squared normals came out 1.6% off, 1e7 copies of 0.1
 * 8.8% off; this stays within 4e-6.
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
