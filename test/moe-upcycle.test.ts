import * as tf from '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { saveModel } from '../src/base/export.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM } from '../src/base/model.js';
import { logprobs } from '../src/base/scoring.js';
import { moeLayers } from '../src/moe/moe.js';
import { upcycle } from '../src/moe/upcycle.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

afterEach(() => {
  expect(tf.memory().numTensors).toBe(0);
});

const quiet = { warn: () => {} };
// Two rows, the second left-padded.
const batch = {
  ids: Int32Array.from([5, 9, 13, 17, 21, 25, 0, 0, 40, 41, 42, 43]),
  attentionMask: Uint8Array.from([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]),
  batch: 2,
  seq: 6,
};

async function worstDiff(a: CausalLM, b: CausalLM): Promise<number> {
  const [x, y] = [await logprobs(a, batch), await logprobs(b, batch)];
  let worst = 0;
  x.forEach((row, i) => row.forEach((lp, t) => {
    if (batch.attentionMask[i * batch.seq + t]) worst = Math.max(worst, maxAbsDiff(lp, y[i]![t]!));
  }));
  return worst;
}

describe('sparse upcycling', () => {
  it.each([
    ['llama-gqa', 0, 'mixtral'],
    ['llama-gqa', 2, 'qwen2_moe'],
    ['qwen2', 0, 'qwen2_moe'],
    ['mistral', 1, 'qwen2_moe'],
  ] as const)('%s with %i shared experts → %s; at σ = 0 with renormalised top-k it equals the dense model', async (name, shared, type) => {
    const dense = loadBase(join(MODEL_FIXTURES, name), quiet);
    const moe = await upcycle(dense, { experts: 4, topK: 2, shared, seed: 1 });
    try {
      expect(moe.config.modelType).toBe(type);
      expect(moeLayers(moe)).toHaveLength(dense.config.layers);
      expect(moe.config.moe!.normTopK).toBe(true);
      expect(await worstDiff(moe, dense)).toBeLessThan(1e-4);
    } finally {
      dense.dispose();
      moe.dispose();
    }
  });

  it('copies every expert from the dense MLP, adds noise σ to each copy, and draws the router with a small std', async () => {
    const dense = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    const exact = await upcycle(dense, { experts: 4, topK: 2, routerStd: 0.05, seed: 2 });
    const noisy = await upcycle(dense, { experts: 4, topK: 2, noise: 0.01, seed: 2 });
    try {
      const denseUp = dense.blocks[1]!.ffn.linears()[1]!.weightT.dataSync();
      const [a, b] = [moeLayers(exact)[1]!, moeLayers(noisy)[1]!];
      expect(a.experts[3]!.up.name).toBe('model.layers.1.block_sparse_moe.experts.3.w3');
      for (const e of a.experts) expect(maxAbsDiff(e.up.weightT.dataSync(), denseUp)).toBe(0);
      const diffs = b.experts.map((e) => maxAbsDiff(e.up.weightT.dataSync(), denseUp));
      for (const d of diffs) {
        expect(d).toBeGreaterThan(0.01);
        expect(d).toBeLessThan(0.08);
      }
      expect(maxAbsDiff(b.experts[0]!.up.weightT.dataSync(), b.experts[1]!.up.weightT.dataSync())).toBeGreaterThan(0);
      const g = a.router.gate.weightT.dataSync() as Float32Array;
      const std = Math.sqrt(g.reduce((s, v) => s + v * v, 0) / g.length);
      expect(std).toBeGreaterThan(0.04);
      expect(std).toBeLessThan(0.06);
      expect(await worstDiff(noisy, dense)).toBeGreaterThan(1e-4);
    } finally {
      for (const m of [dense, exact, noisy]) m.dispose();
    }
  });

  it.each([0, 2])('saveModel writes a HF folder (shared %i) that loads back to the same model', async (shared) => {
    const dense = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    const moe = await upcycle(dense, { experts: 3, topK: 2, shared, noise: 0.02, seed: 3 });
    const { dir, cleanup } = tempDir();
    try {
      await saveModel(moe, dir);
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      const ck = openCheckpoint(dir);
      const keys = ck.keys();
      ck.close();
      if (shared === 0) {
        expect(cfg).toMatchObject({ model_type: 'mixtral', architectures: ['MixtralForCausalLM'], num_local_experts: 3, num_experts_per_tok: 2, intermediate_size: 64, rope_theta: 10000, rms_norm_eps: 1e-5 });
        expect(keys).toContain('model.layers.0.block_sparse_moe.experts.2.w2.weight');
        expect(keys).toContain('model.layers.1.block_sparse_moe.gate.weight');
      } else {
        expect(cfg).toMatchObject({ model_type: 'qwen2_moe', num_experts: 3, moe_intermediate_size: 64, shared_expert_intermediate_size: 128, norm_topk_prob: true, mlp_only_layers: [] });
        expect(keys).toEqual(expect.arrayContaining(['model.layers.0.mlp.shared_expert.down_proj.weight', 'model.layers.0.mlp.shared_expert_gate.weight', 'model.layers.1.self_attn.q_proj.bias']));
      }
      expect(keys.some((k) => /\.mlp\.(gate|up|down)_proj\./.test(k))).toBe(false);
      const back = loadBase(dir, quiet);
      try {
        expect(await worstDiff(back, moe)).toBe(0);
      } finally {
        back.dispose();
      }
    } finally {
      cleanup();
      dense.dispose();
      moe.dispose();
    }
  });

  it('refuses models it cannot upcycle and bad sizes', async () => {
    const gpt2 = loadBase(join(MODEL_FIXTURES, 'gpt2'), quiet);
    const mixtral = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const llama = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    try {
      await expect(upcycle(gpt2, { experts: 4, topK: 2 })).rejects.toThrow(/needs a dense Llama-family model .* gpt2/);
      await expect(upcycle(mixtral, { experts: 4, topK: 2 })).rejects.toThrow(/got model_type mixtral/);
      await expect(upcycle(llama, { experts: 2, topK: 3 })).rejects.toThrow(/topK 3 exceeds experts 2/);
      await expect(upcycle(llama, { experts: 4, topK: 2, shared: -1 })).rejects.toThrow(/shared must be a non-negative integer/);
    } finally {
      for (const m of [gpt2, mixtral, llama]) m.dispose();
    }
  });
});
