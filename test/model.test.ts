import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { parseConfig, readConfig } from '../src/base/config.js';
import { generate } from '../src/base/generate.js';
import { buildParts, loadBase } from '../src/base/load.js';
import { CausalLM } from '../src/base/model.js';
import { logprobs } from '../src/base/scoring.js';
import { CheckpointWeights, type WeightSource } from '../src/base/weights.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

const quiet = { warn: () => {} };

describe.each(['llama-gqa', 'qwen2', 'gpt2', 'mistral-swa'])('KV-cache decoding (%s)', (name) => {
  it('equals recomputing the full forward at every step, and the reference greedy tokens', async () => {
    const model = loadBase(join(MODEL_FIXTURES, name), quiet);
    const { greedy } = readReference(name);
    const opts = { maxNewTokens: greedy.tokens.length, stopIds: [], keepLogits: true };
    const cached = await generate(model, [greedy.prompt], { ...opts, useCache: true });
    const full = await generate(model, [greedy.prompt], { ...opts, useCache: false });
    expect(cached.tokens).toEqual(full.tokens);
    expect(cached.tokens[0]).toEqual(greedy.tokens);
    cached.logits![0]!.forEach((row, i) => expect(maxAbsDiff(row, full.logits![0]![i]!)).toBeLessThan(1e-4));
    model.dispose();
  });
});

describe('padding', () => {
  const rows = [
    [5, 9, 13, 17, 21, 25, 29],
    [7, 3, 11],
    [40, 41, 42, 43, 44],
  ];

  it.each(['left', 'right'] as const)('%s-padded batch rows equal the rows run alone', async (side) => {
    const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    const T = Math.max(...rows.map((r) => r.length));
    const ids: number[] = [];
    const mask: number[] = [];
    for (const r of rows) {
      const pad = Array(T - r.length).fill(0);
      const ones = Array(r.length).fill(1);
      ids.push(...(side === 'left' ? [...pad, ...r] : [...r, ...pad]));
      mask.push(...(side === 'left' ? [...pad, ...ones] : [...ones, ...pad]));
    }
    const batched = await logprobs(model, { ids: Int32Array.from(ids), attentionMask: Uint8Array.from(mask), batch: rows.length, seq: T });
    for (const [b, r] of rows.entries()) {
      const alone = (await logprobs(model, { ids: Int32Array.from(r), batch: 1, seq: r.length }))[0]!;
      const offset = side === 'left' ? T - r.length : 0;
      alone.forEach((want, t) => expect(maxAbsDiff(batched[b]![t + offset]!, want)).toBeLessThan(1e-4));
    }
    model.dispose();
  });

  it('batched generation of prompts of different lengths equals generating each alone', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    const together = (await generate(model, rows, { maxNewTokens: 6, stopIds: [] })).tokens;
    for (const [b, r] of rows.entries()) expect((await generate(model, [r], { maxNewTokens: 6, stopIds: [] })).tokens[0]).toEqual(together[b]);
    model.dispose();
  });
});

describe('grouped-query attention', () => {
  it('equals the same model with each K/V head repeated for its query heads', async () => {
    const dir = join(MODEL_FIXTURES, 'llama-gqa');
    const cfg = readConfig(dir);
    const G = cfg.heads / cfg.kvHeads;
    expect(G).toBeGreaterThan(1);
    const ckpt = openCheckpoint(dir);
    const weights = new CheckpointWeights(ckpt);
    // k_proj/v_proj rows are grouped by KV head; repeat each head's block G times (HF repeat_kv).
    const expanded: WeightSource = {
      has: (k) => weights.has(k),
      get: (key, shape) => {
        if (!/\.(k|v)_proj\.weight$/.test(key)) return weights.get(key, shape);
        return tf.tidy(() => {
          const w = weights.get(key, [cfg.kvHeads * cfg.headDim, cfg.hidden]).reshape([cfg.kvHeads, 1, cfg.headDim, cfg.hidden]);
          return w.tile([1, G, 1, 1]).reshape(shape);
        });
      },
      read: (key, shape) => tf.tidy(() => expanded.get(key, shape).dataSync() as Float32Array),
    };
    const mhaCfg = parseConfig({ ...cfg.raw, num_key_value_heads: cfg.heads });
    const mha = new CausalLM(mhaCfg, buildParts(mhaCfg, expanded));
    ckpt.close();
    const gqa = loadBase(dir, quiet);
    const batch = { ids: Int32Array.from([3, 14, 15, 92, 65, 35, 89, 79]), batch: 2, seq: 4 };
    const a = await logprobs(gqa, batch);
    const b = await logprobs(mha, batch);
    a.forEach((row, i) => row.forEach((v, t) => expect(maxAbsDiff(v, b[i]![t]!)).toBeLessThan(1e-5)));
    gqa.dispose();
    mha.dispose();
  });
});

describe('memory', () => {
  afterAll(() => {
    expect(tf.memory().numTensors).toBe(0);
  });

  it('numTensors stays flat across 50 generate steps', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    const counts: number[] = [];
    await generate(model, [[1, 2, 3]], { maxNewTokens: 50, stopIds: [], onToken: () => counts.push(tf.memory().numTensors) });
    expect(counts).toHaveLength(50);
    // Step 1 creates the cache; from then on nothing may accumulate.
    expect(new Set(counts.slice(1)).size).toBe(1);
    const before = tf.memory().numTensors;
    model.dispose();
    expect(tf.memory().numTensors).toBeLessThan(before);
  });
});
