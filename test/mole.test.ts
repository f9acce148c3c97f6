import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LoraAdapter } from '../src/adapters/adapter.js';
import { LoraLayer } from '../src/adapters/lora.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { lmLoss, type LmBatch } from '../src/base/loss.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { BALANCE_AUX } from '../src/gating/balance.js';
import { MoleComposition } from '../src/gating/composition.js';
import type { GateOptions } from '../src/gating/mole.js';
import { MODEL_FIXTURES, maxAbsDiff } from './helpers.js';
import { installReference, logits, randomExpert } from './mole-reference.js';

let model: CausalLM;
beforeAll(async () => {
  await initBackend();
  model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'));
});

const NAMES = ['math', 'code', 'law'];
// Overlapping targets, so some experts give a zero delta at some gated linears.
const TARGETS = [['q_proj', 'v_proj'], ['v_proj', 'down_proj'], ['q_proj', 'up_proj', 'down_proj']];

const live: MoleComposition[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

function compose(seed = 1): { comp: MoleComposition; experts: LoraAdapter[] } {
  const comp = new MoleComposition(model);
  const experts = NAMES.map((name, i) => randomExpert(model, name, TARGETS[i]!, seed * 10 + i));
  for (const e of experts) comp.addExpert(e.name, e);
  live.push(comp);
  return { comp, experts };
}

/** A sharp, non-uniform gate, so that weights matter. */
const SHARP = { eStd: 0.5, tau: 0.7 };

// Row 0 is left-padded by two tokens.
const BATCH: TokenBatch = {
  ids: Int32Array.from([0, 0, 5, 17, 33, 8, 12, 40, 3, 77, 61, 2]),
  attentionMask: Uint8Array.from([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
  batch: 2,
  seq: 6,
};
const V = 96;

function row(batch: TokenBatch, b: number): TokenBatch {
  const T = batch.seq;
  return { ids: batch.ids.slice(b * T, (b + 1) * T), attentionMask: batch.attentionMask!.slice(b * T, (b + 1) * T), batch: 1, seq: T };
}

function lmBatch(batch: TokenBatch): LmBatch {
  const targets = Int32Array.from(batch.ids, (_, i) => batch.ids[i + 1] ?? 0);
  const lossMask = Float32Array.from(batch.attentionMask!, (m, i) => ((i + 1) % batch.seq === 0 ? 0 : m));
  return { ...batch, targets, lossMask };
}

/** The composition's logits against the float64 reference of the same mixing. */
function againstReference(comp: MoleComposition, experts: LoraAdapter[], extra: { mask?: number[][]; weights?: number[] } = {}): number {
  const got = logits(model, BATCH);
  comp.detach();
  const undo = installReference(model, { experts, gates: comp.gate, ...extra });
  const want = logits(model, BATCH);
  undo();
  comp.attach();
  return maxAbsDiff(got, want);
}

describe('MoLE gate', () => {
  it('matches the float64 reference: per token, per layer, learned τ', async () => {
    const { comp, experts } = compose();
    comp.detach();
    const base = logits(model, BATCH);
    comp.attach();
    comp.initGate({}, new Rng(3), SHARP);
    comp.traceWeights(true);
    const got = logits(model, BATCH);
    // The experts and the gate matter: the output moved, and some weights are far from 1/3.
    expect(maxAbsDiff(base, got)).toBeGreaterThan(1e-2);
    const w = [...(await comp.lastWeights()).values()].flatMap((t) => [...t.weights]);
    expect(Math.max(...w)).toBeGreaterThan(0.6);
    expect((await comp.lastWeights()).size).toBe(comp.gatedModules().length);
    expect(againstReference(comp, experts)).toBeLessThan(1e-4);
  });

  it.each<[string, Partial<GateOptions>]>([
    ['per sequence', { granularity: 'sequence' }],
    ['top-2', { topK: 2 }],
    ['per block', { level: 'block' }],
    ['per block, per sequence, top-1', { level: 'block', granularity: 'sequence', topK: 1 }],
    ['fixed τ', { temperature: { mode: 'fixed', value: 0.5 } }],
  ])('matches the float64 reference: %s', (_, options) => {
    const { comp, experts } = compose();
    comp.initGate(options, new Rng(4), SHARP);
    expect(againstReference(comp, experts)).toBeLessThan(1e-4);
  });

  it('a block gate serves all its block’s gated linears', async () => {
    const { comp } = compose();
    comp.initGate({ level: 'block' }, new Rng(4));
    expect(comp.gate!.gates.map((g) => [g.name, g.modules.length])).toEqual([
      ['model.layers.0', 4],
      ['model.layers.1', 4],
    ]);
    comp.traceWeights(true);
    logits(model, BATCH);
    expect([...(await comp.lastWeights()).keys()]).toEqual(['model.layers.0', 'model.layers.1']);
  });

  it('masking renormalises exactly: G′ = mG / Σ mG, per batch and per row', async () => {
    const { comp } = compose();
    comp.initGate({}, new Rng(5), SHARP);
    comp.traceWeights(true);
    const check = async (maskOfRow: (b: number) => number[]): Promise<void> => {
      logits(model, BATCH);
      for (const t of (await comp.lastWeights()).values()) {
        let worst = 0;
        for (let r = 0; r < t.rows; r++) {
          const m = maskOfRow(Math.floor(r / BATCH.seq));
          const g = [0, 1, 2].map((i) => m[i]! * t.probs[r * 3 + i]!);
          const s = g.reduce((a, b) => a + b, 0);
          for (let i = 0; i < 3; i++) worst = Math.max(worst, Math.abs(t.weights[r * 3 + i]! - (s > 0 ? g[i]! / s : 0)));
        }
        expect(worst, t.gate).toBeLessThan(1e-6);
      }
    };
    comp.mask(['math', 'law']);
    await check(() => [1, 0, 1]);
    comp.mask(null);
    comp.setRows({ mask: [comp.maskRow(['code']), comp.maskRow(['math', 'code'])] });
    await check((b) => (b === 0 ? [0, 1, 0] : [1, 1, 0]));
  });

  it('with an expert masked, the output is the other experts under renormalised weights', () => {
    const { comp, experts } = compose();
    comp.initGate({}, new Rng(6), SHARP);
    comp.mask(['math', 'law']);
    expect(againstReference(comp, experts, { mask: [[1, 0, 1]] })).toBeLessThan(1e-4);

    // One expert left: its weight is 1, exactly the adapter on its own.
    comp.solo('code');
    const got = logits(model, BATCH);
    comp.detach();
    const alone = new LoraAdapter('code', experts[1]!.config, experts[1]!.layers);
    alone.attach(model);
    const want = logits(model, BATCH);
    alone.detach();
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
  });

  it('static weights equal the adapters attached with scaled deltas; a mask renormalises them', () => {
    const { comp, experts } = compose();
    const w = [0.2, 0.3, 0.5];
    const scaledRun = (weights: number[]): Float32Array => {
      comp.detach();
      const scaled = experts.map((e, i) => new LoraAdapter(e.name, e.config, new Map([...e.layers].map(([m, l]) => [m, new LoraLayer(m, l.aT, l.bT, l.scale * weights[i]!, 0)]))));
      for (const s of scaled) s.attach(model);
      const out = logits(model, BATCH);
      for (const s of scaled) s.detach();
      comp.attach();
      return out;
    };
    // Default: the plain sum.
    expect(maxAbsDiff(logits(model, BATCH), scaledRun([1, 1, 1]))).toBeLessThan(1e-5);
    comp.useWeights(w);
    expect(maxAbsDiff(logits(model, BATCH), scaledRun(w))).toBeLessThan(1e-5);
    comp.useWeights({ law: 1 });
    expect(maxAbsDiff(logits(model, BATCH), scaledRun([0, 0, 1]))).toBeLessThan(1e-5);
    // Shares are renormalised over the experts a mask keeps, as gate weights are.
    comp.useWeights(w);
    comp.mask(['math', 'code']);
    expect(maxAbsDiff(logits(model, BATCH), scaledRun([0.4, 0.6, 0]))).toBeLessThan(1e-5);
    comp.mask(null);
    // Under the plain sum a mask just drops experts: the rest stay at full strength.
    comp.useWeights(null);
    comp.mask(['math', 'law']);
    expect(maxAbsDiff(logits(model, BATCH), scaledRun([1, 0, 1]))).toBeLessThan(1e-5);
  });

  it('refuses compositions that are the base alone or scale the experts by nonsense, and keeps its settings', () => {
    const { comp } = compose();
    comp.useWeights([0.2, 0.3, 0.5]);
    comp.mask(['math', 'code']);
    const before = logits(model, BATCH);
    expect(() => comp.mask([])).toThrow(/mask: leaves none of the experts \[math, code, law\]; that is the base model alone/);
    expect(() => comp.useWeights([0, 0, 0])).toThrow(/every weight is 0 \(math=0,code=0,law=0\)/);
    expect(() => comp.useWeights([-0.5, 1, 0.5])).toThrow(/the weight of expert 'math' is -0\.5; weights are shares of the mix, ≥ 0/);
    expect(() => comp.useWeights([NaN, 0.5, 0.5])).toThrow(/'math' is NaN, not a finite number/);
    expect(() => comp.useWeights({ math: 1e30 })).toThrow(/the weights sum to 1e\+30 \(math=1e\+30\); .* must sum to 1/);
    expect(() => comp.useWeights([1, 1, 1])).toThrow(/sum to 3 .*For every expert at full strength \(the plain sum\), give no weights/);
    // Under the current mask (math, code) these shares leave nothing.
    expect(() => comp.useWeights({ law: 1 })).toThrow(/the experts kept \[math, code\] all have weight 0/);
    expect(() => comp.setRows({ mask: [[1, 1, 0], [0, 0, 1]] })).toThrow(/mask row 1 leaves none of the experts the global mask keeps/);
    expect(() => comp.setRows({ weights: [[0.5, 0.5, 0], [0.5, 0.6, 0]] })).toThrow(/weights row 1: the weights sum to 1\.1/);
    expect(() => comp.setRows({ weights: [[0.5, 0.5, 0], [0, 0, 1]] })).toThrow(/row 1\): the experts kept \[math, code\] all have weight 0/);
    // Rounded shares pass, renormalised exactly.
    comp.useWeights([0.33, 0.33, 0.33]);
    comp.useWeights([0.2, 0.3, 0.5]);
    // Every refusal left the settings as they were.
    expect(maxAbsDiff(logits(model, BATCH), before)).toBe(0);
    comp.mask(null);
    comp.useWeights([0.5, 0.5, 0]);
    // Through the deprecated alias of solo, which scripts still call.
    expect(() => comp.only('law')).toThrow(/the experts kept \[law\] all have weight 0/);
    comp.initGate({}, new Rng(9), SHARP);
    expect(() => comp.setRows({ mask: [[0, 0, 0], [1, 1, 1]] })).toThrow(/mask row 0 leaves none of the experts; that row would be the base model alone/);
  });

  it.each<[string, Partial<GateOptions> | null]>([
    ['gate per token', {}],
    ['gate per sequence', { granularity: 'sequence' }],
    ['static weights', null],
  ])('mixed batch (%s): each row equals that row alone with its own experts', (_, options) => {
    const { comp } = compose();
    if (options) comp.initGate(options, new Rng(7), SHARP);
    else comp.useWeights([0.2, 0.3, 0.5]);
    const rows = [['code'], ['math', 'law']];
    comp.setRows({ mask: rows.map((r) => comp.maskRow(r)) });
    const mixed = logits(model, BATCH);
    comp.setRows(null);
    rows.forEach((names, b) => {
      comp.mask(names);
      const alone = logits(model, row(BATCH, b));
      expect(maxAbsDiff(mixed.subarray(b * BATCH.seq * V, (b + 1) * BATCH.seq * V), alone), `row ${b}`).toBeLessThan(1e-5);
    });
  });

  it('static per-row weights equal each row run alone with those weights', () => {
    const { comp } = compose();
    const rowWeights = [[0.6, 0, 0.4], [0.1, 0.2, 0.7]];
    comp.setRows({ weights: rowWeights });
    const mixed = logits(model, BATCH);
    comp.setRows(null);
    rowWeights.forEach((w, b) => {
      comp.useWeights(w);
      expect(maxAbsDiff(mixed.subarray(b * BATCH.seq * V, (b + 1) * BATCH.seq * V), logits(model, row(BATCH, b)))).toBeLessThan(1e-5);
    });
  });

  it('a sequence gate ignores padding: a padded row equals the row alone', () => {
    const { comp } = compose();
    comp.initGate({ granularity: 'sequence' }, new Rng(8), SHARP);
    const padded = logits(model, BATCH);
    const real = { ids: BATCH.ids.slice(2, 6), attentionMask: Uint8Array.from([1, 1, 1, 1]), batch: 1, seq: 4 };
    expect(maxAbsDiff(padded.subarray(2 * V, 6 * V), logits(model, real))).toBeLessThan(1e-5);
  });

  it('rejects bad row specs and unknown experts by name', () => {
    const { comp } = compose();
    expect(() => comp.mask(['math', 'poetry'])).toThrow(/no expert 'poetry'/);
    expect(() => comp.setRows({ mask: [[1, 0]] })).toThrow(/mask row 0 must hold 3 entries/);
    // A label past the last expert would mark the next token's first expert instead.
    expect(() => comp.setRows({ routeTo: [0, 3] })).toThrow(/routeTo row 1 must be an expert index in \[0, 3\) or −1, got 3/);
    expect(() => comp.setRows({ routeTo: [0, -2] })).toThrow(/routeTo row 1/);
    expect(() => comp.setRows({ tasks: ['a', 'b'], routeTo: [0] })).toThrow(/different row counts \(2, 1\)/);
    expect(() => comp.useWeights([1, 2])).toThrow(/2 given for 3 experts/);
    comp.setRows({ mask: [[1, 0, 1]] });
    expect(() => logits(model, BATCH)).toThrow(/set for 1 rows, the batch has 2/);
    comp.setRows(null);
    comp.initGate();
    const more = randomExpert(model, 'more', ['o_proj'], 99);
    expect(() => comp.addExpert('more', more)).toThrow(/gate was built for experts \[math, code, law\]/);
    more.dispose();
  });
});

describe('training the gate', () => {
  it('gradients reach only the gate: experts frozen, the base has no variables', () => {
    const { comp, experts } = compose();
    comp.initGate({}, new Rng(9), SHARP);
    const gateVars = [...comp.params().values()];
    const expertVars = experts.flatMap((e) => [...e.params().values()]);
    const all = Object.values(tf.engine().registeredVariables);
    expect(new Set(all)).toEqual(new Set([...gateVars, ...expertVars]));
    const { value, grads } = tf.variableGrads(() => lmLoss(model, lmBatch(BATCH), { training: true }), all);
    for (const v of expertVars) expect(grads[v.name], v.name).toBeNull();
    for (const v of gateVars) {
      const norm = tf.tidy(() => grads[v.name]!.abs().max().dataSync()[0]!);
      expect(norm, v.name).toBeGreaterThan(0);
      expect(Number.isFinite(norm)).toBe(true);
    }
    value.dispose();
    tf.dispose(Object.values(grads).filter((g) => g !== null));
  });

  it('τ stays positive under large steps that push it down', () => {
    const { comp } = compose();
    const gates = comp.initGate({}, new Rng(10), SHARP);
    for (let step = 0; step < 4; step++) {
      const rhos = gates.gates.map((g) => g.rho!);
      const { grads } = tf.variableGrads(() => tf.addN(gates.gates.map((g) => g.temperature())) as tf.Scalar, rhos);
      for (const r of rhos) {
        tf.tidy(() => r.assign(r.sub(grads[r.name]!.mul(1e4))));
      }
      tf.dispose(Object.values(grads));
    }
    for (const g of gates.gates) {
      const tau = tf.tidy(() => g.temperature().dataSync()[0]!);
      expect(g.rho!.dataSync()[0]).toBeLessThan(-100);
      expect(tau).toBeGreaterThan(0);
    }
    expect(logits(model, BATCH).every(Number.isFinite)).toBe(true);
  });

  it('the balance loss is α·(−Σ log q) over gated layers and real tokens, once per pass, with a gradient', async () => {
    const { comp } = compose();
    comp.initGate({}, new Rng(11), SHARP);
    comp.traceWeights(true);
    const aux = tf.tidy(() => {
      const { ctx } = model.hidden(BATCH, { training: true });
      expect(ctx.aux.map((a) => a.name)).toEqual([BALANCE_AUX]);
      return ctx.aux[0]!.value.dataSync()[0]!;
    });
    const traces = [...(await comp.lastWeights()).values()];
    const q = [0, 0, 0];
    const real = BATCH.attentionMask!;
    const nReal = real.reduce((a, b) => a + b, 0);
    for (const t of traces) for (let r = 0; r < t.rows; r++) for (let i = 0; i < 3; i++) q[i]! += (real[r]! * t.probs[r * 3 + i]!) / nReal / traces.length;
    const want = -0.5 * q.reduce((a, v) => a + Math.log(v), 0);
    expect(Math.abs(aux - want)).toBeLessThan(1e-5);
    // Padding is excluded: including it would change q.
    const withPad = [0, 1, 2].map((i) => traces.reduce((a, t) => a + Array.from({ length: t.rows }, (_, r) => t.probs[r * 3 + i]!).reduce((x, y) => x + y, 0) / t.rows, 0) / traces.length);
    expect(Math.abs(-0.5 * withPad.reduce((a, v) => a + Math.log(v), 0) - aux)).toBeGreaterThan(1e-7);

    const gateVars = [...comp.params().values()];
    const { value, grads } = tf.variableGrads(() => model.hidden(BATCH, { training: true }).ctx.aux[0]!.value, gateVars);
    const gn = tf.tidy(() => tf.addN(Object.values(grads).map((g) => g.abs().sum())).dataSync()[0]!);
    expect(gn).toBeGreaterThan(0);
    value.dispose();
    tf.dispose(Object.values(grads));
  });

  it('no balance loss when α = 0 or outside training; block gates count once each', () => {
    const { comp } = compose();
    const auxNames = (training: boolean): string[] => tf.tidy(() => model.hidden(BATCH, { training }).ctx.aux.map((a) => a.name));
    comp.initGate({ balanceAlpha: 0 }, new Rng(12));
    expect(auxNames(true)).toEqual([]);
    comp.initGate({}, new Rng(12));
    expect(auxNames(false)).toEqual([]);
    comp.initGate({ level: 'block' }, new Rng(12));
    expect(auxNames(true)).toEqual([BALANCE_AUX]);
    // α scales the loss and nothing else: with α = 0 the training loss is the task loss alone.
    const loss = (alpha: number): number => {
      comp.initGate({ balanceAlpha: alpha }, new Rng(13));
      return tf.tidy(() => lmLoss(model, lmBatch(BATCH), { training: true }).dataSync()[0]!);
    };
    const [l0, l1, l2] = [loss(0), loss(1), loss(2)];
    expect(Math.abs(l2 - l0 - 2 * (l1 - l0))).toBeLessThan(1e-5);
    expect(l1).toBeGreaterThan(l0);
  });

  it('top-k carries the gradient through the kept probabilities', () => {
    const { comp } = compose();
    comp.initGate({ topK: 2, balanceAlpha: 0 }, new Rng(14), SHARP);
    const gateVars = [...comp.params().values()];
    const { value, grads } = tf.variableGrads(() => lmLoss(model, lmBatch(BATCH), { training: true }), gateVars);
    for (const v of gateVars) expect(tf.tidy(() => grads[v.name]!.abs().sum().dataSync()[0]!), v.name).toBeGreaterThan(0);
    value.dispose();
    tf.dispose(Object.values(grads));
  });
});

describe('gate statistics and memory', () => {
  it('reports mean weights and entropy per gate over real tokens, per task', async () => {
    const { comp } = compose();
    comp.initGate({}, new Rng(15), SHARP);
    comp.collectStats(true);
    comp.traceWeights(true);
    comp.setRows({ tasks: ['algebra', 'contracts'] });
    logits(model, BATCH);
    logits(model, BATCH);
    const report = await comp.gateStats();
    expect(report.experts).toEqual(NAMES);
    const real = BATCH.attentionMask!;
    for (const s of report.gates) {
      const t = (await comp.lastWeights()).get(s.gate)!;
      expect(s.tokens).toBe(2 * 10);
      for (let i = 0; i < 3; i++) {
        let m = 0;
        for (let r = 0; r < t.rows; r++) m += (real[r]! * t.weights[r * 3 + i]!) / 10;
        expect(Math.abs(s.meanWeight[i]! - m)).toBeLessThan(1e-5);
      }
      let h = 0;
      for (let r = 0; r < t.rows; r++) for (let i = 0; i < 3; i++) h -= (real[r]! * t.weights[r * 3 + i]! * Math.log(t.weights[r * 3 + i]!)) / 10;
      expect(Math.abs(s.entropy - h)).toBeLessThan(1e-5);
    }
    expect(Object.keys(report.byTask).sort()).toEqual(['algebra', 'contracts']);
    expect(report.byTask.algebra!.map((s) => s.tokens)).toEqual(report.gates.map(() => 8));
    expect(report.byTask.contracts!.map((s) => s.tokens)).toEqual(report.gates.map(() => 12));
  });

  it('numTensors stays flat across forward and training passes', () => {
    const { comp } = compose();
    comp.initGate({ topK: 2, granularity: 'sequence' }, new Rng(16), SHARP);
    comp.collectStats(true);
    comp.traceWeights(true);
    comp.setRows({ mask: [comp.maskRow(['math', 'code']), comp.maskRow(['law'])], tasks: [0, 1] });
    const gateVars = [...comp.params().values()];
    const step = (): void => {
      logits(model, BATCH);
      const { value, grads } = tf.variableGrads(() => lmLoss(model, lmBatch(BATCH), { training: true }), gateVars);
      value.dispose();
      tf.dispose(Object.values(grads));
    };
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      step();
      expect(tf.memory().numTensors).toBe(before);
    }
  });
});
