import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { matMul } from '../base/ops.js';

/** One MoE layer's share of the router losses over the real tokens of one pass. */
export interface RouterLossPart {
  /** Real (unpadded) tokens routed. */
  tokens: number;
  /** [1, E] Σ over real tokens of the router probabilities (differentiable). */
  probSum: tf.Tensor2D;
  /** [E] (token, slot) choices per expert over real tokens: constants, top-k has no gradient. Null for expert choice. */
  choices: Float64Array | null;
  /** Σ over real tokens of logsumexp(z)² (differentiable). */
  zSum: tf.Scalar;
}

/**
 * This layer's part. `mask` is ctx.tokenMask [N, 1]; `choices` the router's [N·k] top-k
 * experts (−1 on padding) or null for expert choice.
 */
export function routerLossPart(
  logits: tf.Tensor2D,
  probs: tf.Tensor2D,
  mask: tf.Tensor2D,
  choices: Int32Array | null,
): RouterLossPart {
  const [N, E] = probs.shape;
  if (mask.shape[0] !== N) throw new Error(`routerLossPart: mask has ${mask.shape[0]} rows, probs [${probs.shape}]`);
  const m = mask.reshape([1, N]) as tf.Tensor2D;
  const lse = logits.logSumExp(1, true);
  let counts: Float64Array | null = null;
  if (choices) {
    counts = new Float64Array(E);
    for (const e of choices) if (e >= 0) counts[e]! += 1;
  }
  let tokens = 0;
  for (const v of mask.dataSync()) tokens += v === 0 ? 0 : 1;
  return { tokens, probSum: matMul(m, probs), choices: counts, zSum: matMul(m, lse.square()).reshape([]) as tf.Scalar };
}

/**
 * Hugging Face's load-balancing loss over all tokens of all layers (load_balancing_loss_func
 * with an attention mask): f_e = fraction of (token, slot) choices that went to e, P_e = mean
 * router probability of e, both over the real tokens of every layer concatenated;
 * aux = E · Σ_e f_e · P_e, which is k at perfect balance. `normalise` divides by k (Switch,
 * Megatron, DeepSeek), so that balance is 1. Layers routed by expert choice are left out.
 */
export function loadBalancingLoss(parts: RouterLossPart[], experts: number, topK: number, normalise = false): tf.Scalar {
  const used = parts.filter((p) => p.choices !== null);
  if (used.length === 0) throw new Error('loadBalancingLoss: no token-choice layer to balance');
  const tokens = Math.max(1, used.reduce((a, p) => a + p.tokens, 0));
  const f = new Float32Array(experts);
  for (const p of used) p.choices!.forEach((c, e) => (f[e]! += c / tokens));
  return tf.tidy(() => {
    const P = tf.addN(used.map((p) => p.probSum)).div(tokens);
    const aux = P.mul(tf.tensor2d(f, [1, experts])).sum().mul(normalise ? experts / topK : experts);
    return aux as tf.Scalar;
  });
}

/** ST-MoE router z-loss: mean over the real tokens of all layers of (logsumexp z)². */
export function routerZLoss(parts: RouterLossPart[]): tf.Scalar {
  if (parts.length === 0) throw new Error('routerZLoss: no layers');
  const tokens = Math.max(1, parts.reduce((a, p) => a + p.tokens, 0));
  return tf.tidy(() => tf.addN(parts.map((p) => p.zSum)).div(tokens) as tf.Scalar);
}

export interface RouterLossOptions {
  experts: number;
  topK: number;
  /** router_aux_loss_coef; 0 turns the balance loss off. */
  auxCoef: number;
  /** Router z-loss coefficient; 0 turns it off. */
  zCoef: number;
  /** Divide the balance loss by k (balance = 1) instead of HF's scale (balance = k). */
  normalise: boolean;
}

/**
 * The router losses of one model. Each MoE layer hands in its part during a training pass; when
 * the last of the model's `layers` MoE layers has, the losses over all of them go onto
 * ctx.aux ('router_aux_loss', 'router_z_loss'), already scaled by their coefficients.
 */
export class RouterLosses {
  private readonly pending = new WeakMap<ForwardContext, RouterLossPart[]>();

  constructor(
    /** How many MoE layers report per pass. */
    public layers: number,
    public opts: RouterLossOptions,
  ) {}

  add(ctx: ForwardContext, part: RouterLossPart): void {
    const parts = [...(this.pending.get(ctx) ?? []), part];
    if (parts.length < this.layers) {
      this.pending.set(ctx, parts);
      return;
    }
    this.pending.delete(ctx);
    const { experts, topK, auxCoef, zCoef, normalise } = this.opts;
    if (auxCoef > 0 && parts.some((p) => p.choices !== null)) {
      ctx.aux.push({ name: 'router_aux_loss', value: tf.tidy(() => loadBalancingLoss(parts, experts, topK, normalise).mul(auxCoef)) });
    }
    if (zCoef > 0) ctx.aux.push({ name: 'router_z_loss', value: tf.tidy(() => routerZLoss(parts).mul(zCoef)) });
  }
}

/** One layer's routing in the last pass, for logs. */
export interface RouterStats {
  layer: number;
  /** Real tokens routed. */
  tokens: number;
  /** Share of the (token, slot) assignments each expert received (sums to 1). */
  load: number[];
  /** This layer's own HF balance loss, E · Σ f · P (k at balance; 0 for expert choice). */
  aux: number;
  /** Mean (logsumexp z)². */
  zLoss: number;
  /** Mean router entropy in nats (ln E is uniform). */
  entropy: number;
  /** (token, slot) choices over capacity, skipped. */
  dropped: number;
  /** Real tokens that reached no expert. */
  droppedTokens: number;
}

/** Host-side statistics from one routing (no tensors: cheap enough to keep for every pass). */
export function routerStats(
  layer: number,
  logits: Float32Array,
  probs: Float32Array,
  real: Float32Array,
  counts: Int32Array,
  choices: Int32Array | null,
  dropped: number,
  droppedTokens: number,
): RouterStats {
  const N = real.length;
  const E = counts.length;
  let tokens = 0;
  let z = 0;
  let entropy = 0;
  const pMean = new Float64Array(E);
  for (let n = 0; n < N; n++) {
    if (real[n] === 0) continue;
    tokens++;
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, logits[n * E + e]!);
    let s = 0;
    for (let e = 0; e < E; e++) s += Math.exp(logits[n * E + e]! - max);
    const lse = max + Math.log(s);
    z += lse * lse;
    for (let e = 0; e < E; e++) {
      const p = probs[n * E + e]!;
      pMean[e]! += p;
      if (p > 0) entropy -= p * Math.log(p);
    }
  }
  const t = Math.max(tokens, 1);
  const assigned = counts.reduce((a, b) => a + b, 0);
  let aux = 0;
  if (choices) {
    const f = new Float64Array(E);
    for (const e of choices) if (e >= 0) f[e]! += 1;
    for (let e = 0; e < E; e++) aux += (f[e]! / t) * (pMean[e]! / t);
    aux *= E;
  }
  return {
    layer,
    tokens,
    load: Array.from(counts, (c) => (assigned > 0 ? c / assigned : 0)),
    aux,
    zLoss: z / t,
    entropy: entropy / t,
    dropped,
    droppedTokens,
  };
}
