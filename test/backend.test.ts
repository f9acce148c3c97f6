import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

type BackendModule = typeof import('../src/base/backend.js');

// initBackend caches its choice per process; a fresh module per test starts from scratch.
async function fresh(): Promise<BackendModule> {
  vi.resetModules();
  return import('../src/base/backend.js');
}

let savedEnv: string | undefined;
beforeEach(() => {
  savedEnv = process.env.MOLORA_BACKEND;
  delete process.env.MOLORA_BACKEND;
});
afterEach(() => {
  if (savedEnv === undefined) delete process.env.MOLORA_BACKEND;
  else process.env.MOLORA_BACKEND = savedEnv;
});

describe('initBackend', () => {
  it('without tfjs-node picks wasm, and installs the kernel patches', async () => {
    const { initBackend } = await fresh();
    const warn = vi.fn();
    const info = await initBackend({ warn });
    expect(info.name).toBe('wasm');
    expect(info.reason).toMatch(/^default \(no tfjs-node; no webgpu: .+\)$/);
    expect(tf.getBackend()).toBe('wasm');
    expect(warn).not.toHaveBeenCalled();
    // The stock wasm backend has no UnsortedSegmentSum; the patches add it.
    expect(tf.getKernel(tf.UnsortedSegmentSum, 'wasm')).toBeDefined();
    expect(tf.grad((x) => tf.sum(tf.gather(x, [1, 1])))(tf.tensor1d([1, 2, 3])).arraySync()).toEqual([0, 2, 0]);
  });

  it('rejects an unknown name, from the flag or the environment', async () => {
    const { initBackend } = await fresh();
    await expect(initBackend({ backend: 'metal' })).rejects.toThrow(
      "unknown backend 'metal'; choose one of: tensorflow, webgpu, wasm, cpu");
    process.env.MOLORA_BACKEND = 'gpu';
    await expect(initBackend()).rejects.toThrow("unknown backend 'gpu'");
  });

  it('names the package to install when tensorflow is asked for but missing', async () => {
    const { initBackend } = await fresh();
    await expect(initBackend({ backend: 'tensorflow' })).rejects.toThrow(
      /backend 'tensorflow' could not start: install @tensorflow\/tfjs-node-gpu \(CUDA\) or @tensorflow\/tfjs-node/);
    process.env.MOLORA_BACKEND = 'tensorflow';
    await expect(initBackend()).rejects.toThrow(/could not start/);
  });

  it('takes MOLORA_BACKEND, and warns loudly on cpu', async () => {
    const { initBackend } = await fresh();
    process.env.MOLORA_BACKEND = 'cpu';
    const warn = vi.fn();
    const info = await initBackend({ warn });
    expect(info).toEqual({ name: 'cpu', reason: 'MOLORA_BACKEND' });
    expect(tf.getBackend()).toBe('cpu');
    expect(warn).toHaveBeenCalledWith(expect.stringMatching(/WARNING: .*pure-JS cpu backend/));
  });

  it('lets the flag win over the environment, and switches when asked again', async () => {
    const { initBackend, activeBackend } = await fresh();
    process.env.MOLORA_BACKEND = 'cpu';
    // The suite pins MOLORA_THREADS=1 (vitest.config.ts), so wasm says it was asked for one thread.
    expect(await initBackend({ backend: 'wasm' })).toEqual({ name: 'wasm', reason: '--backend', threads: { count: 1, reason: 'asked for 1', measured: false } });
    expect(activeBackend()?.name).toBe('wasm');
    // A plain call keeps the active backend instead of re-reading the environment.
    expect((await initBackend()).name).toBe('wasm');
    expect((await initBackend({ backend: 'cpu', warn: () => {} })).name).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
  });

  it('without the webgpu package: the automatic order goes on to wasm, and a forced webgpu says what to install', async () => {
    const { initBackend } = await fresh();
    const missing = (m: string): Promise<unknown> => (m === 'webgpu' || m.startsWith('@tensorflow/tfjs-node') ? Promise.reject(new Error(`Cannot find package '${m}'`)) : import(m));
    // A GPU device node present, so the automatic order does try the package.
    const probe = { importer: missing, gpuDevicePresent: () => true, warn: () => {} };
    const info = await initBackend(probe);
    expect(info).toEqual({
      name: 'wasm',
      reason: expect.stringMatching(/no webgpu: the webgpu package is not installed: install webgpu and @tensorflow\/tfjs-backend-webgpu/),
      threads: { count: 1, reason: 'asked for 1', measured: false },
    });
    await expect(initBackend({ ...probe, backend: 'webgpu' })).rejects.toThrow(
      /^backend 'webgpu' could not start: the webgpu package is not installed: install webgpu and @tensorflow\/tfjs-backend-webgpu \(npm install webgpu @tensorflow\/tfjs-backend-webgpu\)$/);
    expect(tf.getBackend()).toBe('wasm');
  });

  it('without a GPU device node the automatic order does not start Dawn at all', async () => {
    const { initBackend } = await fresh();
    const asked: string[] = [];
    const importer = (m: string): Promise<unknown> => {
      asked.push(m);
      return m === 'webgpu' ? Promise.reject(new Error('must not be imported')) : import(m);
    };
    const info = await initBackend({ importer, gpuDevicePresent: () => false, warn: () => {} });
    expect(info.reason).toMatch(/no webgpu: no GPU device node/);
    expect(asked).not.toContain('webgpu');
  });

  it('the wasm patches stay on wasm: no other backend gets one of them', async () => {
    const { initBackend } = await fresh();
    // The kernels module of that fresh start (the one whose patches were installed).
    const { patchedKernels } = await import('../src/base/kernels.js');
    await initBackend({ backend: 'wasm' });
    expect(patchedKernels('wasm')).toEqual(expect.arrayContaining([tf.BatchMatMul, tf._FusedMatMul, tf.GatherV2, tf.UnsortedSegmentSum, 'MoloraSplitHeads']));
    expect(patchedKernels('webgpu')).toEqual([]);
    expect(patchedKernels('cpu')).toEqual(['MoloraSplitHeads', 'MoloraMergeHeads']);
  });
});

describe('a model before initBackend', () => {
  it('is refused, naming the folder and the call that is missing, instead of running on the cpu backend', async () => {
    vi.resetModules();
    const { loadBase } = await import('../src/base/load.js');
    const dir = 'test/fixtures/models/llama-gqa';
    expect(() => loadBase(dir)).toThrow(`loading ${dir}: no backend started; call \`await initBackend()\` (exported by molora) first`);
    // The same module graph, once initBackend has run, loads it.
    const { initBackend } = await import('../src/base/backend.js');
    await initBackend({ warn: () => {} });
    const model = loadBase(dir);
    expect(model.config.layers).toBeGreaterThan(0);
    model.dispose();
  });
});

describe('wasm threads that cannot start', () => {
  afterEach(() => {
    vi.doUnmock('../src/base/wasm-threads.js');
  });

  it('is an error saying why and what to do, not a quiet single thread or the cpu backend', async () => {
    vi.resetModules();
    vi.doMock('../src/base/wasm-threads.js', () => ({
      prepareWasmThreads: async () => {
        throw new Error('no threaded build in this bundle');
      },
      wasmThreadCount: () => 1,
    }));
    const { initBackend } = await import('../src/base/backend.js');
    const expected = 'wasm on 2 threads could not start (no threaded build in this bundle); MOLORA_THREADS=1 runs the single-threaded build';
    await expect(initBackend({ backend: 'wasm', threads: 2, warn: () => {} })).rejects.toThrow(expected);
    await expect(initBackend({ threads: 2, warn: () => {} })).rejects.toThrow(expected);
  });

  it('refuses a thread count that is not a positive integer, from the API or MOLORA_THREADS', async () => {
    const { initBackend } = await fresh();
    await expect(initBackend({ backend: 'wasm', threads: 1.5 })).rejects.toThrow("threads must be an integer ≥ 1 or 'auto', got 1.5");
    const saved = process.env.MOLORA_THREADS;
    process.env.MOLORA_THREADS = 'two';
    try {
      await expect((await fresh()).initBackend({ backend: 'wasm' })).rejects.toThrow("MOLORA_THREADS: expected 'auto' or an integer ≥ 1, got 'two'");
    } finally {
      process.env.MOLORA_THREADS = saved;
    }
  });
});
