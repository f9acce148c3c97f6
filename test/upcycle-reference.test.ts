import * as tf from '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { saveModel } from '../src/base/export.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM } from '../src/base/model.js';
import { logprobs } from '../src/base/scoring.js';
import { upcycle, type UpcycleOptions } from '../src/moe/upcycle.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference, tempDir, type ReferenceCase } from './helpers.js';
import { logprobs64, readTensors64, type Weights64 } from './ref64.js';

// The upcycle export against independent float64 references, not its own reload: the dense
// fixture's PyTorch reference (at σ = 0 the MoE equals the dense model in exact math, since every
// expert is the dense MLP and renormalised top-k weights sum to 1) and the host float64 Mixtral
// forward of ref64.ts run on the saved folder's own tensors (σ > 0, router drawn from a seed).
const tmp = tempDir();
const quiet = { warn: () => {} };
const dense = join(MODEL_FIXTURES, 'llama-gqa');
const E = 4;
const K = 2;

beforeAll(async () => {
  await initBackend();
});
afterAll(() => tmp.cleanup());
afterEach(() => {
  expect(tf.memory().numTensors).toBe(0);
});

async function exportUpcycled(name: string, o: UpcycleOptions): Promise<{ dir: string; cfg: Record<string, unknown>; W: Weights64; live: CausalLM }> {
  const base = loadBase(dense, quiet);
  const live = await upcycle(base, o);
  base.dispose();
  const dir = join(tmp.dir, name);
  await saveModel(live, dir);
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  return { dir, cfg, W: readTensors64(join(dir, 'model.safetensors')), live };
}

function molora(model: CausalLM, c: ReferenceCase): Promise<Float32Array[][]> {
  return logprobs(model, { ids: Int32Array.from(c.ids.flat()), attentionMask: Uint8Array.from(c.attention_mask.flat()), batch: c.ids.length, seq: c.ids[0]!.length });
}

/** Worst |Δ| over real tokens between molora's log-probs and a float64 reference's. */
function worst(got: Float32Array[][], want: (ArrayLike<number> | null)[][]): number {
  let w = 0;
  want.forEach((row, b) => row.forEach((ref, t) => {
    if (ref) w = Math.max(w, maxAbsDiff(got[b]![t]!, ref));
  }));
  return w;
}

describe('upcycle export against float64 references', () => {
  it('σ = 0: a REFERENCE §4 Mixtral folder (config keys, tensor names, shapes) whose logits match the dense PyTorch float64 reference', async () => {
    const { dir, cfg, W, live } = await exportUpcycled('exact', { experts: E, topK: K, routerStd: 0.5, seed: 11 });
    try {
      const denseCfg = JSON.parse(readFileSync(join(dense, 'config.json'), 'utf8')) as Record<string, unknown>;
      expect(cfg).toMatchObject({
        model_type: 'mixtral', architectures: ['MixtralForCausalLM'], num_local_experts: E, num_experts_per_tok: K,
        router_aux_loss_coef: 0.01, router_jitter_noise: 0, sliding_window: null,
        intermediate_size: denseCfg.intermediate_size, hidden_size: denseCfg.hidden_size, num_hidden_layers: denseCfg.num_hidden_layers,
        num_attention_heads: denseCfg.num_attention_heads, num_key_value_heads: denseCfg.num_key_value_heads, head_dim: denseCfg.head_dim,
        rms_norm_eps: denseCfg.rms_norm_eps, rope_theta: denseCfg.rope_theta, vocab_size: denseCfg.vocab_size, tie_word_embeddings: false,
      });
      for (const k of ['num_experts', 'moe_intermediate_size', 'shared_expert_intermediate_size', 'norm_topk_prob']) expect(cfg).not.toHaveProperty(k);
      // Tensor names: the dense keys with each mlp replaced by block_sparse_moe.{gate, experts.e.w1/w3/w2}.
      const D = cfg.hidden_size as number;
      const I = cfg.intermediate_size as number;
      const denseW = readTensors64(join(dense, 'model.safetensors'));
      const want = new Map<string, number[]>();
      for (const [k, t] of denseW) if (!/\.mlp\./.test(k)) want.set(k, t.shape);
      for (let i = 0; i < (cfg.num_hidden_layers as number); i++) {
        const p = `model.layers.${i}.block_sparse_moe.`;
        want.set(`${p}gate.weight`, [E, D]);
        for (let e = 0; e < E; e++) {
          want.set(`${p}experts.${e}.w1.weight`, [I, D]);
          want.set(`${p}experts.${e}.w3.weight`, [I, D]);
          want.set(`${p}experts.${e}.w2.weight`, [D, I]);
        }
      }
      expect(new Map([...W].map(([k, t]) => [k, t.shape]))).toEqual(want);
      // Values: everything but the routers copied bit for bit; w1/w3/w2 are the dense gate/up/down.
      for (const [k, t] of W) {
        const m = /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.(w[123])\.weight$/.exec(k);
        const src = m ? `model.layers.${m[1]}.mlp.${{ w1: 'gate_proj', w3: 'up_proj', w2: 'down_proj' }[m[2]!]}.weight` : k;
        if (k.endsWith('block_sparse_moe.gate.weight')) continue;
        expect(maxAbsDiff(t.data, denseW.get(src)!.data), k).toBe(0);
      }
      const router = W.get('model.layers.0.block_sparse_moe.gate.weight')!.data;
      const std = Math.sqrt(router.reduce((a, v) => a + v * v, 0) / router.length);
      expect(std).toBeGreaterThan(0.4);
      expect(std).toBeLessThan(0.6);

      const back = loadBase(dir, quiet);
      try {
        for (const c of readReference('llama-gqa').cases) {
          expect(worst(await molora(back, c), c.logprobs)).toBeLessThan(1e-4);
          expect(worst(await molora(live, c), c.logprobs)).toBeLessThan(1e-4);
          // The float64 Mixtral forward of the saved folder equals the dense reference up to its 6-decimal rounding.
          expect(worst(logprobs64(W, cfg, c.ids, c.attention_mask).map((r) => r.map((v) => (v ? Float32Array.from(v) : null))) as Float32Array[][], c.logprobs)).toBeLessThan(1e-6);
        }
      } finally {
        back.dispose();
      }
    } finally {
      live.dispose();
    }
  });

  it('σ > 0 with a seeded router: the saved folder and the live model match the float64 Mixtral forward of the saved tensors at 1e-4', async () => {
    const { dir, cfg, W, live } = await exportUpcycled('noisy', { experts: E, topK: K, noise: 0.05, routerStd: 0.3, seed: 12 });
    const back = loadBase(dir, quiet);
    try {
      const denseRef = readReference('llama-gqa');
      for (const c of denseRef.cases) {
        const stats = { minMargin: Infinity };
        const ref = logprobs64(W, cfg, c.ids, c.attention_mask, { stats });
        // Routing is decisive, so float32 cannot pick other experts than the float64 reference.
        expect(stats.minMargin).toBeGreaterThan(1e-3);
        expect(worst(await molora(back, c), ref)).toBeLessThan(1e-4);
        expect(worst(await molora(live, c), ref)).toBeLessThan(1e-4);
        // …and the check has teeth: the noisy experts move the model well away from the dense one.
        expect(worst(await molora(back, c), c.logprobs)).toBeGreaterThan(1e-2);
      }
    } finally {
      back.dispose();
      live.dispose();
    }
  });
});
