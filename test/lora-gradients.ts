import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { loadBase } from '../src/base/load.js';
import { crossEntropy } from '../src/base/loss.js';
import { Rng } from '../src/base/rng.js';
import { MODEL_FIXTURES } from './helpers.js';

/**
 * LoRA gradients on the llama-gqa fixture against fourth-order central differences, h = 1e-2, on
 * `entries` random entries of each A and B (of the first `matrices` of them; all by default). In
 * float32 they land within 1.1e-3 of the gradient (relative, per matrix) and 1e-4 per entry, so a
 * gradient off by 5% (relative error 5e-2) fails the 5e-3 bound with room to spare. Reads are
 * async, so it runs on every backend (on a software GPU adapter a pass takes ~0.5 s: few entries).
 */
export async function checkLoraGradients(training: boolean, o: { entries: number; matrices?: number }): Promise<void> {
  const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), { warn: () => {} });
  const probe = { ids: Int32Array.from([4, 8, 15, 16, 23, 42, 7, 9]), batch: 2, seq: 4 };
  const adapter = createLora(model, { ...DEFAULT_LORA, rank: 2, alpha: 4, targets: ['q_proj', 'down_proj'] }, 'g', new Rng(1));
  for (const l of adapter.layers.values()) tf.tidy(() => l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.3, 'float32', 3)));
  adapter.attach(model);
  const targets = Int32Array.from([8, 15, 16, 23, 7, 9, 3, 1]);
  const weights = new Float32Array(8).fill(1);
  // Training runs the frozen linears through their kept transposes (ops.frozenLinear).
  const loss = (): tf.Scalar => crossEntropy(model.forward(probe, { training }), targets, weights).mean;
  const { value, grads } = tf.variableGrads(loss, [...adapter.params().values()]);
  const rng = new Rng(11);
  const h = 1e-2;
  try {
    for (const [key, v] of [...adapter.params()].slice(0, o.matrices)) {
      const g = await grads[v.name]!.data();
      const orig = Float32Array.from(await v.data());
      const set = (x: Float32Array): void => {
        const t = tf.tensor(x, v.shape);
        v.assign(t);
        t.dispose();
      };
      const at = async (i: number, delta: number): Promise<number> => {
        const x = orig.slice();
        x[i] += delta;
        set(x);
        const l = tf.tidy(loss);
        const value = (await l.data())[0]!;
        l.dispose();
        return value;
      };
      let err = 0;
      let norm = 0;
      for (const i of rng.shuffle(Array.from({ length: v.size }, (_, k) => k)).slice(0, o.entries) as number[]) {
        const fd = (8 * ((await at(i, h)) - (await at(i, -h))) - ((await at(i, 2 * h)) - (await at(i, -2 * h)))) / (12 * h);
        expect(Math.abs(fd - g[i]!), `${key}[${i}]: fd ${fd} vs grad ${g[i]}`).toBeLessThan(2e-4 + 5e-3 * Math.abs(fd));
        err += (fd - g[i]!) ** 2;
        norm += fd ** 2;
      }
      set(orig);
      expect(Math.sqrt(err / norm), key).toBeLessThan(5e-3);
    }
  } finally {
    tf.dispose([value, ...Object.values(grads)]);
    adapter.dispose();
    model.dispose();
  }
}
