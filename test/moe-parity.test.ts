import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { lmLoss } from '../src/base/loss.js';
import { logprobs } from '../src/base/scoring.js';
import { moeLayers } from '../src/moe/moe.js';
// These folders load through src/base, which reads sparse layers with the layouts src/moe registers.
import '../src/moe/register.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference, type ReferenceCase } from './helpers.js';

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
  it.each([0, 1, 2])('case %i (unpadded, left-padded, right-padded): log-probs and router losses agree', async (c) => {
    const model = loadBase(join(MODEL_FIXTURES, name), quiet);
    try {
      const ref = readReference(name).cases[c]! as MoeCase;
      const got = await logprobs(model, batchOf(ref));
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
      let names: string[] = [];
      const values = tf.tidy(() => {
        const { ctx } = model.hidden(b, { training: true });
        names = ctx.aux.map((a) => a.name);
        return ctx.aux.map((a) => a.value);
      });
      const aux: Record<string, number> = {};
      for (const [i, v] of values.entries()) aux[names[i]!] = (await v.data())[0]!;
      tf.dispose(values);
      expect(aux).toEqual({
        router_aux_loss: expect.closeTo(ref.router.aux_loss, 4),
        router_z_loss: expect.closeTo(ref.router.z_loss, 4),
      });
    } finally {
      model.dispose();
    }
    expect(tf.memory().numTensors).toBe(0);
  });
});

describe('MoE training losses', () => {
  it('lmLoss adds the router losses when training', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const ref = readReference('mixtral').cases[1]! as MoeCase;
    const b = batchOf(ref);
    const targets = Int32Array.from([...b.ids.slice(1), 0]);
    const batch = { ...b, targets, lossMask: Float32Array.from(b.attentionMask, (m) => m) };
    const losses = tf.tidy(() => tf.stack([lmLoss(model, batch, { training: true }), lmLoss(model, batch)]));
    const [train, evalLoss] = await losses.data();
    losses.dispose();
    expect(train! - evalLoss!).toBeCloseTo(0.02 * ref.router.aux_loss, 4);
    model.dispose();
  });
});
