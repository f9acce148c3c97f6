import * as tf from '@tensorflow/tfjs';
import type { CausalLM, TokenBatch } from './model.js';

/** log-softmax over the vocabulary, written as x − logsumexp(x) (tf.logSoftmax costs 5× on WASM). */
export function logSoftmax(logits: tf.Tensor2D): tf.Tensor2D {
  return logits.sub(logits.logSumExp(-1, true));
}

/**
 * Full next-token log-prob vectors: result[b][t] is the distribution after position t of row b
 * (the `forward --json` contract).
 */
export function logprobs(model: CausalLM, batch: TokenBatch): Float32Array[][] {
  const lp = tf.tidy(() => logSoftmax(model.forward(batch)));
  const host = lp.dataSync() as Float32Array;
  lp.dispose();
  const V = model.config.vocabSize;
  return Array.from({ length: batch.batch }, (_, b) =>
    Array.from({ length: batch.seq }, (_, t) => host.subarray((b * batch.seq + t) * V, (b * batch.seq + t + 1) * V)),
  );
}
