import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../../src/adapters/config.js';
import { activeBackend, initBackend } from '../../src/base/backend.js';
import { readF32, readHost } from '../../src/base/host.js';
import { loadBase } from '../../src/base/load.js';
import { lmLoss } from '../../src/base/loss.js';
import { assertFitsMemory, assertLogitsFit, estimateTrainingBytes } from '../../src/base/memory.js';
import { Rng } from '../../src/base/rng.js';
import { benchTrain } from '../../src/bench/train.js';
import { MAX_BINDING_ENV } from '../../src/base/vocab.js';
import { GPU_MEMORY_ENV, gpuMemory } from '../../src/base/webgpu.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference } from '../helpers.js';

// The webgpu project (vitest.config.ts) runs this file with MOLORA_BACKEND=webgpu on SwiftShader.

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js');
const quiet = { warn: () => {} };
const batch = { ids: Int32Array.from([1, 5, 9, 40, 63, 2, 7, 33]), batch: 2, seq: 4 };

beforeAll(async () => {
  await initBackend();
});
afterEach(() => {
  delete process.env[MAX_BINDING_ENV];
  delete process.env[GPU_MEMORY_ENV];
});

describe('vocabulary tables over the binding limit', () => {
  // The fixtures' tables are 64–96 rows × 32 floats (8–12 KiB): a 4 KiB limit cuts each into 2–3 blocks.
  it.each([
    ['llama-gqa', 'an untied head'],
    ['mistral', 'a tied head'],
    ['gpt2', 'a tied head and learned positions'],
  ])('%s (%s): split into blocks that fit, with logits equal to the whole tables\'', async (name) => {
    const dir = join(MODEL_FIXTURES, name);
    const whole = loadBase(dir, quiet);
    const want = await readHost(() => whole.forward(batch));
    whole.dispose();
    process.env[MAX_BINDING_ENV] = '4096';
    const split = loadBase(dir, quiet);
    try {
      expect(split.parts.embed.tableBlocks.length).toBeGreaterThanOrEqual(2);
      expect(split.parts.embed.tableBlocks.every((b) => b.size * 4 <= 4096)).toBe(true);
      expect(split.parts.head.columnBlocks.length).toBe(split.parts.embed.tableBlocks.length);
      expect(() => split.parts.head.weightT).toThrow(/lm_head is split into \d+ column blocks to fit the GPU's binding limit/);
      const got = await readHost(() => split.forward(batch));
      expect(maxAbsDiff(got, want)).toBeLessThan(1e-5);
    } finally {
      split.dispose();
    }
  });

  it('training through a split embedding and head gives the whole model\'s loss and LoRA gradients', async () => {
    const dir = join(MODEL_FIXTURES, 'llama-gqa');
    const lm = { ...batch, targets: Int32Array.from([5, 9, 40, 63, 7, 33, 8, 1]), lossMask: new Float32Array(8).fill(1) };
    const run = async (): Promise<Float32Array[]> => {
      const model = loadBase(dir, quiet);
      const adapter = createLora(model, { ...DEFAULT_LORA, rank: 2, targets: ['q_proj', 'lm_head'] }, 'a', new Rng(2));
      for (const l of adapter.layers.values()) tf.tidy(() => l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.3, 'float32', 4)));
      adapter.attach(model);
      const vars = [...adapter.params().values()];
      const { value, grads } = tf.variableGrads(() => lmLoss(model, lm, { training: true }), vars);
      const out = [await readF32(value), ...(await Promise.all(vars.map((v) => readF32(grads[v.name]!))))];
      tf.dispose([value, ...Object.values(grads)]);
      adapter.dispose();
      model.dispose();
      return out;
    };
    const whole = await run();
    process.env[MAX_BINDING_ENV] = '4096';
    const split = await run();
    whole.forEach((w, i) => expect(maxAbsDiff(split[i]!, w), `tensor ${i}`).toBeLessThan(1e-5));
  });
});

describe('memory', () => {
  it('a training plan over the GPU budget is refused with the numbers', () => {
    const memory = activeBackend()!.adapter!.memory!;
    const shape = { params: 1e8, trainableParams: 1e6, batch: 64, seq: 4096, hidden: 2048, layers: 24, heads: 16, ffn: 8192, vocab: 128256 };
    const bytes = estimateTrainingBytes(shape);
    expect(bytes).toBeGreaterThan(memory.bytes);
    expect(() => assertFitsMemory(bytes, 'training with batch 64 × seq 4096')).toThrow(
      /^training with batch 64 × seq 4096 needs about [\d.]+ GiB of GPU memory, over the [\d.]+ GiB molora allows \(90% of [\d.]+ GiB, from system memory \(a software adapter runs on the CPU\)\)\. Use a smaller batch/);
    expect(() => assertFitsMemory(estimateTrainingBytes({ ...shape, batch: 1, seq: 16, params: 1e5, vocab: 1000, hidden: 64, layers: 2, ffn: 128 }), 'small')).not.toThrow();
  });

  it('the memory figure: MOLORA_GPU_MEMORY_BYTES wins, a software adapter counts system memory, an unknown vendor none', () => {
    process.env[GPU_MEMORY_ENV] = String(6 * 2 ** 30);
    expect(gpuMemory({ vendor: 'nvidia', software: false })).toEqual({ bytes: 6 * 2 ** 30, source: GPU_MEMORY_ENV });
    process.env[GPU_MEMORY_ENV] = '6GB';
    expect(() => gpuMemory({ vendor: 'nvidia', software: false })).toThrow(/MOLORA_GPU_MEMORY_BYTES must be a whole number of bytes, got '6GB'/);
    delete process.env[GPU_MEMORY_ENV];
    expect(gpuMemory({ vendor: 'google', software: true })!.source).toMatch(/system memory/);
    expect(gpuMemory({ vendor: 'unknown-vendor', software: false })).toBeNull();
  });

  it('logits over one binding are refused, saying how many tokens fit', () => {
    expect(() => assertLogitsFit(2048, 128256, 2 ** 29, 'training with batch 8 × seq 256')).toThrow(
      /^training with batch 8 × seq 256: its logits, 2048 tokens × 128256 vocabulary float32 \(1002 MiB\), are over the GPU's 512 MiB binding limit\. .*at most 1046 tokens a batch/);
    expect(() => assertLogitsFit(2048, 128256, null, 'off webgpu')).not.toThrow();
  });
});

describe('the CLI on webgpu', () => {
  const cli = (...args: string[]): string => execFileSync('node', [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MOLORA_BACKEND: 'webgpu' } });

  it('forward --json matches the float64 reference within 1e-4', () => {
    const ref = readReference('llama-gqa').cases[0]!;
    const ids = ref.ids[0]!;
    const out = JSON.parse(cli('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--ids', ids.join(','), '--json')) as { logprobs: number[][] };
    expect(out.logprobs).toHaveLength(ids.length);
    out.logprobs.forEach((row, t) => expect(maxAbsDiff(row, ref.logprobs[0]![t]!), `position ${t}`).toBeLessThan(1e-4));
  });

  // In-process (a CLI start recompiles every shader, seconds on SwiftShader): bench train --json prints this object.
  it('bench train reports the webgpu backend and its adapter', async () => {
    const r = await benchTrain({ layers: 1, hidden: 16, heads: 2, kvHeads: 1, ffn: 32, vocab: 300, batch: 1, seq: 8, steps: 1, warmup: 0, rank: 2, alpha: 4, targets: ['q_proj', 'v_proj'] });
    expect(JSON.parse(JSON.stringify(r))).toMatchObject({ backend: 'webgpu', adapter: { architecture: 'swiftshader', software: true, limits: expect.any(Object) } });
    expect(r.tokens_per_s).toBeGreaterThan(0);
    expect(Number.isFinite(r.loss)).toBe(true);
  });
});
