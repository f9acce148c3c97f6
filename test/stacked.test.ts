import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { LoraLayer } from '../src/adapters/lora.js';
import { initBackend } from '../src/base/backend.js';
import { Rng } from '../src/base/rng.js';
import { normalise } from '../src/gating/mole.js';
import { StackCache, StackedExperts } from '../src/gating/stacked.js';
import { maxRelErr } from './helpers.js';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

const [inF, outF, rows] = [24, 20, 9];
const rng = new Rng(7);
const rand = (shape: number[], std = 1): tf.Tensor2D => tf.tensor2d(rng.normalArray(shape[0]! * shape[1]!, std), shape as [number, number]);
const lora = (r: number, scale: number): LoraLayer => new LoraLayer('m', tf.variable(rand([inF, r]), false), tf.variable(rand([r, outF]), false), scale, 0);
const ctx = { batch: 1, seq: rows, training: false, tokenMask: null as unknown as tf.Tensor2D, realTokens: new Float32Array(rows).fill(1), aux: [], rng: null };

/** What the composition did per expert before: Eᵢ(x) = sᵢ·(x Aᵢ) Bᵢ, zeros where an expert does not adapt the linear. */
const outputs = (layers: (LoraLayer | null)[], x: tf.Tensor2D): tf.Tensor2D[] => layers.map((l) => (l ? l.delta(x, ctx) : tf.zeros([rows, outF])));

describe('StackedExperts', () => {
  // Ranks 4, 2 and 8, one expert absent at this linear, scales differing.
  const layers = [lora(4, 2), null, lora(2, 0.5), lora(8, 1.25)];
  const N = layers.length;

  it('mixes every expert in two products: Σ wᵢEᵢ per row and with one row of weights for all', () => {
    const st = StackedExperts.build(layers, inF, outF);
    const x = rand([rows, inF]);
    const w = tf.softmax(rand([rows, N])) as tf.Tensor2D;
    const outs = outputs(layers, x);
    const want = tf.addN(outs.map((o, i) => o.mul(w.slice([0, i], [-1, 1]))));
    expect(maxRelErr(st.mix(st.project(x), w).dataSync(), want.dataSync())).toBeLessThan(1e-5);
    const one = tf.tensor2d([[0.1, 0.2, 0.3, 0.4]]);
    const wantOne = tf.addN(outs.map((o, i) => o.mul([0.1, 0.2, 0.3, 0.4][i]!)));
    expect(maxRelErr(st.mix(st.project(x), one).dataSync(), wantOne.dataSync())).toBeLessThan(1e-5);
    st.dispose();
  });

  it("gives the gate's Norm(E₀ ⊕ … ⊕ E_{N−1})·e and its gradients (to e and to x) without building the concatenation", () => {
    const st = StackedExperts.build(layers, inF, outF);
    const x = rand([rows, inF]);
    const e = rand([N * outF, N], 0.1);
    const dz = rand([rows, N]);
    const stacked = (xx: tf.Tensor, ee: tf.Tensor) => st.normProject(st.project(xx as tf.Tensor2D), ee as tf.Tensor2D);
    const direct = (xx: tf.Tensor, ee: tf.Tensor) => tf.matMul(normalise(tf.concat(outputs(layers, xx as tf.Tensor2D), 1) as tf.Tensor2D), ee as tf.Tensor2D);
    // Float32 noise (5e-7 here); a wrong moment or a missing centring term is off by far more.
    expect(maxRelErr(stacked(x, e).dataSync(), direct(x, e).dataSync())).toBeLessThan(1e-5);
    const [gx, ge] = tf.grads(stacked)([x, e], dz);
    const [rx, re] = tf.grads(direct)([x, e], dz);
    expect(maxRelErr(gx!.dataSync(), rx!.dataSync())).toBeLessThan(1e-5);
    expect(maxRelErr(ge!.dataSync(), re!.dataSync())).toBeLessThan(1e-5);
    st.dispose();
  });

  it('gives a finite Norm (0) when every expert output is zero, as fresh LoRA experts (B = 0) give', () => {
    const zero = [new LoraLayer('m', tf.variable(rand([inF, 4]), false), tf.variable(tf.zeros([4, outF]), false), 2, 0)];
    const st = StackedExperts.build(zero, inF, outF);
    const z = st.normProject(st.project(rand([rows, inF])), rand([outF, 1]));
    expect(Array.from(z.dataSync())).toEqual(new Array(rows).fill(0));
    st.dispose();
  });

  it('is rebuilt by the cache when an expert is swapped in place (new tensors or scale), and only then', () => {
    const cache = new StackCache();
    const before = tf.memory().numTensors;
    const first = cache.get('m', layers, inF, outF);
    expect(cache.get('m', layers, inF, outF)).toBe(first);
    const held = tf.memory().numTensors;
    const l0 = layers[0]!;
    const fresh = rand([4, outF]);
    l0.bT.assign(fresh);
    const second = cache.get('m', layers, inF, outF);
    expect(second).not.toBe(first);
    expect(first.b.isDisposed).toBe(true);
    l0.scale = 3;
    expect(cache.get('m', layers, inF, outF)).not.toBe(second);
    // One stack alive at a time (plus the assigned tensor's own handle).
    expect(tf.memory().numTensors).toBe(held + 1);
    cache.clear();
    fresh.dispose();
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
  });
});
