import type * as tf from '@tensorflow/tfjs';
import type { Attention, AttentionInputs, LayerCache } from './attention.js';
import type { ForwardContext } from './context.js';
import type { Linear } from './linear.js';
import type { FFN } from './mlp.js';
import type { Norm } from './norm.js';

/** Pre-norm transformer block: h = x + attn(norm₁(x)); out = h + ffn(norm₂(h)). */
export class Block {
  constructor(
    readonly index: number,
    readonly norm1: Norm,
    readonly attn: Attention,
    readonly norm2: Norm,
    /** Replaceable: the sparse MoE FFN swaps in here. */
    public ffn: FFN,
  ) {}

  forward(x: tf.Tensor2D, ctx: ForwardContext, inputs: AttentionInputs, cache?: LayerCache): tf.Tensor2D {
    const h = x.add(this.attn.forward(this.norm1.forward(x), ctx, inputs, cache)) as tf.Tensor2D;
    return h.add(this.ffn.forward(this.norm2.forward(h), ctx));
  }

  linears(): Linear[] {
    return [...this.attn.linears(), ...this.ffn.linears()];
  }

  dispose(): void {
    this.norm1.dispose();
    this.norm2.dispose();
    for (const l of this.attn.linears()) l.dispose();
    this.ffn.dispose();
  }
}
