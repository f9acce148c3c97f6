import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import type { ForwardContext } from '../src/base/context.js';
import { loadBalancingLoss, RouterLosses, routerLossPart, RouterStatsSlot, routerZLoss } from '../src/moe/moe-losses.js';

beforeAll(async () => {
  await initBackend();
});

afterEach(() => {
  expect(tf.memory().numTensors).toBe(0);
});

const E = 4;
const K = 2;

/** N tokens whose choices cycle through the experts evenly: token n picks n mod E and n+1 mod E. */
function balancedChoices(N: number): Int32Array {
  return Int32Array.from({ length: N * K }, (_, i) => (Math.floor(i / K) + (i % K)) % E);
}

/** Choices (−1: none) as the router hands them over: counts per expert, on the device. */
function chosen(choices: Int32Array): tf.Tensor1D {
  const c = new Float32Array(E);
  for (const e of choices) if (e >= 0) c[e]! += 1;
  return tf.tensor1d(c);
}

/** A pass's token mask, on the device and the host. */
function mask(real: number[]): Pick<ForwardContext, 'tokenMask' | 'realTokens'> {
  const realTokens = Float32Array.from(real);
  return { tokenMask: tf.tensor2d(realTokens, [real.length, 1]), realTokens };
}

function value(f: () => tf.Scalar): number {
  return tf.tidy(() => f().dataSync()[0]!);
}

describe('load-balancing loss (HF convention)', () => {
  it('equals k at perfect balance, and 1 normalised', () => {
    const got = tf.tidy(() => {
      const logits = tf.zeros([8, E]) as tf.Tensor2D;
      const part = routerLossPart(logits, tf.softmax(logits), mask(new Array(8).fill(1)), chosen(balancedChoices(8)));
      return [loadBalancingLoss([part], E, K).dataSync()[0]!, loadBalancingLoss([part], E, K, true).dataSync()[0]!];
    });
    expect(got[0]).toBeCloseTo(K, 6);
    expect(got[1]).toBeCloseTo(1, 6);
  });

  it('is E·Σ f·P over all layers concatenated, and grows with imbalance', () => {
    tf.tidy(() => {
      const z1 = tf.tensor2d([[2, 0, 0, 0], [1, 1, 0, 0], [0, 3, 0, 1]]);
      const z2 = tf.tensor2d([[0, 0, 2, 0], [0, 0, 0, 1], [1, 0, 0, 2]]);
      const c1 = Int32Array.from([0, 1, 0, 1, 1, 3]);
      const c2 = Int32Array.from([2, 0, 3, 0, 3, 0]);
      const parts = [z1, z2].map((z, i) => routerLossPart(z, tf.softmax(z), mask([1, 1, 1]), chosen([c1, c2][i]!)));
      const p = tf.concat([tf.softmax(z1), tf.softmax(z2)]).arraySync() as number[][];
      const f = new Array<number>(E).fill(0);
      for (const e of [...c1, ...c2]) f[e]! += 1 / 6;
      const P = [0, 1, 2, 3].map((e) => p.reduce((a, row) => a + row[e]!, 0) / 6);
      const want = E * f.reduce((a, fe, e) => a + fe * P[e]!, 0);
      expect(loadBalancingLoss(parts, E, K).dataSync()[0]).toBeCloseTo(want, 5);
      expect(want).toBeGreaterThan(K);
    });
  });

  it('padding tokens change neither f nor P', () => {
    const [plain, padded] = tf.tidy(() => {
      const z = tf.tensor2d([[2, 0, 1, 0], [0, 1, 0, 0], [0, 3, 0, 1]]);
      const choices = Int32Array.from([0, 2, 1, 0, 1, 3]);
      const a = routerLossPart(z, tf.softmax(z), mask([1, 1, 1]), chosen(choices));
      // Two padding rows with wild logits, no choices (−1), mask 0.
      const zp = tf.concat([tf.tensor2d([[9, -9, 9, 0], [-5, 7, 0, 3]]), z]) as tf.Tensor2D;
      const cp = Int32Array.from([-1, -1, -1, -1, ...choices]);
      const b = routerLossPart(zp, tf.softmax(zp), mask([0, 0, 1, 1, 1]), chosen(cp));
      return [loadBalancingLoss([a], E, K).dataSync()[0]!, loadBalancingLoss([b], E, K).dataSync()[0]!];
    });
    expect(padded).toBeCloseTo(plain!, 6);
  });
});

describe('router z-loss', () => {
  it('is the mean over real tokens of (logsumexp z)²', () => {
    const rows = [[1, 2, 3, 4], [0, 0, 0, 0], [-1, 5, 2, 0]];
    const lse = rows.map((r) => Math.log(r.reduce((a, v) => a + Math.exp(v), 0)));
    const got = value(() => {
      const z = tf.tensor2d(rows);
      const part = routerLossPart(z, tf.softmax(z), mask([1, 0, 1]), null);
      return routerZLoss([part]);
    });
    expect(got).toBeCloseTo((lse[0]! ** 2 + lse[2]! ** 2) / 2, 5);
  });
});

describe('RouterLosses', () => {
  it('pushes the coefficient-scaled losses once every MoE layer of the pass has reported', () => {
    const group = new RouterLosses(2, { experts: E, topK: K, auxCoef: 0.5, zCoef: 0.01, normalise: false });
    tf.tidy(() => {
      const ctx: ForwardContext = { batch: 1, seq: 8, training: true, rng: null, aux: [], ...mask(new Array(8).fill(1)) };
      const logits = tf.zeros([8, E]) as tf.Tensor2D;
      const part = () => routerLossPart(logits, tf.softmax(logits), ctx, chosen(balancedChoices(8)));
      group.add(ctx, part());
      expect(ctx.aux).toEqual([]);
      group.add(ctx, part());
      const got = Object.fromEntries(ctx.aux.map((a) => [a.name, a.value.dataSync()[0]]));
      expect(got.router_aux_loss).toBeCloseTo(0.5 * K, 6);
      expect(got.router_z_loss).toBeCloseTo(0.01 * Math.log(E) ** 2, 6);
    });
  });

  it('leaves the balance loss out when only expert-choice layers reported', () => {
    const group = new RouterLosses(1, { experts: E, topK: K, auxCoef: 0.5, zCoef: 0, normalise: false });
    tf.tidy(() => {
      const ctx: ForwardContext = { batch: 1, seq: 2, training: true, rng: null, aux: [], ...mask([1, 1]) };
      const logits = tf.zeros([2, E]) as tf.Tensor2D;
      group.add(ctx, routerLossPart(logits, tf.softmax(logits), ctx, null));
      expect(ctx.aux).toEqual([]);
    });
  });
});

describe('router statistics', () => {
  it('report load shares, the layer aux, z-loss and entropy over real tokens, and drops', async () => {
    const slot = new RouterStatsSlot();
    slot.on = true;
    tf.tidy(() => {
      const logits = tf.tensor2d([0, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0], [3, E]);
      // Token 0 chose experts 0 and 1, token 2 chose 2 and 3, and expert 3 was over capacity.
      const served = tf.tensor2d([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], [3, E]);
      slot.record(3, { logits, probs: tf.fill([3, E], 0.25) as tf.Tensor2D, served, chosen: chosen(Int32Array.from([0, 1, -1, -1, 2, 3])) }, mask([1, 0, 1]));
    });
    const s = (await slot.read())!;
    slot.clear();
    expect(s.layer).toBe(3);
    expect(s.tokens).toBe(2);
    expect(s.load).toEqual([1 / 3, 1 / 3, 1 / 3, 0].map((v) => expect.closeTo(v, 6)));
    expect(s.aux).toBeCloseTo(K, 6);
    expect(s.zLoss).toBeCloseTo(Math.log(E) ** 2, 5);
    expect(s.entropy).toBeCloseTo(Math.log(E), 5);
    expect([s.dropped, s.droppedTokens]).toEqual([1, 0]);
  });

  it('record nothing unless on, and keep one pass on the device', async () => {
    const slot = new RouterStatsSlot();
    const pass = () => tf.tidy(() => {
      const logits = tf.zeros([2, E]) as tf.Tensor2D;
      slot.record(0, { logits, probs: tf.softmax(logits), served: tf.zeros([2, E]), chosen: null }, mask([1, 1]));
    });
    pass();
    expect(await slot.read()).toBeNull();
    slot.on = true;
    const before = tf.memory().numTensors;
    pass();
    pass();
    expect(tf.memory().numTensors).toBe(before + 1);
    expect((await slot.read())!.droppedTokens).toBe(2);
    slot.clear();
  });
});
