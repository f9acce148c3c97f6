import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { LoraAdapter } from '../src/adapters/adapter.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { lmLoss, type LmBatch } from '../src/base/loss.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { BALANCE_AUX } from '../src/gating/balance.js';
import { MoleComposition, ROUTING_AUX } from '../src/gating/composition.js';
import { TAU_MIN, type GateInit, type GateLevel, type Granularity } from '../src/gating/mole.js';
import { MODEL_FIXTURES, maxAbsDiff } from './helpers.js';
import { expertOut, gateWeights, host, installReference, logits, randomExpert, type Layout } from './mole-reference.js';

let model: CausalLM;
beforeAll(async () => {
  await initBackend();
  model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'));
});

const V = 96;
const NAMES = ['math', 'code', 'law'];
// Overlapping targets across both blocks, so some experts give a zero delta at some gated linears.
const TARGETS = [['q_proj', 'v_proj'], ['v_proj', 'down_proj'], ['q_proj', 'up_proj', 'down_proj']];
/** A sharp, non-uniform gate, so that weights (and their gradients) matter. */
const SHARP = { eStd: 0.5, tau: 0.7 };

const live: MoleComposition[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

function compose(targets: string[][], seed = 1): { comp: MoleComposition; experts: LoraAdapter[] } {
  const comp = new MoleComposition(model);
  const experts = NAMES.map((name, i) => randomExpert(model, name, targets[i]!, seed * 10 + i));
  for (const e of experts) comp.addExpert(e.name, e);
  live.push(comp);
  return { comp, experts };
}

function batchOf(rows: { ids: number[]; real: number[] }[]): TokenBatch {
  return {
    ids: Int32Array.from(rows.flatMap((r) => r.ids)),
    attentionMask: Uint8Array.from(rows.flatMap((r) => r.real)),
    batch: rows.length,
    seq: rows[0]!.ids.length,
  };
}

const LEFT_PADDED = batchOf([
  { ids: [0, 0, 5, 17, 33, 8], real: [0, 0, 1, 1, 1, 1] },
  { ids: [0, 12, 40, 3, 77, 61], real: [0, 1, 1, 1, 1, 1] },
]);
const RIGHT_PADDED = batchOf([
  { ids: [5, 17, 33, 8, 0, 0], real: [1, 1, 1, 1, 0, 0] },
  { ids: [12, 40, 3, 0, 0, 0], real: [1, 1, 1, 0, 0, 0] },
]);
const MIXED = batchOf([
  { ids: [0, 0, 5, 17, 33, 8], real: [0, 0, 1, 1, 1, 1] },
  { ids: [12, 40, 3, 77, 0, 0], real: [1, 1, 1, 1, 0, 0] },
  { ids: [61, 2, 19, 44, 9, 70], real: [1, 1, 1, 1, 1, 1] },
]);
const BATCHES: Record<string, TokenBatch> = { 'left-padded': LEFT_PADDED, 'right-padded': RIGHT_PADDED, mixed: MIXED };

/** Next-token targets; the loss skips padding and each row's last position. */
function lmBatch(batch: TokenBatch): LmBatch {
  const targets = Int32Array.from(batch.ids, (_, i) => batch.ids[i + 1] ?? 0);
  const lossMask = Float32Array.from(batch.attentionMask!, (m, i) => ((i + 1) % batch.seq === 0 ? 0 : m));
  return { ...batch, targets, lossMask };
}

/** Row b's real tokens alone, unpadded, and where they sit in the padded row. */
function realPart(batch: TokenBatch, b: number): { alone: TokenBatch; positions: number[] } {
  const T = batch.seq;
  const positions = [...Array(T).keys()].filter((t) => batch.attentionMask![b * T + t] === 1);
  const ids = Int32Array.from(positions, (t) => batch.ids[b * T + t]!);
  return { alone: { ids, attentionMask: new Uint8Array(ids.length).fill(1), batch: 1, seq: ids.length }, positions };
}

/** The composition's logits against the float64 reference of the same gate. */
function againstReference(comp: MoleComposition, experts: LoraAdapter[], batch: TokenBatch, mask?: number[][]): number {
  const got = logits(model, batch);
  comp.detach();
  const undo = installReference(model, { experts, gates: comp.gate, mask });
  const want = logits(model, batch);
  undo();
  comp.attach();
  return maxAbsDiff(got, want);
}

describe('prefix gate against the float64 reference', () => {
  const cases = (['layer', 'block'] as GateLevel[]).flatMap((level) => Object.keys(BATCHES).map((name) => [level, name] as const));
  it.each(cases)('per %s, %s batch', (level, name) => {
    const batch = BATCHES[name]!;
    const { comp, experts } = compose(TARGETS);
    comp.initGate({ level, granularity: 'token' }, new Rng(4), SHARP);
    const perToken = logits(model, batch);
    comp.initGate({ level, granularity: 'prefix' }, new Rng(4), SHARP);
    // Same e and τ, so the pooling alone moved the output: the comparison is not vacuous.
    expect(maxAbsDiff(logits(model, batch), perToken)).toBeGreaterThan(1e-3);
    expect(againstReference(comp, experts, batch)).toBeLessThan(1e-4);
  });

  it('per block, top-2, per-row masks, mixed batch', () => {
    const { comp, experts } = compose(TARGETS);
    comp.initGate({ level: 'block', granularity: 'prefix', topK: 2 }, new Rng(5), SHARP);
    const mask = [[1, 1, 1], [1, 0, 1], [0, 1, 1]];
    comp.setRows({ mask });
    expect(againstReference(comp, experts, MIXED, mask)).toBeLessThan(1e-4);
  });

  it('before a row’s first real token the logits are 0, so the weights are uniform', async () => {
    const { comp } = compose(TARGETS);
    comp.initGate({ granularity: 'prefix' }, new Rng(6), SHARP);
    comp.traceWeights(true);
    logits(model, LEFT_PADDED);
    for (const t of (await comp.lastWeights()).values()) {
      // Row 0's two pads and row 1's one pad.
      for (const r of [0, 1, 6]) expect(maxAbsDiff(t.probs.subarray(r * 3, r * 3 + 3), [1 / 3, 1 / 3, 1 / 3]), `${t.gate} row ${r}`).toBeLessThan(1e-7);
      // Real tokens are not uniform under this sharp gate.
      expect(maxAbsDiff(t.probs.subarray(2 * 3, 3 * 3), [1 / 3, 1 / 3, 1 / 3]), t.gate).toBeGreaterThan(1e-3);
    }
  });

  it.each(['layer', 'block'] as GateLevel[])('per %s: a padded row equals its real tokens run alone', (level) => {
    const { comp } = compose(TARGETS);
    comp.initGate({ level, granularity: 'prefix' }, new Rng(7), SHARP);
    const padded = logits(model, MIXED);
    for (const b of [0, 1, 2]) {
      const { alone, positions } = realPart(MIXED, b);
      const got = positions.flatMap((t) => [...padded.subarray((b * MIXED.seq + t) * V, (b * MIXED.seq + t + 1) * V)]);
      expect(maxAbsDiff(got, logits(model, alone)), `row ${b}`).toBeLessThan(1e-5);
    }
  });
});

/**
 * Gradient checks against central differences in float64. When no gate's input depends on another
 * gate (lm_head alone; q_proj and v_proj of block 0, which read the embeddings' norm), the inputs
 * of the gated linears are fixed, so the training loss is a host function of the gates' (e, ρ):
 * CE(base + Σ Gᵢ Eᵢ) at lm_head, plus α·(−Σ log qᵢ), q the mean over gates of real-token means.
 */
interface HostGate {
  module: string;
  /** Per expert [R, out], its delta at the gate's linear (null where it does not adapt it). */
  E: (Float64Array | null)[];
  out: number;
}

interface HostProblem {
  batch: LmBatch;
  layout: Layout;
  gates: HostGate[];
  /** [R, V]: the base's logits. */
  base: Float64Array;
}

interface GateParams {
  e: Float64Array;
  rho: number;
}

const ALPHA = 0.5;

/** Capture each gated linear's input on a base-only pass, then the experts' deltas in float64. */
function hostProblem(comp: MoleComposition, experts: LoraAdapter[], tokens: TokenBatch): HostProblem {
  const R = tokens.batch * tokens.seq;
  const linears = model.linears().filter((l) => comp.gate!.gateFor(l.name));
  const inputs = new Map<string, Float64Array>();
  comp.detach();
  const unhooks = linears.map((l) => l.addHook({ delta: (x: tf.Tensor2D) => (inputs.set(l.name, host(x)), tf.zeros([R, l.outFeatures]) as tf.Tensor2D) }));
  const base = logits(model, tokens);
  for (const unhook of unhooks) unhook();
  comp.attach();
  const gates = linears.map((l) => ({
    module: l.name,
    out: l.outFeatures,
    E: experts.map((ex) => {
      const p = ex.layers.get(l.name);
      return p ? expertOut(inputs.get(l.name)!, R, l.inFeatures, { a: host(p.aT), b: host(p.bT), r: p.rank, scale: p.scale }, l.outFeatures) : null;
    }),
  }));
  return { batch: lmBatch(tokens), layout: { batch: tokens.batch, seq: tokens.seq, real: tokens.attentionMask! }, gates, base: Float64Array.from(base) };
}

/** Which terms of the training loss the host adds up. */
interface Terms {
  /** The mean CE at lm_head (lm_head must be the only gate). */
  task: boolean;
  /** α·(−Σ log qᵢ). */
  balance: boolean;
  /** Per row, the label of the routing cross-entropy (−1: none); null: no routing term. */
  routeTo: number[] | null;
}

/** Each gate's softmax G [R, N] at (e, ρ) in float64 (no masks, no top-k). */
function hostGates(p: HostProblem, params: GateParams[], granularity: Granularity): Float64Array[] {
  const R = p.layout.batch * p.layout.seq;
  return p.gates.map((g, k) => gateWeights(g.E, R, g.out, NAMES.length, params[k]!.e, TAU_MIN + Math.log1p(Math.exp(params[k]!.rho)), p.layout, { granularity, topK: null }));
}

/** Host float64 loss: the sum of the chosen terms. */
function hostLoss(p: HostProblem, params: GateParams[], granularity: Granularity, { task, balance, routeTo }: Terms): number {
  const N = NAMES.length;
  const G = hostGates(p, params, granularity);
  const real = Array.from(p.layout.real).reduce((a, b) => a + b, 0);
  const q = Array.from({ length: N }, (_, i) => G.reduce((s, Gk) => s + realSum(Gk, p.layout.real, N, i), 0) / real / G.length);
  const bal = balance ? -ALPHA * q.reduce((s, qi) => s + Math.log(qi), 0) : 0;
  const route = routeTo ? hostRouting(G, p.layout, routeTo) : 0;
  return (task ? headCe(p, G[0]!) : 0) + bal + route;
}

/**
 * The routing cross-entropy from its definition: −(1/gates)·Σ over gates of the mean, over the real
 * tokens of the rows with a label, of log G_label.
 */
function hostRouting(G: Float64Array[], layout: Layout, routeTo: number[]): number {
  const N = NAMES.length;
  let loss = 0;
  for (const Gk of G) {
    let [sum, n] = [0, 0];
    for (let t = 0; t < layout.batch * layout.seq; t++) {
      const label = routeTo[Math.floor(t / layout.seq)]!;
      if (!layout.real[t] || label < 0) continue;
      sum += Math.log(Gk[t * N + label]!);
      n++;
    }
    expect(n).toBeGreaterThan(0);
    loss -= sum / n / G.length;
  }
  return loss;
}

function realSum(G: Float64Array, real: ArrayLike<number>, N: number, i: number): number {
  let s = 0;
  for (let t = 0; t < real.length; t++) s += real[t]! * G[t * N + i]!;
  return s;
}

/** Mean next-token CE of base + Σ Gᵢ Eᵢ at lm_head over the loss mask. */
function headCe(p: HostProblem, G: Float64Array): number {
  const { E, module } = p.gates[0]!;
  expect([module, p.gates.length]).toEqual(['lm_head', 1]);
  const N = E.length;
  let ce = 0;
  let count = 0;
  for (let t = 0; t < p.batch.lossMask.length; t++) {
    if (!p.batch.lossMask[t]) continue;
    const z = Array.from({ length: V }, (_, v) => p.base[t * V + v]! + E.reduce((s, Ei, i) => s + G[t * N + i]! * Ei![t * V + v]!, 0));
    const mx = Math.max(...z);
    ce += mx + Math.log(z.reduce((s, zv) => s + Math.exp(zv - mx), 0)) - z[p.batch.targets[t]!]!;
    count++;
  }
  return ce / count;
}

/** Central differences of f at x, every entry, in float64. */
function centralDiff(f: (x: Float64Array) => number, x: Float64Array, h: number): Float64Array {
  return Float64Array.from(x, (_, i) => {
    const [xp, xm] = [x.slice(), x.slice()];
    xp[i] += h;
    xm[i] -= h;
    return (f(xp) - f(xm)) / (2 * h);
  });
}

/**
 * How far the autodiff gradient is from the finite differences: the worst relative error over
 * entries with |fd| ≥ floor·max|fd| (a 5% scale bug gives 0.05 there), how many those are, and
 * the worst absolute error over every entry relative to max|fd|.
 */
function gradErrors(got: ArrayLike<number>, fd: ArrayLike<number>, floor = 1e-2): { rel: number; abs: number; checked: number } {
  const scale = Math.max(...Array.from(fd, Math.abs));
  let [rel, abs, checked] = [0, 0, 0];
  for (let i = 0; i < fd.length; i++) {
    const err = Math.abs(got[i]! - fd[i]!);
    abs = Math.max(abs, err / scale);
    if (Math.abs(fd[i]!) < floor * scale) continue;
    rel = Math.max(rel, err / Math.abs(fd[i]!));
    checked++;
  }
  return { rel, abs, checked };
}

/**
 * The sum of a training pass's aux losses with these names (through the head, which may be
 * gated); counts: how many of each the pass must leave.
 */
function auxSum(tokens: TokenBatch, counts: Record<string, number>): tf.Scalar {
  const { h, ctx } = model.hidden(tokens, { training: true });
  model.parts.head.forward(h, ctx);
  const aux = ctx.aux.filter((a) => a.name in counts);
  for (const [name, n] of Object.entries(counts)) expect(aux.filter((a) => a.name === name), name).toHaveLength(n);
  return tf.addN(aux.map((a) => a.value));
}

const HEAD = NAMES.map(() => ['lm_head']);
// Two gates in block 0 (math and law adapt q_proj, math and code v_proj), on the same fixed input.
const BLOCK0 = [['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj'], ['model.layers.0.self_attn.v_proj'], ['model.layers.0.self_attn.q_proj']];

/**
 * The training loss made of `terms` (task needs the gate on lm_head alone, and brings every aux
 * loss with it, as lmLoss adds them all), differentiated by tfjs with respect to every gate's e
 * and ρ, against float64 central differences of the host loss.
 */
function checkGradients(granularity: Granularity, targets: readonly (readonly string[])[], terms: Terms, init: GateInit = SHARP, tolerance = 1e-5): void {
  const { comp, experts } = compose(targets.map((t) => [...t]), 2);
  const gates = comp.initGate({ granularity, balanceAlpha: ALPHA }, new Rng(21), init).gates;
  expect(gates.length).toBe(targets === BLOCK0 ? 2 : 1);
  if (terms.task) expect(terms.balance).toBe(true);
  if (terms.routeTo) comp.setRows({ routeTo: terms.routeTo });
  const p = hostProblem(comp, experts, MIXED);
  const counts = { ...(terms.balance && { [BALANCE_AUX]: 1 }), ...(terms.routeTo && { [ROUTING_AUX]: gates.length }) };
  const loss = (): tf.Scalar => (terms.task ? lmLoss(model, p.batch, { training: true }) : auxSum(MIXED, counts));
  const { value, grads } = tf.variableGrads(loss, gates.flatMap((g) => [g.e, g.rho!]));
  const at: GateParams[] = gates.map((g) => ({ e: host(g.e), rho: g.rho!.dataSync()[0]! }));
  // The host loss is the one tfjs computes, up to float32 rounding.
  expect(Math.abs(value.dataSync()[0]! - hostLoss(p, at, granularity, terms))).toBeLessThan(tolerance);
  gates.forEach((g, k) => {
    const withGate = (q: Partial<GateParams>): GateParams[] => at.map((a, j) => (j === k ? { ...a, ...q } : a));
    const fdE = centralDiff((e) => hostLoss(p, withGate({ e }), granularity, terms), at[k]!.e, 1e-5);
    const fdRho = centralDiff(([rho]) => hostLoss(p, withGate({ rho }), granularity, terms), Float64Array.of(at[k]!.rho), 1e-5);
    const errE = gradErrors(grads[g.e.name]!.dataSync(), fdE);
    const errRho = gradErrors(grads[g.rho!.name]!.dataSync(), fdRho);
    expect(errE.checked, g.name).toBeGreaterThan(0.5 * g.e.size);
    expect(errE.rel, g.name).toBeLessThan(1e-3);
    expect(errE.abs, g.name).toBeLessThan(1e-4);
    expect(Math.abs(fdRho[0]!), g.name).toBeGreaterThan(1e-3);
    expect(errRho.rel, g.name).toBeLessThan(1e-3);
  });
  value.dispose();
  tf.dispose(Object.values(grads));
}

describe('gate gradients against float64 central differences', () => {
  const setups = [
    ['lm_head', HEAD, true],
    ['lm_head', HEAD, false],
    ['q_proj + v_proj of block 0', BLOCK0, false],
  ] as const;
  const cases = (['token', 'prefix'] as Granularity[]).flatMap((g) => setups.map(([name, targets, task]) => [g, name, task ? 'task + balance' : 'balance alone', targets, task] as const));
  it.each(cases)('%s gate on %s, %s: ∂/∂e and ∂/∂ρ', (granularity, _, __, targets, task) => {
    checkGradients(granularity, targets, { task, balance: true, routeTo: null });
  });
});

/** The labels of MIXED's rows: left-padded row 0 and full row 2 name experts, right-padded row 1 none. */
const ROUTE = [2, -1, 0];

/** Each routing aux loss of one pass (training unless told), on the host, in the order the gates ran. */
function routingTerms(tokens: TokenBatch, training = true): number[] {
  return tf.tidy(() => {
    const { h, ctx } = model.hidden(tokens, { training });
    model.parts.head.forward(h, ctx);
    return ctx.aux.filter((a) => a.name === ROUTING_AUX).map((a) => a.value.dataSync()[0]!);
  });
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

describe('routing cross-entropy against its float64 definition', () => {
  const setups = [
    ['lm_head (1 gate)', HEAD],
    ['q_proj + v_proj of block 0 (2 gates)', BLOCK0],
  ] as const;
  const cases = (['token', 'prefix', 'sequence'] as Granularity[]).flatMap((g) => setups.map(([name, targets]) => [g, name, targets] as const));
  it.each(cases)('%s gate on %s, left- and right-padded rows, unlabelled rows', (granularity, _, targets) => {
    const { comp, experts } = compose(targets.map((t) => [...t]), 3);
    const gates = comp.initGate({ granularity, balanceAlpha: ALPHA }, new Rng(22), SHARP).gates;
    const p = hostProblem(comp, experts, MIXED);
    const G = hostGates(p, gates.map((g) => ({ e: host(g.e), rho: g.rho!.dataSync()[0]! })), granularity);
    const values: number[] = [];
    // Labels on the left-padded and full rows; on the right-padded row alone; on every row.
    for (const routeTo of [ROUTE, [-1, 1, -1], [1, 1, 2]]) {
      comp.setRows({ routeTo });
      const got = routingTerms(MIXED);
      // One term per gate, each −(1/gates)·(its mean): their sum is the mean over gates.
      expect(got).toHaveLength(gates.length);
      got.forEach((v, k) => expect(Math.abs(v - hostRouting([G[k]!], p.layout, routeTo) / gates.length), `gate ${k}, labels ${routeTo}`).toBeLessThan(1e-5));
      expect(Math.abs(sum(got) - hostRouting(G, p.layout, routeTo)), `labels ${routeTo}`).toBeLessThan(1e-5);
      values.push(sum(got));
    }
    // The labels matter: the checks above are not of one constant.
    expect(Math.max(...values) - Math.min(...values)).toBeGreaterThan(1e-2);
  });

  it.each(['layer', 'block'] as GateLevel[])('per %s through the network: every gate’s term, from its traced probabilities', async (level) => {
    const { comp } = compose(TARGETS);
    const gates = comp.initGate({ level, granularity: 'prefix', balanceAlpha: ALPHA }, new Rng(4), SHARP).gates;
    expect(gates.length).toBeGreaterThanOrEqual(2);
    comp.traceWeights(true);
    comp.setRows({ routeTo: ROUTE });
    const got = routingTerms(MIXED);
    // The probabilities G before masks and top-k (float32; the network makes them), per gate.
    const G = [...(await comp.lastWeights()).values()].map((t) => Float64Array.from(t.probs));
    expect(got).toHaveLength(gates.length);
    expect(G).toHaveLength(gates.length);
    const layout = { batch: MIXED.batch, seq: MIXED.seq, real: MIXED.attentionMask! };
    expect(Math.abs(sum(got) - hostRouting(G, layout, ROUTE))).toBeLessThan(1e-5);
  });

  it('absent outside training and without labels; 0 when no row has one', () => {
    const { comp, experts } = compose(HEAD, 3);
    const gates = comp.initGate({ granularity: 'prefix', balanceAlpha: ALPHA }, new Rng(22), SHARP).gates;
    const p = hostProblem(comp, experts, MIXED);
    const at = gates.map((g) => ({ e: host(g.e), rho: g.rho!.dataSync()[0]! }));
    const loss = (training: boolean): number => tf.tidy(() => lmLoss(model, p.batch, { training }).dataSync()[0]!);
    // Not training: no aux loss at all, the loss is the task's.
    comp.setRows({ routeTo: ROUTE });
    expect(routingTerms(MIXED, false)).toEqual([]);
    expect(Math.abs(loss(false) - hostLoss(p, at, 'prefix', { task: true, balance: false, routeTo: null }))).toBeLessThan(1e-5);
    // Training with labels: lmLoss adds the term.
    expect(Math.abs(loss(true) - hostLoss(p, at, 'prefix', { task: true, balance: true, routeTo: ROUTE }))).toBeLessThan(1e-5);
    // Training without labels: none, whether rows are unset, cleared, or carry only masks and tasks.
    for (const rows of [null, { mask: [[1, 1, 1], [1, 0, 1], [0, 1, 1]] }, { tasks: ['a', 'b', 'c'] }]) {
      comp.setRows(rows);
      expect(routingTerms(MIXED), JSON.stringify(rows)).toEqual([]);
    }
    comp.setRows(null);
    expect(Math.abs(loss(true) - hostLoss(p, at, 'prefix', { task: true, balance: true, routeTo: null }))).toBeLessThan(1e-5);
    // Labels that name no expert: the term is there and 0, not NaN, with a zero gradient.
    comp.setRows({ routeTo: [-1, -1, -1] });
    expect(routingTerms(MIXED).map(Math.abs)).toEqual([0]);
    const { value, grads } = tf.variableGrads(() => auxSum(MIXED, { [ROUTING_AUX]: 1 }), [gates[0]!.e, gates[0]!.rho!]);
    expect(Math.abs(value.dataSync()[0]!)).toBe(0);
    for (const g of Object.values(grads)) expect(Math.max(...Array.from(g.dataSync(), Math.abs))).toBe(0);
    value.dispose();
    tf.dispose(Object.values(grads));
  });
});

describe('routing cross-entropy gradients against float64 central differences', () => {
  const setups = [
    ['lm_head', HEAD, 'routing alone', { task: false, balance: false }],
    ['q_proj + v_proj of block 0', BLOCK0, 'routing alone', { task: false, balance: false }],
    ['lm_head', HEAD, 'routing + task + balance', { task: true, balance: true }],
    ['q_proj + v_proj of block 0', BLOCK0, 'routing + balance', { task: false, balance: true }],
  ] as const;
  const cases = (['token', 'prefix'] as Granularity[]).flatMap((g) => setups.map(([name, targets, what, terms]) => [g, name, what, targets, terms] as const));
  it.each(cases)('%s gate on %s, %s: ∂/∂e and ∂/∂ρ', (granularity, _, __, targets, terms) => {
    checkGradients(granularity, targets, { ...terms, routeTo: ROUTE });
  });

  it('a confidently wrong gate, where G_label underflows float32: exact value and gradients', () => {
    const terms = { task: false, balance: false, routeTo: ROUTE };
    const init = { eStd: 3, tau: 0.7 };
    // The setup checkGradients builds: some labelled token has log G_label far below float32's
    // smallest number (about −103), so log of G itself would be −∞ (or a clamp, with no gradient).
    const { comp, experts } = compose(HEAD, 2);
    const gate = comp.initGate({ granularity: 'token' }, new Rng(21), init).gates[0]!;
    const G = hostGates(hostProblem(comp, experts, MIXED), [{ e: host(gate.e), rho: gate.rho!.dataSync()[0]! }], 'token')[0]!;
    const logLabel = [...Array(MIXED.batch * MIXED.seq).keys()].filter((t) => MIXED.attentionMask![t] && ROUTE[Math.floor(t / MIXED.seq)]! >= 0).map((t) => Math.log(G[t * 3 + ROUTE[Math.floor(t / MIXED.seq)]!]!));
    expect(Math.min(...logLabel)).toBeLessThan(-150);
    comp.dispose();
    live.splice(live.indexOf(comp), 1);
    // float32 rounding of logits in the hundreds.
    checkGradients('token', HEAD, terms, init, 1e-4);
  });
});

/**
 * Through the whole network, where gates feed later gates and a block gate's weights serve
 * several linears, the loss is only available in float32. Fourth-order central differences
 * (Richardson) with a step of 0.01 balance truncation (the loss is sharply curved along the
 * largest entries: 0.03 was 4% off there) against float32 rounding (worse below 0.005).
 */
function richardson(f: (d: number) => number, h: number): number {
  return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h);
}

/** Indices to check: each gate's largest gradients (best signal) and some random ones. */
function entriesToCheck(g: Float32Array, rng: Rng, largest: number, random: number): number[] {
  const order = [...g.keys()].sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!));
  const picked = new Set(order.slice(0, largest));
  while (picked.size < Math.min(g.length, largest + random)) picked.add(rng.int(g.length));
  return [...picked];
}

describe('gate gradients through the network against float32 finite differences', () => {
  const cases = (['layer', 'block'] as GateLevel[]).flatMap((level) => (['token', 'prefix'] as Granularity[]).map((g) => [level, g] as const));
  it.each(cases)('per %s, %s: task + balance loss, ∂/∂e and ∂/∂ρ of every gate', (level, granularity) => {
    const { comp } = compose(TARGETS);
    const gates = comp.initGate({ level, granularity, balanceAlpha: ALPHA }, new Rng(4), SHARP).gates;
    const batch = lmBatch(MIXED);
    const loss = (): tf.Scalar => lmLoss(model, batch, { training: true });
    const vars = gates.flatMap((g) => [g.e, g.rho!] as tf.Variable[]);
    const { value, grads } = tf.variableGrads(loss, vars);
    const scale = Math.max(...vars.map((v) => Math.max(...Array.from(grads[v.name]!.dataSync(), Math.abs))));
    const rng = new Rng(5);
    let [worst, big] = [0, 0];
    for (const v of vars) {
      const g = grads[v.name]!.dataSync() as Float32Array;
      const orig = v.dataSync().slice();
      for (const i of entriesToCheck(g, rng, 6, 4)) {
        const fd = richardson((d) => {
          const x = orig.slice();
          x[i] += d;
          return tf.tidy(() => {
            v.assign(tf.tensor(x, v.shape));
            return loss().dataSync()[0]!;
          });
        }, 0.01);
        // Relative error, measured against at least 5% of the largest gradient.
        worst = Math.max(worst, Math.abs(g[i]! - fd) / Math.max(Math.abs(fd), 0.05 * scale));
        if (Math.abs(fd) >= 0.05 * scale) big++;
      }
      tf.tidy(() => v.assign(tf.tensor(orig, v.shape)));
    }
    expect(big).toBeGreaterThanOrEqual(3 * gates.length);
    expect(worst).toBeLessThan(1e-2);
    value.dispose();
    tf.dispose(Object.values(grads));
  });
});
