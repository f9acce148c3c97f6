import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import { frozenLinear, linear } from './ops.js';

/** Something that adds to a linear layer's output: a LoRA adapter, or a gate over several. */
export interface LinearHook {
  delta(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
}

/**
 * A frozen base linear layer, named by its Hugging Face module path (what PEFT targets).
 * The weight is kept as [in, out] so the forward is a plain 2-D matMul, the fast path on WASM;
 * `conv1d` records that the checkpoint stores it that way (GPT-2's fan_in_fan_out).
 */
export class Linear {
  private readonly hookList: LinearHook[] = [];
  /** weightT transposed, kept while training a frozen weight (see ops.frozenLinear). */
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

  /** The hooks whose deltas this layer adds, in the order added: a frozen copy (change them with addHook). */
  get hooks(): readonly LinearHook[] {
    return Object.freeze([...this.hookList]);
  }

  /**
   * Add h's delta to this layer's output from the next pass on. Returns the function that removes
   * it again (a second call does nothing); adding the same hook twice would count its delta twice,
   * so it is refused.
   */
  addHook(h: LinearHook): () => void {
    if (this.hookList.includes(h)) throw new Error(`${this.name}: this hook is already added`);
    this.hookList.push(h);
    return () => {
      const at = this.hookList.indexOf(h);
      if (at >= 0) this.hookList.splice(at, 1);
    };
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const bias = this.bias ?? undefined;
    const frozen = !(this.weightT instanceof tf.Variable && this.weightT.trainable);
    let y = ctx.training && frozen
      ? frozenLinear(x, this.weightT, () => this.weight(), bias)
      : linear(x, this.weightT, bias);
    if (!ctx.plain) for (const h of this.hookList) y = y.add(h.delta(x, ctx));
    return y;
  }

  /**
   * The weight as [out, in], for input gradients while training. Costs a second copy of the
   * weight, plus XNNPACK's packing of it, for as long as the layer lives; rebuilt if weightT is
   * replaced (a merge).
   */
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
