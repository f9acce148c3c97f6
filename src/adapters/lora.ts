import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import type { LinearHook } from '../base/linear.js';
import { matMul } from '../base/ops.js';
import type { Rng } from '../base/rng.js';

/**
 * One LoRA expert on one linear layer: Δy = scale · B(A(dropout(x))).
 * A and B are kept transposed ([in, r] and [r, out]) so both products are plain 2-D matMuls;
 * that storage is internal: at the boundary, loraA() and loraB() hand them out in PEFT's
 * orientation ([r, in], [out, r]), and saveAdapter writes that orientation.
 */
export class LoraLayer implements LinearHook {
  /** @internal A transposed, [in, r]: the trainable variable (LoraAdapter.params()). */
  readonly aT: tf.Variable<tf.Rank.R2>;
  /** @internal B transposed, [r, out]: the trainable variable. */
  readonly bT: tf.Variable<tf.Rank.R2>;

  /** Owns the two variables, given as stored: aT [in, r], bT [r, out] (createLora, loadAdapter and MixLoRA build layers). */
  constructor(
    readonly module: string,
    aT: tf.Variable<tf.Rank.R2>,
    bT: tf.Variable<tf.Rank.R2>,
    public scale: number,
    readonly dropout: number,
  ) {
    this.aT = aT;
    this.bT = bT;
  }

  get rank(): number {
    return this.aT.shape[1];
  }

  get inFeatures(): number {
    return this.aT.shape[0];
  }

  get outFeatures(): number {
    return this.bT.shape[1];
  }

  get parameterCount(): number {
    return this.aT.size + this.bT.size;
  }

  /**
   * Take another layer's values and scale (same shapes: a hot-swap). assign shares its data
   * (reference-counted): no copy, no new tensors; `other` stays its owner's.
   */
  assignFrom(other: LoraLayer): void {
    this.aT.assign(other.aT);
    this.bT.assign(other.bT);
    this.scale = other.scale;
  }

  /** PEFT's lora_A, [r, in]: a new tensor (the caller disposes it). */
  loraA(): tf.Tensor2D {
    return this.aT.transpose();
  }

  /** PEFT's lora_B, [out, r]: a new tensor (the caller disposes it). */
  loraB(): tf.Tensor2D {
    return this.bT.transpose();
  }

  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const xin = ctx.training && this.dropout > 0 && ctx.rng ? dropout(x, this.dropout, ctx.rng) : x;
    return matMul(matMul(xin, this.aT).mul(this.scale) as tf.Tensor2D, this.bT);
  }

  /** @internal scale · (B A)ᵀ, the [in, out] update a merge adds to the base weight as it is stored. */
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

/** @internal A fresh A (kaiming-uniform with a = √5, or N(0, 1/r)) and B = 0, transposed as LoraLayer stores them: the adapter starts as the identity. */
export function initLoraWeights(inF: number, outF: number, r: number, init: 'kaiming' | 'gaussian', rng: Rng): { aT: Float32Array; bT: Float32Array } {
  // kaiming_uniform_(a=√5) on A [r, in]: bound = √(6 / ((1 + a²)·fan_in)) = 1/√fan_in.
  const aT = init === 'gaussian' ? rng.normalArray(inF * r, 1 / r) : rng.uniformArray(inF * r, -1 / Math.sqrt(inF), 1 / Math.sqrt(inF));
  return { aT, bT: new Float32Array(r * outF) };
}
