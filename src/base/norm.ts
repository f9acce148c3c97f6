import * as tf from '@tensorflow/tfjs';

export interface Norm {
  /** Hugging Face module path, e.g. model.layers.0.input_layernorm. */
  readonly name: string;
  readonly weight: tf.Tensor1D;
  readonly bias?: tf.Tensor1D;
  forward(x: tf.Tensor2D): tf.Tensor2D;
  dispose(): void;
}

/**
 * RMSNorm: y = x · r · w, r = rsqrt(mean(x²) + eps), built from plain ops (tf.batchNorm has no
 * gradient). The gradient is written by hand, dx = r·g − x·r³·mean(g·x) with g = dy·w: the
 * stock one runs ~15 ops and fills a ones tensor of x's size for mean's gradient.
 */
export class RMSNorm implements Norm {
  constructor(readonly name: string, readonly weight: tf.Tensor1D, readonly eps: number) {}

  forward(x: tf.Tensor2D): tf.Tensor2D {
    const w = this.weight;
    // w gets a gradient only when it trains; a frozen one stays out of the op.
    const trains = w instanceof tf.Variable && w.trainable;
    const f = tf.customGrad((...args) => {
      const [xx, save] = [args[0] as tf.Tensor2D, args[args.length - 1] as tf.GradSaveFunc];
      const r = xx.square().mean(-1, true).add(this.eps).rsqrt();
      save([xx, r]);
      return {
        value: xx.mul(r).mul(w),
        gradFunc: (dy, saved) => {
          const [sx, sr] = saved as [tf.Tensor2D, tf.Tensor2D];
          const g = (dy as tf.Tensor2D).mul(w);
          const dx = g.mul(sr).sub(sx.mul(g.mul(sx).mean(-1, true).mul(sr.pow(3))));
          return trains ? [dx, (dy as tf.Tensor2D).mul(sx.mul(sr)).sum(0)] : [dx];
        },
      };
    });
    return (trains ? f(x, w) : f(x)) as tf.Tensor2D;
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
