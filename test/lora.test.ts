import * as tf from '@tensorflow/tfjs';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA, type LoraConfig } from '../src/adapters/config.js';
import { mergeAdapters } from '../src/adapters/merge.js';
import { loadAdapter, saveAdapter } from '../src/adapters/peft.js';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { readConfig } from '../src/base/config.js';
import { Linear } from '../src/base/linear.js';
import { buildParts, loadBase } from '../src/base/load.js';
import { crossEntropy } from '../src/base/loss.js';
import { CausalLM } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { logprobs } from '../src/base/scoring.js';
import { CheckpointWeights, type WeightSource } from '../src/base/weights.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});
const tmp = tempDir();
afterAll(() => tmp.cleanup());
const quiet = { warn: () => {} };
const probe = { ids: Int32Array.from([4, 8, 15, 16, 23, 42, 7, 9]), batch: 2, seq: 4 };

interface HandAdapter {
  dir: string;
  /** module → [r,in] A and [out,r] B, as PEFT stores them. */
  mats: Map<string, { a: Float32Array; b: Float32Array; r: number; inF: number; outF: number }>;
  scale: number;
}

/** Write a PEFT-layout adapter folder by hand, independent of molora's writer. */
function handAdapter(name: string, base: string, modules: Record<string, [number, number]>, cfg: Record<string, unknown>, seed: number): HandAdapter {
  const rng = new Rng(seed);
  const r = cfg.r as number;
  const tensors: Record<string, TensorToWrite> = {};
  const mats: HandAdapter['mats'] = new Map();
  for (const [module, [inF, outF]] of Object.entries(modules)) {
    const a = rng.normalArray(r * inF, 0.3);
    const b = rng.normalArray(outF * r, 0.3);
    tensors[`base_model.model.${module}.lora_A.weight`] = { dtype: 'F32', shape: [r, inF], data: a };
    tensors[`base_model.model.${module}.lora_B.weight`] = { dtype: 'F32', shape: [outF, r], data: b };
    mats.set(module, { a, b, r, inF, outF });
  }
  const dir = join(tmp.dir, name);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: base, ...cfg }));
  const alpha = cfg.lora_alpha as number;
  return { dir, mats, scale: cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r };
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
      const deltas = adapters.flatMap((ad) => (ad.mats.has(module) ? [{ m: ad.mats.get(module)!, s: ad.scale }] : []));
      if (deltas.length === 0) return t;
      const data = Float64Array.from(t.dataSync());
      t.dispose();
      for (const { m, s } of deltas) {
        for (let o = 0; o < m.outF; o++) {
          for (let i = 0; i < m.inF; i++) {
            let d = 0;
            for (let k = 0; k < m.r; k++) d += m.b[o * m.r + k]! * m.a[k * m.inF + i]!;
            // nn.Linear stores [out, in]; Conv1D stores [in, out] (ΔW transposed).
            data[conv1d ? i * m.outF + o : o * m.inF + i] += s * d;
          }
        }
      }
      return tf.tensor(Float32Array.from(data), shape);
    },
  };
  const model = new CausalLM(cfg, buildParts(cfg, src));
  ckpt.close();
  return model;
}

function expectSameLogprobs(a: CausalLM, b: CausalLM, tol: number): void {
  const x = logprobs(a, probe);
  const y = logprobs(b, probe);
  x.forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, y[i]![t]!)).toBeLessThan(tol)));
}

const LLAMA = join(MODEL_FIXTURES, 'llama-gqa');
const GPT2 = join(MODEL_FIXTURES, 'gpt2');

describe('PEFT adapters', () => {
  it('a Llama-key adapter gives W0x + scale·BAx, and two adapters sum (one of them rsLoRA)', () => {
    const one = handAdapter('llama-a', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.1.self_attn.v_proj': [32, 16] }, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, 1);
    const two = handAdapter('llama-b', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.0.mlp.down_proj': [64, 32] }, { r: 2, lora_alpha: 6, use_rslora: true, target_modules: 'model\\.layers\\.0\\.(self_attn\\.q_proj|mlp\\.down_proj)' }, 2);
    const model = loadBase(LLAMA, quiet);
    const a = loadAdapter(model, one.dir, quiet);
    a.attach(model);
    const ref1 = referenceMerged(LLAMA, [one], false);
    expectSameLogprobs(model, ref1, 1e-4);
    const b = loadAdapter(model, two.dir, quiet);
    expect(b.layers.get('model.layers.0.mlp.down_proj')!.scale).toBeCloseTo(6 / Math.sqrt(2), 6);
    b.attach(model);
    const ref2 = referenceMerged(LLAMA, [one, two], false);
    expectSameLogprobs(model, ref2, 1e-4);
    for (const m of [model, ref1, ref2]) m.dispose();
    a.dispose();
    b.dispose();
  });

  it('a GPT-2 adapter with fan_in_fan_out loads in nn.Linear orientation and matches', () => {
    const ad = handAdapter('gpt2-a', GPT2, { 'transformer.h.0.attn.c_attn': [32, 96], 'transformer.h.1.mlp.c_fc': [32, 64] }, { r: 4, lora_alpha: 16, fan_in_fan_out: true, target_modules: ['c_attn', 'c_fc'] }, 3);
    const model = loadBase(GPT2, quiet);
    const adapter = loadAdapter(model, ad.dir, quiet);
    adapter.attach(model);
    const ref = referenceMerged(GPT2, [ad], true);
    expectSameLogprobs(model, ref, 1e-4);
    model.dispose();
    ref.dispose();
    adapter.dispose();
  });

  it('writes exactly PEFT key names, shapes and config keys, and reads them back', () => {
    const model = loadBase(LLAMA, quiet);
    const cfg: LoraConfig = { ...DEFAULT_LORA, r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], baseModel: 'llama-gqa' };
    const adapter = createLora(model, cfg, 'fresh', new Rng(5));
    // B = 0 at init: the adapter starts as the identity.
    const base = logprobs(model, probe);
    adapter.attach(model);
    logprobs(model, probe).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, base[i]![t]!)).toBe(0)));
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.2, 'float32', 7));
    const dir = join(tmp.dir, 'written');
    saveAdapter(adapter, dir);
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
    const withAdapter = logprobs(model, probe);
    adapter.dispose();
    const again = loadAdapter(model, dir, quiet);
    again.attach(model);
    logprobs(model, probe).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, withAdapter[i]![t]!)).toBe(0)));
    again.dispose();
    model.dispose();
  });

  it('rejects what it cannot apply, naming the file and tensor', () => {
    const model = loadBase(LLAMA, quiet);
    const wrong = handAdapter('no-match', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32] }, { r: 2, lora_alpha: 2, target_modules: ['q_proj'] }, 4);
    // Rename its tensors onto a module the base lacks.
    const f = openSafetensors(join(wrong.dir, 'adapter_model.safetensors'));
    const renamed: Record<string, TensorToWrite> = {};
    for (const k of f.tensors.keys()) renamed[k.replace('self_attn.q_proj', 'self_attn.qkv_proj')] = { dtype: 'F32', ...f.read(k) } as TensorToWrite;
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

    expect(() => createLora(model, { ...DEFAULT_LORA, targetModules: ['c_attn'] }, 'x', new Rng(0))).toThrow(/match no module of the llama base \(its linear layers: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head\)/);
    model.dispose();
  });
});

describe('merge', () => {
  it('a merged model equals base + adapter, and unmerge restores the base exactly', () => {
    const model = loadBase(LLAMA, quiet);
    const baseWeights = model.linears().map((l) => l.weightT.dataSync().slice());
    const ad = handAdapter('merge', LLAMA, { 'model.layers.0.self_attn.q_proj': [32, 32], 'model.layers.1.mlp.up_proj': [32, 64] }, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'up_proj'] }, 8);
    const adapter = loadAdapter(model, ad.dir, quiet);
    adapter.attach(model);
    const unmerged = logprobs(model, probe);
    const merge = mergeAdapters(model, [adapter]);
    expect(model.linears().every((l) => l.hooks.length === 0)).toBe(true);
    logprobs(model, probe).forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, unmerged[i]![t]!)).toBeLessThan(1e-4)));
    merge.unmerge();
    model.linears().forEach((l, i) => expect(Buffer.from(l.weightT.dataSync().buffer).equals(Buffer.from(baseWeights[i]!.buffer))).toBe(true));
    adapter.dispose();
    model.dispose();
  });
});

describe('gradients', () => {
  it.each([false, true])('LoRA gradients match central finite differences (training %s)', (training) => {
    const model = loadBase(LLAMA, quiet);
    const adapter = createLora(model, { ...DEFAULT_LORA, r: 2, loraAlpha: 4, targetModules: ['q_proj', 'down_proj'] }, 'g', new Rng(1));
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.3, 'float32', 3));
    adapter.attach(model);
    const targets = Int32Array.from([8, 15, 16, 23, 7, 9, 3, 1]);
    const weights = new Float32Array(8).fill(1);
    // Training runs the frozen linears through their kept transposes (ops.frozenLinear).
    const loss = (): tf.Scalar => crossEntropy(model.forward(probe, { training }), targets, weights).mean;
    const { grads } = tf.variableGrads(loss, [...adapter.params().values()]);
    const rng = new Rng(11);
    for (const [key, v] of adapter.params()) {
      const g = grads[v.name]!.dataSync();
      for (let trial = 0; trial < 3; trial++) {
        const i = rng.int(v.size);
        const orig = v.dataSync().slice();
        const at = (delta: number): number => {
          const x = orig.slice();
          x[i] += delta;
          v.assign(tf.tensor(x, v.shape));
          return tf.tidy(() => loss().dataSync()[0]!);
        };
        const h = 1e-2;
        const fd = (at(h) - at(-h)) / (2 * h);
        v.assign(tf.tensor(orig, v.shape));
        expect(Math.abs(fd - g[i]!), `${key}[${i}]: fd ${fd} vs grad ${g[i]}`).toBeLessThan(2e-3 + 0.05 * Math.abs(fd));
      }
    }
    tf.dispose(Object.values(grads));
    adapter.dispose();
    model.dispose();
  });

  it('a training Linear follows a replaced weightT, and a trainable weight gets its own gradient', () => {
    const lin = new Linear('l', tf.tensor2d([[1, 2], [3, 4], [5, 6]]), null, false);
    const ctx = { batch: 1, seq: 2, training: true, tokenMask: tf.ones([2, 1]) as tf.Tensor2D, aux: [], rng: null };
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
