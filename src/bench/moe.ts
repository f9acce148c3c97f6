import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { Linear } from '../base/linear.js';
import { SwiGLU } from '../base/mlp.js';
import { Rng } from '../base/rng.js';
import { RouterLosses } from '../moe/moe-losses.js';
import { computeAll, MoEFFN } from '../moe/moe.js';
import { Router } from '../moe/router.js';

export interface BenchMoeOptions {
  experts: number;
  topK: number;
  /** Rows through the FFN (batch × sequence). */
  tokens: number;
  hidden: number;
  /** Each expert's intermediate size. */
  ffn: number;
  /** Timed repetitions after one warm-up; the median is reported. */
  repeats: number;
}

export interface BenchMoeResult {
  sparse_forward_ms: number;
  dense_forward_ms: number;
  /** sparse / dense; the ideal is k/E plus routing and gather overhead. */
  forward_ratio: number;
  sparse_train_ms: number;
  dense_train_ms: number;
  train_ratio: number;
  backend: string;
}

/**
 * The sparse MoE FFN (dropless gather / segment-sum dispatch) against computeAll, which runs
 * every expert on every token and combines with the dense weight matrix, on the same random
 * layer and input. "train" is forward plus the gradients of all expert and router weights.
 */
export function benchMoe(o: BenchMoeOptions): BenchMoeResult {
  const { experts: E, topK, tokens: N, hidden: D, ffn: I } = o;
  const rng = new Rng(0);
  const weight = (name: string, inF: number, outF: number): Linear =>
    new Linear(name, tf.variable(tf.tensor2d(rng.normalArray(inF * outF, 1 / Math.sqrt(inF)), [inF, outF]), true), null, false);
  const router = new Router(weight('bench.gate', D, E), { experts: E, topK, normTopK: true, mode: 'token-choice', capacityFactor: null, jitter: 0 });
  const ffns = Array.from({ length: E }, (_, e) => new SwiGLU(weight(`bench.experts.${e}.w1`, D, I), weight(`bench.experts.${e}.w3`, D, I), weight(`bench.experts.${e}.w2`, I, D)));
  const losses = new RouterLosses(1, { experts: E, topK, auxCoef: 0, zCoef: 0, normalise: false });
  const moe = new MoEFFN(0, 'bench', router, ffns, [], 'per-expert', losses);
  const x = tf.tensor2d(rng.normalArray(N * D, 1), [N, D]);
  const mask = tf.ones([N, 1]) as tf.Tensor2D;
  const vars = moe.linears().map((l) => l.weightT as unknown as tf.Variable);
  const ctx = (training: boolean): ForwardContext => ({ batch: 1, seq: N, training, tokenMask: mask, aux: [], rng: null });
  const sparse = (c: ForwardContext): tf.Tensor2D => moe.forward(x, c);
  const dense = (c: ForwardContext): tf.Tensor2D => computeAll(moe, x, c);
  const forward = (f: typeof sparse) => () => tf.tidy(() => void f(ctx(false)).dataSync());
  // Reading every gradient makes sure lazy backends have finished them all.
  const train = (f: typeof sparse) => () =>
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() => f(ctx(true)).square().mean() as tf.Scalar, vars);
      tf.addN(Object.values(grads).map((g) => g.sum())).dataSync();
    });
  try {
    const t = {
      sf: median(o.repeats, forward(sparse)),
      df: median(o.repeats, forward(dense)),
      st: median(o.repeats, train(sparse)),
      dt: median(o.repeats, train(dense)),
    };
    return {
      sparse_forward_ms: t.sf,
      dense_forward_ms: t.df,
      forward_ratio: t.sf / t.df,
      sparse_train_ms: t.st,
      dense_train_ms: t.dt,
      train_ratio: t.st / t.dt,
      backend: tf.getBackend(),
    };
  } finally {
    moe.dispose();
    x.dispose();
    mask.dispose();
  }
}

/** Median wall time of `repeats` runs after one untimed warm-up. */
function median(repeats: number, fn: () => void): number {
  fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}
