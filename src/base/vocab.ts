import * as tf from '@tensorflow/tfjs';
import { concatF32, readF32, readHost } from './host.js';
import { SplitTensor } from './split-tensor.js';
import { webGpuAdapter } from './webgpu.js';
import type { WeightSource } from './weights.js';

/**
 * Vocabulary-sized tables (the token embedding, lm_head) on GPUs whose storage bindings cannot
 * hold them. A kernel binds each input whole, so a [V, D] table over maxStorageBufferBindingSize
 * (128 MiB on many adapters; a 49,152 × 576 float32 embedding is 113 MB, 128,256 × 2,048 is 1 GB)
 * is kept as row blocks that each fit, cut on the host before any of it reaches the GPU. Everywhere
 * else, and whenever a table fits, it stays one tensor and nothing changes.
 */

/** Set to plan with a lower binding limit than the adapter's, e.g. to split a tiny model's tables in tests. */
export const MAX_BINDING_ENV = 'MOLORA_WEBGPU_MAX_BINDING_BYTES';

/** The most bytes one GPU binding takes (the adapter's, or MOLORA_WEBGPU_MAX_BINDING_BYTES if lower), or null off webgpu. */
export function bindingLimitBytes(): number | null {
  const adapter = webGpuAdapter()?.limits.maxStorageBufferBindingSize;
  if (adapter === undefined) return null;
  const raw = process.env[MAX_BINDING_ENV];
  if (raw === undefined || raw === '') return adapter;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 16) throw new Error(`${MAX_BINDING_ENV} must be a whole number of bytes ≥ 16, got '${raw}'`);
  return Math.min(adapter, v);
}

/** Rows per block for a float32 table of `cols` columns, or null when `rows` of them fit one binding. */
export function rowsPerBlock(rows: number, cols: number, limit = bindingLimitBytes()): number | null {
  if (limit === null || rows * cols * 4 <= limit) return null;
  const per = Math.floor(limit / (cols * 4));
  if (per < 1) throw new Error(`a row of ${cols} float32 values (${cols * 4} bytes) is over the GPU's ${limit}-byte binding limit`);
  return per;
}

/** The [rows, cols] table under `key` as row blocks: one tensor when it fits a binding. */
export function readRowBlocks(w: WeightSource, key: string, rows: number, cols: number): tf.Tensor2D[] {
  const per = rowsPerBlock(rows, cols);
  if (per === null) return [w.get(key, [rows, cols]) as tf.Tensor2D];
  const data = w.read(key, [rows, cols]);
  const blocks: tf.Tensor2D[] = [];
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    blocks.push(tf.tensor2d(data.subarray(r * cols, (r + n) * cols), [n, cols]));
  }
  return blocks;
}

/** Each [V_i, D] row block as the [D, V_i] column block of the transposed weight; the row blocks are freed. */
export function transposedBlocks(rows: tf.Tensor2D[]): tf.Tensor2D[] {
  return rows.map((b) => {
    const t = b.transpose() as tf.Tensor2D;
    b.dispose();
    return t;
  });
}

/**
 * A named embedding table [V, D] (token or position), as blocks (one unless it is split).
 * Untied ('rows') it holds its own [V_i, D] row blocks and looks ids up by row. Tied to the head
 * (tie_word_embeddings, GPT-2: 'columns') it holds no copy of its own: its blocks are the head's
 * [D, V_i] column blocks, read by column. The head needs [D, V] for its plain matMul, so sharing
 * it keeps one copy where the transposed pair took two (47M floats, 188 MB, for SmolLM2-360M).
 */
export class Embedding {
  private readonly stored: SplitTensor;

  constructor(
    readonly name: string,
    blocks: tf.Tensor2D[],
    readonly layout: 'rows' | 'columns' = 'rows',
  ) {
    this.stored = new SplitTensor(blocks, name, 'blocks');
  }

  private get blocks(): readonly tf.Tensor2D[] {
    return this.stored.blocks;
  }

  /** The blocks, in order ([V_i, D] for 'rows', [D, V_i] for 'columns'): more than one only where the table is over a GPU binding. */
  get tableBlocks(): readonly tf.Tensor2D[] {
    return this.blocks;
  }

  /** The whole table as held ([V, D], or [D, V] when tied); only when it is one tensor. */
  get weight(): tf.Tensor2D {
    return this.stored.whole;
  }

  /** Replace the table (full training makes it a variable); not a split one. */
  set weight(t: tf.Tensor2D) {
    this.stored.whole = t;
  }

  private get axis(): 0 | 1 {
    return this.layout === 'rows' ? 0 : 1;
  }

  get rows(): number {
    return this.blocks.reduce((a, b) => a + b.shape[this.axis], 0);
  }

  /** Rows `ids` [N] → [N, D]. A split table gathers from each block the ids that fall in it (others give 0) and sums. */
  gather(ids: tf.Tensor1D): tf.Tensor2D {
    if (this.blocks.length === 1) return this.pick(this.blocks[0]!, ids);
    let start = 0;
    const parts = this.blocks.map((b) => {
      const n = b.shape[this.axis];
      const local = ids.sub(tf.scalar(start, 'int32'));
      const inside = local.greaterEqual(tf.scalar(0, 'int32')).logicalAnd(local.less(tf.scalar(n, 'int32')));
      start += n;
      return this.pick(b, local.clipByValue(0, n - 1) as tf.Tensor1D).mul(inside.expandDims(1).toFloat()) as tf.Tensor2D;
    });
    return tf.addN(parts);
  }

  /** Vectors `ids` of one block, [N, D]. */
  private pick(block: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
    if (this.layout === 'rows') return tf.gather(block, ids) as tf.Tensor2D;
    return tf.tidy(() => tf.transpose(tf.gather(block, ids, 1)) as tf.Tensor2D);
  }

  /** The table [V, D] on the host, row-major (blocks concatenated; a tied table transposed). */
  async read(): Promise<Float32Array> {
    const parts: Float32Array[] = [];
    for (const b of this.blocks) parts.push(this.layout === 'rows' ? await readF32(b) : await readHost(() => b.transpose()));
    return concatF32(parts);
  }

  dispose(): void {
    // A tied table belongs to the head too; disposing a tensor twice is a no-op.
    tf.dispose([...this.blocks]);
  }
}
