import * as tf from '@tensorflow/tfjs';
import { createLora, type LoraAdapter } from '../adapters/adapter.js';
import { activeBackend, backendReport, type BackendReport } from '../base/backend.js';
import { readF32, readHost } from '../base/host.js';
import { crossEntropy } from '../base/loss.js';
import type { Linear, WeightPacking } from '../base/linear.js';
import type { CausalLM } from '../base/model.js';
import { wasmThreadCount } from '../base/wasm-threads.js';
import { Rng } from '../base/rng.js';
import { accumulateGrads, disposeAccumulated } from '../train/grads.js';
import { AdamW } from '../train/optimizer.js';
import { randomLlama, type ModelShape } from './forward.js';
import { PeakMemorySampler, type PeakMemory } from './peak-memory.js';

/** The flags of ../shared/peers/torch_lora_step.py, so both run the same shapes. */
export interface BenchTrainOptions extends ModelShape {
  rank: number;
  alpha: number;
  targets: string[];
  batch: number;
  seq: number;
  steps: number;
  warmup: number;
}

export interface BenchTrainResult extends PeakMemory {
  tokens_per_s: number;
  step_ms: number;
  /** Matmul FLOPs a LoRA step needs (forward, input gradients, LoRA weight gradients) per second. */
  achieved_gflops: number;
  /** The engine's plain 2-D matMul rate on this model's linear shapes. */
  matmul_gflops: number;
  /** achieved / matmul: how much of the step is useful matmul work. */
  efficiency: number;
  trainable_params: number;
  /** How the frozen weights were held (Linear.packing): the fastest way the wasm heap allowed. */
  weight_packing: WeightPacking;
  loss: number;
  /** Threads the backend's products ran on (wasm: MOLORA_THREADS, or 'auto', base/threads.ts). */
  threads: number;
  /** Why that many (null off wasm). */
  threads_reason: string | null;
}

/** Steps timed to the read of their loss (`await data()`), so a GPU step counts until its work is done. */
export async function benchTrain(o: BenchTrainOptions): Promise<BenchTrainResult & BackendReport> {
  const model = randomLlama({ ...o, maxPositions: o.seq }, { batch: o.batch, seq: o.seq, trainableParams: 0 });
  const adapter = createLora(model, { rank: o.rank, alpha: o.alpha, targets: o.targets }, 'bench', new Rng(0));
  adapter.attach(model);
  const params = adapter.params();
  const opt = new AdamW(params);
  const rng = new Rng(1);
  const N = o.batch * o.seq;
  const batch = { ids: Int32Array.from({ length: N }, () => rng.int(o.vocab)), batch: o.batch, seq: o.seq };
  const targets = Int32Array.from({ length: N }, () => rng.int(o.vocab));
  const weights = new Float32Array(N).fill(1);
  const memory = new PeakMemorySampler();
  const probe = await MatmulProbe.create(model, N);
  try {
    await probe.gflops();
    const times: number[] = [];
    const rates: number[] = [];
    let loss = NaN;
    for (let i = 0; i < o.warmup + o.steps; i++) {
      const t0 = performance.now();
      const acc = accumulateGrads(params, 1, () => crossEntropy(model.forward(batch, { training: true }), targets, weights).mean);
      opt.apply(acc.grads, 1e-3);
      loss = (await readF32(acc.loss))[0]!;
      memory.sample();
      disposeAccumulated(acc);
      if (i < o.warmup) continue;
      times.push(performance.now() - t0);
      // Between steps, so both see the same load on a shared machine.
      rates.push(await probe.gflops());
    }
    const stepMs = median(times);
    const matmulGflops = median(rates);
    const flops = loraStepFlops(model, adapter, o);
    const achieved = flops / (stepMs / 1000) / 1e9;
    return {
      tokens_per_s: N / (stepMs / 1000),
      step_ms: stepMs,
      achieved_gflops: achieved,
      matmul_gflops: matmulGflops,
      efficiency: achieved / matmulGflops,
      trainable_params: adapter.parameterCount,
      weight_packing: model.parts.head.packing,
      loss,
      threads: wasmThreadCount(),
      threads_reason: activeBackend()?.threads?.reason ?? null,
      ...backendReport(),
      ...memory.result(),
    };
  } finally {
    probe.dispose();
    opt.dispose();
    adapter.dispose();
    model.dispose();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Matmul FLOPs of one LoRA step: the forward (2·in·out per token per linear, plus attention's
 * QKᵀ and PV), the same again for input gradients through the frozen base, and three times the
 * LoRA products (forward, input and weight gradients).
 */
export function loraStepFlops(model: CausalLM, adapter: LoraAdapter, o: Pick<BenchTrainOptions, 'batch' | 'seq'>): number {
  const N = o.batch * o.seq;
  const c = model.config;
  let base = 0;
  for (const l of model.linears()) base += 2 * N * l.inFeatures * l.outFeatures;
  base += c.layers * 2 * 2 * o.batch * c.heads * o.seq * o.seq * c.headDim;
  let lora = 0;
  for (const l of adapter.layers.values()) lora += 2 * N * l.parameterCount;
  return 2 * base + 3 * lora;
}

/**
 * Plain 2-D matMul GFLOP/s over the model's linear shapes (each distinct [in, out] once, so
 * weighted by their FLOPs), on the model's own weights (so packed as the model packs them, and
 * no second copy of a 360M model's head on the heap).
 */
class MatmulProbe {
  private readonly pairs: [tf.Tensor2D, Linear][];

  private constructor(model: CausalLM, N: number) {
    const shapes = new Map(model.linears().map((l) => [`${l.inFeatures}x${l.outFeatures}`, l]));
    this.pairs = [...shapes.values()].map((l) => [tf.randomNormal([N, l.inFeatures]), l]);
  }

  /**
   * A probe, run once untimed (kernel compilation, weight packing); each product runs on the
   * model's own weight (as its plan holds it) and is timed to the read of its result.
   */
  static async create(model: CausalLM, N: number): Promise<MatmulProbe> {
    const probe = new MatmulProbe(model, N);
    await probe.gflops();
    return probe;
  }

  async gflops(): Promise<number> {
    let flops = 0;
    const t0 = performance.now();
    for (const [x, l] of this.pairs) {
      await readHost(() => l.base(x));
      flops += 2 * x.shape[0] * l.inFeatures * l.outFeatures;
    }
    return flops / ((performance.now() - t0) / 1000) / 1e9;
  }

  dispose(): void {
    for (const [x] of this.pairs) x.dispose();
  }
}
