import type * as tf from '@tensorflow/tfjs';

/**
 * A 2-D tensor held whole, or as blocks that each fit a GPU binding (vocab.ts cuts a vocabulary-wide
 * table that way): a Linear's weight, an Embedding's table. The one place that hands the tensor out
 * whole, or replaces it, and refuses to where it is split.
 */
export class SplitTensor {
  private parts: tf.Tensor2D[];

  constructor(
    blocks: tf.Tensor2D[],
    /** Name the owner and the kind of block in errors ('model.embed_tokens', 'column blocks'). */
    private readonly owner: string,
    private readonly kind: string,
  ) {
    if (blocks.length === 0) throw new Error(`${owner}: needs at least one block`);
    this.parts = blocks;
  }

  /** The blocks, in order: more than one only where the tensor is over a GPU binding. */
  get blocks(): readonly tf.Tensor2D[] {
    return this.parts;
  }

  /** The tensor; only when it is one block. */
  get whole(): tf.Tensor2D {
    this.assertWhole();
    return this.parts[0]!;
  }

  /** Replace the tensor (a merge, full training); not a split one. */
  set whole(t: tf.Tensor2D) {
    this.assertWhole();
    this.parts = [t];
  }

  private assertWhole(): void {
    if (this.parts.length > 1) {
      throw new Error(`${this.owner} is split into ${this.parts.length} ${this.kind} to fit the GPU's binding limit; this needs it as one tensor`);
    }
  }
}
