import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachAdapters } from '../src/adapters/peft.js';
import { trainAdapter } from '../src/adapters/train-adapter.js';
import { initBackend } from '../src/base/backend.js';
import { generate } from '../src/base/generate.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import { LOCK_FILE } from '../src/base/lock.js';
import { Rng } from '../src/base/rng.js';
import { evaluate } from '../src/train/evaluate.js';
import { loadLmData } from '../src/train/lm.js';
import { readMetrics } from '../src/train/metrics.js';
import { tempDir } from './helpers.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const tmp = tempDir();
const base = join(tmp.dir, 'base');
const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'];

/** "<category> <3 random letters> =" → " <the category's word>": learnable, and held-out rows test generalisation. */
function writeTask(path: string, n: number, seed: number): string[][] {
  const answers: Record<string, string> = { color: 'red', fruit: 'fig', pet: 'cat' };
  const rng = new Rng(seed);
  const rows: string[][] = [];
  for (let i = 0; i < n; i++) {
    const cat = Object.keys(answers)[rng.int(3)]!;
    const word = Array.from({ length: 3 }, () => String.fromCharCode(97 + rng.int(26))).join('');
    rows.push([`${cat} ${word} =`, ` ${answers[cat]}`]);
  }
  writeFileSync(path, ['prompt,completion', ...rows.map((r) => r.join(','))].join('\n') + '\n');
  return rows;
}

beforeAll(async () => {
  await initBackend();
  await initBase({ arch: 'llama', layers: 2, hidden: 64, heads: 4, ffn: 128, out: base, seed: 1 });
  writeTask(join(tmp.dir, 'train.csv'), 400, 1);
});
afterAll(() => tmp.cleanup());

const common = { model: base, data: join(tmp.dir, 'train.csv'), promptColumn: 'prompt', completionColumn: 'completion', seqLen: 32, batchSize: 16, lr: 1e-2, progress: 'off' as const, log: () => {} };

describe('train-adapter', () => {
  it('learns a prompt/completion task: val loss far below the base, greedy reproduces held-out completions', async () => {
    const held = writeTask(join(tmp.dir, 'val.csv'), 30, 99);
    const out = join(tmp.dir, 'learn');
    const counts: number[] = [];
    const r = await trainAdapter({
      ...common,
      valData: join(tmp.dir, 'val.csv'),
      out,
      steps: 120,
      evalEvery: 120,
      seed: 0,
      lora: { rank: 8, alpha: 16, targets: ALL },
      afterStep: () => counts.push(tf.memory().numTensors),
    });
    expect(r.status).toBe('done');
    // numTensors stays flat across training steps.
    expect(new Set(counts.slice(1)).size).toBe(1);
    const evals = readMetrics(join(out, 'metrics.jsonl')).filter((m) => 'val_loss' in m);
    const val = evals.at(-1)!.val_loss as number;

    const model = loadBase(base);
    const data = await loadLmData(model, { ...common, valData: join(tmp.dir, 'val.csv'), seed: 0 }, () => {});
    const baseVal = (await evaluate(model, data.dataset.val!, { batchSize: 16, seqLen: 32, exactMatch: false })).overall.loss;
    expect(baseVal).toBeGreaterThan(3);
    expect(val).toBeLessThan(0.05 * baseVal);

    const [adapter] = attachAdapters(model, [out]);
    const tok = model.tokenizer!;
    let exact = 0;
    for (const [prompt, completion] of held) {
      const ids = tok.encode(prompt, { addBos: true });
      const got = tok.decode((await generate(model, [ids], { maxNewTokens: 6 })).tokens[0]!, { skipSpecial: true });
      if (got === completion) exact++;
    }
    expect(exact).toBe(held.length);
    // The eval report agrees: per-task exact match, loss below the base's.
    const report = await evaluate(model, data.dataset.val!, { batchSize: 8, seqLen: 32 });
    expect(report.overall).toMatchObject({ n: held.length, exact_match: 1 });
    expect(report.overall.loss).toBeCloseTo(val, 3);
    adapter!.dispose();
    model.dispose();
  });

  // Batch 16 keeps the run several seconds long, so a signal sent at its first progress line
  // lands mid-run even on a loaded machine.
  it('SIGINT and SIGTERM checkpoint and exit; a second writer meanwhile is refused; --resume then matches an uninterrupted run exactly', async () => {
    const args = (out: string): string[] => [
      CLI, 'train-adapter', '--model', base, '--data', join(tmp.dir, 'train.csv'), '--prompt-column', 'prompt', '--completion-column', 'completion',
      '--out', out, '--steps', '300', '--batch-size', '16', '--seq-len', '32', '--lr', '5e-3', '--targets', 'q_proj,v_proj,lm_head', '--seed', '3', '--progress', 'lines',
    ];
    const straight = join(tmp.dir, 'straight');
    expect(spawnSync('node', args(straight), { encoding: 'utf8' }).status).toBe(0);

    const cut = join(tmp.dir, 'cut');
    /** Run on `cut` and send `signal` at its first progress line; `during` runs first, the run paused (SIGSTOP) but holding its folder. */
    const interrupted = async (extra: string[], signal: NodeJS.Signals, during = (_pid: number): void => {}): Promise<number> => {
      const child = spawn('node', [...args(cut), ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        // A progress line, not the 'resumed … at step 8/300' note printed before the handlers are in.
        if (!/^step \d+\/300 \|/m.test(stderr) || child.killed) return;
        child.kill('SIGSTOP');
        during(child.pid!);
        child.kill('SIGCONT');
        child.kill(signal);
      });
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      expect(code, stderr).toBe(130);
      expect(stderr).toContain(`${signal}: finishing this step, then writing a checkpoint`);
      expect(stderr).toMatch(/--resume/);
      expect(existsSync(join(cut, LOCK_FILE))).toBe(false);
      return readMetrics(join(cut, 'metrics.jsonl')).length;
    };
    // Two writers on one folder: the second, fresh or resuming, is refused at once, naming the holder.
    const second: SpawnSyncReturns<string>[] = [];
    let holder = 0;
    const stopped = await interrupted([], 'SIGINT', (pid) => {
      holder = pid;
      for (const extra of [[], ['--resume', cut]]) second.push(spawnSync('node', [...args(cut), ...extra], { encoding: 'utf8' }));
    });
    for (const r of second) {
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`molora: error: ${cut} is in use by another molora process (pid ${holder} on `);
    }
    expect(stopped).toBeGreaterThan(0);
    expect(stopped).toBeLessThan(300);
    const stoppedAgain = await interrupted(['--resume', cut], 'SIGTERM');
    expect(stoppedAgain).toBeGreaterThan(stopped);
    expect(stoppedAgain).toBeLessThan(300);

    const resumed = spawnSync('node', [...args(cut), '--resume', cut], { encoding: 'utf8' });
    expect(resumed.status, resumed.stderr).toBe(0);
    const a = readMetrics(join(straight, 'metrics.jsonl')).filter((m) => 'loss' in m);
    const b = readMetrics(join(cut, 'metrics.jsonl')).filter((m) => 'loss' in m);
    expect(b.map((m) => m.step)).toEqual(a.map((m) => m.step));
    b.forEach((m, i) => expect(Math.abs((m.loss as number) - (a[i]!.loss as number))).toBeLessThan(1e-6));
  }, 180_000);

  it('a diverged run (lr 1e30: the loss sticks, the gradient is 0, the weights near 1e30) stops, and writes no adapter', async () => {
    const out = join(tmp.dir, 'diverged');
    const err = await trainAdapter({ ...common, lr: 1e30, out, steps: 5, seed: 0 }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/^step 2: a parameter reached \d\.\d\de\+(29|30) in magnitude \(more than 1000000\): the run diverged; stopped before updating\./);
    expect(readdirSync(out).filter((f) => f.startsWith('adapter_'))).toEqual([]);
  });

  it('a bad CSV fails with its named error and leaves no adapter behind', () => {
    const bad = join(tmp.dir, 'bad.csv');
    writeFileSync(bad, 'question,answer\nhi,there\n');
    const out = join(tmp.dir, 'bad-out');
    const r = spawnSync('node', [CLI, 'train-adapter', '--model', base, '--data', bad, '--prompt-column', 'prompt', '--completion-column', 'completion', '--out', out, '--steps', '2'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/prompt/);
    expect(r.stderr).toMatch(/bad\.csv:1: no column "prompt" \(named by --prompt-column\); available columns: "question", "answer"/);
    expect(existsSync(out) ? readdirSync(out).filter((f) => f.startsWith('adapter_')) : []).toEqual([]);
  });
});
