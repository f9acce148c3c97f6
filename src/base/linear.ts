import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import { packPerUse } from './kernels.js';
import { linear } from './ops.js';

/** Something that adds to a linear layer's output: a LoRA adapter, or a gate over several. */
export interface LinearHook {
  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
}

/** 'cached': XNNPACK keeps a packed copy of the weight (fast); 'per-use': packed per product (lean). */
export type WeightPacking = 'cached' | 'per-use';

/**
 * A frozen base linear layer, named by its Hugging Face module path (what PEFT targets).
 * The weight is kept once, as [in, out], so the forward is a plain 2-D matMul, the fast path on
 * WASM; the input gradient dy·wTᵀ runs as (wT·dyᵀ)ᵀ (kernels.ts), which transposes activations
 * but never the weight. `conv1d` records that the checkpoint stores it that way (GPT-2's
 * fan_in_fan_out).
 */
export class Linear {
  readonly hooks: LinearHook[] = [];
  /** Set by a memory plan (base/memory.ts) before the first forward. */
  packing: WeightPacking = 'cached';

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
    let y = this.base(x);
    if (!ctx.plain) for (const h of this.hooks) y = y.add(h.delta(x, ctx));
    return y;
  }

  /** The frozen layer alone: x·W + b, without hooks. */
  base(x: tf.Tensor2D): tf.Tensor2D {
    // Marked at each product, so a weight replaced later (a merge) is marked too.
    if (this.packing === 'per-use') packPerUse(this.weightT);
    return linear(x, this.weightT, this.bias ?? undefined);
  }

  dispose(): void {
    this.weightT.dispose();
    this.bias?.dispose();
  }
}
