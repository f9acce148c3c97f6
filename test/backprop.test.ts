import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { initBackend } from '../src/base/backend.js';
import { crossEntropy } from '../src/base/loss.js';
import { Rng } from '../src/base/rng.js';
import { randomLlama } from '../src/bench/forward.js';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

type Gradients = (f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients?: boolean) => { value: tf.Tensor; grads: tf.Tensor[] };

/** tfjs' own backward pass (the engine's prototype method), which backprop.ts replaces on the instance. */
function stockGradients<T>(f: () => T): T {
  const engine = tf.engine() as unknown as { gradients: Gradients };
  const lean = engine.gradients;
  expect(Object.prototype.hasOwnProperty.call(engine, 'gradients')).toBe(true);
  engine.gradients = Object.getPrototypeOf(engine).gradients as Gradients;
  try {
    return f();
  } finally {
    engine.gradients = lean;
  }
}

const same = (a: tf.Tensor, b: tf.Tensor): void => {
  expect(a.shape).toEqual(b.shape);
  expect(Buffer.from(a.dataSync().buffer).equals(Buffer.from(b.dataSync().buffer))).toBe(true);
};

describe('lean backward pass', () => {
  const shape = { layers: 2, hidden: 32, heads: 4, kvHeads: 2, ffn: 64, vocab: 300, tieWordEmbeddings: true };
  const rng = new Rng(5);
  const N = 2 * 16;
  const batch = { ids: Int32Array.from({ length: N }, () => rng.int(shape.vocab)), batch: 2, seq: 16 };
  const targets = Int32Array.from({ length: N }, () => rng.int(shape.vocab));
  const weights = new Float32Array(N).fill(1);

  it('gives the LoRA gradients of tfjs\' own pass bit for bit', () => {
    const model = randomLlama({ ...shape, maxPositions: 16 });
    const adapter = createLora(model, { ...DEFAULT_LORA, rank: 4, alpha: 8, targets: ['q_proj', 'v_proj', 'down_proj'] }, 'a', new Rng(1));
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.1, 'float32', 2));
    adapter.attach(model);
    const vars = [...adapter.params().values()];
    const loss = (): tf.Scalar => crossEntropy(model.forward(batch, { training: true }), targets, weights).mean;
    const run = () => tf.variableGrads(loss, vars);
    const runAndDispose = (): void => {
      const { value, grads } = run();
      tf.dispose([value, ...Object.values(grads)]);
    };
    // A first pass builds what the model caches (RoPE's frequencies).
    runAndDispose();
    const before = tf.memory().numTensors;
    const lean = run();
    const stock = stockGradients(run);
    same(lean.value, stock.value);
    for (const v of vars) same(lean.grads[v.name]!, stock.grads[v.name]!);
    tf.dispose([lean.value, stock.value, ...Object.values(lean.grads), ...Object.values(stock.grads)]);
    expect(tf.memory().numTensors).toBe(before);
    adapter.dispose();
    model.dispose();
  });

  it('frees each intermediate gradient once it is used: live bytes stay flat down a deep chain', () => {
    // 40 layers of tanh(h·W); a probe on the input reads the live bytes when the walk reaches it,
    // the moment tfjs' own pass still holds the gradient of every layer's outputs.
    const layers = 40;
    const ws = Array.from({ length: layers }, (_, i) => tf.randomNormal([64, 64], 0, 0.1, 'float32', i));
    const x = tf.randomNormal([128, 64], 0, 1, 'float32', 99);
    const before = tf.memory().numBytes;
    const liveAtInput = (): number => {
      let bytes = 0;
      const probe = tf.customGrad((v) => ({
        value: tf.clone(v as tf.Tensor),
        gradFunc: (dy) => {
          bytes = tf.memory().numBytes;
          return [tf.clone(dy as tf.Tensor)];
        },
      }));
      const chain = (v: tf.Tensor): tf.Tensor => tf.sum(ws.reduce((h, w) => tf.tanh(tf.matMul(h, w)), probe(v) as tf.Tensor));
      tf.dispose(tf.grads(chain)([x]));
      return bytes - before;
    };
    const lean = liveAtInput();
    const stock = stockGradients(liveAtInput);
    // Two gradients per layer (matMul's and tanh's outputs) that tfjs keeps and the lean pass frees.
    expect(stock - lean).toBeGreaterThan(1.5 * layers * 128 * 64 * 4);
    expect(tf.memory().numBytes).toBe(before);
    tf.dispose([x, ...ws]);
  });

  it('keeps a gradient passed through as another input\'s gradient, the caller\'s dy, and repeated inputs', () => {
    // g passes dy through unchanged as x's gradient, so one tensor is both g's output gradient and
    // x's; x is also used twice more, so its gradient is a sum of partials.
    const passThrough = tf.customGrad((x) => ({ value: tf.mul(x as tf.Tensor, 2), gradFunc: (dy) => [dy as tf.Tensor] }));
    const f = (x: tf.Tensor): tf.Tensor => tf.sum(tf.mul(tf.add(passThrough(x) as tf.Tensor, x), tf.exp(x)));
    const x = tf.tensor1d([0.5, -1, 2]);
    const dy = tf.scalar(3);
    const before = tf.memory().numTensors;
    const [lean] = tf.grads(f)([x], dy);
    const [stock] = stockGradients(() => tf.grads(f)([x], dy));
    same(lean!, stock!);
    // (p(x) + x)·eˣ with p(x) = 2x passing dy through (p' taken as 1): (1 + 1)·eˣ + 3x·eˣ, times dy = 3.
    const want = [0.5, -1, 2].map((v) => 3 * (2 + 3 * v) * Math.exp(v));
    Array.from(lean!.dataSync()).forEach((g, i) => expect(g).toBeCloseTo(want[i]!, 4));
    expect(dy.isDisposed).toBe(false);
    expect(dy.dataSync()[0]).toBe(3);
    tf.dispose([lean!, stock!]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('nests: a second derivative through a first', () => {
    const f = (x: tf.Tensor): tf.Tensor => tf.sum(tf.mul(tf.mul(x, x), tf.sin(x)));
    const second = tf.grad((x: tf.Tensor) => tf.sum(tf.grad(f)(x)));
    const x = tf.tensor1d([0.3, 1.2, -2]);
    const lean = second(x);
    const stock = stockGradients(() => second(x));
    same(lean, stock);
    // (x² sin x)'' = 2 sin x + 4x cos x − x² sin x
    Array.from(lean.dataSync()).forEach((g, i) => {
      const v = [0.3, 1.2, -2][i]!;
      expect(g).toBeCloseTo(2 * Math.sin(v) + 4 * v * Math.cos(v) - v * v * Math.sin(v), 4);
    });
  });
});
