import { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { initBase } from '../src/base/init.js';
import { MIXLORA_OPTIONS, mixLoraOf } from '../src/adapters/lora-options.js';
import { addOptions, optionValues } from '../src/cli/options.js';
import { registerMoeCommands } from '../src/cli/moe.js';
import { readMetrics } from '../src/train/metrics.js';
import { maxAbsDiff, tempDir } from './helpers.js';
import { taskCsv } from './moe-train-fixtures.js';

// forward is the lead's command, run as users run it: the built dist/ (npm test builds first).
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const forward = (model: string, ids: number[]): number[][] =>
  (JSON.parse(execFileSync('node', [CLI, 'forward', '--model', model, '--ids', ids.join(','), '--json'], { encoding: 'utf8' })) as { logprobs: number[][] }).logprobs;

const tmp = tempDir();
const dense = join(tmp.dir, 'dense');

/** The MoE commands on a fresh program, as main.ts registers them; returns what they print to stdout. */
async function molora(...args: string[]): Promise<string> {
  const program = new Command('molora').exitOverride();
  registerMoeCommands(program, program.command('bench'));
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await program.parseAsync(args, { from: 'user' });
  } finally {
    spy.mockRestore();
    err.mockRestore();
  }
  return out;
}

beforeAll(async () => {
  await initBackend();
  await initBase({ arch: 'llama', layers: 2, hidden: 32, heads: 2, ffn: 64, out: dense, seed: 1 });
  taskCsv(tmp.dir);
});
afterAll(() => tmp.cleanup());

describe('MoE commands', () => {
  it('upcycle writes a loadable Mixtral folder with the tokenizer; at σ = 0 forward --json equals the dense model', async () => {
    const out = join(tmp.dir, 'moe');
    await molora('upcycle', '--model', dense, '--experts', '4', '--top-k', '2', '--seed', '3', '--out', out);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) expect(existsSync(join(out, f)), f).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toMatchObject({ model_type: 'mixtral', num_local_experts: 4, num_experts_per_tok: 2 });
    const ids = [256, 5, 9, 13, 17, 21];
    const [a, b] = [forward(dense, ids), forward(out, ids)];
    a.forEach((row, t) => expect(maxAbsDiff(row, b[t]!)).toBeLessThan(1e-4));

    const shared = join(tmp.dir, 'moe-shared');
    await molora('upcycle', '--model', dense, '--experts', '3', '--top-k', '1', '--shared', '1', '--noise', '0.01', '--out', shared);
    expect(JSON.parse(readFileSync(join(shared, 'config.json'), 'utf8'))).toMatchObject({ model_type: 'qwen2_moe', num_experts: 3, shared_expert_intermediate_size: 64 });
  });

  it('train-moe trains from a CSV and writes the model folder and metrics with routing', async () => {
    const moe = join(tmp.dir, 'moe-train-src');
    await molora('upcycle', '--model', dense, '--experts', '2', '--top-k', '1', '--out', moe);
    const out = join(tmp.dir, 'moe-trained');
    await molora(
      'train-moe', '--model', moe, '--data', join(tmp.dir, 'train.csv'), '--prompt-column', 'prompt', '--completion-column', 'completion',
      '--out', out, '--steps', '4', '--batch-size', '8', '--seq-len', '24', '--val-split', '0.1', '--eval-every', '2',
      '--router-only', '--aux-coef', '0.02', '--balance-bias', '0.001', '--progress', 'off',
    );
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'checkpoint-4/model.safetensors', 'checkpoint-4/buffers.safetensors']) expect(existsSync(join(out, f)), f).toBe(true);
    const evals = readMetrics(join(out, 'metrics.jsonl')).filter((l) => 'router' in l);
    expect(evals.map((e) => e.step)).toEqual([2, 4]);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).router_aux_loss_coef).toBe(0.02);
    await expect(molora('train-moe', '--model', moe, '--data', 'x.csv', '--out', join(tmp.dir, 'x'), '--balance-bias', '0')).rejects.toThrow(/--balance-bias must be positive, got 0/);
  });

  it('bench moe prints the sparse and dense timings and their ratio', async () => {
    const line = await molora('bench', 'moe', '--experts', '4', '--top-k', '1', '--tokens', '64', '--hidden', '16', '--ffn', '32', '--repeats', '1', '--json');
    const r = JSON.parse(line) as Record<string, number | string>;
    expect(r).toMatchObject({ experts: 4, top_k: 1, tokens: 64, hidden: 16, ffn: 32, backend: 'wasm' });
    for (const k of ['sparse_forward_ms', 'dense_forward_ms', 'forward_ratio', 'sparse_train_ms', 'dense_train_ms', 'train_ratio']) expect(r[k], k).toBeGreaterThan(0);
    expect(r.forward_ratio).toBeCloseTo((r.sparse_forward_ms as number) / (r.dense_forward_ms as number), 6);
    const text = await molora('bench', 'moe', '--experts', '4', '--top-k', '2', '--tokens', '32', '--hidden', '16', '--ffn', '16', '--repeats', '1');
    expect(text).toMatch(/forward: sparse [\d.]+ ms, all experts [\d.]+ ms, ratio [\d.]+× \(ideal 0\.50×\)/);
  });

  it("MIXLORA_OPTIONS' flags parse into trainAdapter's mixlora option", () => {
    const parse = (...args: string[]): ReturnType<typeof mixLoraOf> => {
      const c = addOptions(new Command('train-adapter').exitOverride().option('--target-regex <re>'), MIXLORA_OPTIONS);
      c.parse(args, { from: 'user' });
      return mixLoraOf({ ...optionValues(MIXLORA_OPTIONS, c.opts()), targetRegex: c.opts().targetRegex });
    };
    expect(parse()).toBeUndefined();
    expect(parse('--moe-experts', '8')).toEqual({ experts: 8, topK: 2, auxCoef: undefined });
    expect(parse('--moe-experts', '4', '--top-k', '1', '--moe-aux-coef', '0.05')).toEqual({ experts: 4, topK: 1, auxCoef: 0.05 });
    expect(() => parse('--top-k', '2')).toThrow(/--top-k and --moe-aux-coef need --moe-experts/);
    expect(() => parse('--moe-experts', '2', '--top-k', '3')).toThrow(/--top-k 3 exceeds --moe-experts 2/);
    expect(() => parse('--moe-experts', '2', '--target-regex', 'q_proj')).toThrow(/--moe-experts takes --targets, not --target-regex/);
  });
});
