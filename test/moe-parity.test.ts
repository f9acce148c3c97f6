import * as tf from '@tensorflow/tfjs';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { saveModel } from '../src/base/export.js';
import { generate } from '../src/base/generate.js';
import { loadBase, weightCount } from '../src/base/load.js';
import { lmLoss } from '../src/base/loss.js';
import { writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { logprobs } from '../src/base/scoring.js';
import { MoEFFN, moeLayers } from '../src/moe/moe.js';
// These folders load through src/base, which reads sparse layers with the layouts src/moe registers.
import '../src/moe/register.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference, tempDir, type ReferenceCase } from './helpers.js';

// Reference log-probs and router losses come from an independent float64 PyTorch implementation
// (scripts/make_moe_fixtures.py). float32 lands within about 1e-5 of it; 1e-4 keeps the margin
// without letting subtly wrong math through (see parity.test.ts).
const TOL = 1e-4;
const MODELS = ['mixtral', 'mixtral-packed', 'qwen2-moe', 'olmoe'];
const quiet = { warn: () => {} };

beforeAll(async () => {
  await initBackend();
});

interface MoeCase extends ReferenceCase {
  router: { aux_loss: number; z_loss: number };
}

function batchOf(ref: ReferenceCase) {
  return {
    ids: Int32Array.from(ref.ids.flat()),
    attentionMask: Uint8Array.from(ref.attention_mask.flat()),
    batch: ref.ids.length,
    seq: ref.ids[0]!.length,
  };
}

describe.each(MODELS)('parity with the PyTorch reference: %s', (name) => {
  it.each([0, 1, 2])('case %i (unpadded, left-padded, right-padded): log-probs and router losses agree', (c) => {
    const model = loadBase(join(MODEL_FIXTURES, name), quiet);
    try {
      const ref = readReference(name).cases[c]! as MoeCase;
      const got = logprobs(model, batchOf(ref));
      let compared = 0;
      let worst = 0;
      ref.logprobs.forEach((row, b) => row.forEach((want, t) => {
        if (!want) return;
        worst = Math.max(worst, maxAbsDiff(got[b]![t]!, want));
        compared++;
      }));
      expect(compared).toBeGreaterThan(10);
      expect(worst).toBeLessThan(TOL);

      // The losses a training pass leaves in ctx.aux, with the coefficients divided back out.
      const moe = moeLayers(model);
      const losses = moe[0]!.losses;
      losses.opts = { ...losses.opts, auxCoef: 1, zCoef: 1 };
      const b = batchOf(ref);
      const aux = tf.tidy(() => {
        const { ctx } = model.hidden(b, { training: true });
        return ctx.aux.map((a) => [a.name, a.value.arraySync() as number] as const);
      });
      expect(Object.fromEntries(aux)).toEqual({
        router_aux_loss: expect.closeTo(ref.router.aux_loss, 4),
        router_z_loss: expect.closeTo(ref.router.z_loss, 4),
      });
    } finally {
      model.dispose();
    }
    expect(tf.memory().numTensors).toBe(0);
  });
});

describe('MoE checkpoints', () => {
  it('mixtral greedy decoding with the KV cache matches the reference tokens', () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const { greedy } = readReference('mixtral');
    const out = generate(model, [greedy.prompt], { maxNewTokens: greedy.tokens.length, stopIds: [], useCache: true });
    expect(out.tokens[0]).toEqual(greedy.tokens);
    model.dispose();
  });

  it('reads each layout into MoE FFNs named by their HF module paths', () => {
    const classic = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const packed = loadBase(join(MODEL_FIXTURES, 'mixtral-packed'), quiet);
    const qwen = loadBase(join(MODEL_FIXTURES, 'qwen2-moe'), quiet);
    try {
      expect(moeLayers(classic).map((m) => [m.prefix, m.layout])).toEqual([
        ['model.layers.0.block_sparse_moe', 'per-expert'],
        ['model.layers.1.block_sparse_moe', 'per-expert'],
      ]);
      expect(moeLayers(packed).map((m) => m.layout)).toEqual(['packed', 'packed']);
      expect(moeLayers(packed)[0]!.experts[3]!.linears().map((l) => l.name)).toEqual([
        'model.layers.0.mlp.experts.3.w1', 'model.layers.0.mlp.experts.3.w3', 'model.layers.0.mlp.experts.3.w2',
      ]);
      // mlp_only_layers [0]: layer 0 is dense, layer 1 sparse with a gated shared expert.
      expect(qwen.blocks.map((b) => b.ffn instanceof MoEFFN)).toEqual([false, true]);
      expect(qwen.linears().map((l) => l.name)).toEqual(expect.arrayContaining([
        'model.layers.1.mlp.gate', 'model.layers.1.mlp.experts.5.down_proj',
        'model.layers.1.mlp.shared_expert.up_proj', 'model.layers.1.mlp.shared_expert_gate',
      ]));
    } finally {
      classic.dispose();
      packed.dispose();
      qwen.dispose();
    }
  });

  it.each(MODELS)('%s: weightCount equals the checkpoint, and an export writes the same keys and values back', (name) => {
    const dir = join(MODEL_FIXTURES, name);
    const model = loadBase(dir, quiet);
    const { dir: out, cleanup } = tempDir();
    try {
      saveModel(model, out);
      const [a, b] = [openCheckpoint(dir), openCheckpoint(out)];
      expect(b.keys().sort()).toEqual(a.keys().sort());
      let params = 0;
      for (const k of a.keys()) {
        const [x, y] = [a.read(k), b.read(k)];
        expect(y.shape, k).toEqual(x.shape);
        expect(maxAbsDiff(y.data as Float32Array, x.data as Float32Array), k).toBe(0);
        params += x.shape.reduce((p, d) => p * d, 1);
      }
      expect(weightCount(model.config)).toBe(params);
      a.close();
      b.close();
    } finally {
      cleanup();
      model.dispose();
    }
  });

  it('a missing expert tensor is an error naming it', () => {
    const { dir, cleanup } = tempDir();
    try {
      const ck = openCheckpoint(join(MODEL_FIXTURES, 'qwen2-moe'));
      const tensors: Record<string, TensorToWrite> = {};
      for (const k of ck.keys()) {
        if (k !== 'model.layers.1.mlp.experts.2.up_proj.weight') tensors[k] = { dtype: 'F32', shape: ck.read(k).shape, data: ck.read(k).data };
      }
      ck.close();
      writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
      copyFileSync(join(MODEL_FIXTURES, 'qwen2-moe', 'config.json'), join(dir, 'config.json'));
      expect(() => loadBase(dir, quiet)).toThrow(/'model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight' is required by config\.json but missing/);
    } finally {
      cleanup();
    }
  });

  it('lmLoss adds the router losses when training', () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const ref = readReference('mixtral').cases[1]! as MoeCase;
    const b = batchOf(ref);
    const targets = Int32Array.from([...b.ids.slice(1), 0]);
    const batch = { ...b, targets, lossMask: Float32Array.from(b.attentionMask, (m) => m) };
    const [train, evalLoss] = tf.tidy(() => [lmLoss(model, batch, { training: true }).arraySync() as number, lmLoss(model, batch).arraySync() as number]);
    expect(train - evalLoss).toBeCloseTo(0.02 * ref.router.aux_loss, 4);
    model.dispose();
  });
});
