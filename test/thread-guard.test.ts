import * as tf from '@tensorflow/tfjs';
import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { guardThreads, othersBusyCores, pollThreadGuard, type CpuSample } from '../src/base/thread-guard.js';

/** A reading where each core has been busy `busy` ms and idle `idle` ms, and this process used `own` ms. */
const reading = (atMs: number, own: number, ...cores: [number, number][]): CpuSample => ({
  cores: cores.map(([busy, idle]) => ({ total: busy + idle, idle })),
  ownMs: own,
  atMs,
});

describe('othersBusyCores', () => {
  it("is the machine's busy time less this process's, over the wall time", () => {
    const a = reading(0, 0, [0, 0], [0, 0]);
    // Over 1 s: core 0 busy 900 ms, core 1 busy 800 ms; this process used 700 ms → 1.0 core others.
    expect(othersBusyCores(a, reading(1000, 700, [900, 100], [800, 200]))).toBeCloseTo(1.0, 12);
    // All the busy time was ours: nobody else.
    expect(othersBusyCores(a, reading(1000, 1700, [900, 100], [800, 200]))).toBe(0);
    // Clock granularity can put our time above the machine's: never below 0.
    expect(othersBusyCores(a, reading(1000, 1800, [900, 100], [800, 200]))).toBe(0);
    expect(othersBusyCores(a, reading(0, 0, [5, 0], [5, 0]))).toBe(0);
  });
});

describe('guardThreads', () => {
  const tick = (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };

  it('calls contention after two busy readings in a row, once, and a quiet reading between resets the count', () => {
    // Cores other processes hold in each window; this process holds 0.2 throughout.
    const others = [1, 0, 1, 1, 1, 1];
    let readings = 0;
    let busy = 0;
    let own = 0;
    let prev = performance.now();
    const sample = (): CpuSample => {
      const now = performance.now();
      if (readings > 0) {
        busy += (others[readings - 1]! + 0.2) * (now - prev);
        own += 0.2 * (now - prev);
      }
      prev = now;
      readings++;
      return reading(now, own, [busy, 0]);
    };
    const seen: number[] = [];
    const stop = guardThreads({ everyMs: 1, sample, onContention: (c) => seen.push(c) });
    for (let i = 0; i < 6; i++) {
      tick(2);
      pollThreadGuard();
    }
    // Windows 1 (busy), 2 (quiet), 3 and 4 (busy): contention at the 4th reading after the first,
    // and no reading after it.
    expect(seen).toHaveLength(1);
    expect(seen[0]).toBeCloseTo(1, 6);
    expect(readings).toBe(5);
    stop();
  });

  it('takes no reading before its interval, and none after it is stopped', () => {
    let readings = 0;
    const stop = guardThreads({ everyMs: 60_000, onContention: () => {}, sample: () => (readings++, reading(performance.now(), 0, [0, 0])) });
    pollThreadGuard();
    expect(readings).toBe(1);
    stop();
    const stop2 = guardThreads({ everyMs: 1, onContention: () => {}, sample: () => (readings++, reading(performance.now(), 0, [0, 0])) });
    stop2();
    tick(2);
    pollThreadGuard();
    expect(readings).toBe(2);
  });
});

describe("'auto' threads on a machine that gets busy", () => {
  let spinner: ReturnType<typeof spawn> | null = null;
  afterEach(() => {
    spinner?.kill('SIGKILL');
    vi.doUnmock('../src/base/threads.js');
  });

  it('drops the wasm pool to one thread when another process takes a core, and products come out the same', async () => {
    vi.resetModules();
    process.env.MOLORA_THREAD_WATCH_MS = '100';
    // 'auto' as it decides on an idle 2-core machine; the rest of the module as it is.
    vi.doMock('../src/base/threads.js', async (real) => ({
      ...(await real<typeof import('../src/base/threads.js')>()),
      chooseThreads: async () => ({ count: 2, reason: 'auto: 2 of 2 cores idle', measured: true }),
    }));
    const { initBackend, activeBackend } = await import('../src/base/backend.js');
    const { wasmThreadCount } = await import('../src/base/wasm-threads.js');
    const warnings: string[] = [];
    await initBackend({ backend: 'wasm', warn: (m) => warnings.push(m) });
    expect(wasmThreadCount()).toBe(2);

    const a = tf.randomNormal([256, 256], 0, 1, 'float32', 1) as tf.Tensor2D;
    const b = tf.randomNormal([256, 256], 0, 1, 'float32', 2) as tf.Tensor2D;
    const before = await tf.matMul(a, b).data();
    spinner = spawn(process.execPath, ['-e', 'const e = Date.now() + 20000; while (Date.now() < e);'], { stdio: 'ignore' });
    const deadline = performance.now() + 15_000;
    while (wasmThreadCount() === 2 && performance.now() < deadline) tf.tidy(() => tf.matMul(a, b));
    delete process.env.MOLORA_THREAD_WATCH_MS;

    expect(wasmThreadCount()).toBe(1);
    expect(activeBackend()!.threads).toMatchObject({ count: 1, reason: expect.stringMatching(/^auto: dropped from 2 threads to 1 when other processes kept \d+\.\d cores busy$/) });
    expect(warnings.at(-1)).toMatch(/^wasm drops from 2 threads to 1 for the rest of the run: other processes keep/);
    const after = await tf.matMul(a, b).data();
    expect(Buffer.from(after.buffer).equals(Buffer.from(before.buffer))).toBe(true);
    tf.dispose([a, b]);
  });
});
