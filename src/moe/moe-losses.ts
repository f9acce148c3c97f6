import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { readF32 } from '../base/host.js';
import { matMul } from '../base/ops.js';
import type { Routing } from './router.js';

/** One MoE layer's share of the router losses over the real tokens of one pass. */
export interface RouterLossPart {
  /** Real (unpadded) tokens routed. */
  tokens: number;
  /** [1, E] Σ over real tokens of the router probabilities (differentiable). */
  probSum: tf.Tensor2D;
  /** [E] (token, slot) choices per expert over real tokens: constants, top-k has no gradient. Null for expert choice. */
  choices: tf.Tensor1D | null;
  /** Σ over real tokens of logsumexp(z)² (differentiable). */
  zSum: tf.Scalar;
}

/**
 * This layer's part. `ctx` gives the token mask (tokenMask, and realTokens on the host);
 * `chosen` is the router's [E] choice counts over real tokens, or null for expert choice.
 */
export function routerLossPart(logits: tf.Tensor2D, probs: tf.Tensor2D, ctx: Pick<ForwardContext, 'tokenMask' | 'realTokens'>, chosen: tf.Tensor1D | null): RouterLossPart {
  const N = probs.shape[0];
  if (ctx.tokenMask.shape[0] !== N) throw new Error(`routerLossPart: mask has ${ctx.tokenMask.shape[0]} rows, probs [${probs.shape}]`);
  const m = ctx.tokenMask.reshape([1, N]) as tf.Tensor2D;
  const lse = logits.logSumExp(1, true);
  const tokens = ctx.realTokens.reduce((a, v) => a + (v === 0 ? 0 : 1), 0);
  return { tokens, probSum: matMul(m, probs), choices: chosen, zSum: matMul(m, lse.square()).reshape([]) as tf.Scalar };
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
  return tf.tidy(() => {
    const f = tf.addN(used.map((p) => p.choices!)).div(tokens).reshape([1, experts]);
    const P = tf.addN(used.map((p) => p.probSum)).div(tokens);
    const aux = P.mul(f).sum().mul(normalise ? experts / topK : experts);
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

/**
 * One layer's routing statistics, kept on the device while a pass runs (a GPU pass must not wait
 * for the host) and decoded when read: switched on by `on` (train-moe's eval, mixlora stats).
 */
export class RouterStatsSlot {
  on = false;
  private last: { layer: number; experts: number; values: tf.Tensor1D } | null = null;

  /** Keep this pass's statistics (replacing the previous pass's) when collecting. */
  record(layer: number, r: Pick<Routing, 'logits' | 'probs' | 'served' | 'chosen'>, ctx: Pick<ForwardContext, 'tokenMask'>): void {
    if (!this.on) return;
    const values = tf.keep(statsVector(r, ctx.tokenMask));
    this.clear();
    this.last = { layer, experts: r.probs.shape[1], values };
  }

  /** The last recorded pass's statistics, or null. */
  async read(): Promise<RouterStats | null> {
    if (!this.last) return null;
    const { layer, experts, values } = this.last;
    return decodeStats(layer, experts, await readF32(values));
  }

  clear(): void {
    this.last?.values.dispose();
    this.last = null;
  }
}

/**
 * [5 + 3E] sums over the real tokens: tokens, Σ lse(z)², Σ entropy, dropped choices, tokens with
 * no expert, then per expert: assignments served, (token, slot) choices, Σ p.
 */
function statsVector(r: Pick<Routing, 'logits' | 'probs' | 'served' | 'chosen'>, tokenMask: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const [N, E] = r.probs.shape;
    const m = tokenMask.reshape([1, N]) as tf.Tensor2D;
    const lse = r.logits.logSumExp(1, true);
    // 0·log 0 = 0 for experts that masks set to exactly 0.
    const entropy = r.probs.mul(r.probs.maximum(1e-30).log()).sum(1, true).neg();
    const served = r.served.mul(tokenMask);
    const perExpert = served.sum(0);
    const chosen = r.chosen ?? tf.zeros([E]);
    const dropped = r.chosen ? chosen.sum().sub(perExpert.sum()) : tf.scalar(0);
    const unserved = matMul(m, served.sum(1, true).equal(0).toFloat() as tf.Tensor2D);
    const head = tf.stack([m.sum(), matMul(m, lse.square() as tf.Tensor2D).reshape([]), matMul(m, entropy as tf.Tensor2D).reshape([]), dropped, unserved.reshape([])]);
    return tf.concat([head, perExpert, chosen, matMul(m, r.probs).reshape([E])]) as tf.Tensor1D;
  });
}

/** RouterStats from statsVector's values. */
export function decodeStats(layer: number, E: number, v: Float32Array): RouterStats {
  const [tokens, z, entropy, dropped, droppedTokens] = Array.from(v.subarray(0, 5));
  const served = v.subarray(5, 5 + E);
  const chosen = v.subarray(5 + E, 5 + 2 * E);
  const pSum = v.subarray(5 + 2 * E, 5 + 3 * E);
  const t = Math.max(tokens!, 1);
  const assigned = served.reduce((a, b) => a + b, 0);
  let aux = 0;
  for (let e = 0; e < E; e++) aux += (chosen[e]! / t) * (pSum[e]! / t);
  return {
    layer,
    tokens: tokens!,
    load: Array.from(served, (c) => (assigned > 0 ? c / assigned : 0)),
    aux: aux * E,
    zLoss: z! / t,
    entropy: entropy! / t,
    dropped: dropped!,
    droppedTokens: droppedTokens!,
  };
}
