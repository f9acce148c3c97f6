import * as tf from '@tensorflow/tfjs';
import { readHost } from './host.js';
import type { CausalLM, TokenBatch } from './model.js';

/** log-softmax over the vocabulary, written as x − logsumexp(x) (tf.logSoftmax costs 5× on WASM). */
export function logSoftmax(logits: tf.Tensor2D): tf.Tensor2D {
  return logits.sub(logits.logSumExp(-1, true));
}

/**
 * Full next-token log-prob vectors: result[b][t] is the distribution after position t of row b
 * (the `forward --json` contract).
 */
export async function logprobs(model: CausalLM, batch: TokenBatch): Promise<Float32Array[][]> {
  const host = await readHost(() => logSoftmax(model.forward(batch)));
  const V = model.config.vocabSize;
  return Array.from({ length: batch.batch }, (_, b) =>
    Array.from({ length: batch.seq }, (_, t) => host.subarray((b * batch.seq + t) * V, (b * batch.seq + t + 1) * V)),
  );
}
