import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { MODEL_FIXTURES } from './helpers.js';

// src/base reads sparse MoE checkpoints only through the layout src/moe registers
// (base/sparse-ffn.ts); these tests pin both sides of that seam.
const quiet = { warn: () => {} };

describe('sparse FFN layouts: src/base reads MoE folders through src/moe', () => {
  beforeAll(async () => {
    const { initBackend } = await import('../src/index.js');
    await initBackend();
  });

  it('through the package entry, a Mixtral and a packed-Mixtral folder load into MoE FFNs, count and export', async () => {
    const { loadBase, readConfig, weightCount, modelTensors, MoEFFN } = await import('../src/index.js');
    for (const name of ['mixtral', 'mixtral-packed']) {
      const dir = join(MODEL_FIXTURES, name);
      const model = loadBase(dir, quiet);
      try {
        const cfg = readConfig(dir);
        const sparse = model.blocks.filter((b) => b.ffn instanceof MoEFFN);
        expect(sparse.length).toBe(cfg.moe!.sparse.filter((s) => s).length);
        expect(sparse.length).toBeGreaterThan(0);
        const tensors = await modelTensors(model);
        const written = [...tensors.values()].reduce((n, t) => n + t.data.length, 0);
        expect(weightCount(cfg)).toBe(written);
        // The packed layout is written back packed: the registry's packedTensors, not one key per expert linear.
        const packedKeys = [...tensors.keys()].filter((k) => k.endsWith('.experts.gate_up_proj'));
        expect(packedKeys.length).toBe(name === 'mixtral-packed' ? sparse.length : 0);
      } finally {
        model.dispose();
      }
    }
  });

  it('without src/moe, src/base loads a dense folder and refuses a sparse one with an error saying what to import', async () => {
    vi.resetModules();
    const before = tf.memory().numTensors;
    // A fresh src/base: its backend module starts again (loadBase refuses to run before it).
    await (await import('../src/base/backend.js')).initBackend({ warn: () => {} });
    const { loadBase, weightCount } = await import('../src/base/load.js');
    const { readConfig } = await import('../src/base/config.js');
    loadBase(join(MODEL_FIXTURES, 'qwen2'), quiet).dispose();
    const mixtral = join(MODEL_FIXTURES, 'mixtral');
    expect(() => loadBase(mixtral, quiet)).toThrow(/mixtral has sparse MoE layers, and no sparse FFN layout is registered: import 'molora'/);
    expect(() => weightCount(readConfig(mixtral))).toThrow(/no sparse FFN layout is registered/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a second, different layout is refused; registering the same one again is a no-op', async () => {
    vi.resetModules();
    const { registerSparseFfn, registeredSparseFfn } = await import('../src/base/sparse-ffn.js');
    await import('../src/moe/register.js');
    const layout = registeredSparseFfn()!;
    expect(layout).not.toBeNull();
    expect(() => registerSparseFfn(layout)).not.toThrow();
    expect(() => registerSparseFfn({ ...layout })).toThrow(/already registered/);
    expect(registeredSparseFfn()).toBe(layout);
  });
});
