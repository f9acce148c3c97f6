import * as tf from '@tensorflow/tfjs';
import { assertGpuHealthy } from './webgpu.js';

/**
 * Reading tensors back to the host. Always asynchronous: dataSync()/arraySync() throw on webgpu
 * (a GPU buffer cannot be mapped synchronously), and `await data()` costs the same as a
 * synchronous read on wasm, cpu and tfjs-node.
 */

/** The values of what `compute` returns (run inside tf.tidy), as float32; the tensor is freed. */
export async function readHost(compute: () => tf.Tensor): Promise<Float32Array> {
  const t = tf.tidy(compute);
  try {
    return await readF32(t);
  } finally {
    t.dispose();
  }
}

/** A float32 tensor's values; the tensor stays alive. */
export async function readF32(t: tf.Tensor): Promise<Float32Array> {
  if (t.dtype !== 'float32') throw new Error(`readF32: a ${t.dtype} tensor [${t.shape}]`);
  const data = (await t.data()) as Float32Array;
  // A GPU error (out of memory, validation) surfaces asynchronously: make it fail this read.
  assertGpuHealthy();
  return data;
}

/** Several scalars or small tensors in one read (one GPU round trip), e.g. a step's loss and norms. */
export async function readScalars(compute: () => tf.Tensor[]): Promise<number[]> {
  return Array.from(await readHost(() => tf.concat(compute().map((t) => t.reshape([-1])))));
}

/** Float32 arrays end to end. */
export function concatF32(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
