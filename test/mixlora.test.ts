import * as tf from '@tensorflow/tfjs';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LORA, type LoraConfig } from '../src/adapters/config.js';
import { loadAdapter } from '../src/adapters/peft.js';
import { trainAdapter } from '../src/adapters/train-adapter.js';
import { initBackend } from '../src/base/backend.js';
import type { ForwardContext } from '../src/base/context.js';
import { generate } from '../src/base/generate.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { openSafetensors, writeSafetensors } from '../src/base/safetensors.js';
import { logprobs } from '../src/base/scoring.js';
import { createMixLora, MixLoraFFN, type MixLoraAdapter } from '../src/adapters/mixlora.js';
import { attachAdapterFolders, loadMixLora, MIXLORA_CONFIG, MIXLORA_WEIGHTS, saveMixLora } from '../src/adapters/mixlora-io.js';
import { readMetrics } from '../src/train/metrics.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';
import { taskCsv, TASK_COLUMNS, writeDenseBase } from './moe-train-fixtures.js';

const tmp = tempDir();
const base = join(tmp.dir, 'base');
const quiet = { warn: () => {} };
const lora = (targets: string[]): LoraConfig => ({ ...DEFAULT_LORA, targets });
// Two rows, the second left-padded.
const batch = {
  ids: Int32Array.from([5, 9, 13, 17, 21, 25, 0, 0, 40, 41, 42, 43]),
  attentionMask: Uint8Array.from([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]),
  batch: 2,
  seq: 6,
};

/** Worst |Δ log-prob| over the real positions of `batch`. */
function worstDiff(a: Float32Array[][], b: Float32Array[][]): number {
  let worst = 0;
  a.forEach((row, i) => row.forEach((lp, t) => {
    if (batch.attentionMask[i * batch.seq + t]) worst = Math.max(worst, maxAbsDiff(lp, b[i]![t]!));
  }));
  return worst;
}

/** Give every B (and the routers) random values, so the adapter changes the model. */
function randomise(a: MixLoraAdapter, seed: number): void {
  const rng = new Rng(seed);
  for (const [key, v] of a.params()) {
    if (key.endsWith('lora_A.weight')) continue;
    tf.tidy(() => v.assign(tf.tensor(rng.normalArray(v.size, 0.1), v.shape)));
  }
}

beforeAll(async () => {
  await initBackend();
  await writeDenseBase(base);
  taskCsv(tmp.dir);
});
afterAll(() => tmp.cleanup());
afterEach(() => {
  expect(tf.memory().numTensors).toBe(0);
});

describe('MixLoRA', () => {
  it('a fresh adapter (B = 0) leaves the model unchanged; detaching restores the dense FFNs', async () => {
    const model = loadBase(base, quiet);
    const plain = await logprobs(model, batch);
    const ffns = model.blocks.map((b) => b.ffn);
    const mix = createMixLora(model, lora(['q_proj', 'v_proj']), { experts: 4, topK: 2 }, 'fresh', new Rng(0));
    mix.attach(model);
    expect(model.blocks.every((b) => b.ffn instanceof MixLoraFFN)).toBe(true);
    expect([...mix.params().keys()]).toEqual(expect.arrayContaining([
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
      'base_model.model.model.layers.1.mlp.router.weight',
      'base_model.model.model.layers.1.mlp.experts.3.down_proj.lora_B.weight',
    ]));
    expect(mix.config.targets).toEqual(['q_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']);
    mix.collectStats(true);
    expect(worstDiff(await logprobs(model, batch), plain)).toBeLessThan(1e-5);
    const stats = await mix.stats();
    expect(stats.map((s) => s.tokens)).toEqual([10, 10]);
    mix.collectStats(false);
    mix.dispose();
    expect(model.blocks.map((b) => b.ffn)).toEqual(ffns);
    model.dispose();
  });

  it('experts on only the named FFN projections, in only the chosen layers; a random adapter is sparse per token and works with the KV cache', async () => {
    const model = loadBase(base, quiet);
    const plain = await logprobs(model, batch);
    const mix = createMixLora(model, { ...lora(['down_proj']), layers: [1] }, { experts: 3, topK: 1 }, 'x', new Rng(0));
    expect(mix.plain).toBeNull();
    expect(mix.ffns.map((f) => f.layer)).toEqual([1]);
    expect(mix.ffns[0]!.experts.map((e) => [...e.values()].map((l) => l.module))).toEqual([0, 1, 2].map((j) => [`model.layers.1.mlp.experts.${j}.down_proj`]));
    randomise(mix, 1);
    mix.attach(model);
    expect(worstDiff(await logprobs(model, batch), plain)).toBeGreaterThan(1e-3);
    const prompt = [[5, 9, 13, 17]];
    const cached = await generate(model, prompt, { maxNewTokens: 6, stopIds: [] });
    const recomputed = await generate(model, prompt, { maxNewTokens: 6, stopIds: [], useCache: false });
    expect(cached.tokens).toEqual(recomputed.tokens);
    mix.dispose();
    model.dispose();
  });

  it('matches a float64 reference of y = Σ_{top-k} w_j E_j(x), and its gradients match finite differences', () => {
    const model = loadBase(base, quiet);
    const mix = createMixLora(model, lora(['gate_proj', 'up_proj', 'down_proj']), { experts: 4, topK: 2 }, 'ref', new Rng(5));
    randomise(mix, 6);
    const ffn = mix.ffns[0]!;
    const N = 7;
    const D = 32;
    const rng = new Rng(7);
    const xData = rng.normalArray(N * D, 1);
    const real = Float32Array.from([1, 1, 1, 0, 1, 1, 1]);
    const x = tf.tensor2d(xData, [N, D]);
    const tokenMask = tf.tensor2d(real, [N, 1]);
    const ctx = (): ForwardContext => ({ batch: 1, seq: N, training: false, tokenMask, realTokens: real, aux: [], rng: null });
    const host = (t: tf.Tensor): Float64Array => Float64Array.from(t.dataSync());
    // x [n, i] @ w [i, o], all in float64.
    const mm = (a: Float64Array, b: Float64Array, n: number, i: number, o: number): Float64Array => {
      const out = new Float64Array(n * o);
      for (let r = 0; r < n; r++) for (let k = 0; k < i; k++) for (let c = 0; c < o; c++) out[r * o + c]! += a[r * i + k]! * b[k * o + c]!;
      return out;
    };
    const base0 = ffn.base.linears();
    const I = 64;
    const xs = Float64Array.from(xData);
    // Host float64 copies of every weight, so finite differences below are free of float32 noise.
    const wr = host(ffn.router.gate.weightT);
    const layers = ffn.experts.map((e) => base0.map((lin) => e.get(lin.name)!));
    const aT = layers.map((ls) => ls.map((l) => host(l.aT)));
    const bT = layers.map((ls) => ls.map((l) => host(l.bT)));
    const merged = (e: number, j: number): Float64Array => {
      const lin = base0[j]!;
      const l = layers[e]![j]!;
      const d = mm(aT[e]![j]!, bT[e]![j]!, lin.inFeatures, l.rank, lin.outFeatures);
      return host(lin.weightT).map((v, i) => v + l.scale * d[i]!);
    };
    const reference = (): Float64Array => {
      const logits = mm(xs, wr, N, D, 4);
      const out = new Float64Array(N * D);
      for (let n = 0; n < N; n++) {
        if (!real[n]) continue;
        const z = Array.from(logits.subarray(n * 4, n * 4 + 4));
        const p = z.map((v) => Math.exp(v - Math.max(...z)));
        const top = [0, 1, 2, 3].sort((a, b) => p[b]! - p[a]!).slice(0, 2);
        const norm = top.reduce((a, e) => a + p[e]!, 0);
        const xn = xs.subarray(n * D, n * D + D);
        for (const e of top) {
          const g = mm(xn, merged(e, 0), 1, D, I);
          const u = mm(xn, merged(e, 1), 1, D, I);
          const act = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]!);
          const y = mm(act, merged(e, 2), 1, I, D);
          for (let c = 0; c < D; c++) out[n * D + c]! += (p[e]! / norm) * y[c]!;
        }
      }
      return out;
    };
    const got = tf.tidy(() => ffn.forward(x, ctx()).dataSync());
    expect(maxAbsDiff(got, reference())).toBeLessThan(1e-4);

    // d/dθ Σ y·R for a router weight and an expert's lora_B entry: tf's gradients against float64 central differences.
    const rData = rng.normalArray(N * D, 1);
    const R = tf.tensor2d(rData, [N, D]);
    const vars = [ffn.router.gate.weightT as unknown as tf.Variable, layers[1]![2]!.bT];
    const grads = tf.tidy(() => {
      const { grads: g } = tf.variableGrads(() => ffn.forward(x, { ...ctx(), training: true }).mul(R).sum() as tf.Scalar, vars);
      return vars.map((v) => g[v.name]!.dataSync());
    });
    const refLoss = (): number => reference().reduce((a, v, i) => a + v * rData[i]!, 0);
    for (const [vi, hostW, at] of [[0, wr, 5], [1, bT[1]![2]!, 17]] as const) {
      const orig = hostW[at]!;
      const eps = 1e-4;
      hostW[at] = orig + eps;
      const up = refLoss();
      hostW[at] = orig - eps;
      const down = refLoss();
      hostW[at] = orig;
      const fd = (up - down) / (2 * eps);
      expect(Math.abs(fd)).toBeGreaterThan(1e-3);
      expect(Math.abs(fd - grads[vi]![at]!), `${vi}: fd ${fd}, tf ${grads[vi]![at]}`).toBeLessThan(1e-3 * Math.abs(fd));
    }
    tf.dispose([x, tokenMask, R]);
    mix.dispose();
    model.dispose();
  });

  it('train-adapter --moe-experts lowers the loss, logs routing, and saves a folder that loads back to the same logits', async () => {
    const out = join(tmp.dir, 'trained');
    const r = await trainAdapter({
      model: base,
      data: join(tmp.dir, 'train.csv'),
      ...TASK_COLUMNS,
      valSplit: 0.1,
      seqLen: 24,
      batchSize: 16,
      lr: 1e-2,
      steps: 30,
      evalEvery: 30,
      seed: 0,
      out,
      progress: 'off',
      log: () => {},
      lora: { targets: ['gate_proj', 'up_proj', 'down_proj'] },
      mixlora: { experts: 4, topK: 2 },
    });
    expect(r.status).toBe('done');
    const lines = readMetrics(join(out, 'metrics.jsonl'));
    const first = lines[0]!.loss as number;
    const ev = lines.find((l) => 'val_loss' in l)!;
    expect(first).toBeGreaterThan(5);
    expect(ev.val_loss as number).toBeLessThan(0.5);
    expect(Object.keys(ev.router as object)).toEqual(['0', '1']);
    const cfg = JSON.parse(readFileSync(join(out, MIXLORA_CONFIG), 'utf8')) as Record<string, unknown>;
    expect(cfg).toMatchObject({ peft_type: 'MIXLORA', routing_strategy: 'mixtral', num_experts: 4, top_k: 2, r: 8, lora_alpha: 16, target_modules: ['gate_proj', 'up_proj', 'down_proj'] });
    const keys = [...openSafetensors(join(out, MIXLORA_WEIGHTS)).tensors.values()];
    expect(keys.find((t) => t.name === 'base_model.model.model.layers.0.mlp.router.weight')?.shape).toEqual([4, 32]);
    expect(keys.find((t) => t.name === 'base_model.model.model.layers.0.mlp.experts.2.up_proj.lora_A.weight')?.shape).toEqual([8, 32]);
    expect(keys.find((t) => t.name === 'base_model.model.model.layers.0.mlp.experts.2.up_proj.lora_B.weight')?.shape).toEqual([64, 8]);
    expect(keys).toHaveLength(2 * (1 + 4 * 3 * 2));

    // The trained folder attaches through --adapter's loader and fits the task.
    const model = loadBase(base, quiet);
    const attached = attachAdapterFolders(model, [out], () => {});
    const tok = model.tokenizer!;
    const ids = tok.encode('pet xyz =', { addBos: true });
    expect(tok.decode((await generate(model, [ids], { maxNewTokens: 4 })).tokens[0]!, { skipSpecial: true })).toMatch(/^ cat/);
    for (const a of attached) a.dispose();
    model.dispose();
  });

  it('train-adapter takes the MixLoRA settings flat, spelled as the CLI and recipes spell them, to the same adapter', async () => {
    const run = {
      model: base, data: join(tmp.dir, 'train.csv'), ...TASK_COLUMNS, seqLen: 24, batchSize: 8, lr: 1e-2, steps: 3, evalEvery: 3,
      seed: 0, progress: 'off' as const, log: () => {}, lora: { targets: ['gate_proj', 'up_proj', 'down_proj'] },
    };
    await trainAdapter({ ...run, out: join(tmp.dir, 'mix-flat'), moeExperts: 3, topK: 1, moeAuxCoef: 0.05 });
    await trainAdapter({ ...run, out: join(tmp.dir, 'mix-nested'), mixlora: { experts: 3, topK: 1, auxCoef: 0.05 } });
    const weights = (dir: string) => readFileSync(join(tmp.dir, dir, MIXLORA_WEIGHTS));
    expect(weights('mix-flat').equals(weights('mix-nested'))).toBe(true);
    await expect(trainAdapter({ ...run, out: join(tmp.dir, 'mix-both'), moeExperts: 3, mixlora: { experts: 3, topK: 1 } }))
      .rejects.toThrow("give MixLoRA's settings flat (moeExperts) or as mixlora, not both");
    await expect(trainAdapter({ ...run, out: join(tmp.dir, 'mix-topk'), topK: 2 })).rejects.toThrow('--top-k and --moe-aux-coef need --moe-experts');
  });

  it.each([
    ['llama', () => join(tmp.dir, 'base'), ['q_proj', 'v_proj']],
    ['gpt2', () => join(MODEL_FIXTURES, 'gpt2'), ['c_attn', 'c_fc']],
  ] as const)('save → load round trip on %s gives identical logits', async (_arch, dir, targets) => {
    const model = loadBase(dir(), quiet);
    const mix = createMixLora(model, lora([...targets]), { experts: 3, topK: 2 }, 'rt', new Rng(2));
    randomise(mix, 3);
    const out = join(tmp.dir, `rt-${_arch}`);
    await saveMixLora(mix, out);
    mix.attach(model);
    const want = await logprobs(model, batch);
    mix.dispose();
    const back = loadMixLora(model, out, quiet);
    back.attach(model);
    expect(worstDiff(await logprobs(model, batch), want)).toBe(0);
    expect(back.config).toEqual(mix.config);
    back.dispose();
    model.dispose();
  });

  it('plain PEFT loaders refuse a MixLoRA folder; the MixLoRA loader names bad tensors', async () => {
    const model = loadBase(base, quiet);
    const mix = createMixLora(model, lora(['q_proj']), { experts: 2, topK: 1 }, 'bad', new Rng(4));
    const dir = join(tmp.dir, 'bad');
    await saveMixLora(mix, dir);
    mix.dispose();
    try {
      expect(() => loadAdapter(model, dir, quiet)).toThrow(/bad: a MixLoRA adapter \(LoRA experts routed per token in the FFN\), not a plain PEFT LoRA/);

      const weights = join(dir, MIXLORA_WEIGHTS);
      const file = openSafetensors(weights);
      const all = Object.fromEntries([...file.tensors.keys()].map((k) => [k, { ...file.read(k) } as { dtype: 'F32'; shape: number[]; data: Float32Array }]));
      const router = 'base_model.model.model.layers.1.mlp.router.weight';
      writeSafetensors(weights, { ...all, [router]: { dtype: 'F32', shape: [3, 32], data: new Float32Array(96) } });
      expect(() => loadMixLora(model, dir, quiet)).toThrow(new RegExp(`tensor '${router.replace(/\./g, '\\.')}' has shape \\[3,32\\], the base and mixlora_config\\.json imply \\[2,32\\]`));
      writeSafetensors(weights, { ...all, 'base_model.model.model.layers.0.mlp.experts.7.up_proj.lora_A.weight': all[router]! });
      expect(() => loadMixLora(model, dir, quiet)).toThrow(/tensor 'base_model\.model\.model\.layers\.0\.mlp\.experts\.7\.up_proj\.lora_A\.weight' matches nothing mixlora_config\.json describes/);
      const { [router]: _gone, ...rest } = all;
      writeSafetensors(weights, rest);
      expect(() => loadMixLora(model, dir, quiet)).toThrow(/tensor 'base_model\.model\.model\.layers\.1\.mlp\.router\.weight' is missing/);
      const cfgPath = join(dir, MIXLORA_CONFIG);
      writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), routing_strategy: 'dynamic' }));
      expect(() => loadMixLora(model, dir, quiet)).toThrow(/routing_strategy "dynamic" is not supported \(mixtral only\)/);
    } finally {
      model.dispose();
    }
  });

  it('refuses a sparse MoE base, regex targets, a second MixLoRA on the same blocks and bad sizes', () => {
    const mixtral = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const model = loadBase(base, quiet);
    try {
      expect(() => createMixLora(mixtral, lora(['q_proj']), { experts: 2, topK: 1 }, 'm', new Rng(0))).toThrow(/MixLoRA adds LoRA experts to a dense FFN \(SwiGLU or GPT-2 MLP\); this block has a MoEFFN/);
      expect(() => createMixLora(model, { ...DEFAULT_LORA, targets: '.*q_proj' }, { experts: 2, topK: 1 }, 'm', new Rng(0))).toThrow(/targets \(target_modules\) must be a list/);
      expect(() => createMixLora(model, lora(['q_proj']), { experts: 2, topK: 3 }, 'm', new Rng(0))).toThrow(/top_k must be in 1\.\.2, got 3/);
      expect(() => createMixLora(model, lora(['nope']), { experts: 2, topK: 1 }, 'm', new Rng(0))).toThrow(/target_modules \["nope"\] match no module of the llama base outside the FFNs/);
      const a = createMixLora(model, lora(['q_proj']), { experts: 2, topK: 1 }, 'a', new Rng(0));
      const b = createMixLora(model, lora(['up_proj']), { experts: 2, topK: 1 }, 'b', new Rng(0));
      a.attach(model);
      expect(() => b.attach(model)).toThrow(/block 0 no longer holds the FFN its experts were built on/);
      a.dispose();
      b.dispose();
    } finally {
      mixtral.dispose();
      model.dispose();
    }
  });
});
