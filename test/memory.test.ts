import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import {
  WASM_HEAP_LIMIT_BYTES, assertFitsMemory, estimateModelBytes, estimateTrainingBytes, heapUsage, type TrainingShape,
} from '../src/base/memory.js';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

// A 9.5M-parameter llama-like shape: the run TFJS-NOTES measured at a 1.2 GiB heap.
const measured: TrainingShape = {
  params: 9.5e6, trainableParams: 9.5e6, batch: 8, seq: 128, hidden: 256, layers: 7, heads: 8, ffn: 1024, vocab: 8192,
};

describe('estimates', () => {
  it('keeps a margin under the 4 GiB wasm32 ceiling', () => {
    expect(WASM_HEAP_LIMIT_BYTES).toBeGreaterThanOrEqual(3 * 2 ** 30);
    expect(WASM_HEAP_LIMIT_BYTES).toBeLessThan(4 * 2 ** 30);
  });

  it('counts weights twice on wasm (XNNPACK packs a copy of every matMul weight)', () => {
    expect(estimateModelBytes(1000)).toBe(8000);
  });

  it('lands above the measured 1.2 GiB, but not absurdly', () => {
    const est = estimateTrainingBytes(measured);
    expect(est).toBeGreaterThan(1.2 * 2 ** 30);
    expect(est).toBeLessThan(2.5 * 2 ** 30);
  });

  it('grows with batch, sequence, vocabulary and trainable parameters', () => {
    const base = estimateTrainingBytes(measured);
    expect(estimateTrainingBytes({ ...measured, batch: 16 })).toBeGreaterThan(1.8 * base);
    // attention scores grow quadratically with the sequence
    expect(estimateTrainingBytes({ ...measured, seq: 512 })).toBeGreaterThan(4 * base);
    expect(estimateTrainingBytes({ ...measured, vocab: 32000 })).toBeGreaterThan(base);
    expect(estimateTrainingBytes({ ...measured, trainableParams: 1e5 })).toBeLessThan(base);
  });
});

describe('assertFitsMemory', () => {
  it('refuses an oversize plan on wasm, with the numbers and the ways out', () => {
    const big = estimateTrainingBytes({ ...measured, batch: 64, seq: 512 });
    expect(() => assertFitsMemory(big, 'training')).toThrow(/training needs about [\d.]+ GiB .* 3\.50 GiB/);
    expect(() => assertFitsMemory(big, 'training')).toThrow(/smaller batch or sequence length.*tfjs-node/);
    expect(() => assertFitsMemory(estimateTrainingBytes(measured), 'training')).not.toThrow();
  });

  it('is a no-op off wasm', async () => {
    await tf.setBackend('cpu');
    try {
      expect(() => assertFitsMemory(100 * 2 ** 30, 'training')).not.toThrow();
      expect(heapUsage().heapBytes).toBeNull();
    } finally {
      await tf.setBackend('wasm');
    }
  });
});

describe('heap', () => {
  it('reports the wasm memory size and live tensor bytes', () => {
    const before = heapUsage();
    const t = tf.zeros([1024, 1024]);
    const after = heapUsage();
    expect(after.tensorBytes - before.tensorBytes).toBe(4 * 2 ** 20);
    expect(after.numTensors).toBe(before.numTensors + 1);
    expect(after.heapBytes!).toBeGreaterThanOrEqual(after.tensorBytes + 4 * 2 ** 20);
    t.dispose();
  });

  it('throws instead of corrupting when an allocation cannot be served', () => {
    // ~4 GiB: on a fresh heap malloc returns 0, on a used one the size overflows inside malloc
    // into a small block; tfjs would use either as the tensor's offset.
    tf.zeros([16]).dispose();
    expect(() => tf.fill([2 ** 30 - 16], 1)).toThrow(/wasm heap exhausted allocating 4\.00 GiB/);
    expect(tf.add(tf.ones([3]), 1).arraySync()).toEqual([2, 2, 2]);
  });
});
