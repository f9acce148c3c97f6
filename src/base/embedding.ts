import * as tf from '@tensorflow/tfjs';

/**
 * A named embedding table (token or position). Untied, it holds its own [V, D] `table` and
 * looks ids up by row. Tied to the head (tie_word_embeddings, GPT-2), it holds no copy of its
 * own: `table` is the head's [D, V] weightT, read by column. The head needs [D, V] for its
 * plain matMul, so sharing it keeps one copy where the transposed pair took two (47M floats,
 * 188 MB, for SmolLM2-360M's vocabulary).
 */
export class Embedding {
  constructor(
    readonly name: string,
    /** [V, D] for 'rows'; [D, V] (the tied head's weightT) for 'columns'. */
    public table: tf.Tensor2D,
    readonly layout: 'rows' | 'columns' = 'rows',
  ) {}

  get count(): number {
    return this.table.shape[this.layout === 'rows' ? 0 : 1];
  }

  get dim(): number {
    return this.table.shape[this.layout === 'rows' ? 1 : 0];
  }

  /** The vectors of `ids`, [N, D]. */
  lookup(ids: tf.Tensor1D): tf.Tensor2D {
    if (this.layout === 'rows') return tf.gather(this.table, ids) as tf.Tensor2D;
    return tf.tidy(() => tf.transpose(tf.gather(this.table, ids, 1)) as tf.Tensor2D);
  }

  /** The table as [V, D] (checkpoint orientation), a tensor the caller disposes. */
  rows(): tf.Tensor2D {
    return this.layout === 'rows' ? tf.clone(this.table) : tf.transpose(this.table);
  }

  dispose(): void {
    // A tied table belongs to the head too; disposing a tensor twice is a no-op.
    this.table.dispose();
  }
}
