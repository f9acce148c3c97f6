import * as tf from '@tensorflow/tfjs';
import { matMul } from './ops.js';

/**
 * Rotary position embedding, rotate-half convention (REFERENCE.md §1):
 * q' = q·cos + rotate_half(q)·sin, with cos/sin = cat(angles, angles), angles = pos · θ^(−2j/d).
 */
export class Rope {
  private readonly invFreq: Float64Array;
  /** rotate_half as a [d, d] signed permutation, so it is one fast 2-D matMul (no slicing). */
  private readonly rotation: tf.Tensor2D;

  constructor(readonly headDim: number, theta: number) {
    const half = headDim / 2;
    this.invFreq = new Float64Array(half);
    for (let j = 0; j < half; j++) this.invFreq[j] = Math.pow(theta, (-2 * j) / headDim);
    const r = new Float32Array(headDim * headDim);
    for (let j = 0; j < half; j++) {
      r[(j + half) * headDim + j] = -1; // out[j] = −x[j+half]
      r[j * headDim + j + half] = 1; // out[j+half] = x[j]
    }
    this.rotation = tf.tensor2d(r, [headDim, headDim]);
  }

  /** cos and sin tables [N, 1, d] for the given absolute positions. */
  tables(positions: Int32Array): { cos: tf.Tensor3D; sin: tf.Tensor3D } {
    const d = this.headDim;
    const half = d / 2;
    const cos = new Float32Array(positions.length * d);
    const sin = new Float32Array(positions.length * d);
    positions.forEach((p, n) => {
      for (let j = 0; j < half; j++) {
        const a = p * this.invFreq[j];
        cos[n * d + j] = cos[n * d + j + half] = Math.cos(a);
        sin[n * d + j] = sin[n * d + j + half] = Math.sin(a);
      }
    });
    const shape: [number, number, number] = [positions.length, 1, d];
    return { cos: tf.tensor3d(cos, shape), sin: tf.tensor3d(sin, shape) };
  }

  /** x: [N, heads, d] → rotated, with tables from `tables()`. */
  apply(x: tf.Tensor3D, t: { cos: tf.Tensor3D; sin: tf.Tensor3D }): tf.Tensor3D {
    const [n, h, d] = x.shape;
    const rotated = matMul(x.reshape([n * h, d]), this.rotation).reshape([n, h, d]);
    return x.mul(t.cos).add(rotated.mul(t.sin));
  }

  dispose(): void {
    this.rotation.dispose();
  }
}
