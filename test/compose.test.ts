import * as tf from '@tensorflow/tfjs';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trainAdapter } from '../src/adapters/train-adapter.js';
import { initBackend } from '../src/base/backend.js';
import { initBase } from '../src/base/init.js';
import { Rng } from '../src/base/rng.js';
import { applyProfile, readProfiles } from '../src/gating/profile.js';
import { loadModel, type MoleModel } from '../src/gating/mole-model.js';
import { gateStatsOn, trainGate } from '../src/gating/train-gate.js';
import { evaluate, type EvalReport } from '../src/train/evaluate.js';
import { loadLmData } from '../src/train/lm.js';
import { readMetrics } from '../src/train/metrics.js';
import { tempDir } from './helpers.js';

// The fast version of the composition acceptance: three tasks, one LoRA expert each on a tiny
// random base, a prefix gate trained on the mixed data. The fuller run is the quickstart recipe.
const TASKS: Record<string, string> = { color: 'red', fruit: 'fig', pet: 'cat' };
const tmp = tempDir();
const base = join(tmp.dir, 'base');
const quiet = { progress: 'off' as const, log: () => {} };
const cols = { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task' };

function writeRows(path: string, n: number, seed: number, only?: string): void {
  const rng = new Rng(seed);
  const names = Object.keys(TASKS);
  const lines = ['prompt,completion,task'];
  for (let i = 0; i < n; i++) {
    const t = only ?? names[rng.int(names.length)]!;
    const w = Array.from({ length: 3 }, () => String.fromCharCode(97 + rng.int(26))).join('');
    lines.push(`${t} ${w} =, ${TASKS[t]},${t}`);
  }
  writeFileSync(path, lines.join('\n') + '\n');
}

let model: MoleModel;
const gateStepTensors: number[] = [];
const routerStepTensors: number[] = [];
let test: Awaited<ReturnType<typeof loadLmData>>;
const exact = (r: EvalReport): Record<string, number> => Object.fromEntries(Object.entries(r.tasks).map(([t, s]) => [t, s.exact_match!]));
const score = async (): Promise<Record<string, number>> => exact(await evaluate(model.base, test.dataset.train, { batchSize: 30, seqLen: 32, useCache: model.kvCacheUsable }));

beforeAll(async () => {
  await initBackend();
  await initBase({ arch: 'llama', layers: 2, hidden: 64, heads: 4, ffn: 128, out: base, seed: 1 });
  const train = { model: base, ...cols, seqLen: 32, batchSize: 16, lr: 1e-2, seed: 0, ...quiet };
  for (const t of Object.keys(TASKS)) {
    writeRows(join(tmp.dir, `${t}.csv`), 300, 1, t);
    await trainAdapter({ ...train, data: join(tmp.dir, `${t}.csv`), out: join(tmp.dir, t), steps: 100, lora: { targets: ['q_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj', 'lm_head'] } });
  }
  writeRows(join(tmp.dir, 'mixed.csv'), 600, 2);
  writeRows(join(tmp.dir, 'test.csv'), 60, 3);
  await trainGate({
    ...train,
    data: join(tmp.dir, 'mixed.csv'),
    valSplit: 0.1,
    out: join(tmp.dir, 'gate'),
    steps: 300,
    evalEvery: 300,
    // 1e-2 sometimes settles with one task mis-weighted under all experts; 3e-3 did not (seeds 0, 1).
    lr: 3e-3,
    experts: Object.keys(TASKS).map((t) => [t, join(tmp.dir, t)]),
    router: 'mole',
    gate: { granularity: 'prefix', temperature: { mode: 'fixed', value: 1 } },
    maskDropout: 0.7,
    afterStep: () => gateStepTensors.push(tf.memory().numTensors),
  });
  // The default router (prompt, labels from the task column), and one taught by the LM loss alone.
  const experts: [string, string][] = Object.keys(TASKS).map((t) => [t, join(tmp.dir, t)]);
  const router = { ...train, data: join(tmp.dir, 'mixed.csv'), valSplit: 0.1, steps: 200, evalEvery: 200, lr: 1e-3, experts };
  await trainGate({ ...router, out: join(tmp.dir, 'router'), afterStep: () => routerStepTensors.push(tf.memory().numTensors) });
  // Trained on batches (as on data too large to hold), through the expert-loss cache.
  await trainGate({ ...router, taskColumn: undefined, fullBatchRows: 0, out: join(tmp.dir, 'router-lm') });
  model = await loadModel(base);
  for (const t of Object.keys(TASKS)) model.addExpert(t, join(tmp.dir, t));
  test = await loadLmData(model.base, { data: join(tmp.dir, 'test.csv'), ...cols, seqLen: 32, batchSize: 30, seed: 0 }, () => {});
}, 240_000);
afterAll(() => {
  model?.dispose();
  tmp.cleanup();
});

describe('prompt routers over three task experts', () => {
  const own = async (): Promise<Record<string, number>> => {
    const out: Record<string, number> = {};
    for (const t of Object.keys(TASKS)) out[t] = (model.soloExpert(t), await score())[t]!;
    return out;
  };

  it('the default router (task labels) matches each adapter alone; masking an expert loses only its task', async () => {
    const alone = await own();
    await model.mask(null).useGate(join(tmp.dir, 'router'));
    const routed = await score();
    for (const t of Object.keys(TASKS)) {
      expect(alone[t]).toBeGreaterThanOrEqual(0.9);
      expect(routed[t], `router on ${t}`).toBeGreaterThanOrEqual(0.95 * alone[t]!);
      model.mask([t]);
      const masked = await score();
      expect(masked[t], `masking ${t}`).toBeLessThanOrEqual(0.1);
      for (const other of Object.keys(TASKS).filter((o) => o !== t)) expect(Math.abs(masked[other]! - routed[other]!), `masking ${t} moves ${other}`).toBeLessThanOrEqual(0.05);
      model.mask(null);
    }
    const evals = readMetrics(join(tmp.dir, 'router', 'metrics.jsonl')).filter((m) => 'routing_accuracy' in m);
    expect(evals.at(-1)!.routing_accuracy).toBeGreaterThanOrEqual(0.95);
    expect(new Set(routerStepTensors.slice(1)).size).toBe(1);
  });

  it('the router taught by the LM loss alone reaches 90% of each adapter alone', async () => {
    const alone = await own();
    await model.mask(null).useGate(join(tmp.dir, 'router-lm'));
    const routed = await score();
    for (const t of Object.keys(TASKS)) expect(routed[t], `LM-loss router on ${t}`).toBeGreaterThanOrEqual(0.9 * alone[t]!);
  });
});

describe('MoLE composition of three task experts', () => {
  it('the gate recovers each task close to its own adapter and beats static equal weights; masking an expert loses its task and spares the others', async () => {
    const own: Record<string, number> = {};
    for (const t of Object.keys(TASKS)) own[t] = (model.soloExpert(t), await score())[t]!;
    model.mask(null).useWeights({ color: 1 / 3, fruit: 1 / 3, pet: 1 / 3 });
    const equal = await score();
    await model.useGate(join(tmp.dir, 'gate'));
    const gated = await score();
    for (const t of Object.keys(TASKS)) {
      expect(own[t]).toBeGreaterThanOrEqual(0.9);
      expect(gated[t], `gate on ${t}`).toBeGreaterThanOrEqual(0.95 * own[t]!);
      expect(gated[t]).toBeGreaterThan(equal[t]!);
      model.mask([t]);
      const masked = await score();
      expect(masked[t], `masking ${t}`).toBeLessThanOrEqual(0.1);
      for (const other of Object.keys(TASKS).filter((o) => o !== t)) {
        expect(Math.abs(masked[other]! - gated[other]!), `masking ${t} moves ${other}`).toBeLessThanOrEqual(0.02);
      }
      model.mask(null);
    }
  });

  it('with the balance loss on, no expert takes more than half of the mean gate weight', async () => {
    await model.mask(null).useGate(join(tmp.dir, 'gate'));
    const stats = await gateStatsOn(model.composition, test.dataset.train, test.dataset.taskNames, 32, Infinity);
    const mean = model.experts.map((_, i) => stats.gates.reduce((a, g) => a + g.meanWeight[i]!, 0) / stats.gates.length);
    expect(Math.max(...mean)).toBeLessThanOrEqual(0.5);
    expect(mean.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4);
  });

  it('numTensors stays flat across gate-training steps and generation', async () => {
    expect(new Set(gateStepTensors.slice(1)).size).toBe(1);
    await model.mask(null).useGate(join(tmp.dir, 'gate'));
    const counts: number[] = [];
    for (let i = 0; i < 5; i++) {
      await model.generate('pet abc =', { maxNewTokens: 4 });
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts).size).toBe(1);
  });

  it('logs per-layer mean gate weights and entropy at each eval', () => {
    const evals = readMetrics(join(tmp.dir, 'gate', 'metrics.jsonl')).filter((m) => 'gates' in m);
    expect(evals.length).toBeGreaterThan(0);
    const gates = evals.at(-1)!.gates as Record<string, { weights: Record<string, number>; entropy: number }>;
    expect(Object.keys(gates)).toContain('lm_head');
    for (const g of Object.values(gates)) {
      expect(Object.keys(g.weights)).toEqual(Object.keys(TASKS));
      expect(Object.values(g.weights).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 3);
      expect(g.entropy).toBeGreaterThanOrEqual(0);
    }
  });

  it('takes its settings flat, spelled as the CLI and recipes spell them, to the same gate as the nested form', async () => {
    const experts: [string, string][] = Object.keys(TASKS).map((t) => [t, join(tmp.dir, t)]);
    const run = { model: base, ...cols, seqLen: 32, batchSize: 16, lr: 3e-3, seed: 0, ...quiet, data: join(tmp.dir, 'mixed.csv'), steps: 4, evalEvery: 4, experts, router: 'mole' as const };
    await trainGate({ ...run, out: join(tmp.dir, 'gate-flat'), granularity: 'prefix', temperature: 1, balance: 0.2, level: 'block', topK: 2 });
    await trainGate({ ...run, out: join(tmp.dir, 'gate-nested'), gate: { granularity: 'prefix', temperature: { mode: 'fixed', value: 1 }, balanceAlpha: 0.2, level: 'block', topK: 2 } });
    const weights = (dir: string) => readFileSync(join(tmp.dir, dir, 'gate.safetensors'));
    expect(weights('gate-flat').equals(weights('gate-nested'))).toBe(true);
    await expect(trainGate({ ...run, out: join(tmp.dir, 'gate-both'), balance: 0.2, gate: { balanceAlpha: 0.2 } }))
      .rejects.toThrow('give the routing settings flat (balance) or as gate / routerOptions, not both');
    await expect(trainGate({ ...run, router: 'prompt', out: join(tmp.dir, 'gate-prompt'), balance: 0.2 }))
      .rejects.toThrow("balance: MoLE gate settings, for router 'mole' only (this is router 'prompt')");
  });

  it('a per-task profile switches experts, gate and mask without reloading the base', async () => {
    const file = join(tmp.dir, 'profiles.json');
    writeFileSync(file, JSON.stringify({ tasks: {
      all: { experts: { color: 'color', fruit: 'fruit', pet: 'pet' }, gate: 'gate' },
      'no-pet': { experts: { color: 'color', fruit: 'fruit', pet: 'pet' }, gate: 'gate', mask: ['pet'] },
      fruit: { experts: { fruit: 'fruit' } },
    } }));
    const p = readProfiles(file);
    const baseRef = model.base;
    await applyProfile(model, p.tasks.fruit!);
    expect(model.experts).toEqual(['fruit']);
    expect((await score()).fruit).toBeGreaterThanOrEqual(0.9);
    await applyProfile(model, p.tasks['no-pet']!);
    expect((await score()).pet).toBeLessThanOrEqual(0.1);
    await applyProfile(model, p.tasks.all!);
    expect(model.base).toBe(baseRef);
    expect(() => readProfiles(join(tmp.dir, 'missing.json'))).toThrow(/profiles file not found/);
  });
});
