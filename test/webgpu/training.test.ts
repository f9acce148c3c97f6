import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveAdapter } from '../../src/adapters/peft.js';
import { initBackend } from '../../src/base/backend.js';
import { initBase } from '../../src/base/init.js';
import type { ForwardContext } from '../../src/base/context.js';
import { readF32 } from '../../src/base/host.js';
import { Linear } from '../../src/base/linear.js';
import { loadBase } from '../../src/base/load.js';
import { SwiGLU } from '../../src/base/mlp.js';
import { Rng } from '../../src/base/rng.js';
import { RouterLosses } from '../../src/moe/moe-losses.js';
import { MoEFFN } from '../../src/moe/moe.js';
import { Router } from '../../src/moe/router.js';
import { trainGate } from '../../src/gating/train-gate.js';
import { readMetrics } from '../../src/train/metrics.js';
import { tempDir } from '../helpers.js';
import { checkLoraGradients } from '../lora-gradients.js';
import { randomExpert } from '../mole-reference.js';

// The webgpu project (vitest.config.ts) runs this file with MOLORA_BACKEND=webgpu on SwiftShader,
// which computes at 0.2–2 GFLOP/s: shapes are tiny and runs a few steps long.

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js');
const tmp = tempDir();
const BASE = join(tmp.dir, 'base');
const csv = join(tmp.dir, 'tasks.csv');

beforeAll(async () => {
  await initBackend();
  // A byte-level tokenizer (the parity fixtures have none), 1 layer: SwiftShader is slow.
  await initBase({ arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, out: BASE, seed: 1 });
  const rows = Array.from({ length: 24 }, (_, i) => (i % 2 ? `math ${i} =, ${i % 7}` : `code ${i} =, x${i % 5}`));
  writeFileSync(csv, ['prompt,completion,task', ...rows.map((r, i) => `${r},${i % 2 ? 'math' : 'code'}`)].join('\n') + '\n');
});
afterAll(() => tmp.cleanup());

describe('training on webgpu', () => {
  it('LoRA gradients match central finite differences (frozen linears in training mode)', async () => {
    expect(tf.getBackend()).toBe('webgpu');
    const before = tf.memory().numTensors;
    await checkLoraGradients(true, { entries: 2, matrices: 1 });
    expect(tf.memory().numTensors).toBe(before);
  });

  it('train-adapter through the CLI: the loss falls, and the adapter and checkpoint are written', () => {
    const out = join(tmp.dir, 'adapter');
    execFileSync('node', [CLI, 'train-adapter', '--model', BASE, '--data', csv, '--prompt-column', 'prompt', '--completion-column', 'completion',
      '--out', out, '--steps', '3', '--batch-size', '4', '--seq-len', '12', '--lr', '0.05', '--rank', '4', '--val-split', '0', '--progress', 'off', '--save-every', '2'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MOLORA_BACKEND: 'webgpu' } });
    const steps = readMetrics(join(out, 'metrics.jsonl')).filter((m) => 'loss' in m) as { step: number; loss: number }[];
    expect(steps.map((m) => m.step)).toEqual([1, 2, 3]);
    expect(steps.every((m) => Number.isFinite(m.loss))).toBe(true);
    expect(steps.at(-1)!.loss).toBeLessThan(steps[0]!.loss);
    for (const f of ['adapter_model.safetensors', 'adapter_config.json', 'checkpoint-2/optimizer.safetensors', 'checkpoint-3/state.json']) expect(existsSync(join(out, f)), f).toBe(true);
  });

  it('a gate-training step: MoLE gates, and the prompt router taught by the LM loss (expert losses read before the pass)', async () => {
    const before = tf.memory().numTensors;
    const model = loadBase(BASE, { warn: () => {} });
    const experts: [string, string][] = [];
    for (const [i, name] of ['math', 'code'].entries()) {
      const a = randomExpert(model, name, ['q_proj', 'v_proj'], 30 + i, 2);
      await saveAdapter(a, join(tmp.dir, name));
      a.dispose();
      experts.push([name, join(tmp.dir, name)]);
    }
    model.dispose();
    const common = { model: BASE, data: csv, promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task', valSplit: 0, seed: 0, experts, steps: 1, batchSize: 4, seqLen: 12, progress: 'off' as const, log: () => {} };
    const mole = await trainGate({ ...common, out: join(tmp.dir, 'gate'), router: 'mole', lr: 1e-2 });
    const router = await trainGate({ ...common, out: join(tmp.dir, 'router'), router: 'prompt', routingLoss: 'lm', fullBatchRows: 0, lr: 1e-2 });
    for (const [r, dir] of [[mole, 'gate'], [router, 'router']] as const) {
      expect(r.status).toBe('done');
      expect(Number.isFinite(r.lastLoss)).toBe(true);
      expect(existsSync(join(tmp.dir, dir, 'gate.safetensors'))).toBe(true);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a sparse MoE layer: forward and every gradient equal the cpu backend\'s sparse dispatch (webgpu combines densely)', async () => {
    const [E, k, D, I, N] = [4, 2, 8, 6, 9];
    const real = Float32Array.from({ length: N }, (_, n) => (n === 4 ? 0 : 1));
    /** y·R summed, and its gradients by every weight, for a layer built from seeded host values. */
    const run = async (): Promise<Float32Array[]> => {
      const rng = new Rng(3);
      const lin = (name: string, inF: number, outF: number) =>
        new Linear(name, tf.tidy(() => tf.variable(tf.tensor2d(rng.normalArray(inF * outF, 0.6), [inF, outF]))) as unknown as tf.Tensor2D, null, false);
      const router = new Router(lin('m.gate', D, E), { experts: E, topK: k, normTopK: true, mode: 'token-choice', capacityFactor: null, jitter: 0 });
      const experts = Array.from({ length: E }, (_, e) => new SwiGLU(lin(`m.e${e}.w1`, D, I), lin(`m.e${e}.w3`, D, I), lin(`m.e${e}.w2`, I, D)));
      const moe = new MoEFFN(0, 'm', router, experts, [], 'per-expert', new RouterLosses(1, { experts: E, topK: k, auxCoef: 0.5, zCoef: 0.1, normalise: false }));
      const x = tf.tensor2d(rng.normalArray(N * D, 1), [N, D]);
      const R = tf.tensor2d(rng.normalArray(N * D, 1), [N, D]);
      const vars = moe.linears().map((l) => l.weightT as unknown as tf.Variable);
      const { value, grads } = tf.variableGrads(() => {
        const ctx: ForwardContext = { batch: 1, seq: N, training: true, tokenMask: tf.tensor2d(real, [N, 1]), realTokens: real, aux: [], rng: null };
        const y = moe.forward(x, ctx);
        return ctx.aux.reduce((acc, a) => acc.add(a.value), y.mul(R).sum()) as tf.Scalar;
      }, vars);
      // The sparse dispatch leaves an expert that got no token off the tape: its gradient is 0.
      const out = [await readF32(value), ...(await Promise.all(vars.map((v) => (grads[v.name] ? readF32(grads[v.name]!) : new Float32Array(v.size)))))];
      tf.dispose([value, x, R, ...Object.values(grads)]);
      moe.dispose();
      return out;
    };
    const before = tf.memory().numTensors;
    const gpu = await run();
    expect(tf.memory().numTensors).toBe(before);
    await initBackend({ backend: 'cpu', warn: () => {} });
    const cpu = await run();
    await initBackend({ backend: 'webgpu' });
    expect(gpu).toHaveLength(1 + E * 3 + 1);
    gpu.forEach((g, i) => {
      const scale = Math.max(1e-3, ...Array.from(cpu[i]!, Math.abs));
      g.forEach((v, j) => expect(Math.abs(v - cpu[i]![j]!) / scale, `tensor ${i}[${j}]`).toBeLessThan(1e-4));
    });
    // The router and most experts got a gradient: the check has teeth.
    expect(cpu[1]!.some((v) => v !== 0)).toBe(true);
    expect(cpu.slice(2).filter((g) => g.some((v) => v !== 0)).length).toBeGreaterThanOrEqual(3 * (E - 1));
  });
});
