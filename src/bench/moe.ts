import * as tf from '@tensorflow/tfjs';
import { backendReport, type BackendReport } from '../base/backend.js';
import type { ForwardContext } from '../base/context.js';
import { readHost } from '../base/host.js';
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
}

/**
 * The sparse MoE FFN (dropless gather / segment-sum dispatch) against computeAll, which runs
 * every expert on every token and combines with the dense weight matrix, on the same random
 * layer and input. "train" is forward plus the gradients of all expert and router weights.
 * On webgpu the model's own path is the dense one (see MoEFFN), so both columns time it.
 */
export async function benchMoe(o: BenchMoeOptions): Promise<BenchMoeResult & BackendReport> {
  const { experts: E, topK, tokens: N, hidden: D, ffn: I } = o;
  const rng = new Rng(0);
  const weight = (name: string, inF: number, outF: number): Linear =>
    new Linear(name, tf.variable(tf.tensor2d(rng.normalArray(inF * outF, 1 / Math.sqrt(inF)), [inF, outF]), true), null, false);
  const router = new Router(weight('bench.gate', D, E), { experts: E, topK, normTopK: true, mode: 'token-choice', capacityFactor: null, jitter: 0 });
  const ffns = Array.from({ length: E }, (_, e) => new SwiGLU(weight(`bench.experts.${e}.w1`, D, I), weight(`bench.experts.${e}.w3`, D, I), weight(`bench.experts.${e}.w2`, I, D)));
  const losses = new RouterLosses(1, { experts: E, topK, auxCoef: 0, zCoef: 0, normalise: false });
  const moe = new MoEFFN(0, 'bench', router, ffns, [], 'per-expert', losses);
  const x = tf.tensor2d(rng.normalArray(N * D, 1), [N, D]);
  const realTokens = new Float32Array(N).fill(1);
  const mask = tf.tensor2d(realTokens, [N, 1]);
  const vars = moe.linears().map((l) => l.trainableWeight());
  const ctx = (training: boolean): ForwardContext => ({ batch: 1, seq: N, training, tokenMask: mask, realTokens, aux: [], rng: null });
  const sparse = (c: ForwardContext): tf.Tensor2D => moe.forward(x, c);
  const dense = (c: ForwardContext): tf.Tensor2D => computeAll(moe, x, c);
  const forward = (f: typeof sparse) => () => readHost(() => f(ctx(false)));
  // Reading every gradient makes sure lazy backends have finished them all.
  const train = (f: typeof sparse) => () =>
    readHost(() => {
      const { grads } = tf.variableGrads(() => f(ctx(true)).square().mean() as tf.Scalar, vars);
      return tf.addN(Object.values(grads).map((g) => g.sum()));
    });
  try {
    const t = {
      sf: await median(o.repeats, forward(sparse)),
      df: await median(o.repeats, forward(dense)),
      st: await median(o.repeats, train(sparse)),
      dt: await median(o.repeats, train(dense)),
    };
    return {
      sparse_forward_ms: t.sf,
      dense_forward_ms: t.df,
      forward_ratio: t.sf / t.df,
      sparse_train_ms: t.st,
      dense_train_ms: t.dt,
      train_ratio: t.st / t.dt,
      ...backendReport(),
    };
  } finally {
    moe.dispose();
    x.dispose();
    mask.dispose();
  }
}

/** Median wall time of `repeats` runs after one untimed warm-up. */
async function median(repeats: number, fn: () => Promise<unknown>): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}
