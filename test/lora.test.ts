import * as tf from '@tensorflow/tfjs';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { LoraLayer } from '../src/adapters/lora.js';
import { DEFAULT_LORA, type LoraConfig } from '../src/adapters/config.js';
import { mergeAdapters } from '../src/adapters/merge.js';
import { loadAdapter, saveAdapter } from '../src/adapters/peft.js';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { readConfig } from '../src/base/config.js';
import { Linear } from '../src/base/linear.js';
import { buildParts, loadBase } from '../src/base/load.js';
import { CausalLM } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { logprobs } from '../src/base/scoring.js';
import { CheckpointWeights, type WeightSource } from '../src/base/weights.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';
import { checkLoraGradients } from './lora-gradients.js';

beforeAll(async () => {
  await initBackend();
});
const tmp = tempDir();
afterAll(() => tmp.cleanup());
const quiet = { warn: () => {} };
const probe = { ids: Int32Array.from([4, 8, 15, 16, 23, 42, 7, 9]), batch: 2, seq: 4 };

interface HandAdapter {
  dir: string;
  /** module → [r,in] A and [out,r] B, as PEFT stores them, and the module's scale. */
  mats: Map<string, { a: Float32Array; b: Float32Array; r: number; inF: number; outF: number; scale: number }>;
}

/**
 * Write a PEFT-layout adapter folder by hand, independent of molora's writer. Each module is
 * [in, out], or [in, out, rank, scale] where rank_pattern / alpha_pattern give it its own.
 */
function handAdapter(name: string, base: string, modules: Record<string, [number, number] | [number, number, number, number]>, cfg: Record<string, unknown>, seed: number): HandAdapter {
  const rng = new Rng(seed);
  const alpha = cfg.lora_alpha as number;
  const tensors: Record<string, TensorToWrite> = {};
  const mats: HandAdapter['mats'] = new Map();
  for (const [module, [inF, outF, r = cfg.r as number, scale = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r]] of Object.entries(modules)) {
    const a = rng.normalArray(r * inF, 0.3);
    const b = rng.normalArray(outF * r, 0.3);
    tensors[`base_model.model.${module}.lora_A.weight`] = { dtype: 'F32', shape: [r, inF], data: a };
    tensors[`base_model.model.${module}.lora_B.weight`] = { dtype: 'F32', shape: [outF, r], data: b };
    mats.set(module, { a, b, r, inF, outF, scale });
  }
  const dir = join(tmp.dir, name);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: base, ...cfg }));
  return { dir, mats };
}

/** The base with W ← W + scale·BA folded in on the host in float64, per REFERENCE.md §2. */
function referenceMerged(base: string, adapters: HandAdapter[], conv1d: boolean): CausalLM {
  const cfg = readConfig(base);
  const ckpt = openCheckpoint(base);
  const w = new CheckpointWeights(ckpt);
  const src: WeightSource = {
    has: (k) => w.has(k),
    get: (key, shape) => {
      const t = w.get(key, shape);
      const module = key.replace(/^(transformer\.)?/, conv1d ? 'transformer.' : '').replace(/\.weight$/, '');
      const deltas = adapters.flatMap((ad) => (ad.mats.has(module) ? [ad.mats.get(module)!] : []));
      if (deltas.length === 0) return t;
      const data = Float64Array.from(t.dataSync());
      t.dispose();
      for (const m of deltas) {
        for (let o = 0; o < m.outF; o++) {
          for (let i = 0; i < m.inF; i++) {
            let d = 0;
            for (let k = 0; k < m.r; k++) d += m.b[o * m.r + k]! * m.a[k * m.inF + i]!;
            // nn.Linear stores [out, in]; Conv1D stores [in, out] (ΔW transposed).
            data[conv1d ? i * m.outF + o : o * m.inF + i] += m.scale * d;
          }
        }
      }
      return tf.tensor(Float32Array.from(data), shape);
    },
    read: (key, shape) => tf.tidy(() => src.get(key, shape).dataSync() as Float32Array),
  };
  const model = new CausalLM(cfg, buildParts(cfg, src));
  ckpt.close();
  return model;
}

async function expectSameLogprobs(a: CausalLM, b: CausalLM, tol: number): Promise<void> {
  const x = await logprobs(a, probe);
  const y = await logprobs(b, probe);
  x.forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, y[i]![t]!)).toBeLessThan(tol)));
}

const LLAMA = join(MODEL_FIXTURES, 'llama-gqa');
const GPT2 = join(MODEL_FIXTURES, 'gpt2');

describe('PEFT adapters', () => {
  it('a Llama-key adapter gives W0x + scale·BAx, and two adapters sum (one of them rsLoRA)', async () => {
    const one = handAdapter('llama-a', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.1.self_attn.v_proj': [32, 16] }, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, 1);
    const two = handAdapter('llama-b', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.0.mlp.down_proj': [64, 32] }, { r: 2, lora_alpha: 6, use_rslora: true, target_modules: 'model\\.layers\\.0\\.(self_attn\\.q_proj|mlp\\.down_proj)' }, 2);
    const model = loadBase(LLAMA, quiet);
    const a = loadAdapter(model, one.dir, quiet);
    a.attach(model);
    const ref1 = referenceMerged(LLAMA, [one], false);
    await expectSameLogprobs(model, ref1, 1e-4);
    const b = loadAdapter(model, two.dir, quiet);
    expect(b.layers.get('model.layers.0.mlp.down_proj')!.scale).toBeCloseTo(6 / Math.sqrt(2), 6);
    b.attach(model);
    const ref2 = referenceMerged(LLAMA, [one, two], false);
    await expectSameLogprobs(model, ref2, 1e-4);
    for (const m of [model, ref1, ref2]) m.dispose();
    a.dispose();
    b.dispose();
  });

  it("loraA() and loraB() hand out the file's lora_A [r, in] and lora_B [out, r] as they were written", async () => {
    const hand = handAdapter('orientation', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.1.self_attn.v_proj': [32, 16] }, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, 3);
    const model = loadBase(LLAMA, quiet);
    const adapter = loadAdapter(model, hand.dir, quiet);
    const before = tf.memory().numTensors;
    for (const [module, m] of hand.mats) {
      const l = adapter.layers.get(module)!;
      expect([l.rank, l.inFeatures, l.outFeatures, l.parameterCount]).toEqual([m.r, m.inF, m.outF, m.r * (m.inF + m.outF)]);
      const [A, B] = [l.loraA(), l.loraB()];
      expect([A.shape, B.shape]).toEqual([[m.r, m.inF], [m.outF, m.r]]);
      expect([maxAbsDiff(await A.data(), m.a), maxAbsDiff(await B.data(), m.b)]).toEqual([0, 0]);
      tf.dispose([A, B]);
    }
    expect(tf.memory().numTensors).toBe(before);
    adapter.dispose();
    model.dispose();
  });

  it('a GPT-2 adapter with fan_in_fan_out loads in nn.Linear orientation and matches', async () => {
    const ad = handAdapter('gpt2-a', GPT2, { 'transformer.h.0.attn.c_attn': [32, 96], 'transformer.h.1.mlp.c_fc': [32, 64] }, { r: 4, lora_alpha: 16, fan_in_fan_out: true, target_modules: ['c_attn', 'c_fc'] }, 3);
    const model = loadBase(GPT2, quiet);
    const adapter = loadAdapter(model, ad.dir, quiet);
    adapter.attach(model);
    const ref = referenceMerged(GPT2, [ad], true);
    await expectSameLogprobs(model, ref, 1e-4);
    model.dispose();
    ref.dispose();
    adapter.dispose();
  });

  it('writes exactly PEFT key names, shapes and config keys, and reads them back', async () => {
    const model = loadBase(LLAMA, quiet);
    const cfg: LoraConfig = { ...DEFAULT_LORA, rank: 4, alpha: 8, targets: ['q_proj', 'v_proj'], baseModel: 'llama-gqa' };
    const adapter = createLora(model, cfg, 'fresh', new Rng(5));
    // B = 0 at init: the adapter starts as the identity.
    const base = await logprobs(model, probe);
    adapter.attach(model);
    (await logprobs(model, probe)).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, base[i]![t]!)).toBe(0)));
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.2, 'float32', 7));
    const dir = join(tmp.dir, 'written');
    await saveAdapter(adapter, dir);
    const file = openSafetensors(join(dir, 'adapter_model.safetensors'));
    expect(file.metadata).toEqual({ format: 'pt' });
    expect([...file.tensors.keys()].sort()).toEqual(
      [0, 1].flatMap((i) => ['q_proj', 'v_proj'].flatMap((p) => ['A', 'B'].map((w) => `base_model.model.model.layers.${i}.self_attn.${p}.lora_${w}.weight`))).sort(),
    );
    expect(file.tensors.get('base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight')!.shape).toEqual([4, 32]);
    expect(file.tensors.get('base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight')!.shape).toEqual([16, 4]);
    const json = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    for (const k of ['peft_type', 'task_type', 'r', 'lora_alpha', 'lora_dropout', 'target_modules', 'use_rslora', 'fan_in_fan_out', 'bias', 'layers_to_transform', 'rank_pattern', 'alpha_pattern', 'modules_to_save', 'use_dora', 'base_model_name_or_path', 'init_lora_weights']) {
      expect(json).toHaveProperty(k);
    }
    expect(json).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, bias: 'none', use_dora: false });
    const withAdapter = await logprobs(model, probe);
    adapter.dispose();
    const again = loadAdapter(model, dir, quiet);
    again.attach(model);
    (await logprobs(model, probe)).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, withAdapter[i]![t]!)).toBe(0)));
    again.dispose();
    model.dispose();
  });

  it('rejects what it cannot apply, naming the file and tensor', () => {
    const model = loadBase(LLAMA, quiet);
    const wrong = handAdapter('no-match', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32] }, { r: 2, lora_alpha: 2, target_modules: ['q_proj'] }, 4);
    // Rename its tensors onto a module the base lacks.
    const f = openSafetensors(join(wrong.dir, 'adapter_model.safetensors'));
    const renamed: Record<string, TensorToWrite> = {};
    for (const k of f.tensors.keys()) renamed[k.replace('self_attn.q_proj', 'self_attn.qkv_proj')] = { ...f.read(k) } as TensorToWrite;
    writeSafetensors(join(wrong.dir, 'adapter_model.safetensors'), renamed, { format: 'pt' });
    expect(() => loadAdapter(model, wrong.dir, quiet)).toThrow(/tensor 'base_model\.model\.model\.layers\.0\.self_attn\.qkv_proj\.lora_A\.weight' targets module 'model\.layers\.0\.self_attn\.qkv_proj', which the llama base does not have/);

    const shape = handAdapter('bad-shape', LLAMA, { 'model.layers.0.self_attn.k_proj': [32, 32] }, { r: 2, lora_alpha: 2, target_modules: ['k_proj'] }, 5);
    expect(() => loadAdapter(model, shape.dir, quiet)).toThrow(/lora_B\.weight' has shape \[32,2\], the base and adapter_config\.json imply \[16,2\]/);

    const warnings: string[] = [];
    const newer = handAdapter('newer', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32] }, { r: 2, lora_alpha: 2, target_modules: ['q_proj'], some_future_key: 1 }, 6);
    loadAdapter(model, newer.dir, { warn: (m) => warnings.push(m) }).dispose();
    expect(warnings.join()).toMatch(/ignoring unknown config key\(s\): some_future_key/);

    const pissa = handAdapter('pissa', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32] }, { r: 2, lora_alpha: 2, target_modules: ['q_proj'], init_lora_weights: 'pissa' }, 7);
    expect(() => loadAdapter(model, pissa.dir, quiet)).toThrow(/rewrote the base model's weights/);

    expect(() => createLora(model, { ...DEFAULT_LORA, targets: ['c_attn'] }, 'x', new Rng(0))).toThrow(/match no module of the llama base \(its linear layers: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head\)/);
    model.dispose();
  });
});

describe('merge', () => {
  it('a merged model equals base + adapter, and unmerge restores the base exactly', async () => {
    const model = loadBase(LLAMA, quiet);
    const baseWeights = model.linears().map((l) => l.weightT.dataSync().slice());
    const ad = handAdapter('merge', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.1.mlp.up_proj': [32, 64] }, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'up_proj'] }, 8);
    const adapter = loadAdapter(model, ad.dir, quiet);
    adapter.attach(model);
    const unmerged = await logprobs(model, probe);
    const merge = mergeAdapters(model, [adapter]);
    expect(model.linears().every((l) => l.hooks.length === 0)).toBe(true);
    (await logprobs(model, probe)).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, unmerged[i]![t]!)).toBeLessThan(1e-4)));
    merge.unmerge();
    model.linears().forEach((l, i) => expect(Buffer.from(l.weightT.dataSync().buffer).equals(Buffer.from(baseWeights[i]!.buffer))).toBe(true));
    adapter.dispose();
    model.dispose();
  });
});

describe('gradients', () => {
  it.each([false, true])('LoRA gradients match central finite differences on many entries (training %s)', (training) => checkLoraGradients(training, { entries: 24 }));

  it('a training Linear follows a replaced weightT, and a trainable weight gets its own gradient', () => {
    const lin = new Linear('l', tf.tensor2d([[1, 2], [3, 4], [5, 6]]), null, false);
    const ctx = { batch: 1, seq: 2, training: true, tokenMask: tf.ones([2, 1]) as tf.Tensor2D, realTokens: new Float32Array(2).fill(1), aux: [], rng: null };
    const x = tf.tensor2d([[1, 0, 2], [0, 1, -1]]);
    const dx = () => Array.from(tf.grad((a) => lin.forward(a as tf.Tensor2D, ctx).sum())(x).dataSync());
    // d(sum(x·wT))/dx = row sums of wT, for every row of x.
    expect(dx()).toEqual([3, 7, 11, 3, 7, 11]);
    lin.weightT = tf.tensor2d([[1, 0], [0, 1], [2, 2]]);
    expect(dx()).toEqual([1, 1, 4, 1, 1, 4]);
    const w = tf.variable(tf.tensor2d([[1, 0], [0, 1], [0, 0]]), true);
    lin.weightT = w as unknown as tf.Tensor2D;
    const { grads } = tf.variableGrads(() => lin.forward(x, ctx).sum() as tf.Scalar, [w]);
    expect(Array.from(grads[w.name]!.dataSync())).toEqual([1, 1, 1, 1, 1, 1]);
    lin.dispose();
  });
});

describe('LoRA dropout', () => {
  const P = 0.3;

  it('eval equals no dropout; training drops adapter-input features and scales the rest by 1/(1 − p)', () => {
    // Six input features, so each row's dropped features can be found by trying all 64 patterns.
    const [IN, R, OUT, ROWS, SCALE] = [6, 2, 5, 400, 1.5];
    const rng = new Rng(21);
    const aT = tf.variable(tf.tensor2d(rng.normalArray(IN * R, 1), [IN, R]));
    const bT = tf.variable(tf.tensor2d(rng.normalArray(R * OUT, 1), [R, OUT]));
    const layer = new LoraLayer('l', aT, bT, SCALE, P);
    const xRow = rng.normalArray(IN, 1);
    const x = tf.tensor2d(Float32Array.from({ length: ROWS * IN }, (_, k) => xRow[k % IN]!), [ROWS, IN]);
    const ctx = (training: boolean) => ({ batch: ROWS, seq: 1, training, tokenMask: tf.ones([ROWS, 1]) as tf.Tensor2D, realTokens: new Float32Array(ROWS).fill(1), aux: [], rng: new Rng(5) });
    const evalOut = layer.delta(x, ctx(false)).dataSync();
    expect(evalOut).toEqual(new LoraLayer('l', aT, bT, SCALE, 0).delta(x, ctx(false)).dataSync());
    const trained = layer.delta(x, ctx(true)).dataSync();

    // scale · x′ A B on the host, for x′ = x with the features outside `kept` zeroed, the rest / (1 − p).
    const [a, b] = [aT.dataSync(), bT.dataSync()];
    const adapterOn = (kept: number): number[] => {
      const xa = Array.from({ length: R }, (_, k) => xRow.reduce((s, v, i) => s + ((kept >> i) & 1 ? v / (1 - P) : 0) * a[i * R + k]!, 0));
      return Array.from({ length: OUT }, (_, o) => SCALE * xa.reduce((s, v, k) => s + v * b[k * OUT + o]!, 0));
    };
    const patterns = Array.from({ length: 2 ** IN }, (_, m) => adapterOn(m));
    let keptFeatures = 0;
    const mean = new Float64Array(OUT);
    for (let r = 0; r < ROWS; r++) {
      const row = trained.subarray(r * OUT, (r + 1) * OUT);
      const dist = patterns.map((p) => maxAbsDiff(row, p));
      const m = dist.indexOf(Math.min(...dist));
      expect(dist[m], `row ${r}`).toBeLessThan(1e-5);
      for (let i = 0; i < IN; i++) keptFeatures += (m >> i) & 1;
      row.forEach((v, o) => (mean[o] += v / ROWS));
    }
    // Each feature is kept with probability 1 − p (4σ bound), so the expected output is eval's.
    expect(Math.abs(keptFeatures / (ROWS * IN) - (1 - P))).toBeLessThan(4 * Math.sqrt((P * (1 - P)) / (ROWS * IN)));
    const norm = Math.hypot(...evalOut.subarray(0, OUT));
    expect(Math.hypot(...Array.from(mean, (v, o) => v - evalOut[o]!)) / norm).toBeLessThan(0.1);
    tf.dispose([aT, bT, x]);
  });

  it('in a model, only the adapter input is dropped, only in training, from the pass\'s rng', () => {
    const model = loadBase(LLAMA, quiet);
    const adapter = createLora(model, { ...DEFAULT_LORA, rank: 2, dropout: 0.5, targets: ['q_proj', 'v_proj', 'down_proj'] }, 'd', new Rng(4));
    // Scripts written before the rename read the settings under their former names.
    expect([adapter.config.r, adapter.config.loraDropout, adapter.config.targetModules]).toEqual([2, 0.5, ['q_proj', 'v_proj', 'down_proj']]);
    adapter.attach(model);
    const run = (opts: { training?: boolean; rng?: Rng | null }): Float32Array => {
      const t = tf.tidy(() => model.forward(probe, opts));
      const out = t.dataSync() as Float32Array;
      t.dispose();
      return out;
    };
    // B = 0: the adapter adds nothing, so with dropout drawn the pass is the base's, unchanged.
    expect(maxAbsDiff(run({ training: true, rng: new Rng(6) }), run({ training: true, rng: null }))).toBe(0);
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.3, 'float32', 8));
    expect(maxAbsDiff(run({ training: true, rng: new Rng(6) }), run({ training: true, rng: null }))).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(run({ training: false, rng: new Rng(6) }), run({}))).toBe(0);
    adapter.dispose();
    model.dispose();
  });
});

describe('rank_pattern and alpha_pattern', () => {
  const R = 4;
  const ALPHA = 8;
  const config = { r: R, lora_alpha: ALPHA, target_modules: ['q_proj', 'v_proj'], rank_pattern: { 'model.layers.0.self_attn.q_proj': 2 }, alpha_pattern: { v_proj: 3 } };
  // What PEFT gives each module under that config, written out by hand: [in, out, rank, scale].
  const MODULES: Record<string, [number, number, number, number]> = {
    'model.layers.0.self_attn.q_proj': [32, 32, 2, ALPHA / 2],
    'model.layers.1.self_attn.q_proj': [32, 32, R, ALPHA / R],
    'model.layers.0.self_attn.v_proj': [32, 16, R, 3 / R],
    'model.layers.1.self_attn.v_proj': [32, 16, R, 3 / R],
  };

  it('a loaded adapter gets each module\'s rank and scale, and its outputs match W0x + scale·BAx', async () => {
    const ad = handAdapter('patterns', LLAMA, MODULES, config, 12);
    const model = loadBase(LLAMA, quiet);
    const adapter = loadAdapter(model, ad.dir, quiet);
    expect(Object.fromEntries([...adapter.layers].map(([m, l]) => [m, [l.rank, l.scale]]))).toEqual(Object.fromEntries(Object.entries(MODULES).map(([m, [, , r, s]]) => [m, [r, s]])));
    adapter.attach(model);
    const ref = referenceMerged(LLAMA, [ad], false);
    await expectSameLogprobs(model, ref, 1e-4);
    adapter.dispose();
    ref.dispose();
    model.dispose();
  });

  it('a new adapter takes them from its config, and saves them', async () => {
    const model = loadBase(LLAMA, quiet);
    const cfg: LoraConfig = { ...DEFAULT_LORA, rank: R, alpha: ALPHA, targets: ['q_proj', 'v_proj'], rankPattern: config.rank_pattern, alphaPattern: config.alpha_pattern };
    const adapter = createLora(model, cfg, 'fresh', new Rng(13));
    expect(Object.fromEntries([...adapter.layers].map(([m, l]) => [m, [l.aT.shape[1], l.bT.shape[0], l.scale]]))).toEqual(Object.fromEntries(Object.entries(MODULES).map(([m, [, , r, s]]) => [m, [r, r, s]])));
    const dir = join(tmp.dir, 'patterns-written');
    await saveAdapter(adapter, dir);
    expect(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'))).toMatchObject({ rank_pattern: config.rank_pattern, alpha_pattern: config.alpha_pattern });
    expect(openSafetensors(join(dir, 'adapter_model.safetensors')).tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')!.shape).toEqual([2, 32]);
    adapter.dispose();
    model.dispose();
  });
});
