import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import type { ForwardContext } from '../src/base/context.js';
import { Linear } from '../src/base/linear.js';
import { loadBase } from '../src/base/load.js';
import { lmLoss } from '../src/base/loss.js';
import { SwiGLU } from '../src/base/mlp.js';
import { Rng } from '../src/base/rng.js';
import { logprobs } from '../src/base/scoring.js';
import { RouterLosses, type RouterStats } from '../src/moe/moe-losses.js';
import {
  collectRouterStats, computeAll, configureRouting, enableBalancingBias, maskExperts, MoEFFN, moeLayers, parseExpertMask, routerParams, routerStatsOf,
  updateBalancingBias, type SharedExpert,
} from '../src/moe/moe.js';
import { Router, sparsePlan, type RouterOptions } from '../src/moe/router.js';
// The Mixtral folders here load through src/base, which reads sparse layers with the layouts src/moe registers.
import '../src/moe/register.js';
import { MODEL_FIXTURES, maxAbsDiff } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

const D = 8;
const I = 6;

interface MoeSpec {
  E?: number;
  k?: number;
  seed?: number;
  router?: Partial<RouterOptions>;
  shared?: 'gated' | 'ungated';
}

function makeMoE(s: MoeSpec = {}): MoEFFN {
  const E = s.E ?? 4;
  const k = s.k ?? 2;
  const rng = new Rng(s.seed ?? 1);
  const lin = (name: string, inF: number, outF: number, std: number) =>
    new Linear(name, tf.tensor2d(rng.normalArray(inF * outF, std), [inF, outF]), null, false);
  const mlp = (p: string) => new SwiGLU(lin(`${p}.w1`, D, I, 0.5), lin(`${p}.w3`, D, I, 0.5), lin(`${p}.w2`, I, D, 0.5));
  const router = new Router(lin('m.gate', D, E, 0.8), {
    experts: E, topK: k, normTopK: true, mode: 'token-choice', capacityFactor: null, jitter: 0, ...s.router,
  });
  const experts = Array.from({ length: E }, (_, e) => mlp(`m.experts.${e}`));
  const shared: SharedExpert[] = s.shared ? [{ mlp: mlp('m.shared_expert'), gate: s.shared === 'gated' ? lin('m.shared_expert_gate', D, 1, 0.5) : null }] : [];
  const losses = new RouterLosses(1, { experts: E, topK: k, auxCoef: 0, zCoef: 0, normalise: false });
  return new MoEFFN(0, 'm', router, experts, shared, 'per-expert', losses);
}

/** Token masks made by ctxOf, freed after each test (which must leave no other tensor behind). */
const masks: tf.Tensor[] = [];
afterEach(() => {
  tf.dispose(masks.splice(0));
  expect(tf.memory().numTensors).toBe(0);
});

function ctxOf(real: number[], training = false, rng: Rng | null = null): ForwardContext {
  const tokenMask = tf.keep(tf.tensor2d(Float32Array.from(real), [real.length, 1]));
  masks.push(tokenMask);
  return { batch: 1, seq: real.length, training, rng, aux: [], tokenMask, realTokens: Float32Array.from(real) };
}

function inputs(N: number, seed = 7): tf.Tensor2D {
  return tf.tensor2d(new Rng(seed).normalArray(N * D, 1), [N, D]);
}

const pattern = (N: number, pads: number[] = []) => Array.from({ length: N }, (_, n) => (pads.includes(n) ? 0 : 1));

/**
 * y computed on the host from the definition (REFERENCE.md §4), independent of Router: p =
 * softmax over the unmasked experts in float64, top-k of p + bias, weights from the unbiased p.
 */
function hostReference(moe: MoEFFN, x: tf.Tensor2D, real: number[], bias?: number[]): number[][] {
  const { experts: E, topK: k, normTopK } = moe.router.opts;
  const ctx = ctxOf(real);
  const z = tf.tidy(() => moe.router.gate.forward(x, ctx).arraySync());
  const outs = moe.experts.map((e) => tf.tidy(() => e.forward(x, ctx).arraySync()));
  const shared = moe.shared.map((s) => tf.tidy(() => {
    const out = s.mlp.forward(x, ctx);
    return (s.gate ? out.mul(tf.sigmoid(s.gate.forward(x, ctx))) : out).arraySync() as number[][];
  }));
  return z.map((row, n) => {
    const y = new Array<number>(D).fill(0);
    if (!real[n]) return y;
    const live = row.map((_, e) => !moe.router.masked.has(e));
    const max = Math.max(...row.filter((_, e) => live[e]));
    const ex = row.map((v, e) => (live[e] ? Math.exp(v - max) : 0));
    const sum = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / sum);
    const order = [...Array(E).keys()].filter((e) => live[e]).sort((a, b) => p[b]! + (bias?.[b] ?? 0) - p[a]! - (bias?.[a] ?? 0));
    const chosen = order.slice(0, k);
    const total = normTopK ? chosen.reduce((a, e) => a + p[e]!, 0) : 1;
    for (const e of chosen) for (let d = 0; d < D; d++) y[d]! += (p[e]! / total) * outs[e]![n]![d]!;
    for (const s of shared) for (let d = 0; d < D; d++) y[d]! += s[n]![d]!;
    return y;
  });
}

/** The router's decision as host data (route itself runs inside a tidy, like a forward pass). */
interface HostRouting {
  choices: Int32Array | null;
  tokens: Int32Array;
  counts: Int32Array;
  dropped: number;
  droppedTokens: number;
  probs: number[][];
  weights: number[];
}

function routeOf(moe: MoEFFN, x: tf.Tensor2D, real: number[]): HostRouting {
  let out: HostRouting | null = null;
  tf.tidy(() => {
    const r = moe.router.route(x, ctxOf(real), Float32Array.from(real));
    const { tokens, counts, weights } = sparsePlan(r);
    // Padding rows chose nothing.
    const k = moe.router.opts.topK;
    const choices = r.choices ? Int32Array.from(r.choices.dataSync(), (e, i) => (real[Math.floor(i / k)] ? e : -1)) : null;
    const made = choices ? choices.filter((e) => e >= 0).length : tokens.length;
    const served = new Set(tokens);
    const droppedTokens = real.filter((m, n) => m && !served.has(n)).length;
    out = { choices, tokens, counts, dropped: made - tokens.length, droppedTokens, probs: r.probs.arraySync(), weights: weights.arraySync() };
  });
  return out!;
}

/** The layer's statistics of the pass `run` makes (collected for that pass only). */
async function statsOfRun(moe: MoEFFN, x: tf.Tensor2D, ctx: ForwardContext): Promise<{ y: number[][]; stats: RouterStats }> {
  moe.stats.on = true;
  try {
    const y = run(moe, x, ctx);
    return { y, stats: (await moe.stats.read())! };
  } finally {
    moe.stats.on = false;
    moe.stats.clear();
  }
}

function run(moe: MoEFFN, x: tf.Tensor2D, ctx: ForwardContext): number[][] {
  return tf.tidy(() => moe.forward(x, ctx).arraySync());
}

function maxDiff(a: number[][], b: number[][]): number {
  return Math.max(...a.map((row, i) => maxAbsDiff(row, b[i]!)));
}

describe('sparse dispatch', () => {
  it.each([
    ['renormalised top-2', {}],
    ['top-2 without renormalisation', { router: { normTopK: false } }],
    ['top-1, 6 experts, gated shared expert', { E: 6, k: 1, shared: 'gated' }],
    ['top-3 with an ungated (DeepSeek) shared expert', { k: 3, shared: 'ungated' }],
  ] as [string, MoeSpec][])('%s: equals the definition and the compute-all reference', (_, spec) => {
    const moe = makeMoE(spec);
    const real = pattern(13, [0, 1, 12]);
    const x = inputs(13);
    const ctx = ctxOf(real);
    const got = run(moe, x, ctx);
    const realRows = (rows: number[][]) => rows.filter((_, n) => real[n]);
    expect(maxDiff(realRows(got), realRows(hostReference(moe, x, real)))).toBeLessThan(1e-5);
    const all = tf.tidy(() => computeAll(moe, x, ctx).arraySync());
    expect(maxDiff(realRows(got), realRows(all))).toBeLessThan(1e-5);
    // Padding reaches no routed expert (shared experts run on every row).
    if (!spec.shared) expect(got[0]).toEqual(new Array(D).fill(0));
    moe.dispose();
    x.dispose();
  });

  it('dropless: every real token reaches its k experts, padding none', async () => {
    const moe = makeMoE({ E: 4, k: 2 });
    const real = pattern(40, [3, 17, 39]);
    const x = inputs(40);
    const ctx = ctxOf(real);
    const r = routeOf(moe, x, real);
    const perToken = new Array<number>(40).fill(0);
    for (const n of r.tokens) perToken[n]! += 1;
    expect(perToken).toEqual(real.map((m) => 2 * m));
    expect(r.counts.reduce((a, b) => a + b, 0)).toBe(2 * 37);
    expect([r.dropped, r.droppedTokens]).toEqual([0, 0]);
    const { stats } = await statsOfRun(moe, x, ctx);
    expect(stats.tokens).toBe(37);
    expect(stats.dropped).toBe(0);
    expect(stats.load.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    // An all-padding pass reaches no expert and reports nothing routed.
    const pads = pattern(3, [0, 1, 2]);
    const x3 = inputs(3);
    const empty = await statsOfRun(moe, x3, ctxOf(pads, true));
    expect(empty.y).toEqual([0, 1, 2].map(() => new Array(D).fill(0)));
    expect(empty.stats.tokens).toBe(0);
    expect(empty.stats.load).toEqual([0, 0, 0, 0]);
    x3.dispose();
    moe.dispose();
    x.dispose();
  });

  it('with a capacity factor, overflow choices are dropped and counted; fully dropped tokens get 0 (residual only)', async () => {
    const moe = makeMoE({ E: 4, k: 2, router: { capacityFactor: 0.5 } });
    const real = pattern(40, [5]);
    const x = inputs(40, 3);
    const ctx = ctxOf(real);
    const r = routeOf(moe, x, real);
    const C = Math.ceil(((2 * 39) / 4) * 0.5);
    const chosen = new Array<number>(4).fill(0);
    for (const e of r.choices!) if (e >= 0) chosen[e]! += 1;
    const overflow = chosen.reduce((a, c) => a + Math.max(0, c - C), 0);
    expect(overflow).toBeGreaterThan(0);
    expect(r.dropped).toBe(overflow);
    expect(Math.max(...r.counts)).toBeLessThanOrEqual(C);
    const { y, stats } = await statsOfRun(moe, x, ctx);
    const zeroRows = y.filter((row, n) => real[n] && row.every((v) => v === 0)).length;
    expect(stats.dropped).toBe(overflow);
    expect(stats.droppedTokens).toBe(zeroRows);
    expect(r.droppedTokens).toBe(zeroRows);
    expect(zeroRows).toBeGreaterThan(0);
    moe.dispose();
    x.dispose();
  });

  it('expert choice: each expert takes its top-C real tokens, weighted by p', () => {
    const moe = makeMoE({ E: 4, k: 2, router: { mode: 'expert-choice', capacityFactor: 1 } });
    const real = pattern(12, [0]);
    const x = inputs(12, 5);
    const ctx = ctxOf(real);
    const r = routeOf(moe, x, real);
    const C = Math.ceil(11 / 4);
    expect([...r.counts]).toEqual([C, C, C, C]);
    expect(r.tokens.includes(0)).toBe(false);
    const p = r.probs;
    const w = r.weights;
    let at = 0;
    for (let e = 0; e < 4; e++) {
      const mine = [...r.tokens.slice(at, at + C)];
      const best = [...Array(12).keys()].filter((n) => real[n]).sort((a, b) => p[b]![e]! - p[a]![e]!).slice(0, C);
      expect(mine.sort()).toEqual(best.sort());
      for (let i = 0; i < C; i++, at++) expect(w[at]).toBeCloseTo(p[r.tokens[at]!]![e]!, 6);
    }
    moe.dispose();
    x.dispose();
  });
});

describe('routing options', () => {
  it('the balancing bias changes which experts are selected, never their weights', () => {
    const moe = makeMoE({ E: 4, k: 2 });
    const real = pattern(16);
    const x = inputs(16, 11);
    const ctx = ctxOf(real);
    const before = routeOf(moe, x, real);
    // Push the least chosen expert into every token's top 2.
    const chosen = new Array<number>(4).fill(0);
    for (const e of before.choices!) chosen[e]! += 1;
    const rare = chosen.indexOf(Math.min(...chosen));
    const bias = [0, 0, 0, 0];
    bias[rare] = 2;
    const b = moe.router.enableBalancingBias();
    tf.tidy(() => b.assign(tf.tensor1d(bias)));
    const after = routeOf(moe, x, real);
    expect(after.counts[rare]).toBe(16);
    expect(after.choices).not.toEqual(before.choices);
    expect(maxDiff(run(moe, x, ctx), hostReference(moe, x, real, bias))).toBeLessThan(1e-5);
    moe.dispose();
    x.dispose();
  });

  it('updateBias moves b_e by γ·sign(mean load − load_e) from the training passes since the last update', async () => {
    const moe = makeMoE({ E: 4, k: 1 });
    moe.router.enableBalancingBias();
    const real = pattern(20);
    const x = inputs(20, 2);
    const train = ctxOf(real, true);
    const load = (await statsOfRun(moe, x, train)).stats.load.map((l) => l * 20);
    run(moe, x, ctxOf(real, false)); // inference passes do not count
    moe.router.updateBias(0.1);
    const b = moe.router.bias!.arraySync() as number[];
    b.forEach((v, e) => expect(v).toBeCloseTo(0.1 * Math.sign(5 - load[e]!), 6));
    moe.router.updateBias(0.1); // nothing counted since: no change
    expect(moe.router.bias!.arraySync()).toEqual(b);
    moe.dispose();
    x.dispose();
  });

  it('masking renormalises over the remaining experts', () => {
    for (const normTopK of [true, false]) {
      const moe = makeMoE({ E: 5, k: 2, router: { normTopK } });
      const real = pattern(10);
      const x = inputs(10, 4);
      const ctx = ctxOf(real);
      moe.maskExperts([1, 3]);
      const r = routeOf(moe, x, real);
      expect(r.counts[1]! + r.counts[3]!).toBe(0);
      const p = r.probs;
      for (const row of p) {
        expect(row[1]! + row[3]!).toBe(0);
        expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      }
      expect(maxDiff(run(moe, x, ctx), hostReference(moe, x, real))).toBeLessThan(1e-5);
      expect(() => moe.maskExperts([0, 1, 2, 3])).toThrow(/leaves 1, fewer than the 2/);
      moe.maskExperts([]);
      expect(moe.router.masked.size).toBe(0);
      moe.dispose();
      x.dispose();
    }
  });

  it('model-level masks: global and LAYER:EXPERT entries, atomic on error', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), { warn: () => {} });
    const batch = { ids: Int32Array.from([5, 9, 13, 17, 21, 25]), batch: 1, seq: 6 };
    const plain = await logprobs(model, batch);
    expect(parseExpertMask('2, 0:3')).toEqual([{ layer: null, expert: 2 }, { layer: 0, expert: 3 }]);
    maskExperts(model, parseExpertMask('2,0:3'));
    expect(moeLayers(model).map((m) => [...m.router.masked].sort())).toEqual([[2, 3], [2]]);
    expect(maxAbsDiff((await logprobs(model, batch))[0]![5]!, plain[0]![5]!)).toBeGreaterThan(1e-3);
    expect(() => maskExperts(model, parseExpertMask('1:0,1:1,1:3'))).toThrow(/model\.layers\.1\.block_sparse_moe: masking 3 of 4/);
    expect(moeLayers(model).map((m) => [...m.router.masked].sort())).toEqual([[2, 3], [2]]);
    expect(() => maskExperts(model, parseExpertMask('5:1'))).toThrow(/layer 5 has no sparse MoE FFN/);
    expect(() => parseExpertMask('a:1')).toThrow(/expected EXPERT or LAYER:EXPERT/);
    maskExperts(model, []);
    expect(maxAbsDiff((await logprobs(model, batch))[0]![5]!, plain[0]![5]!)).toBe(0);
    model.dispose();
  });

  it('configureRouting switches every layer; bad settings are refused naming the router', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), { warn: () => {} });
    const batch = { ids: Int32Array.from({ length: 24 }, (_, i) => 1 + ((i * 11) % 60)), batch: 2, seq: 12 };
    collectRouterStats(model, true);
    configureRouting(model, { capacityFactor: 0.5 });
    await logprobs(model, batch);
    expect((await routerStatsOf(model)).every((s) => s.dropped > 0)).toBe(true);
    configureRouting(model, { capacityFactor: null });
    await logprobs(model, batch);
    expect((await routerStatsOf(model)).map((s) => s.dropped)).toEqual([0, 0]);
    expect(() => configureRouting(model, { capacityFactor: -1 })).toThrow(/router model\.layers\.0\.block_sparse_moe\.gate: capacity factor must be positive/);
    model.dispose();
  });

  it('gradients stay finite with a masked expert and padding', () => {
    const moe = makeMoE({ E: 4, k: 2 });
    moe.maskExperts([0]);
    const v = tf.variable(moe.router.gate.weightT);
    moe.router.gate.weightT.dispose();
    moe.router.gate.weightT = v as unknown as tf.Tensor2D;
    const x = inputs(6);
    const g = tf.tidy(() => tf.variableGrads(() => moe.forward(x, ctxOf(pattern(6, [0, 5]), true)).square().sum() as tf.Scalar, [v]).grads[v.name]!.dataSync());
    expect(g.every(Number.isFinite)).toBe(true);
    expect(g.some((e) => e !== 0)).toBe(true);
    moe.dispose();
    x.dispose();
  });

  it('noisy top-k and input jitter act only in training with an rng', () => {
    const noisy = makeMoE();
    expect(noisy.router.enableNoisyTopK().name).toBe('m.gate_noise');
    const jittery = makeMoE({ router: { jitter: 0.2 } });
    const real = pattern(12);
    const x = inputs(12, 9);
    for (const moe of [noisy, jittery]) {
      const clean = hostReference(moe, x, real);
      expect(maxDiff(run(moe, x, ctxOf(real)), clean)).toBeLessThan(1e-5);
      expect(maxDiff(run(moe, x, ctxOf(real, true)), clean)).toBeLessThan(1e-5);
      expect(maxDiff(run(moe, x, ctxOf(real, true, new Rng(3))), clean)).toBeGreaterThan(1e-3);
      moe.dispose();
    }
    x.dispose();
  });
});

describe('gradients', () => {
  /** Central differences on a few entries of each variable, against tf.variableGrads. */
  function checkGrads(moe: MoEFFN, vars: Map<string, tf.Variable>, loss: () => tf.Scalar, choices: () => Int32Array): void {
    const { value, grads } = tf.variableGrads(loss, [...vars.values()]);
    const ref = choices();
    const h = 1e-3;
    const rng = new Rng(5);
    for (const [name, v] of vars) {
      const g = grads[v.name]!.dataSync();
      const flat = v.dataSync().slice();
      let checked = 0;
      for (let t = 0; t < 8; t++) {
        const i = rng.int(flat.length);
        const at = (delta: number) => {
          const w = flat.slice();
          w[i]! += delta;
          tf.tidy(() => v.assign(tf.tensor(w, v.shape)));
          return tf.tidy(() => loss().dataSync()[0]!);
        };
        const [up, down] = [at(h), at(-h)];
        tf.tidy(() => v.assign(tf.tensor(flat, v.shape)));
        const numeric = (up - down) / (2 * h);
        expect(Math.abs(numeric - g[i]!), `${name}[${i}]: numeric ${numeric} analytic ${g[i]}`).toBeLessThan(3e-3 + 2e-2 * Math.abs(g[i]!));
        if (g[i] !== 0) checked++;
      }
      expect(checked, name).toBeGreaterThan(2);
      expect(choices()).toEqual(ref);
    }
    tf.dispose(Object.values(grads));
    value.dispose();
  }

  it.each([true, false])('router and expert gradients pass a finite-difference check (normTopK %s), aux and z-loss included', (normTopK) => {
    const moe = makeMoE({ E: 4, k: 2, seed: 3, router: { normTopK } });
    moe.losses.opts = { ...moe.losses.opts, auxCoef: 0.5, zCoef: 0.1 };
    const vars = new Map<string, tf.Variable>();
    for (const l of [moe.router.gate, moe.experts[0]!.gate, moe.experts[2]!.down]) {
      const v = tf.variable(l.weightT);
      l.weightT.dispose();
      l.weightT = v as unknown as tf.Tensor2D;
      vars.set(l.name, v);
    }
    const real = pattern(9, [4]);
    const x = inputs(9, 12);
    const target = inputs(9, 13);
    const loss = () => {
      const ctx = ctxOf(real, true);
      const y = moe.forward(x, ctx);
      expect(ctx.aux.map((a) => a.name)).toEqual(['router_aux_loss', 'router_z_loss']);
      return ctx.aux.reduce((acc, a) => acc.add(a.value), y.mul(target).sum()) as tf.Scalar;
    };
    const choices = () => routeOf(moe, x, real).choices!;
    checkGrads(moe, vars, loss, choices);
    moe.dispose();
    tf.dispose([x, target]);
  });
});

describe('training passes', () => {
  it('numTensors stays flat across repeated train-like steps (router update, aux losses, balancing bias)', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), { warn: () => {} });
    const params = routerParams(model);
    expect([...params.keys()]).toEqual(['model.layers.0.block_sparse_moe.gate.weight_t', 'model.layers.1.block_sparse_moe.gate.weight_t']);
    const buffers = enableBalancingBias(model);
    expect([...buffers.keys()]).toEqual(['model.layers.0.block_sparse_moe.gate.e_score_correction_bias', 'model.layers.1.block_sparse_moe.gate.e_score_correction_bias']);
    const losses = moeLayers(model)[0]!.losses;
    losses.opts = { ...losses.opts, zCoef: 1e-3 };
    const rng = new Rng(1);
    const ids = Int32Array.from({ length: 16 }, (_, i) => 3 + ((i * 7) % 50));
    const batch = { ids, targets: Int32Array.from(ids, (v) => (v + 1) % 64), lossMask: new Float32Array(16).fill(1), batch: 2, seq: 8 };
    const counts: number[] = [];
    const lossValues: number[] = [];
    collectRouterStats(model, true);
    for (let step = 0; step < 5; step++) {
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => lmLoss(model, batch, { training: true, rng }), [...params.values()]);
        for (const v of params.values()) v.assign(v.sub(grads[v.name]!.mul(0.5)));
        lossValues.push(value.dataSync()[0]!);
      });
      updateBalancingBias(model, 1e-3);
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts).size).toBe(1);
    expect(lossValues[4]).toBeLessThan(lossValues[0]!);
    expect((await routerStatsOf(model)).map((s) => s.layer)).toEqual([0, 1]);
    for (const s of await routerStatsOf(model)) {
      expect(s.tokens).toBe(16);
      expect(s.entropy).toBeGreaterThan(0);
      expect(s.entropy).toBeLessThan(Math.log(4));
    }
    model.dispose();
    for (const b of buffers.values()) expect(b.isDisposed).toBe(true);
    expect(tf.memory().numTensors).toBe(0);
  });
});
