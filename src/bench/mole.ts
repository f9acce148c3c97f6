import * as tf from '@tensorflow/tfjs';
import { createLora, type LoraAdapter } from '../adapters/adapter.js';
import { backendReport, type BackendReport } from '../base/backend.js';
import { readF32 } from '../base/host.js';
import { lmLoss } from '../base/loss.js';
import type { CausalLM } from '../base/model.js';
import { Rng } from '../base/rng.js';
import { MoleComposition } from '../gating/composition.js';
import type { Batch } from '../data/index.js';
import { createRouter } from '../gating/prompt-router.js';
import { ExpertLossCache, routerLoss } from '../gating/router-train.js';
import { accumulateGrads, disposeAccumulated } from '../train/grads.js';
import { toLmBatch } from '../train/lm.js';
import { AdamW } from '../train/optimizer.js';
import { randomLlama, type ModelShape } from './forward.js';

function adapters(model: CausalLM, n: number, rank: number, targets: string[], seed: number): LoraAdapter[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const a = createLora(model, { rank, alpha: 2 * rank, targets }, `expert${i}`, rng);
    for (const l of a.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.02, 'float32', rng.nextU32()));
    return a;
  });
}

export interface SwapResult {
  base_params: number;
  adapter_params: number;
  experts: number;
  /** Median time to swap every expert's tensors in place. */
  swap_set_ms: number;
  /** Median time to swap one expert. */
  swap_one_ms: number;
}

/** Hot-swap latency: replace every expert of a composition in place, base untouched. */
export async function benchSwap(shape: ModelShape, o: { experts: number; rank: number; targets: string[]; repeats?: number }): Promise<SwapResult & BackendReport> {
  const model = randomLlama({ ...shape, maxPositions: 64 });
  const comp = new MoleComposition(model);
  adapters(model, o.experts, o.rank, o.targets, 1).forEach((a) => comp.addExpert(a.name, a));
  // Two replacement sets, swapped in alternately, so every swap really changes the tensors.
  const sets = [adapters(model, o.experts, o.rank, o.targets, 2), adapters(model, o.experts, o.rank, o.targets, 3)];
  try {
    const setTimes: number[] = [];
    const oneTimes: number[] = [];
    for (let r = 0; r < (o.repeats ?? 6); r++) {
      const t0 = performance.now();
      sets[r % 2]!.forEach((a, i) => comp.swapExpert(`expert${i}`, a));
      setTimes.push(performance.now() - t0);
      const t1 = performance.now();
      comp.swapExpert('expert0', sets[(r + 1) % 2]![0]!);
      oneTimes.push(performance.now() - t1);
    }
    return {
      // A tied embedding reads the head's weight: it holds no copy of its own.
      base_params: model.linears().reduce((a, l) => a + l.weightT.size, 0) + (model.parts.embed.layout === 'rows' ? model.parts.embed.rows * shape.hidden : 0),
      adapter_params: sets[0]![0]!.parameterCount,
      experts: o.experts,
      swap_set_ms: median(setTimes),
      swap_one_ms: median(oneTimes),
      ...backendReport(),
    };
  } finally {
    comp.dispose();
    for (const a of sets.flat()) a.dispose();
    model.dispose();
  }
}

export interface GateStepResult {
  experts: number;
  lora_step_ms: number;
  /** A MoLE gate step (gates in every adapted linear, trained through the whole network). */
  gate_step_ms: number;
  /** MoLE gate step ÷ single-LoRA step. */
  ratio: number;
  /** A prompt-router step taught by labels (one plain pass, no backward through the base). */
  router_labels_step_ms: number;
  router_labels_ratio: number;
  /**
   * A prompt-router step taught by the LM loss alone, first epoch: a plain pass plus one pass per
   * expert (later epochs reuse each row's expert losses and cost about a labels step).
   */
  router_lm_step_ms: number;
  router_lm_ratio: number;
}

/**
 * Training steps over N frozen experts (MoLE gates; the prompt router, both losses) against a
 * single-LoRA step, same shapes; each step timed to the read of its loss.
 */
export async function benchGateStep(shape: ModelShape, o: { experts: number; rank: number; targets: string[]; batch: number; seq: number; steps: number }): Promise<GateStepResult & BackendReport> {
  const model = randomLlama({ ...shape, maxPositions: o.seq }, { batch: o.batch, seq: o.seq, trainableParams: 0 });
  const batch = randomBatch(shape.vocab, o, new Rng(3));
  try {
    const { comp, loraMs, gateMs } = await gateAndLoraSteps(model, toLmBatch(batch), o);
    try {
      const { labelsMs, lmMs } = await routerSteps(comp, shape.hidden, batch, o.steps);
      return {
        experts: o.experts,
        lora_step_ms: loraMs,
        gate_step_ms: gateMs,
        ratio: gateMs / loraMs,
        router_labels_step_ms: labelsMs,
        router_labels_ratio: labelsMs / loraMs,
        router_lm_step_ms: lmMs,
        router_lm_ratio: lmMs / loraMs,
        ...backendReport(),
      };
    } finally {
      comp.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** A batch of random tokens, row b labelled task b mod experts, each row's first half its prompt. */
function randomBatch(vocab: number, o: { experts: number; batch: number; seq: number }, rng: Rng): Batch {
  const N = o.batch * o.seq;
  return {
    ids: Int32Array.from({ length: N }, () => rng.int(vocab)),
    targets: Int32Array.from({ length: N }, () => rng.int(vocab)),
    lossMask: new Float32Array(N).fill(1),
    attentionMask: new Float32Array(N).fill(1),
    taskIds: Int32Array.from({ length: o.batch }, (_, b) => b % o.experts),
    promptLens: new Int32Array(o.batch).fill(Math.max(1, o.seq >> 1)),
    seqs: Uint32Array.from({ length: o.batch }, (_, i) => i),
    batch: o.batch,
    seq: o.seq,
  };
}

/**
 * A single-LoRA step and a MoLE gate step, each run with its own hooks alone on the base. Returns
 * the composition (detached, its gate removed) for the router steps; the caller disposes it.
 */
async function gateAndLoraSteps(model: CausalLM, lm: ReturnType<typeof toLmBatch>, o: { experts: number; rank: number; targets: string[]; steps: number }): Promise<{ comp: MoleComposition; loraMs: number; gateMs: number }> {
  const trainLoss = (): tf.Scalar => lmLoss(model, lm, { training: true });
  const [single] = adapters(model, 1, o.rank, o.targets, 4);
  const comp = new MoleComposition(model);
  try {
    adapters(model, o.experts, o.rank, o.targets, 5).forEach((a) => comp.addExpert(a.name, a));
    comp.initGate({}, new Rng(6));
    comp.detach();
    const [loraMs, gateMs] = await timeSteps([
      {
        params: single!.params(), loss: trainLoss, before: () => {
          comp.detach();
          single!.attach(model);
        },
      },
      {
        params: comp.params(), loss: trainLoss, before: () => {
          single!.detach();
          comp.attach();
        },
      },
    ], o.steps) as [number, number];
    comp.useWeights(null);
    return { comp, loraMs, gateMs };
  } catch (e) {
    comp.dispose();
    throw e;
  } finally {
    single!.dispose();
  }
}

/** Prompt-router steps over the composition's experts: taught by labels, then by the LM loss (first epoch). */
async function routerSteps(comp: MoleComposition, hidden: number, batch: Batch, steps: number): Promise<{ labelsMs: number; lmMs: number }> {
  const router = createRouter(comp.experts, hidden, {}, new Rng(7));
  try {
    const labels = Int32Array.from(comp.experts, (_, i) => i);
    let cache = new ExpertLossCache();
    const [labelsMs] = await timeSteps([{ params: router.params(), loss: () => routerLoss(comp, router, batch, labels, 'labels', cache) }], steps) as [number];
    // First-epoch steps: the experts' losses on the batch are computed (a fresh cache) every time.
    const [lmMs] = await timeSteps([{
      params: router.params(), loss: () => routerLoss(comp, router, batch, labels, 'lm', cache), prepare: async () => {
        cache = new ExpertLossCache();
        await cache.fill(comp, batch);
      },
    }], steps) as [number];
    return { labelsMs: labelsMs!, lmMs: lmMs! };
  } finally {
    router.dispose();
  }
}

/**
 * Median step times of each run, the runs' steps taken in turn so that all see the same load.
 * `before` (untimed) sets the run's hooks up; `prepare` is timed as part of the step.
 */
async function timeSteps(runs: GateRun[], steps: number): Promise<number[]> {
  const opts = runs.map((r) => new AdamW(r.params));
  const times: number[][] = runs.map(() => []);
  for (let i = 0; i < steps + 2; i++) {
    for (const [k, r] of runs.entries()) {
      r.before?.();
      const t0 = performance.now();
      await r.prepare?.();
      const acc = accumulateGrads(r.params, 1, r.loss);
      opts[k]!.apply(acc.grads, 1e-3);
      await readF32(acc.loss);
      disposeAccumulated(acc);
      if (i >= 2) times[k]!.push(performance.now() - t0);
    }
  }
  for (const opt of opts) opt.dispose();
  return times.map(median);
}

/** One training step to time in benchGateStep. */
interface GateRun {
  params: Map<string, tf.Variable>;
  loss: () => tf.Scalar;
  before?: () => void;
  prepare?: () => Promise<void>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
