import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import type { Linear } from './linear.js';

/** A block's feed-forward part; the sparse MoE FFN implements the same interface. */
export interface FFN {
  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D;
  linears(): Linear[];
  dispose(): void;
}

/** Llama MLP: down(silu(gate(x)) ⊙ up(x)). */
export class SwiGLU implements FFN {
  constructor(readonly gate: Linear, readonly up: Linear, readonly down: Linear) {}

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    return this.down.forward(siluMul(this.gate.forward(x, ctx), this.up.forward(x, ctx)), ctx);
  }

  linears(): Linear[] {
    return [this.gate, this.up, this.down];
  }

  dispose(): void {
    for (const l of this.linears()) l.dispose();
  }
}

/**
 * silu(g) ⊙ u = g·σ(g)·u, with a hand-written gradient: du = dy·h, dg = dy·u·(s + h·(1 − s)) for
 * s = σ(g), h = g·s. Six [N, F] kernels where tfjs' chain rule takes eight, plus four casts.
 */
export function siluMul<T extends tf.Tensor>(g: T, u: T): T {
  const f = tf.customGrad((gg, uu, save) => {
    const s = (gg as tf.Tensor).sigmoid();
    const h = (gg as tf.Tensor).mul(s);
    (save as tf.GradSaveFunc)([uu as tf.Tensor, s, h]);
    return {
      value: h.mul(uu as tf.Tensor),
      gradFunc: (dy, saved) => {
        const [su, ss, sh] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const dh = (dy as tf.Tensor).mul(su);
        return [dh.mul(ss.add(sh.mul(tf.sub(1, ss)))), (dy as tf.Tensor).mul(sh)];
      },
    };
  });
  return f(g, u) as T;
}

/** GPT-2 MLP: c_proj(gelu_new(c_fc(x))). */
export class GeluMLP implements FFN {
  constructor(readonly fc: Linear, readonly proj: Linear) {}

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    return this.proj.forward(geluNew(this.fc.forward(x, ctx)), ctx);
  }

  linears(): Linear[] {
    return [this.fc, this.proj];
  }

  dispose(): void {
    for (const l of this.linears()) l.dispose();
  }
}

/**
 * gelu_new (tanh approximation): 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), written with the
 * identity 0.5(1 + tanh z) = sigmoid(2z) and x·x·x, both much cheaper than tanh and pow on WASM.
 */
export function geluNew<T extends tf.Tensor>(x: T): T {
  const c = 2 * Math.sqrt(2 / Math.PI);
  const inner = x.add(x.mul(x).mul(x).mul(0.044715)).mul(c);
  return x.mul(inner.sigmoid()) as T;
}
