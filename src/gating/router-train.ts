import * as tf from '@tensorflow/tfjs';
import { readF32, readHost } from '../base/host.js';
import { lmLoss, type LmBatch } from '../base/loss.js';
import { evalBatches, type Batch, type Dataset } from '../data/index.js';
import { tokenLosses } from '../train/evaluate.js';
import { toLmBatch, type LmData } from '../train/lm.js';
import type { MoleComposition } from './composition.js';
import { featureWidth, promptFeatures, standardiser, type PromptRouter, type Standardiser } from './prompt-router.js';

/**
 * What teaches the router:
 * - 'labels': routing cross-entropy against the row's task, where the task column names an
 *   expert (MoA-style supervision); one plain pass per batch.
 * - 'lm': the LM loss alone. Each row is modelled by one expert chosen with the router's
 *   probability pᵢ, so its likelihood is Σᵢ pᵢ·exp(−NLLᵢ) with NLLᵢ the row's completion loss
 *   under expert i alone (at full strength); the loss is −log of that, per loss token. Its
 *   gradient pᵢ − posteriorᵢ moves each row toward the experts that explain it best. Costs
 *   one pass per expert.
 * - 'both': the sum.
 * - 'auto' (default): 'labels' when the task column names experts, else 'lm'.
 */
export type RoutingLoss = 'labels' | 'lm' | 'both';
export const ROUTING_LOSSES = ['auto', 'labels', 'lm', 'both'] as const;

/**
 * The router's default L2 penalty (λ/2)·|W|² on its standardised weights. Without it a router fitted
 * to zero training loss leaned on directions that do not hold out: on the suite's form family it
 * routed 100% of training rows but 88% of one task's held-out rows; λ = 1e-2 routed 100% held out,
 * and left every other family at 100% (λ from 0 to 0.1 measured; docs/routing.md).
 */
export const DEFAULT_ROUTER_L2 = 1e-2;

/** loss + (λ/2)·|W|² (the loss itself when λ = 0). */
export function withL2(loss: tf.Scalar, router: PromptRouter, lambda: number): tf.Scalar {
  return lambda > 0 ? loss.add(router.weight.square().sum().mul(lambda / 2)) : loss;
}

/** Per task id of the dataset, the index of the expert named like it, or −1. */
export function taskExperts(dataset: Dataset, experts: readonly string[]): Int32Array {
  return Int32Array.from(dataset.taskNames, (t) => experts.indexOf(t));
}

/** The loss that resolves 'auto' for this data, and why (for the log). */
export function resolveRoutingLoss(wanted: (typeof ROUTING_LOSSES)[number], labels: Int32Array, experts: readonly string[]): { loss: RoutingLoss; why: string } {
  const named = labels.some((e) => e >= 0);
  if ((wanted === 'labels' || wanted === 'both') && !named) {
    throw new Error(`routing loss '${wanted}' needs a task column whose values name experts (${experts.join(', ')}); none of the data's tasks does`);
  }
  if (wanted !== 'auto') return { loss: wanted, why: 'as asked' };
  return named ? { loss: 'labels', why: 'the task column names experts' } : { loss: 'lm', why: 'no task column names an expert, so the LM loss alone teaches it' };
}

/**
 * The router's training loss on one batch (only the router's variables get a gradient). The LM
 * terms need the experts' losses on the batch's rows, which `cache` must hold (fill it before
 * the pass: they are read back from the device, which a GPU cannot do inside one).
 */
export function routerLoss(comp: MoleComposition, router: PromptRouter, b: Batch, labels: Int32Array, kind: RoutingLoss, cache: ExpertLossCache): tf.Scalar {
  const lb = toLmBatch(b);
  const logp = tf.logSoftmax(router.logits(promptFeatures(comp.model, lb)));
  const label = Array.from(b.taskIds, (t) => labels[t] ?? -1);
  return routingTerms(logp, kind, label, () => cache.get(b, comp.experts.length));
}

/** The terms `kind` asks for, from log-probabilities [B, N]: labels, the LM mixture (nll computed only then), or both. */
function routingTerms(logp: tf.Tensor2D, kind: RoutingLoss, label: number[], nll: () => { sums: Float32Array; tokens: Float32Array }): tf.Scalar {
  const terms: tf.Scalar[] = [];
  if (kind !== 'lm') terms.push(labelLoss(logp, label));
  if (kind !== 'labels') terms.push(mixtureLoss(logp, nll()));
  return terms.length === 1 ? terms[0]! : tf.addN(terms);
}

/**
 * Each training sequence's expert losses (summed over its completion) and loss tokens. The
 * experts' losses on a row never change (base and experts are frozen), so they are computed once:
 * after the first epoch the LM loss costs no expert pass.
 */
export class ExpertLossCache {
  private readonly rows = new Map<number, { sums: Float32Array; tokens: number }>();

  /** Compute the losses of the batch's sequences not yet held. */
  async fill(comp: MoleComposition, b: Batch): Promise<void> {
    const N = comp.experts.length;
    if (Array.from(b.seqs).every((k) => this.rows.has(k))) return;
    const fresh = await expertLosses(comp, toLmBatch(b));
    b.seqs.forEach((k, r) => this.rows.set(k, { sums: fresh.sums.slice(r * N, (r + 1) * N), tokens: fresh.tokens[r]! }));
  }

  /** The batch's rows, [B·N] and [B]; every sequence must have been filled. */
  get(b: Batch, N: number): { sums: Float32Array; tokens: Float32Array } {
    const missing = Array.from(b.seqs).filter((k) => !this.rows.has(k));
    if (missing.length) throw new Error(`expert losses of sequence ${missing[0]} were not computed: fill the cache before the pass`);
    const sums = new Float32Array(b.batch * N);
    const tokens = new Float32Array(b.batch);
    b.seqs.forEach((k, r) => {
      const row = this.rows.get(k)!;
      sums.set(row.sums, r * N);
      tokens[r] = row.tokens;
    });
    return { sums, tokens };
  }
}

/** Mean over labelled rows of −log p(label); 0 (with a zero gradient) when no row has a label. */
function labelLoss(logp: tf.Tensor2D, label: number[]): tf.Scalar {
  const [B, N] = logp.shape;
  const pick = new Float32Array(B * N);
  const rows = label.filter((e) => e >= 0).length;
  label.forEach((e, b) => {
    if (e >= 0) pick[b * N + e] = 1 / rows;
  });
  return logp.mul(tf.tensor2d(pick, [B, N])).sum().neg() as tf.Scalar;
}

/** −log Σᵢ pᵢ·exp(−NLLᵢ), per loss token of the row, averaged over rows with loss tokens. */
function mixtureLoss(logp: tf.Tensor2D, nll: { sums: Float32Array; tokens: Float32Array }): tf.Scalar {
  const [B, N] = logp.shape;
  const rows = nll.tokens.filter((n) => n > 0).length;
  const perRow = Float32Array.from(nll.tokens, (n) => (n > 0 ? 1 / (n * rows) : 0));
  const joint = logp.sub(tf.tensor2d(nll.sums, [B, N]));
  return joint.logSumExp(1).mul(tf.tensor1d(perRow)).sum().neg() as tf.Scalar;
}

/**
 * Each row's summed completion loss under each expert alone, [B·N] row-major, and its loss
 * tokens [B]: one pass per expert, on the host (constants for the router's gradient).
 */
export async function expertLosses(comp: MoleComposition, lb: LmBatch): Promise<{ sums: Float32Array; tokens: Float32Array }> {
  const { batch: B, seq: T } = lb;
  const N = comp.experts.length;
  const sums = new Float32Array(B * N);
  const tokens = new Float32Array(B);
  for (let r = 0; r < B; r++) for (let t = 0; t < T; t++) tokens[r]! += lb.lossMask[r * T + t]!;
  try {
    for (const [i, name] of comp.experts.entries()) {
      comp.mask([name]);
      const host = await readHost(() => tokenLosses(comp.model.forward(lb), lb.targets));
      for (let r = 0; r < B; r++) {
        let s = 0;
        for (let t = 0; t < T; t++) s += lb.lossMask[r * T + t]! * host[r * T + t]!;
        sums[r * N + i] = s;
      }
    }
  } finally {
    comp.mask(null);
  }
  return { sums, tokens };
}

/** The LM loss of the routed model (each row through its top-k experts): what validation reports. */
export function routedLoss(comp: MoleComposition, router: PromptRouter, b: Batch): tf.Scalar {
  comp.useRouter(router);
  try {
    return lmLoss(comp.model, toLmBatch(b));
  } finally {
    comp.releaseRouter();
  }
}

/**
 * Routing accuracy on the validation rows whose task names an expert: the share routed to that
 * expert (top-1); null without such rows.
 */
export async function routingAccuracy(comp: MoleComposition, router: PromptRouter, data: LmData, labels: Int32Array, seqLen: number): Promise<number | null> {
  const store = data.dataset.val ?? data.dataset.train;
  let hit = 0;
  let n = 0;
  for (const b of evalBatches(store, { batchSize: 16, seqLen })) {
    const probs = await router.probabilities(comp.model, toLmBatch(b));
    probs.forEach((p, r) => {
      const want = labels[b.taskIds[r]!] ?? -1;
      if (want < 0) return;
      n++;
      if (p.indexOf(Math.max(...p)) === want) hit++;
    });
  }
  return n ? hit / n : null;
}

/**
 * One plain pass over the training rows: per expert, the sum of the features of the rows
 * labelled with it and their count (the centroid router's input), the standardiser of all rows'
 * features (the prompt router's conditioning), and with `keep` every row's feature and task id.
 */
export async function featureStats(comp: MoleComposition, data: LmData, labels: Int32Array | null, seqLen: number, keep = false): Promise<FeatureStats> {
  const N = comp.experts.length;
  const F = featureWidth(comp.model.config.hidden);
  const sums = new Float64Array(N * F);
  const counts = new Array<number>(N).fill(0);
  const all = new Float64Array(F);
  const allSq = new Float64Array(F);
  const kept: { features: Float32Array[]; taskIds: number[]; batches: Batch[] } = { features: [], taskIds: [], batches: [] };
  let rows = 0;
  for (const b of evalBatches(data.dataset.train, { batchSize: 16, seqLen })) {
    const f = await readHost(() => promptFeatures(comp.model, toLmBatch(b)));
    if (keep) {
      kept.features.push(f);
      kept.taskIds.push(...b.taskIds);
      kept.batches.push(b);
    }
    for (let r = 0; r < b.batch; r++, rows++) {
      const row = f.subarray(r * F, (r + 1) * F);
      for (let k = 0; k < F; k++) {
        all[k]! += row[k]!;
        allSq[k]! += row[k]! ** 2;
      }
      const e = labels?.[b.taskIds[r]!] ?? -1;
      if (e < 0) continue;
      counts[e]!++;
      for (let k = 0; k < F; k++) sums[e * F + k]! += row[k]!;
    }
  }
  const out: FeatureStats = { sums, counts, std: standardiser(all, allSq, rows) };
  if (keep) out.rows = { features: concat(kept.features, rows * F), taskIds: Int32Array.from(kept.taskIds), batches: kept.batches };
  return out;
}

export interface FeatureStats {
  sums: Float64Array;
  counts: number[];
  std: Standardiser;
  /** Every training row, in evalBatches order: features [rows·F], task ids, and the batches they came from. */
  rows?: { features: Float32Array; taskIds: Int32Array; batches: Batch[] };
}

function concat(parts: Float32Array[], n: number): Float32Array {
  const out = new Float32Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Up to this many training rows (see fitsFullBatch), the prompt router trains on all of them at every step: their
 * features (and, for the LM loss, their expert losses) are computed once, since base and experts
 * are frozen, and each step is then an exact full-batch gradient of a small convex problem. Small
 * data with small batches otherwise leaves a hard task under-routed in a few hundred steps
 * (docs/routing.md). Larger data trains on the sampler's batches.
 */
export const FULL_BATCH_ROWS = 8192;
/** … and their features at most this many floats (64 MiB). */
const FULL_BATCH_FLOATS = 16 * 2 ** 20;

export function fitsFullBatch(rows: number, hidden: number, maxRows = FULL_BATCH_ROWS): boolean {
  return rows <= maxRows && rows * featureWidth(hidden) <= FULL_BATCH_FLOATS;
}

/** The router's whole training set, held as one batch. */
export class RouterTrainingSet {
  private constructor(
    private readonly features: tf.Tensor2D,
    private readonly label: number[],
    private readonly nll: { sums: Float32Array; tokens: Float32Array } | null,
  ) {}

  /** The set for these rows; the LM loss needs every row's expert losses, computed here. */
  static async create(comp: MoleComposition, rows: NonNullable<FeatureStats['rows']>, labels: Int32Array, kind: RoutingLoss): Promise<RouterTrainingSet> {
    const n = rows.taskIds.length;
    const nll = kind === 'labels' ? null : await allExpertLosses(comp, rows.batches);
    const features = tf.keep(tf.tensor2d(rows.features, [n, rows.features.length / n]));
    return new RouterTrainingSet(features, Array.from(rows.taskIds, (t) => labels[t] ?? -1), nll);
  }

  get size(): number {
    return this.label.length;
  }

  /**
   * Fit the router to convergence on every row (full-batch Adam at lr 1e-2 until the loss moves
   * less than 1e-7 over 50 iterations, at most `maxIterations`): a warm start that makes the step
   * budget and learning rate the user gives matter little. Returns iterations run and final loss.
   * The loss is read back only where it is checked (every 50 iterations, and the last).
   */
  async fit(router: PromptRouter, kind: RoutingLoss, l2: number, maxIterations = 2000): Promise<{ iterations: number; loss: number }> {
    const opt = tf.train.adam(1e-2);
    const objective = (): tf.Scalar => withL2(this.loss(router, kind), router, l2);
    let last = Infinity;
    let loss = Infinity;
    let i = 0;
    try {
      while (i < maxIterations) {
        const value = opt.minimize(objective, true, [router.weight, router.bias])!;
        i++;
        const checked = i % 50 === 0 || i === maxIterations;
        if (checked) loss = (await readF32(value))[0]!;
        value.dispose();
        if (i % 50 === 0) {
          if (Math.abs(last - loss) < 1e-7) break;
          last = loss;
        }
      }
    } finally {
      opt.dispose();
    }
    return { iterations: i, loss };
  }

  loss(router: PromptRouter, kind: RoutingLoss): tf.Scalar {
    return routingTerms(tf.logSoftmax(router.logits(this.features)), kind, this.label, () => this.nll!);
  }

  dispose(): void {
    this.features.dispose();
  }
}

/** expertLosses over several batches, rows concatenated in order. */
async function allExpertLosses(comp: MoleComposition, batches: Batch[]): Promise<{ sums: Float32Array; tokens: Float32Array }> {
  const parts: { sums: Float32Array; tokens: Float32Array }[] = [];
  for (const b of batches) parts.push(await expertLosses(comp, toLmBatch(b)));
  return {
    sums: concat(parts.map((p) => p.sums), parts.reduce((a, p) => a + p.sums.length, 0)),
    tokens: concat(parts.map((p) => p.tokens), parts.reduce((a, p) => a + p.tokens.length, 0)),
  };
}
