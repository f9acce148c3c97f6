import * as tf from '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { LoraAdapter } from '../src/adapters/adapter.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { openSafetensors } from '../src/base/safetensors.js';
import { MoleComposition } from '../src/gating/composition.js';
import { expertFingerprint, GATE_CONFIG, GATE_WEIGHTS, loadGate, saveGate } from '../src/gating/gate-io.js';
import type { GateOptions } from '../src/gating/mole.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';
import { installReference, logits, randomExpert } from './mole-reference.js';

let model: CausalLM;
const tmp = tempDir('molora-gate-');
beforeAll(async () => {
  await initBackend();
  model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'));
});
afterAll(() => tmp.cleanup());

const SPECS: [string, string[], number][] = [
  ['math', ['q_proj', 'v_proj'], 1],
  ['code', ['v_proj', 'down_proj'], 2],
  ['law', ['q_proj', 'up_proj', 'down_proj'], 3],
];

const live: MoleComposition[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

/** A composition over the named experts (same seeds, so the same tensors every time). */
function compose(names: string[], changed: (e: LoraAdapter) => void = () => {}): MoleComposition {
  const comp = new MoleComposition(model);
  for (const name of names) {
    const spec = SPECS.find(([n]) => n === name);
    const e = randomExpert(model, name, spec ? spec[1] : ['o_proj'], spec ? spec[2] : 99);
    changed(e);
    comp.addExpert(name, e);
  }
  live.push(comp);
  return comp;
}

const BATCH: TokenBatch = {
  ids: Int32Array.from([0, 5, 17, 33, 8, 12, 40, 3, 77, 61]),
  attentionMask: Uint8Array.from([0, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
  batch: 2,
  seq: 5,
};
const ALL = ['math', 'code', 'law'];

async function savedGate(options: Partial<GateOptions>, name: string): Promise<{ dir: string; out: Float32Array }> {
  const comp = compose(ALL);
  comp.initGate(options, new Rng(21), { eStd: 0.5, tau: 0.8 });
  const dir = join(tmp.dir, name);
  await saveGate(comp, dir);
  const out = logits(model, BATCH);
  // Off the base, so the next composition runs alone.
  live.splice(live.indexOf(comp), 1);
  comp.dispose();
  return { dir, out };
}

describe('gate folder', () => {
  it.each<[string, Partial<GateOptions>]>([
    ['layer, token, learned τ', {}],
    ['block, sequence, top-2, fixed τ, α 0.1', { level: 'block', granularity: 'sequence', topK: 2, temperature: { mode: 'fixed', value: 0.6 }, balanceAlpha: 0.1 }],
  ])('round trip gives identical outputs (%s)', async (name, options) => {
    const { dir, out } = await savedGate(options, name.replace(/\W+/g, '-'));
    const comp = compose(ALL);
    const gates = await loadGate(comp, dir);
    expect(gates.options).toEqual({ level: 'layer', granularity: 'token', topK: null, temperature: { mode: 'learned' }, balanceAlpha: 0.5, ...options });
    expect(logits(model, BATCH)).toEqual(out);
  });

  it('writes the experts’ fingerprints and the gate settings', async () => {
    const { dir } = await savedGate({ topK: 2 }, 'config');
    const cfg = JSON.parse(readFileSync(join(dir, GATE_CONFIG), 'utf8'));
    const comp = compose(ALL);
    const want = [];
    for (const name of ALL) {
      const f = await expertFingerprint(comp.expert(name));
      want.push({ name, config_sha256: f.config, tensors_sha256: f.tensors });
    }
    expect(cfg.experts).toEqual(want);
    expect(cfg).toMatchObject({ level: 'layer', granularity: 'token', top_k: 2, temperature: { mode: 'learned' }, balance_alpha: 0.5, modules: comp.gatedModules() });
    const keys = [...openSafetensors(join(dir, GATE_WEIGHTS)).tensors.keys()].sort();
    expect(keys).toEqual(comp.gatedModules().flatMap((m) => [`${m}.mole_gate.e`, `${m}.mole_gate.rho`]).sort());
  });

  it('loads into experts added in another order (the gate follows them)', async () => {
    const { dir, out } = await savedGate({ topK: 2 }, 'order');
    const comp = compose(['law', 'math', 'code']);
    await loadGate(comp, dir);
    // Equal up to float32 summation order (LayerNorm over a permuted concatenation).
    expect(maxAbsDiff(logits(model, BATCH), out)).toBeLessThan(1e-4);
    // Masks and gate columns follow the composition's order.
    comp.mask(['code', 'math']);
    const masked = logits(model, BATCH);
    comp.detach();
    const experts = comp.experts.map((n) => comp.expert(n));
    const undo = installReference(model, { experts, gates: comp.gate, mask: [[0, 1, 1]] });
    const want = logits(model, BATCH);
    undo();
    comp.attach();
    expect(maxAbsDiff(masked, want)).toBeLessThan(1e-4);
  });

  it('refuses a changed, a missing or an extra expert, naming it', async () => {
    const { dir } = await savedGate({}, 'refuse');
    const oneValue = (e: LoraAdapter): void => {
      if (e.name !== 'code') return;
      const l = e.layers.values().next().value!;
      const b = l.bT.arraySync();
      b[0]![0]! += 1e-3;
      tf.tidy(() => l.bT.assign(tf.tensor2d(b)));
    };
    await expect(loadGate(compose(ALL, oneValue), dir)).rejects.toThrow(/expert 'code' changed: its tensors differ/);
    const otherAlpha = (e: LoraAdapter): void => {
      if (e.name === 'law') (e.config as { alpha: number }).alpha = 3;
    };
    await expect(loadGate(compose(ALL, otherAlpha), dir)).rejects.toThrow(/expert 'law' changed: its adapter_config.json differs/);
    await expect(loadGate(compose(['math', 'law']), dir)).rejects.toThrow(/expert 'code' is missing/);
    await expect(loadGate(compose([...ALL, 'poetry']), dir)).rejects.toThrow(/expert 'poetry' is extra/);
  });
});

describe('hot-swap', () => {
  it('replaces an expert’s tensors in place: same variables, no new tensors, new outputs', () => {
    const comp = compose(ALL);
    comp.initGate({}, new Rng(22), { eStd: 0.5 });
    const before = logits(model, BATCH);
    const variables = [...comp.expert('code').params().values()];
    const replacement = randomExpert(model, 'code-v2', ['v_proj', 'down_proj'], 42);
    const tensors = tf.memory().numTensors;
    comp.swapExpert('code', replacement);
    expect(tf.memory().numTensors).toBe(tensors);
    expect([...comp.expert('code').params().values()]).toEqual(variables);
    replacement.dispose();

    const after = logits(model, BATCH);
    expect(maxAbsDiff(before, after)).toBeGreaterThan(1e-3);
    comp.detach();
    const experts = comp.experts.map((n) => comp.expert(n));
    const undo = installReference(model, { experts, gates: comp.gate });
    const want = logits(model, BATCH);
    undo();
    comp.attach();
    expect(maxAbsDiff(after, want)).toBeLessThan(1e-4);
    expect(variables.every((v) => !v.trainable)).toBe(true);
  });

  it('refuses a replacement on other modules or ranks', () => {
    const comp = compose(ALL);
    const other = randomExpert(model, 'x', ['v_proj'], 5);
    expect(() => comp.swapExpert('code', other)).toThrow(/swap of expert 'code'.*lacks model\.layers\.0\.mlp\.down_proj/);
    other.dispose();
    const rank8 = randomExpert(model, 'y', ['v_proj', 'down_proj'], 5, 8);
    expect(() => comp.swapExpert('code', rank8)).toThrow(/rank 8 in the replacement, 4 in the expert/);
    rank8.dispose();
  });
});
