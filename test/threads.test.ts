import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { chooseThreads, idleCores, MAX_AUTO_THREADS, MIN_THREADED_HIDDEN, parseThreadSetting } from '../src/base/threads.js';

const idle = (n: number) => async () => n;
const never = async (): Promise<number> => {
  throw new Error('the cores were sampled for a model too small to thread');
};

describe("wasm threads: 'auto' and MOLORA_THREADS", () => {
  it('gives a small or unknown model one thread without sampling the cores', async () => {
    expect(await chooseThreads('auto', { hiddenSize: 128 }, never)).toMatchObject({ count: 1, measured: false });
    expect((await chooseThreads('auto', { hiddenSize: MIN_THREADED_HIDDEN - 1 }, never)).reason).toContain(`< ${MIN_THREADED_HIDDEN}`);
    expect(await chooseThreads('auto', {}, never)).toMatchObject({ count: 1, measured: false });
  });

  it('gives a large model one thread per idle core, never more than the machine has or the cap', async () => {
    const cores = os.availableParallelism();
    const big = { hiddenSize: 960 };
    expect(await chooseThreads('auto', big, idle(1))).toMatchObject({ count: 1, measured: true });
    expect(await chooseThreads('auto', big, idle(0))).toMatchObject({ count: 1, measured: true });
    expect((await chooseThreads('auto', big, idle(cores))).count).toBe(Math.min(cores, MAX_AUTO_THREADS));
    expect((await chooseThreads('auto', big, idle(cores + 64))).count).toBe(Math.min(cores, MAX_AUTO_THREADS));
    expect((await chooseThreads('auto', big, idle(1))).reason).toBe(`auto: 1 of ${cores} cores idle`);
  });

  it('takes a given count as it is', async () => {
    expect(await chooseThreads(3, { hiddenSize: 64 }, never)).toMatchObject({ count: 3, reason: 'asked for 3' });
  });

  it("parses a setting's text (--threads, MOLORA_THREADS): 'auto' or a positive integer; anything else is refused", () => {
    expect(parseThreadSetting('auto')).toBe('auto');
    expect(parseThreadSetting('2')).toBe(2);
    for (const bad of ['', '0', '-1', '1.5', 'two', 'Auto']) {
      expect(() => parseThreadSetting(bad)).toThrow(`expected 'auto' or an integer ≥ 1, got '${bad}'`);
    }
  });

  it('counts idle cores between 0 and the machine\'s, and a core kept busy is not idle', async () => {
    const cores = os.cpus().length;
    const quiet = await idleCores(100);
    expect(quiet).toBeGreaterThanOrEqual(0);
    expect(quiet).toBeLessThanOrEqual(cores);
    // This thread spins past the end of the window (the sampler's timer fires after the spin),
    // so some core was busy all along: at most cores − 1 can look idle.
    const sampling = idleCores(100);
    const end = performance.now() + 300;
    while (performance.now() < end) Math.sqrt(Math.random());
    expect(await sampling).toBeLessThanOrEqual(cores - 1);
  });
});
