import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import { HookList } from './hook-list.js';
import { SplitTensor } from './split-tensor.js';
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
 * A vocabulary-wide lm_head over a GPU's binding limit comes as column blocks of that weight
 * (see vocab.ts): one product per block, concatenated.
 */
export class Linear {
  private readonly hookList: HookList<LinearHook>;
  /** Set by a memory plan (base/memory.ts) before the first forward. */
  packing: WeightPacking = 'cached';
  /** weightT transposed, under the 'transposed' plan (see ops.frozenLinear). */
  private transposed: { of: tf.Tensor2D; w: tf.Tensor2D } | null = null;
  /** weightT, or its column blocks [in, out_i] in order. */
  private readonly stored: SplitTensor;

  /** `weight` as stored: [in, out], or its column blocks [in, out_i] in order. */
  constructor(
    readonly name: string,
    weight: tf.Tensor2D | tf.Tensor2D[],
    public bias: tf.Tensor1D | null,
    readonly conv1d: boolean,
  ) {
    this.stored = new SplitTensor(Array.isArray(weight) ? weight : [weight], name, 'column blocks');
    this.hookList = new HookList(name);
  }

  /** @internal The weight as stored, [in, out]; only when it is one tensor (a split lm_head has no single tensor to hand out). */
  get weightT(): tf.Tensor2D {
    return this.stored.whole;
  }

  /** @internal Replace the stored weight (a merge); not a split one. */
  set weightT(t: tf.Tensor2D) {
    this.stored.whole = t;
  }

  private get blocks(): readonly tf.Tensor2D[] {
    return this.stored.blocks;
  }

  /** @internal Column blocks of the stored weight, in order: more than one only where it is over a GPU binding. */
  get columnBlocks(): readonly tf.Tensor2D[] {
    return this.blocks;
  }

  /**
   * The weight as a trainable variable, made one in place on the first call (full training, MoE
   * routers and experts). It holds the weight as stored, [in, out]: trainers key it `<name>.weight_t`.
   */
  trainableWeight(): tf.Variable {
    const w = this.weightT;
    if (w instanceof tf.Variable) return w;
    const v = tf.variable(w, true);
    this.weightT = v;
    w.dispose();
    return v;
  }

  get inFeatures(): number {
    return this.blocks[0]!.shape[0];
  }

  get outFeatures(): number {
    return this.blocks.reduce((a, b) => a + b.shape[1], 0);
  }

  /** The hooks whose deltas this layer adds, in the order added: a frozen copy (change them with addHook). */
  get hooks(): readonly LinearHook[] {
    return this.hookList.snapshot();
  }

  /**
   * Add h's delta to this layer's output from the next pass on. Returns the function that removes
   * it again (a second call does nothing); adding the same hook twice would count its delta twice,
   * so it is refused.
   */
  addHook(h: LinearHook): () => void {
    return this.hookList.add(h);
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    let y = ctx.training && this.packing === 'transposed' && this.isFrozenWhole()
      ? frozenLinear(x, this.weightT, () => this.weight(), this.bias ?? undefined)
      : this.base(x);
    if (!ctx.plain) for (const h of this.hookList.items) y = y.add(h.delta(x, ctx));
    return y;
  }

  /** One frozen tensor (not column blocks, not a trainable variable): what the 'transposed' plan pairs with [out, in]. */
  private isFrozenWhole(): boolean {
    if (this.blocks.length > 1) return false;
    const w = this.blocks[0]!;
    return !(w instanceof tf.Variable && w.trainable);
  }

  /** The frozen layer alone: x·W + b, without hooks. */
  base(x: tf.Tensor2D): tf.Tensor2D {
    if (this.blocks.length > 1) return this.blockProduct(x);
    // Marked at each product, so a weight replaced later (a merge) is marked too.
    if (this.packing === 'per-use') packPerUse(this.weightT);
    return linear(x, this.weightT, this.bias ?? undefined);
  }

  /** x @ [W_1 … W_n] as one product per block (each fits a binding), then the bias. */
  private blockProduct(x: tf.Tensor2D): tf.Tensor2D {
    const y = tf.concat(this.blocks.map((b) => linear(x, b)), 1) as tf.Tensor2D;
    return this.bias ? y.add(this.bias) : y;
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
    tf.dispose([...this.blocks]);
    this.bias?.dispose();
    this.transposed?.w.dispose();
    this.transposed = null;
  }
}
