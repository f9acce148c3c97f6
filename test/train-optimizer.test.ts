import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { Rng } from '../src/base/rng.js';
import { accumulateGrads, clipCoef, disposeAccumulated } from '../src/train/grads.js';
import { AdamW } from '../src/train/optimizer.js';
import { lrAt, validateSchedule, type ScheduleConfig } from '../src/train/schedule.js';

beforeAll(async () => {
  await initBackend();
});

/** PyTorch's AdamW step, in float64 on the host. */
function referenceAdamW(
  p: Float64Array,
  m: Float64Array,
  v: Float64Array,
  g: ArrayLike<number>,
  t: number,
  lr: number,
  wd: number,
): void {
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  const bc1 = 1 - b1 ** t;
  const bc2 = 1 - b2 ** t;
  for (let i = 0; i < p.length; i++) {
    p[i]! *= 1 - lr * wd;
    m[i] = b1 * m[i]! + (1 - b1) * g[i]!;
    v[i] = b2 * v[i]! + (1 - b2) * g[i]! * g[i]!;
    const denom = Math.sqrt(v[i]!) / Math.sqrt(bc2) + eps;
    p[i]! -= (lr / bc1) * (m[i]! / denom);
  }
}

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(1e-3, Math.abs(b[i]!)));
  return worst;
}

describe('AdamW', () => {
  it('matches a float64 PyTorch-semantics reference over several steps, with decay and a gradient scale', async () => {
    const rng = new Rng(7);
    const init = rng.normalArray(12, 1);
    const p = tf.variable(tf.tensor(init, [3, 4]));
    const opt = new AdamW(new Map([['w', p]]), { weightDecay: 0.1 });
    const ref = { p: Float64Array.from(init), m: new Float64Array(12), v: new Float64Array(12) };
    const steps = [
      { lr: 1e-2, scale: 1 },
      { lr: 5e-3, scale: 0.5 },
      { lr: 2e-2, scale: 1 },
    ];
    steps.forEach(({ lr, scale }, i) => {
      const g = rng.normalArray(12, 0.3);
      const gt = tf.tensor(g, [3, 4]);
      opt.apply(new Map([['w', gt]]), lr, scale);
      gt.dispose();
      referenceAdamW(ref.p, ref.m, ref.v, Array.from(g, (x) => x * scale), i + 1, lr, 0.1);
      expect(maxRelDiff(p.dataSync(), ref.p)).toBeLessThan(1e-6);
    });
    const s = await opt.state();
    expect(s.step).toBe(3);
    expect(maxRelDiff(s.moments['w.exp_avg']!, ref.m)).toBeLessThan(1e-6);
    expect(maxRelDiff(s.moments['w.exp_avg_sq']!, ref.v)).toBeLessThan(1e-5);
    opt.dispose();
    p.dispose();
  });

  it('state() and load() restore it exactly, and a parameter without a gradient is left alone', async () => {
    const rng = new Rng(3);
    const a = tf.variable(tf.tensor(rng.normalArray(6, 1), [2, 3]));
    const b = tf.variable(tf.tensor(rng.normalArray(4, 1), [4]));
    const opt = new AdamW(new Map([['a', a], ['b', b]]), { weightDecay: 0.01 });
    const grads = [0, 1, 2].map(() => new Map([['a', tf.tensor(rng.normalArray(6, 1), [2, 3])], ['b', tf.tensor(rng.normalArray(4, 1), [4])]]));
    opt.apply(grads[0]!, 1e-2);
    opt.apply(grads[1]!, 1e-2);
    const saved = await opt.state();

    const a2 = tf.variable(a.clone());
    const b2 = tf.variable(b.clone());
    const opt2 = new AdamW(new Map([['a', a2], ['b', b2]]), { weightDecay: 0.01 });
    opt2.load(saved);
    const bBefore = b.dataSync().slice();
    const onlyA = new Map([['a', grads[2]!.get('a')!]]);
    opt.apply(onlyA, 1e-2);
    opt2.apply(onlyA, 1e-2);
    expect(Array.from(a2.dataSync())).toEqual(Array.from(a.dataSync()));
    expect(Array.from(b.dataSync())).toEqual(Array.from(bBefore));
    expect((await opt2.state()).moments['b.exp_avg']).toEqual(saved.moments['b.exp_avg']);

    expect(() => opt2.load({ step: 1, moments: { 'a.exp_avg': new Float32Array(6) } })).toThrow(/no 'a.exp_avg_sq'/);
    expect(() => opt2.load({ ...saved, moments: { ...saved.moments, 'a.exp_avg': new Float32Array(5) } })).toThrow(/5 values, parameter 'a' has 6/);
    expect(() => opt2.load({ ...saved, moments: { ...saved.moments, 'c.exp_avg': new Float32Array(1) } })).toThrow(/unknown parameters: c.exp_avg/);
    for (const g of grads) for (const t of g.values()) t.dispose();
    for (const x of [opt, opt2]) x.dispose();
    for (const x of [a, b, a2, b2]) x.dispose();
  });

  it('leaks no tensors per update', () => {
    const p = tf.variable(tf.ones([8, 8]));
    const g = tf.ones([8, 8]);
    const opt = new AdamW(new Map([['p', p]]), { weightDecay: 0.1 });
    opt.apply(new Map([['p', g]]), 1e-3);
    const n = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) opt.apply(new Map([['p', g]]), 1e-3, 0.5);
    expect(tf.memory().numTensors).toBe(n);
    opt.dispose();
    g.dispose();
    p.dispose();
  });
});

describe('schedule', () => {
  const base: ScheduleConfig = { kind: 'cosine', lr: 1, minLr: 0.1, warmup: 4, total: 14 };

  it('warms up linearly from 0 and reaches the peak on the last warmup update', () => {
    expect([0, 1, 2, 3].map((t) => lrAt(t, base))).toEqual([0.25, 0.5, 0.75, 1]);
  });

  it('decays by cosine or linearly to minLr at total, or stays constant', () => {
    expect(lrAt(4, base)).toBeCloseTo(1, 12);
    expect(lrAt(9, base)).toBeCloseTo(0.55, 12); // halfway: cos(π/2)
    expect(lrAt(14, base)).toBeCloseTo(0.1, 12);
    expect(lrAt(100, base)).toBeCloseTo(0.1, 12);
    const lin = { ...base, kind: 'linear' as const };
    expect(lrAt(9, lin)).toBeCloseTo(0.55, 12);
    expect(lrAt(6, lin)).toBeCloseTo(1 - 0.9 * 0.2, 12);
    expect(lrAt(13, { ...base, kind: 'constant' })).toBe(1);
    expect(lrAt(0, { ...base, warmup: 0 })).toBe(1);
  });

  it('rejects bad configs', () => {
    expect(() => validateSchedule({ ...base, kind: 'step' as never })).toThrow(/cosine, linear, constant/);
    expect(() => validateSchedule({ ...base, lr: 0 })).toThrow(/lr/);
    expect(() => validateSchedule({ ...base, minLr: 2 })).toThrow(/minLr/);
    expect(() => validateSchedule({ ...base, total: 0 })).toThrow(/steps/);
  });
});

describe('gradient accumulation and clipping', () => {
  it('k micro-batches sum to k times the full-batch gradient of a mean loss, with no leak', () => {
    const rng = new Rng(11);
    const w = tf.variable(tf.tensor(rng.normalArray(5 * 3, 1), [5, 3]));
    const unused = tf.variable(tf.zeros([2]));
    const params = new Map([['w', w], ['unused', unused]]);
    const x = rng.normalArray(6 * 5, 1);
    const loss = (rows: Float32Array): tf.Scalar =>
      tf.tidy(() => tf.square(tf.matMul(tf.tensor(rows, [rows.length / 5, 5]), w)).mean() as tf.Scalar);

    const before = tf.memory().numTensors;
    const acc = accumulateGrads(params, 3, (i) => loss(x.subarray(i * 10, i * 10 + 10)));
    expect(acc.grads.has('unused')).toBe(false);
    const full = tf.variableGrads(() => loss(x), [w]);
    const diff = tf.tidy(() => acc.grads.get('w')!.div(3).sub(full.grads[w.name]!).abs().max());
    expect(diff.dataSync()[0]).toBeLessThan(1e-5);
    expect(acc.loss.dataSync()[0]! / 3).toBeCloseTo(full.value.dataSync()[0]!, 5);
    tf.dispose([diff, full.value, ...Object.values(full.grads)]);
    disposeAccumulated(acc);
    expect(tf.memory().numTensors).toBe(before);
    // A micro-batch that throws strands nothing.
    const boom = (i: number): tf.Scalar => {
      if (i === 2) throw new Error('bad batch');
      return loss(x.subarray(i * 10, i * 10 + 10));
    };
    expect(() => accumulateGrads(params, 3, boom)).toThrow('bad batch');
    expect(tf.memory().numTensors).toBe(before);
    w.dispose();
    unused.dispose();
  });

  it('clips like torch.nn.utils.clip_grad_norm_', () => {
    expect(clipCoef(10, 1)).toBeCloseTo(1 / (10 + 1e-6), 12);
    expect(clipCoef(0.5, 1)).toBe(1);
    expect(clipCoef(10, 0)).toBe(1);
  });
});
