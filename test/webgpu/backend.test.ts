import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { activeBackend, backendReport, initBackend } from '../../src/base/backend.js';
import { readF32 } from '../../src/base/host.js';
import { patchedKernels } from '../../src/base/kernels.js';

// The webgpu project (vitest.config.ts) runs this file with MOLORA_BACKEND=webgpu on SwiftShader.

/** What Dawn itself offers on this machine, asked directly (not through molora). */
async function dawnAdapter(): Promise<{ limits: Record<string, number>; info: Record<string, unknown> }> {
  const { create } = (await import('webgpu')) as unknown as { create: (f: string[]) => { requestAdapter(): Promise<{ limits: Record<string, number>; info: Record<string, unknown> }> } };
  return (await create(['backend=vulkan']).requestAdapter())!;
}

beforeAll(async () => {
  await initBackend();
});

describe('the webgpu backend on a software adapter', () => {
  it('starts forced, on SwiftShader, with the adapter\'s own maximum buffer limits, and reports it', async () => {
    const info = activeBackend()!;
    expect(info).toMatchObject({ name: 'webgpu', reason: 'MOLORA_BACKEND' });
    expect(tf.getBackend()).toBe('webgpu');
    const a = info.adapter!;
    expect(a).toMatchObject({ architecture: 'swiftshader', software: true, description: expect.stringMatching(/SwiftShader/) });
    const dawn = await dawnAdapter();
    // WebGPU grants 128 MiB bindings and 256 MiB buffers unless asked: molora asks for the adapter's maxima.
    expect(a.limits).toEqual({ maxStorageBufferBindingSize: dawn.limits.maxStorageBufferBindingSize, maxBufferSize: dawn.limits.maxBufferSize });
    expect(a.limits.maxStorageBufferBindingSize).toBeGreaterThan(128 * 2 ** 20);
    expect(a.memory).toMatchObject({ source: 'system memory (a software adapter runs on the CPU)' });
    expect(backendReport()).toEqual({ backend: 'webgpu', adapter: a });
  });

  it('carries none of the wasm kernels: only the chunked AddN, which sums past the storage-buffer limit', async () => {
    expect(patchedKernels('webgpu')).toEqual([tf.AddN]);
    const limit = (tf.backend() as unknown as { device: { limits: { maxStorageBuffersPerShaderStage: number } } }).device.limits.maxStorageBuffersPerShaderStage;
    const n = 2 * limit + 3;
    const xs = Array.from({ length: n }, (_, i) => tf.fill([5], i + 1));
    const before = tf.memory().numTensors;
    const sum = tf.addN(xs);
    expect(Array.from(await readF32(sum))).toEqual(new Array(5).fill((n * (n + 1)) / 2));
    sum.dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(xs);
  });

  it('the patched gradients (matMul with flags and broadcast, gather, top-k, strided slice) equal the cpu backend\'s', async () => {
    const f = (a: tf.Tensor, b: tf.Tensor): tf.Scalar => {
      const mm = tf.matMul(a.reshape([2, 3, 4]), b, false, true); // [2,3,4] x [5,4]ᵀ, b shared over the batch
      const g = tf.gather(mm.reshape([6, 5]), tf.tensor1d([0, 3, 3, 5], 'int32'));
      const top = tf.topk(g, 2).values;
      const sl = tf.stridedSlice(mm, [0, 1, 0], [2, 3, 5], [1, 1, 2]);
      return top.sum().add(sl.square().sum()) as tf.Scalar;
    };
    const a0 = Array.from({ length: 24 }, (_, i) => Math.sin(i));
    const b0 = Array.from({ length: 20 }, (_, i) => Math.cos(3 * i));
    const grads = async (): Promise<Float32Array[]> => {
      const [a, b] = [tf.tensor(a0, [24]), tf.tensor(b0, [5, 4])];
      const gs = tf.grads(f)([a, b]);
      const out = [await readF32(gs[0]!), await readF32(gs[1]!)];
      tf.dispose([a, b, ...gs]);
      return out;
    };
    const gpu = await grads();
    await initBackend({ backend: 'cpu', warn: () => {} });
    const cpu = await grads();
    await initBackend({ backend: 'webgpu' });
    gpu.forEach((g, i) => g.forEach((v, j) => expect(v).toBeCloseTo(cpu[i]![j]!, 4)));
    expect(cpu[0]!.some((v) => v !== 0) && cpu[1]!.some((v) => v !== 0)).toBe(true);
  });

  // Last: it starts a fresh module graph (the backend choice is cached per process).
  it('the automatic order passes over a software adapter, saying why', async () => {
    vi.resetModules();
    const saved = process.env.MOLORA_BACKEND;
    delete process.env.MOLORA_BACKEND;
    try {
      const fresh = await import('../../src/base/backend.js');
      const info = await fresh.initBackend({ gpuDevicePresent: () => true, warn: () => {} });
      expect(info).toEqual({
        name: 'wasm',
        reason: expect.stringMatching(/no webgpu: the only adapter is a software one \(SwiftShader driver/),
        // The suite pins MOLORA_THREADS=1 (vitest.config.ts).
        threads: { count: 1, reason: 'asked for 1', measured: false },
      });
    } finally {
      process.env.MOLORA_BACKEND = saved;
    }
  });
});
