import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import { packPerUse } from './kernels.js';
import { frozenLinear, linear } from './ops.js';

/** Something that adds to a linear layer's output: a LoRA adapter, or a gate over several. */
export interface LinearHook {
  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
}

/**
 * How a frozen weight is held for products, fastest first (memory.ts plans which one a run gets):
 * - 'transposed': [in, out] and, once training needs input gradients, [out, in], each with the
 *   packed copy XNNPACK keeps: four copies of the weight;
 * - 'cached': [in, out] and its packed copy; the input gradient dy·wTᵀ runs as (wT·dyᵀ)ᵀ
 *   (kernels.ts), which transposes and packs activations instead (17-28 % slower per product);
 * - 'per-use': [in, out] alone, packed for each product and freed after it (15 % slower per
 *   product at 256 rows, 45 % at 128).
 */
export type WeightPacking = 'transposed' | 'cached' | 'per-use';

/**
 * A frozen base linear layer, named by its Hugging Face module path (what PEFT targets).
 * The weight is kept as [in, out] so the forward is a plain 2-D matMul, the fast path on WASM.
 * `conv1d` records that the checkpoint stores it that way (GPT-2's fan_in_fan_out).
 */
export class Linear {
  readonly hooks: LinearHook[] = [];
  /** Set by a memory plan (base/memory.ts) before the first forward. */
  packing: WeightPacking = 'cached';
  /** weightT transposed, under the 'transposed' plan (see ops.frozenLinear). */
  private transposed: { of: tf.Tensor2D; w: tf.Tensor2D } | null = null;

  constructor(
    readonly name: string,
    public weightT: tf.Tensor2D,
    public bias: tf.Tensor1D | null,
    readonly conv1d: boolean,
  ) {}

  get inFeatures(): number {
    return this.weightT.shape[0];
  }

  get outFeatures(): number {
    return this.weightT.shape[1];
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const frozen = !(this.weightT instanceof tf.Variable && this.weightT.trainable);
    let y = ctx.training && frozen && this.packing === 'transposed'
      ? frozenLinear(x, this.weightT, () => this.weight(), this.bias ?? undefined)
      : this.base(x);
    if (!ctx.plain) for (const h of this.hooks) y = y.add(h.delta(x, ctx));
    return y;
  }

  /** The frozen layer alone: x·W + b, without hooks. */
  base(x: tf.Tensor2D): tf.Tensor2D {
    // Marked at each product, so a weight replaced later (a merge) is marked too.
    if (this.packing === 'per-use') packPerUse(this.weightT);
    return linear(x, this.weightT, this.bias ?? undefined);
  }

  /** The weight as [out, in], built at the first backward pass; rebuilt if weightT is replaced (a merge). */
  private weight(): tf.Tensor2D {
    const wT = this.weightT;
    if (this.transposed?.of !== wT) {
      this.transposed?.w.dispose();
      this.transposed = { of: wT, w: tf.keep(wT.transpose()) };
    }
    return this.transposed.w;
  }

  dispose(): void {
    this.weightT.dispose();
    this.bias?.dispose();
    this.transposed?.w.dispose();
    this.transposed = null;
  }
}
