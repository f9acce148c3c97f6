import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { readF32 } from '../base/host.js';
import { matMul } from '../base/ops.js';

/** What one gate did over the tokens it saw (real tokens only). */
export interface GateStat {
  gate: string;
  modules: readonly string[];
  tokens: number;
  /** Mean applied weight of each expert, in expert order. */
  meanWeight: number[];
  /** Mean per-token entropy of the applied weights, in nats (0: one expert, ln N: uniform). */
  entropy: number;
}

export interface GateStatsReport {
  experts: readonly string[];
  /** Per gate, over every token seen. */
  gates: GateStat[];
  /** Per task label (from the rows' task ids), per gate; empty when no task ids were given. */
  byTask: Record<string, GateStat[]>;
}

/** Keeps 0·log 0 at 0 for weights that masks or top-k set to exactly 0. */
const TINY = 1e-30;

/** Host-side sums, per gate and per task: Σ weights, Σ entropy, token count. */
interface Sums {
  weight: Float64Array;
  entropy: number;
  tokens: number;
}

/**
 * Accumulates gate statistics across forward passes. The sums stay on the device, one [1, N+2]
 * row (Σ weights, Σ entropy, tokens) per gate and task, so a pass never waits on the host;
 * report() reads them. Weights are the applied ones, after masks and top-k. dispose() frees them.
 */
export class GateStats {
  private readonly sums = new Map<string, { modules: readonly string[]; byTask: Map<string | null, tf.Tensor2D> }>();

  constructor(readonly experts: readonly string[]) {}

  /** weights [B·T, N] of one gate in one pass; tasks: one label per batch row, or null. */
  record(gate: string, modules: readonly string[], weights: tf.Tensor2D, ctx: ForwardContext, tasks: readonly string[] | null): void {
    const [rows, N] = weights.shape;
    const labels: (string | null)[] = tasks ? [...new Set(tasks)] : [null];
    let entry = this.sums.get(gate);
    if (!entry) {
      entry = { modules, byTask: new Map() };
      this.sums.set(gate, entry);
    }
    const byTask = entry.byTask;
    tf.tidy(() => {
      const entropy = weights.mul(weights.maximum(TINY).log()).sum(1, true).neg();
      const cols = tf.concat([weights, entropy, tf.onesLike(entropy)], 1);
      let pick: tf.Tensor2D = ctx.tokenMask.reshape([1, rows]);
      if (tasks) {
        // [tasks, B·T]: 1 where token t's row carries that task.
        const m = new Float32Array(labels.length * rows);
        const perRow = rows / tasks.length;
        for (let t = 0; t < rows; t++) m[labels.indexOf(tasks[Math.floor(t / perRow)]!) * rows + t] = 1;
        pick = tf.tensor2d(m, [labels.length, rows]).mul(pick);
      }
      const part = matMul(pick, cols as tf.Tensor2D);
      labels.forEach((label, k) => {
        const row = part.slice([k, 0], [1, N + 2]);
        const old = byTask.get(label);
        byTask.set(label, tf.keep(old ? old.add(row) : row));
        old?.dispose();
      });
    });
  }

  /** Free the sums kept on the device. */
  dispose(): void {
    for (const { byTask } of this.sums.values()) tf.dispose([...byTask.values()]);
    this.sums.clear();
  }

  async report(): Promise<GateStatsReport> {
    const host = new Map<string, { modules: readonly string[]; byTask: Map<string | null, Sums> }>();
    for (const [gate, { modules, byTask }] of this.sums) {
      const parts = new Map<string | null, Sums>();
      for (const [label, t] of byTask) {
        const row = await readF32(t);
        const N = row.length - 2;
        parts.set(label, { weight: Float64Array.from(row.subarray(0, N)), entropy: row[N]!, tokens: row[N + 1]! });
      }
      host.set(gate, { modules, byTask: parts });
    }
    return this.summarise(host);
  }

  private summarise(sums: Map<string, { modules: readonly string[]; byTask: Map<string | null, Sums> }>): GateStatsReport {
    const N = this.experts.length;
    const stat = (gate: string, modules: readonly string[], parts: Sums[]): GateStat => {
      const tokens = parts.reduce((a, s) => a + s.tokens, 0);
      const per = Math.max(tokens, 1);
      return {
        gate,
        modules,
        tokens,
        meanWeight: Array.from({ length: N }, (_, i) => parts.reduce((a, s) => a + s.weight[i]!, 0) / per),
        entropy: parts.reduce((a, s) => a + s.entropy, 0) / per,
      };
    };
    const gates: GateStat[] = [];
    const byTask: Record<string, GateStat[]> = {};
    for (const [gate, { modules, byTask: parts }] of sums) {
      gates.push(stat(gate, modules, [...parts.values()]));
      for (const [label, s] of parts) if (label !== null) (byTask[label] ??= []).push(stat(gate, modules, [s]));
    }
    return { experts: this.experts, gates, byTask };
  }
}
