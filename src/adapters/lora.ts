import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import type { LinearHook } from '../base/linear.js';
import { matMul } from '../base/ops.js';
import type { Rng } from '../base/rng.js';

/**
 * One LoRA expert on one linear layer: Δy = scale · B(A(dropout(x))).
 * A and B are kept transposed ([in, r] and [r, out]) so both products are plain 2-D matMuls;
 * the PEFT file orientation ([r, in], [out, r]) is restored only at save time.
 */
export class LoraLayer implements LinearHook {
  constructor(
    readonly module: string,
    readonly aT: tf.Variable<tf.Rank.R2>,
    readonly bT: tf.Variable<tf.Rank.R2>,
    public scale: number,
    readonly dropout: number,
  ) {}

  get rank(): number {
    return this.aT.shape[1];
  }

  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const xin = ctx.training && this.dropout > 0 && ctx.rng ? dropout(x, this.dropout, ctx.rng) : x;
    return matMul(matMul(xin, this.aT).mul(this.scale) as tf.Tensor2D, this.bT);
  }

  /** scale · (B A)ᵀ, the [in, out] update a merge adds to the base weight. */
  deltaWeightT(): tf.Tensor2D {
    return tf.tidy(() => matMul(this.aT, this.bT).mul(this.scale));
  }

  dispose(): void {
    this.aT.dispose();
    this.bT.dispose();
  }
}

/** Inverted dropout with a mask drawn from the run's seeded stream. */
function dropout(x: tf.Tensor2D, p: number, rng: Rng): tf.Tensor2D {
  const keep = tf.randomUniform(x.shape, 0, 1, 'float32', rng.nextU32()).greaterEqual(p);
  return x.mul(keep.cast('float32')).div(1 - p);
}

/** A fresh A (kaiming-uniform with a = √5, or N(0, 1/r)) and B = 0: the adapter starts as the identity. */
export function initLoraWeights(inF: number, outF: number, r: number, init: 'kaiming' | 'gaussian', rng: Rng): { aT: Float32Array; bT: Float32Array } {
  // kaiming_uniform_(a=√5) on A [r, in]: bound = √(6 / ((1 + a²)·fan_in)) = 1/√fan_in.
  const aT = init === 'gaussian' ? rng.normalArray(inF * r, 1 / r) : rng.uniformArray(inF * r, -1 / Math.sqrt(inF), 1 / Math.sqrt(inF));
  return { aT, bT: new Float32Array(r * outF) };
}
