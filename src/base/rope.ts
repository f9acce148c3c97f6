import * as tf from '@tensorflow/tfjs';

/**
 * Rotary position embedding, rotate-half convention (REFERENCE.md §1):
 * q' = q·cos + rotate_half(q)·sin, with cos/sin = cat(angles, angles), angles = pos · θ^(−2j/d).
 * The rotation itself is applied while splitting heads (ops.splitHeads).
 */
export class Rope {
  private readonly invFreq: Float64Array;

  constructor(readonly headDim: number, theta: number) {
    const half = headDim / 2;
    this.invFreq = new Float64Array(half);
    for (let j = 0; j < half; j++) this.invFreq[j] = Math.pow(theta, (-2 * j) / headDim);
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
}
