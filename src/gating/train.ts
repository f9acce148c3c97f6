import * as tf from '@tensorflow/tfjs';
import { loadBase } from '../base/load.js';
import { Rng } from '../base/rng.js';
import { evalBatches, type TokenStore } from '../data/index.js';
import { toLmBatch, trainLm, type LmTrainOptions } from '../train/lm.js';
import type { TrainResult } from '../train/trainer.js';
import { loadAdapter } from '../adapters/peft.js';
import { MoleComposition } from './composition.js';
import { saveGate } from './gate-io.js';
import type { GateOptions } from './mole.js';
import type { GateStatsReport } from './stats.js';

export interface TrainGateOptions extends LmTrainOptions {
  model: string;
  /** Expert name → PEFT adapter folder; the order fixes the gate's columns. */
  experts: [string, string][];
  gate?: Partial<GateOptions>;
  /**
   * Mask robustness: in training, each row drops one random expert with this probability, never
   * the expert named like the row's task. The gate learns not to lean on experts a task does not
   * need, so masking one expert at inference spares the other tasks. 0 (default) turns it off.
   */
  maskDropout?: number;
}

/** Validation batches the per-eval gate statistics look at (enough for stable means, cheap). */
const STATS_BATCHES = 8;

/**
 * `molora train-gate`: N frozen LoRA experts on the frozen base, and a fresh MoLE gate per
 * gated layer (or block) trained on next-token loss plus the balance loss. Only gate parameters
 * train. The output folder holds gate_config.json + gate.safetensors, metrics.jsonl (with the
 * per-layer mean gate weights and entropy at each eval) and checkpoints.
 */
export async function trainGate(o: TrainGateOptions): Promise<TrainResult> {
  if (o.experts.length < 2) throw new Error(`a gate composes at least 2 experts; got ${o.experts.length}`);
  const model = loadBase(o.model, { warn: o.log });
  const comp = new MoleComposition(model);
  try {
    for (const [name, dir] of o.experts) comp.addExpert(name, loadAdapter(model, dir, { name, warn: o.log }));
    comp.initGate(o.gate ?? {}, new Rng(o.seed));
    const p = o.maskDropout ?? 0;
    if (!(p >= 0 && p < 1)) throw new Error(`mask dropout must be in [0, 1), got ${p}`);
    return await trainLm(model, comp.params(), (dir) => saveGate(comp, dir), {
      ...o,
      beforeBatch:
        p > 0 ? (b, training, rng, { dataset }) => comp.setRows(training ? { mask: dropoutMasks(comp.experts, b.taskIds, dataset.taskNames, p, rng) } : null) : undefined,
      onEval: (_step, { dataset }) => ({ gates: summariseGates(gateStatsOn(comp, dataset.val ?? dataset.train, dataset.taskNames, o.seqLen)) }),
    });
  } finally {
    comp.dispose();
    model.dispose();
  }
}

/** Gate statistics (per task when the data has tasks) over a store's first batches, in order. */
export function gateStatsOn(comp: MoleComposition, store: TokenStore, names: string[], seqLen: number, batches = STATS_BATCHES): GateStatsReport {
  comp.collectStats(true);
  try {
    let n = 0;
    for (const b of evalBatches(store, { batchSize: 8, seqLen })) {
      if (n++ >= batches) break;
      comp.setRows(names.length ? { tasks: Array.from(b.taskIds, (t) => names[t]!) } : null);
      tf.tidy(() => void comp.model.forward(toLmBatch(b)));
    }
    comp.setRows(null);
    return comp.gateStats();
  } finally {
    comp.collectStats(false);
  }
}

/** The compact per-layer form logged to metrics.jsonl: gate → mean weight per expert, entropy. */
export function summariseGates(r: GateStatsReport): Record<string, { weights: Record<string, number>; entropy: number }> {
  return Object.fromEntries(
    r.gates.map((g) => [g.gate, { weights: Object.fromEntries(r.experts.map((e, i) => [e, round(g.meanWeight[i]!)])), entropy: round(g.entropy) }]),
  );
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

/** Per-row expert masks for mask dropout: with probability p a row loses one expert other than its own task's. */
export function dropoutMasks(experts: string[], taskIds: Int32Array, taskNames: string[], p: number, rng: Rng): number[][] {
  return Array.from(taskIds, (t) => {
    const row = experts.map(() => 1);
    if (rng.next() < p) {
      const others = experts.map((_, i) => i).filter((i) => experts[i] !== taskNames[t]);
      if (others.length > 0) row[others[rng.int(others.length)]!] = 0;
    }
    return row;
  });
}
