import * as tf from '@tensorflow/tfjs';

export interface Norm {
  /** Hugging Face module path, e.g. model.layers.0.input_layernorm. */
  readonly name: string;
  readonly weight: tf.Tensor1D;
  readonly bias?: tf.Tensor1D;
  forward(x: tf.Tensor2D): tf.Tensor2D;
  dispose(): void;
}

/** RMSNorm: x · rsqrt(mean(x²) + eps) · w (built from plain ops: tf.batchNorm has no gradient). */
export class RMSNorm implements Norm {
  constructor(readonly name: string, readonly weight: tf.Tensor1D, readonly eps: number) {}

  forward(x: tf.Tensor2D): tf.Tensor2D {
    const ms = x.square().mean(-1, true);
    return x.mul(ms.add(this.eps).rsqrt()).mul(this.weight);
  }

  dispose(): void {
    this.weight.dispose();
  }
}

/** LayerNorm over the last axis with affine weight and bias (GPT-2). */
export class LayerNorm implements Norm {
  constructor(
    readonly name: string,
    readonly weight: tf.Tensor1D,
    readonly bias: tf.Tensor1D,
    readonly eps: number,
  ) {}

  forward(x: tf.Tensor2D): tf.Tensor2D {
    const centred = x.sub(x.mean(-1, true));
    const variance = centred.square().mean(-1, true);
    return centred.mul(variance.add(this.eps).rsqrt()).mul(this.weight).add(this.bias);
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}
