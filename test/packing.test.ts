import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { Linear } from '../src/base/linear.js';
import { heapUsage } from '../src/base/memory.js';

// Its own file, so the wasm heap starts fresh: heap growth is what these tests read.
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

const MiB = 2 ** 20;
const heap = (): number => heapUsage().heapBytes!;
const ctx = { batch: 1, seq: 64, training: true, tokenMask: null as unknown as tf.Tensor2D, realTokens: new Float32Array(64).fill(1), aux: [], rng: null, plain: false };

describe('Linear.packing', () => {
  it("gives the same outputs and input gradients whichever way the weight is held: 'transposed', 'cached', 'per-use'", () => {
    const wT = tf.randomNormal([96, 200], 0, 1, 'float32', 1) as tf.Tensor2D;
    const x = tf.randomNormal([64, 96], 0, 1, 'float32', 2) as tf.Tensor2D;
    const dy = tf.randomNormal([64, 200], 0, 1, 'float32', 3);
    const run = (packing: 'transposed' | 'cached' | 'per-use') => {
      const l = new Linear('l', tf.clone(wT), null, false);
      l.packing = packing;
      const [y, dx] = [l.forward(x, ctx), tf.grad((v) => l.forward(v as tf.Tensor2D, ctx))(x, dy)];
      const out = [y.dataSync().slice(), dx.dataSync().slice()];
      tf.dispose([y, dx]);
      l.dispose();
      return out;
    };
    const before = tf.memory().numTensors;
    const [transposed, cached, perUse] = [run('transposed'), run('cached'), run('per-use')];
    // The same products in the same order: XNNPACK sums each dot product along k either way.
    for (const other of [cached, perUse]) {
      expect(Buffer.from(other[0]!.buffer).equals(Buffer.from(transposed[0]!.buffer))).toBe(true);
      expect(Buffer.from(other[1]!.buffer).equals(Buffer.from(transposed[1]!.buffer))).toBe(true);
    }
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([wT, x, dy]);
  });

  it("'transposed' builds the [out, in] copy at the first backward pass only, and frees it with the layer", () => {
    const l = new Linear('l', tf.randomNormal([32, 48], 0, 1, 'float32', 5) as tf.Tensor2D, null, false);
    l.packing = 'transposed';
    const x = tf.randomNormal([4, 32], 0, 1, 'float32', 6) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    tf.tidy(() => void l.forward(x, ctx).dataSync());
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(tf.grad((v) => l.forward(v as tf.Tensor2D, ctx))(x));
    expect(tf.memory().numTensors).toBe(before + 1);
    l.dispose();
    expect(tf.memory().numTensors).toBe(before - 1);
    x.dispose();
  });

  it('holds no packed copy between products: six 32 MiB weights grow the heap by about one packing, not six', () => {
    const [inF, outF, n] = [1024, 8192, 6];
    const pack = inF * outF * 4;
    const x = tf.randomNormal([8, inF], 0, 1, 'float32', 4) as tf.Tensor2D;
    // The weights are made before `start`, and all are kept to the end: what grows is packing.
    const growth = (packing: 'cached' | 'per-use'): { growth: number; layers: Linear[] } => {
      const layers = Array.from({ length: n }, (_, i) => new Linear(`l${i}`, tf.fill([inF, outF], i / 10) as tf.Tensor2D, null, false));
      const start = heap();
      for (const l of layers) {
        l.packing = packing;
        tf.tidy(() => void l.base(x).dataSync());
      }
      return { growth: heap() - start, layers };
    };
    // Per use, each product's packing is freed and its block reused by the next.
    const perUse = growth('per-use');
    expect(perUse.growth).toBeLessThan(2 * pack);
    // Cached, each weight keeps its own (one freed block may be reused).
    const cached = growth('cached');
    expect(cached.growth).toBeGreaterThan((n - 2) * pack);
    for (const l of [...perUse.layers, ...cached.layers]) l.dispose();
    x.dispose();
  });
});
