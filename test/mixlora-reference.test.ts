import * as tf from '@tensorflow/tfjs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { Rng } from '../src/base/rng.js';
import { logprobs } from '../src/base/scoring.js';
import { createMixLora } from '../src/adapters/mixlora.js';
import { loadMixLora, MIXLORA_CONFIG, MIXLORA_WEIGHTS, saveMixLora } from '../src/adapters/mixlora-io.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference, tempDir } from './helpers.js';
import { linear, logprobs64, readTensors64, silu, topK, type Tensor64, type Weights64 } from './ref64.js';

/*
 * molora's MixLoRA files against TUDB-Labs/MixLoRA (mixlora/model.py, config.py, lora_linear.py),
 * read with the search tool; facts only, no code:
 * - weights (adapter_model.bin there), per decoder layer i, all layers:
 *     mixlora.layers.<i>.gate.weight                            [E, D]  router, F.linear(x, gate)
 *     mixlora.layers.<i>.experts.<j>.<proj>.lora_A.weight       [r, in]   proj ∈ target_modules ∩ FFN
 *     mixlora.layers.<i>.experts.<j>.<proj>.lora_B.weight       [out, r]
 *     mixlora.layers.<i>.self_attn.<proj>.lora_{A,B}.weight     plain LoRA, proj ∈ target_modules ∩ attention
 * - config (adapter_config.json there): peft_type "MIXLORA", task_type, base_model_name_or_path,
 *   routing_strategy "mixtral", num_experts, top_k (2), router_aux_loss_coef (0.001),
 *   router_init_range (0.02), jitter_noise (0), r, lora_alpha, lora_dropout (must be > 0),
 *   use_rslora, target_modules (list), lora_init ("original" | "gaussian").
 * - math: p = softmax(x Gᵀ), top-k of p renormalised to sum 1; expert j reuses the frozen FFN's
 *   projections plus its LoRA, proj(x) + (α/r)·B A x (α/√r with use_rslora):
 *   E_j(x) = down_j(silu(gate_j(x)) ⊙ up_j(x)); y = Σ_{j∈top-k} w_j E_j(x).
 * molora writes the same tensors and config keys under other names (its layout, mixlora-io.ts):
 * base_model.model.model.layers.<i>.mlp.router.weight for the gate, base_model.model.<module>…
 * for the LoRAs, in mixlora.safetensors + mixlora_config.json. This test pins that mapping and
 * checks the forward against a float64 reimplementation of the math above, read from the file.
 */
const tmp = tempDir();
const quiet = { warn: () => {} };
const baseDir = join(MODEL_FIXTURES, 'llama-gqa');
const E = 4;
const K = 2;
const R = 4;
const ALPHA = 12;

beforeAll(async () => {
  await initBackend();
});
afterAll(() => tmp.cleanup());
afterEach(() => {
  expect(tf.memory().numTensors).toBe(0);
});

/** molora's file key → TUDB-Labs MixLoRA's key, or null if it has no counterpart. */
function tudbKey(k: string): string | null {
  const router = /^base_model\.model\.model\.layers\.(\d+)\.mlp\.router\.weight$/.exec(k);
  if (router) return `mixlora.layers.${router[1]}.gate.weight`;
  const expert = /^base_model\.model\.model\.layers\.(\d+)\.mlp\.(experts\.\d+\.(?:gate|up|down)_proj\.lora_[AB]\.weight)$/.exec(k);
  if (expert) return `mixlora.layers.${expert[1]}.${expert[2]}`;
  const attn = /^base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo]_proj\.lora_[AB]\.weight)$/.exec(k);
  if (attn) return `mixlora.layers.${attn[1]}.self_attn.${attn[2]}`;
  return null;
}

describe('MixLoRA files against the TUDB-Labs MixLoRA layout and math', () => {
  it('keys, shapes and config map one to one onto MixLoRA\'s; the forward matches a float64 reimplementation from the file at 1e-4', async () => {
    const model = loadBase(baseDir, quiet);
    const dir = join(tmp.dir, 'mix');
    const targets = ['q_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const mix = createMixLora(model, { ...DEFAULT_LORA, rank: R, alpha: ALPHA, dropout: 0.05, targets }, { experts: E, topK: K, routerStd: 0.3 }, 'ref', new Rng(21));
    // Random B (createLora's is 0) so every expert differs; routers keep their N(0, 0.3) draw.
    const rng = new Rng(22);
    for (const [key, v] of mix.params()) {
      if (key.endsWith('lora_B.weight')) tf.tidy(() => v.assign(tf.tensor(rng.normalArray(v.size, 0.1), v.shape)));
    }
    await saveMixLora(mix, dir);
    mix.dispose();

    const cfgBase = JSON.parse(readFileSync(join(baseDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const [D, I, L] = [cfgBase.hidden_size, cfgBase.intermediate_size, cfgBase.num_hidden_layers] as number[];
    const [H, KV, hd] = [cfgBase.num_attention_heads, cfgBase.num_key_value_heads, cfgBase.head_dim] as number[];
    const cfg = JSON.parse(readFileSync(join(dir, MIXLORA_CONFIG), 'utf8')) as Record<string, unknown>;
    expect(cfg).toMatchObject({
      peft_type: 'MIXLORA', task_type: 'CAUSAL_LM', routing_strategy: 'mixtral', num_experts: E, top_k: K,
      r: R, lora_alpha: ALPHA, lora_dropout: 0.05, use_rslora: false, target_modules: targets, router_init_range: 0.3, bias: 'none',
    });
    expect(cfg).toHaveProperty('base_model_name_or_path'); // MixLoRA's from_config reads it unconditionally
    expect(typeof cfg.router_aux_loss_coef).toBe('number');

    // Every file tensor has a MixLoRA name, and the names are exactly those MixLoRA's injector reads.
    const file = readTensors64(join(dir, MIXLORA_WEIGHTS));
    const T: Weights64 = new Map();
    for (const [k, t] of file) {
      const m = tudbKey(k);
      expect(m, k).not.toBeNull();
      T.set(m!, t);
    }
    const want = new Map<string, number[]>();
    const shapes: Record<string, [number, number]> = { q_proj: [H * hd, D], v_proj: [KV * hd, D], gate_proj: [I, D], up_proj: [I, D], down_proj: [D, I] };
    for (let i = 0; i < L; i++) {
      want.set(`mixlora.layers.${i}.gate.weight`, [E, D]);
      for (const p of ['q_proj', 'v_proj']) {
        want.set(`mixlora.layers.${i}.self_attn.${p}.lora_A.weight`, [R, shapes[p]![1]]);
        want.set(`mixlora.layers.${i}.self_attn.${p}.lora_B.weight`, [shapes[p]![0], R]);
      }
      for (let j = 0; j < E; j++) {
        for (const p of ['gate_proj', 'up_proj', 'down_proj']) {
          want.set(`mixlora.layers.${i}.experts.${j}.${p}.lora_A.weight`, [R, shapes[p]![1]]);
          want.set(`mixlora.layers.${i}.experts.${j}.${p}.lora_B.weight`, [shapes[p]![0], R]);
        }
      }
    }
    expect(new Map([...T].map(([k, t]) => [k, t.shape]))).toEqual(want);

    // MixLoRA's math from those tensors alone, in float64, on the base's own weights.
    const scale = ALPHA / R;
    const lora = (prefix: string, x: Float64Array, n: number): Float64Array => {
      const a = linear(x, n, T.get(`${prefix}.lora_A.weight`)!);
      return linear(a, n, T.get(`${prefix}.lora_B.weight`)!).map((v) => scale * v);
    };
    const add = (a: Float64Array, b: Float64Array): Float64Array => a.map((v, i) => v + b[i]!);
    const W = readTensors64(join(baseDir, 'model.safetensors'));
    const w = (k: string): Tensor64 => W.get(k)!;
    const stats = { minMargin: Infinity };
    let real: number[] = [];
    const ffn = (layer: number, h: Float64Array, n: number): Float64Array => {
      const p = `model.layers.${layer}.mlp.`;
      const z = linear(h, n, T.get(`mixlora.layers.${layer}.gate.weight`)!);
      const g0 = linear(h, n, w(`${p}gate_proj.weight`));
      const u0 = linear(h, n, w(`${p}up_proj.weight`));
      const out = new Float64Array(n * D);
      for (let r = 0; r < n; r++) {
        const route = topK(z.subarray(r * E, r * E + E), K);
        if (real[r]) stats.minMargin = Math.min(stats.minMargin, route.margin);
        const x = h.subarray(r * D, r * D + D);
        route.experts.forEach((j, s) => {
          const e = `mixlora.layers.${layer}.experts.${j}.`;
          const g = add(g0.subarray(r * I, r * I + I), lora(`${e}gate_proj`, x, 1));
          const u = add(u0.subarray(r * I, r * I + I), lora(`${e}up_proj`, x, 1));
          const act = g.map((v, c) => silu(v) * u[c]!);
          const y = add(linear(act, 1, w(`${p}down_proj.weight`)), lora(`${e}down_proj`, act, 1));
          for (let c = 0; c < D; c++) out[r * D + c]! += route.weights[s]! * y[c]!;
        });
      }
      return out;
    };
    const delta = (name: string, x: Float64Array, n: number): Float64Array | null => {
      const m = /^model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)$/.exec(name);
      return m && T.has(`mixlora.layers.${m[1]}.self_attn.${m[2]}.lora_A.weight`) ? lora(`mixlora.layers.${m[1]}.self_attn.${m[2]}`, x, n) : null;
    };

    const loaded = loadMixLora(model, dir, quiet);
    loaded.attach(model);
    try {
      for (const c of readReference('llama-gqa').cases) {
        real = c.attention_mask.flat();
        const ref = logprobs64(W, cfgBase, c.ids, c.attention_mask, { ffn, delta });
        const got = await logprobs(model, { ids: Int32Array.from(c.ids.flat()), attentionMask: Uint8Array.from(real), batch: c.ids.length, seq: c.ids[0]!.length });
        let worst = 0;
        let moved = 0;
        ref.forEach((row, b) => row.forEach((want64, t) => {
          if (!want64) return;
          worst = Math.max(worst, maxAbsDiff(got[b]![t]!, want64));
          moved = Math.max(moved, maxAbsDiff(want64, c.logprobs[b]![t]!));
        }));
        expect(worst).toBeLessThan(1e-4);
        expect(moved).toBeGreaterThan(1e-2); // the adapter changes the model, so the check has teeth
      }
      expect(stats.minMargin).toBeGreaterThan(1e-3); // float32 routes as float64 does
    } finally {
      loaded.dispose();
      model.dispose();
    }
  });
});
