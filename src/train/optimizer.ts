import * as tf from '@tensorflow/tfjs';
import { readF32 } from '../base/host.js';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled decay: each update first does p -= lr · weightDecay · p. */
  weightDecay?: number;
}

export interface AdamWState {
  /** Updates taken so far; the bias corrections depend on it. */
  step: number;
  /** `<name>.exp_avg` and `<name>.exp_avg_sq` for every parameter, each shaped like it. */
  moments: Record<string, Float32Array>;
}

/**
 * AdamW (Loshchilov & Hutter) with PyTorch's update order and defaults:
 *   p ← p·(1 − lr·wd);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
 *   p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
 * One step counter serves all parameters; a parameter that gets no gradient in an update is
 * left alone (moments included), as PyTorch does for a None grad.
 */
export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private t = 0;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  /** Made once: a JS number passed to an op becomes a fresh tensor on every call. */
  private readonly consts: { beta1: tf.Scalar; beta2: tf.Scalar; eps: tf.Scalar };

  constructor(readonly params: Map<string, tf.Variable>, opts: AdamWOptions = {}) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    for (const [name, p] of params) {
      if (p.dtype !== 'float32') throw new Error(`parameter '${name}' is ${p.dtype}; AdamW trains float32 only`);
      this.m.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
      this.v.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
    }
    this.consts = {
      beta1: tf.keep(tf.scalar(this.beta1)),
      beta2: tf.keep(tf.scalar(this.beta2)),
      eps: tf.keep(tf.scalar(this.eps)),
    };
  }

  get step(): number {
    return this.t;
  }

  /**
   * One update at learning rate `lr`. `gradScale` multiplies every gradient; the trainer folds
   * the 1/k of accumulation and the clipping coefficient into it, saving one op per parameter.
   */
  apply(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
    this.t += 1;
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    tf.tidy(() => {
      const { beta1, beta2, eps } = this.consts;
      const c1 = tf.scalar((1 - this.beta1) * gradScale);
      const c2 = tf.scalar((1 - this.beta2) * gradScale * gradScale);
      const invSqrtBc2 = tf.scalar(1 / Math.sqrt(bc2));
      const stepSize = tf.scalar(lr / bc1);
      const decay = this.weightDecay > 0 ? tf.scalar(1 - lr * this.weightDecay) : null;
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) continue;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        m.assign(m.mul(beta1).add(g.mul(c1)));
        v.assign(v.mul(beta2).add(g.square().mul(c2)));
        const denom = v.sqrt().mul(invSqrtBc2).add(eps);
        const decayed = decay ? p.mul(decay) : p;
        p.assign(decayed.sub(m.div(denom).mul(stepSize)));
      }
    });
  }

  async state(): Promise<AdamWState> {
    const moments: Record<string, Float32Array> = {};
    for (const name of this.params.keys()) {
      moments[`${name}.exp_avg`] = await readF32(this.m.get(name)!);
      moments[`${name}.exp_avg_sq`] = await readF32(this.v.get(name)!);
    }
    return { step: this.t, moments };
  }

  /** Restore a `state()` exactly; everything is checked before anything is assigned. */
  load(s: AdamWState): void {
    if (!Number.isInteger(s.step) || s.step < 0) throw new Error(`optimizer step must be a non-negative integer, got ${s.step}`);
    for (const [name, p] of this.params) {
      for (const key of [`${name}.exp_avg`, `${name}.exp_avg_sq`]) {
        const data = s.moments[key];
        if (!data) throw new Error(`optimizer state has no '${key}'`);
        if (data.length !== p.size) throw new Error(`optimizer state '${key}' has ${data.length} values, parameter '${name}' has ${p.size}`);
      }
    }
    const known = new Set([...this.params.keys()].flatMap((n) => [`${n}.exp_avg`, `${n}.exp_avg_sq`]));
    const extra = Object.keys(s.moments).filter((k) => !known.has(k));
    if (extra.length) throw new Error(`optimizer state has moments for unknown parameters: ${extra.slice(0, 5).join(', ')}`);
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        this.m.get(name)!.assign(tf.tensor(s.moments[`${name}.exp_avg`]!, p.shape));
        this.v.get(name)!.assign(tf.tensor(s.moments[`${name}.exp_avg_sq`]!, p.shape));
      }
    });
    this.t = s.step;
  }

  /** Free the moments; the parameters belong to the caller. */
  dispose(): void {
    for (const x of [...this.m.values(), ...this.v.values()]) x.dispose();
    for (const c of Object.values(this.consts)) c.dispose();
  }
}
