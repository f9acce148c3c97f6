import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MAX_AUTO_THREADS } from '../src/base/threads.js';

// Each run is its own process: the threaded build is chosen when the backend starts.
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const SHAPE = ['--layers', '2', '--hidden', '64', '--heads', '4', '--kv-heads', '2', '--ffn', '128', '--vocab', '512',
  '--batch', '2', '--seq', '32', '--steps', '2', '--warmup', '1', '--json'];

function benchTrain(env: Record<string, string>, shape = SHAPE): { status: number | null; stderr: string; json: Record<string, unknown> | null } {
  const r = spawnSync('node', [CLI, 'bench', 'train', ...shape], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return { status: r.status, stderr: r.stderr, json: line.startsWith('{') ? JSON.parse(line) : null };
}

describe('MOLORA_THREADS on wasm', () => {
  it('runs the threaded build on 2 threads, with the same loss as one thread, and the process exits', () => {
    const one = benchTrain({ MOLORA_THREADS: '1' });
    const two = benchTrain({ MOLORA_THREADS: '2' });
    // spawnSync's timeout would kill a process kept alive by idle pthread workers (status null).
    expect(two.status, two.stderr).toBe(0);
    expect(one.status, one.stderr).toBe(0);
    expect(one.json!.threads).toBe(1);
    expect(two.json!.threads).toBe(2);
    expect(two.json!.backend).toBe('wasm');
    // XNNPACK splits each product's output tiles across threads; every sum keeps its order.
    expect(two.json!.loss).toBe(one.json!.loss);
  });

  it("'auto' keeps a small model on one thread, and threads a hidden-256 model only over idle cores, with the same loss", () => {
    const small = benchTrain({ MOLORA_THREADS: 'auto' });
    expect(small.status, small.stderr).toBe(0);
    expect(small.json).toMatchObject({ threads: 1, threads_reason: 'auto: hidden size 64 < 256, products too small to split' });
    expect(small.stderr).not.toContain('wasm on');

    const wide = SHAPE.map((a, i) => (SHAPE[i - 1] === '--hidden' ? '256' : SHAPE[i - 1] === '--ffn' ? '512' : a));
    const auto = benchTrain({ MOLORA_THREADS: 'auto' }, wide);
    const one = benchTrain({ MOLORA_THREADS: '1' }, wide);
    expect(auto.status, auto.stderr).toBe(0);
    const reason = String(auto.json!.threads_reason);
    // Either the pool kept the idle cores the sample found (at least one thread), or another
    // test file took a core mid-run and the guard dropped it to one (thread-guard.ts).
    const dropped = /^auto: dropped from (\d+) threads to 1 when other processes kept \d+\.\d cores busy$/.exec(reason);
    if (dropped) {
      expect(auto.json!.threads).toBe(1);
      expect(auto.stderr).toContain(`wasm on ${dropped[1]} threads`);
      expect(auto.stderr).toContain(`wasm drops from ${dropped[1]} threads to 1`);
    } else {
      expect(reason).toMatch(/^auto: \d+ of \d+ cores idle$/);
      expect(auto.json!.threads).toBe(Math.max(1, Math.min(MAX_AUTO_THREADS, Number(/(\d+) of/.exec(reason)![1]))));
      expect(auto.stderr).toContain(`wasm on ${auto.json!.threads} thread`);
    }
    expect(auto.json!.loss).toBe(one.json!.loss);
  });

  it('refuses a value that is not a thread count', () => {
    for (const bad of ['0', '1.5', 'two']) {
      const r = benchTrain({ MOLORA_THREADS: bad });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(`option '--threads <n>' value '${bad}' from env 'MOLORA_THREADS' is invalid. expected 'auto' or an integer ≥ 1, got '${bad}'`);
    }
    const flag = benchTrain({}, [...SHAPE, '--threads', '0']);
    expect(flag.status).not.toBe(0);
    expect(flag.stderr).toContain("option '--threads <n>' argument '0' is invalid. expected 'auto' or an integer ≥ 1, got '0'");
  });

  it('--threads wins over MOLORA_THREADS', () => {
    const r = benchTrain({ MOLORA_THREADS: '1' }, [...SHAPE, '--threads', '2']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ threads: 2, threads_reason: 'asked for 2' });
  });
});
