import * as tf from '@tensorflow/tfjs';
import type { CausalLM, TokenBatch } from '../base/model.js';
import type { Rng } from '../base/rng.js';
import { normalise } from './mole.js';

/**
 * The prompt router: one routing decision per row, read from the frozen base's own view of the
 * prompt (X-LoRA's "scaling pass", REFERENCE.md §3b). A plain pass (every expert off) gives the
 * final hidden states h; a row's feature f is FEATURE_PARTS side by side: the prompt's mean token
 * embedding (what the input is made of), and the mean and last of h over the prompt (the last
 * token carries what the prompt ends with: causal prompts that differ only at the end are
 * identical until then), each layer-normalised, [3D]. Its expert scores are z = f·W + b,
 * W: [3D, N]. At inference the best allowed expert acts at full strength (top-1), or the top k
 * share the row, renormalised: soft mixing of frozen task adapters loses every task.
 *
 * Why not MoLE's gate: it reads Eᵢ(x) = BᵢAᵢx, the part of x inside each expert's rank-r
 * subspace, through a normalised input and small weights, so its logits stay bounded and its
 * mixture soft; and a per-token gate at the token that chooses the answer sees too little of
 * the prompt. See docs/routing.md for the probe measurements behind this design.
 */
export interface RouterOptions {
  /** Experts that act on each row: 1 (default) is hard routing, each chosen expert at full strength. */
  topK: number;
}

export const DEFAULT_ROUTER_OPTIONS: RouterOptions = { topK: 1 };

/**
 * The parts of a row's feature, each [B, D] and layer-normalised: the mean token embedding of the
 * prompt (what the input is made of), and the mean and last final hidden states over the prompt.
 */
export const FEATURE_PARTS = ['embed-mean', 'final-mean', 'final-last'] as const;
export type FeaturePart = (typeof FEATURE_PARTS)[number];

export function featureParts(model: CausalLM, input: TokenBatch): Record<FeaturePart, tf.Tensor2D> {
  const { batch: B, seq: T } = input;
  const D = model.config.hidden;
  const { mean, last } = promptWeights(input);
  // [B, 1, T] × [B, T, D] → [B, D]: a weighted sum over each row's positions.
  const pool = (w: Float32Array, x: tf.Tensor2D): tf.Tensor2D => normalise(tf.matMul(tf.tensor3d(w, [B, 1, T]), x.reshape([B, T, D])).reshape([B, D]));
  const { h } = model.hidden(input, { plain: true });
  const embeddings = model.parts.embed.lookup(tf.tensor1d(input.ids, 'int32'));
  return { 'embed-mean': pool(mean, embeddings), 'final-mean': pool(mean, h), 'final-last': pool(last, h) };
}

/** A router's features per row of a batch: the FEATURE_PARTS side by side, [B, 3D] (see PromptRouter). */
export function promptFeatures(model: CausalLM, input: TokenBatch): tf.Tensor2D {
  return tf.tidy(() => {
    const parts = featureParts(model, input);
    return tf.concat(FEATURE_PARTS.map((p) => parts[p]), 1);
  });
}

/** Width of the router's feature for a base of this hidden size. */
export function featureWidth(hidden: number): number {
  return FEATURE_PARTS.length * hidden;
}

/**
 * Per row, the weights that average its prompt tokens and that pick its last prompt token, [B·T]
 * each. The prompt is the row's first promptLens real tokens (all of them without promptLens);
 * padding may sit on either side.
 */
export function promptWeights(input: TokenBatch): { mean: Float32Array; last: Float32Array } {
  const { batch: B, seq: T } = input;
  const mean = new Float32Array(B * T);
  const last = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    const real: number[] = [];
    for (let t = 0; t < T; t++) if (!input.attentionMask || input.attentionMask[b * T + t]) real.push(b * T + t);
    const n = Math.min(input.promptLens?.[b] ?? real.length, real.length);
    if (n <= 0) continue;
    for (const i of real.slice(0, n)) mean[i] = 1 / n;
    last[real[n - 1]!] = 1;
  }
  return { mean, last };
}

/**
 * Per-feature shift and scale applied before W while training: the features, layer-normalised per
 * row, still differ in offset and spread across dimensions, and a plain linear layer fits them
 * slowly (a probe on z-scored features separates tasks that 400 unscaled steps do not). Saving
 * folds it into W and b, so a router file is one linear layer over the raw feature.
 */
export interface Standardiser {
  mean: Float32Array;
  invStd: Float32Array;
}

/** Feature statistics over rows: mean and 1/std per dimension (std floored so constant features stay finite). */
export function standardiser(sum: Float64Array, sumSq: Float64Array, n: number): Standardiser {
  if (n === 0) throw new Error('router: no rows to standardise the features on');
  const mean = Float32Array.from(sum, (s) => s / n);
  const invStd = Float32Array.from(sumSq, (q, i) => 1 / Math.sqrt(Math.max(q / n - mean[i]! ** 2, 0) + 1e-6));
  return { mean, invStd };
}

/** The router's parameters: W [F, N] and b [N] (F = featureWidth), over experts in a fixed order. */
export class PromptRouter {
  /** Applied to features before W (training only; folded into W and b when saved). */
  private standard: { mean: tf.Tensor1D; invStd: tf.Tensor1D } | null = null;

  constructor(
    readonly experts: readonly string[],
    readonly options: RouterOptions,
    readonly weight: tf.Variable<tf.Rank.R2>,
    readonly bias: tf.Variable<tf.Rank.R1>,
  ) {
    if (weight.shape[1] !== experts.length || bias.shape[0] !== experts.length) {
      throw new Error(`router: W is [${weight.shape}], b is [${bias.shape}], for ${experts.length} experts`);
    }
    validateRouterOptions(options, experts.length);
  }

  /** Standardise features before W from now on (see Standardiser); null stops it. */
  standardise(s: Standardiser | null): void {
    this.standard?.mean.dispose();
    this.standard?.invStd.dispose();
    // Kept: a caller's tidy must not free them.
    this.standard = s ? { mean: tf.keep(tf.tensor1d(s.mean)), invStd: tf.keep(tf.tensor1d(s.invStd)) } : null;
  }

  /** Expert scores z = ((f − μ)·σ⁻¹)·W + b, [B, N] (plain f·W + b without a standardiser). */
  logits(features: tf.Tensor2D): tf.Tensor2D {
    if (features.shape[1] !== this.weight.shape[0]) throw new Error(`router: features have ${features.shape[1]} columns, W expects ${this.weight.shape[0]}`);
    const f = this.standard ? features.sub(this.standard.mean).mul(this.standard.invStd) : features;
    return tf.matMul(f, this.weight).add(this.bias);
  }

  /** W' = σ⁻¹·W and b' = b − (μσ⁻¹)·W on the host: the same scores from the raw feature. */
  folded(): { weight: Float32Array; bias: Float32Array } {
    return tf.tidy(() => {
      if (!this.standard) return { weight: this.weight.dataSync() as Float32Array, bias: this.bias.dataSync() as Float32Array };
      const { mean, invStd } = this.standard;
      const weight = this.weight.mul(invStd.reshape([-1, 1]));
      const bias = this.bias.sub(tf.matMul(mean.reshape([1, -1]), weight).reshape([-1]));
      return { weight: weight.dataSync() as Float32Array, bias: bias.dataSync() as Float32Array };
    });
  }

  /** Routing probabilities per row on the host, [B][N]. */
  probabilities(model: CausalLM, input: TokenBatch): number[][] {
    const N = this.experts.length;
    const p = tf.tidy(() => tf.softmax(this.logits(promptFeatures(model, input))).dataSync());
    return Array.from({ length: input.batch }, (_, b) => Array.from(p.subarray(b * N, (b + 1) * N)));
  }

  params(): Map<string, tf.Variable> {
    return new Map<string, tf.Variable>([
      [ROUTER_WEIGHT, this.weight],
      [ROUTER_BIAS, this.bias],
    ]);
  }

  dispose(): void {
    this.standardise(null);
    this.weight.dispose();
    this.bias.dispose();
  }
}

/** The trainer's (and the checkpoints') names of the router's variables. */
export const ROUTER_WEIGHT = 'router.weight';
export const ROUTER_BIAS = 'router.bias';

/** A fresh router: W ~ N(0, 0.01²) and b = 0, so every expert starts equally likely. */
export function createRouter(experts: readonly string[], hidden: number, options: Partial<RouterOptions>, rng: Rng): PromptRouter {
  const N = experts.length;
  const F = featureWidth(hidden);
  const w = tf.tidy(() => tf.variable(tf.tensor2d(rng.normalArray(F * N, 0.01), [F, N]), true));
  const b = tf.tidy(() => tf.variable(tf.zeros([N]) as tf.Tensor1D, true));
  return new PromptRouter(experts, { ...DEFAULT_ROUTER_OPTIONS, ...options }, w, b);
}

/**
 * The training-free router: nearest task centroid of the same feature, standardised. Each
 * expert's centroid cᵢ is the mean standardised feature of the rows labelled with it; argmax of
 * f·cᵢ − ½|cᵢ|² is the nearest centroid, so it is a PromptRouter with W = Cᵀ and b = −½|c|²
 * (in use with the standardiser, which saving folds in).
 */
export function centroidRouter(experts: readonly string[], sums: Float64Array, counts: number[], std: Standardiser, options: Partial<RouterOptions>): PromptRouter {
  const N = experts.length;
  const F = sums.length / N;
  const missing = experts.filter((_, i) => counts[i] === 0);
  if (missing.length) throw new Error(`centroid router: no labelled rows for expert${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
  const w = new Float32Array(F * N);
  const b = new Float32Array(N);
  for (let i = 0; i < N; i++) {
    for (let f = 0; f < F; f++) {
      const c = (sums[i * F + f]! / counts[i]! - std.mean[f]!) * std.invStd[f]!;
      w[f * N + i] = c;
      b[i] -= (c * c) / 2;
    }
  }
  const router = new PromptRouter(experts, { ...DEFAULT_ROUTER_OPTIONS, ...options }, tf.variable(tf.tensor2d(w, [F, N]), true), tf.variable(tf.tensor1d(b), true));
  router.standardise(std);
  return router;
}

/**
 * Each row's expert weights from its routing probabilities: the k most probable allowed experts,
 * renormalised (k = 1: weight 1 on the best). A row with no allowed expert gets all zeros: the
 * base alone. `allowed` is one 0/1 row for every row, one per row, or null (all allowed).
 */
export function routeWeights(probs: number[][], allowed: number[][] | null, topK: number): number[][] {
  return probs.map((p, b) => {
    const ok = allowed ? allowed[allowed.length === 1 ? 0 : b]! : p.map(() => 1);
    const order = p.map((_, i) => i).filter((i) => ok[i]).sort((i, j) => p[j]! - p[i]! || i - j).slice(0, topK);
    const total = order.reduce((s, i) => s + p[i]!, 0);
    const w = p.map(() => 0);
    for (const i of order) w[i] = topK === 1 ? 1 : total > 0 ? p[i]! / total : 1 / order.length;
    return w;
  });
}

export function validateRouterOptions(o: RouterOptions, experts: number): void {
  if (!(Number.isInteger(o.topK) && o.topK >= 1 && o.topK <= experts)) throw new Error(`router options: top_k must be an integer in [1, ${experts}], got ${o.topK}`);
}
