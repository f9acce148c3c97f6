import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { Linear } from '../base/linear.js';

/** Tokens pick experts (Mixtral, Switch) or experts pick tokens (Zhou et al. 2022). */
export type RoutingMode = 'token-choice' | 'expert-choice';

export interface RouterOptions {
  experts: number;
  topK: number;
  /** Renormalise the k chosen probabilities to sum to 1 (Mixtral; Qwen2-MoE/OLMoE per norm_topk_prob). */
  normTopK: boolean;
  mode: RoutingMode;
  /**
   * Token choice: null is dropless; otherwise each expert takes at most ⌈k·tokens/E·cf⌉
   * (token, slot) choices, first slots first, and the overflow skips the FFN (Switch with k = 1).
   * Expert choice: each expert takes its top ⌈tokens·cf/E⌉ tokens, cf defaulting to k.
   */
  capacityFactor: number | null;
  /** Mixtral's training-time input jitter ε: x · U(1−ε, 1+ε), seen by the router and the experts. */
  jitter: number;
}

/** The sparse dispatch's plan: which tokens each expert runs on and with what weight. */
export interface Dispatch {
  /** Token row of each assignment, grouped by expert (expert 0's first), ascending within an expert. */
  tokens: Int32Array;
  /** Assignments per expert; they sum to tokens.length. */
  counts: Int32Array;
  /** [M] routing weight of each assignment, in `tokens` order: the router's gradient flows through these. */
  weights: tf.Tensor1D;
}

/** One routing, all on the device: nothing in it needs a read back to the host. */
export interface Routing {
  /** [N, E] router logits (noisy ones under noisy top-k training). */
  logits: tf.Tensor2D;
  /** [N, E] softmax of the logits in float32, masked experts at exactly 0. */
  probs: tf.Tensor2D;
  /** [N, E] each (token, expert) pair's weight in the output: 0 unless the expert serves the token (differentiable through probs). */
  weights: tf.Tensor2D;
  /** [N, E] 1 where the expert serves the token (after capacity), else 0; a constant. */
  served: tf.Tensor2D;
  /** Token choice: [E] (token, slot) choices of the real tokens per expert, before capacity (the balance loss's counts). Null for expert choice. */
  chosen: tf.Tensor1D | null;
  /** Token choice: [N, k] the experts each token chose, best first. Null for expert choice. */
  choices: tf.Tensor2D | null;
}

/** Score that keeps a masked expert (or, for expert choice, a padding token) out of a top-k: finite, as WGSL may assume. */
const EXCLUDED = -1e30;

/** Logit offset that takes a masked expert out of the softmax (exp underflows to exactly 0, no NaN). */
const MASKED = -1e9;

/**
 * Top-k router: z = x W_gᵀ (no bias), p = softmax(z), then a selection (on the device, so a GPU
 * never waits for the host) whose one-hot cells are constants (TopK has no usable gradient),
 * while the weights are taken from p so the task loss trains the router. Options: Shazeer's noisy top-k, Mixtral's jitter, a capacity
 * limit, expert-choice routing, DeepSeek-V3's aux-loss-free balancing bias, inference masking.
 */
export class Router {
  /**
   * DeepSeek-V3 balancing bias b_e, added to the scores for selection only (the weights use
   * the unbiased p); a non-trained buffer moved by updateBias. Null when off.
   */
  bias: tf.Variable | null = null;
  /** Shazeer's W_noise [D, E]: H = z + N(0,1)·softplus(x W_noise) while training. Null when off. */
  noise: Linear | null = null;
  /** Experts taken out of routing (inference masking); the softmax renormalises over the rest. */
  readonly masked = new Set<number>();
  /** [E] (token, slot) choices per expert in training passes since the last updateBias; null before any. */
  private load: tf.Tensor1D | null = null;

  private o: RouterOptions;

  constructor(
    /** The gate linear, named by its HF module path (…block_sparse_moe.gate / …mlp.gate). */
    readonly gate: Linear,
    opts: RouterOptions,
  ) {
    if (gate.outFeatures !== opts.experts) {
      throw new Error(`router ${gate.name}: gate has ${gate.outFeatures} outputs for ${opts.experts} experts`);
    }
    this.o = checked(opts, gate.name);
  }

  get opts(): Readonly<RouterOptions> {
    return this.o;
  }

  /** Change how tokens are routed (the expert count and k are fixed by the weights and config). */
  configure(changes: Partial<Pick<RouterOptions, 'normTopK' | 'mode' | 'capacityFactor' | 'jitter'>>): void {
    this.o = checked({ ...this.o, ...changes }, this.gate.name);
  }

  /** Turn on Shazeer's noisy top-k with W_noise = 0 (noise std softplus(0) ≈ 0.69 until trained). */
  enableNoisyTopK(): Linear {
    const { inFeatures: D, outFeatures: E } = this.gate;
    this.noise ??= new Linear(`${this.gate.name}_noise`, tf.zeros([D, E]), null, false);
    return this.noise;
  }

  /** x · U(1−ε, 1+ε) in training (the input both the router and the experts see, as in HF Mixtral). */
  jitterInput(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const eps = this.opts.jitter;
    if (!ctx.training || eps <= 0 || !ctx.rng) return x;
    const [N, D] = x.shape;
    return x.mul(tf.tensor2d(ctx.rng.uniformArray(N * D, 1 - eps, 1 + eps), [N, D]));
  }

  /**
   * Route the rows of x; `real` (1 = real token, 0 = padding) keeps padding out of every expert.
   * Selection runs on the device (top-k on p + bias, capacity by a running count), so a GPU
   * pass never waits on the host; hostPlan reads it where tensors live in host memory.
   */
  route(x: tf.Tensor2D, ctx: ForwardContext, real: Float32Array): Routing {
    const { experts: E } = this.opts;
    const N = x.shape[0];
    let logits = this.gate.forward(x, ctx);
    if (this.noise && ctx.training && ctx.rng) {
      const eps = tf.tensor2d(ctx.rng.normalArray(N * E, 1), [N, E]);
      logits = logits.add(eps.mul(tf.softplus(this.noise.forward(x, ctx))));
    }
    if (this.masked.size > 0) logits = logits.add(this.offsets(MASKED));
    const probs = tf.softmax(logits);
    if (this.opts.mode === 'expert-choice') return { logits, probs, ...this.expertChoice(probs, real), chosen: null, choices: null };
    const r = this.tokenChoice(probs, real);
    if (ctx.training) this.countLoad(r.chosen);
    return { logits, probs, ...r };
  }

  /** [1, E]: `value` at the masked experts, 0 elsewhere. */
  private offsets(value: number): tf.Tensor2D {
    const E = this.opts.experts;
    const off = new Float32Array(E);
    for (const e of this.masked) off[e] = value;
    return tf.tensor2d(off, [1, E]);
  }

  /**
   * Each real token's k best unmasked experts by p (+ bias); weights from the unbiased p,
   * renormalised over the k when normTopK. With a capacity, choices are served slot-major (every
   * token's first choice before any second) while the expert has room; the rest are dropped.
   */
  private tokenChoice(probs: tf.Tensor2D, real: Float32Array): Pick<Routing, 'weights' | 'served'> & { chosen: tf.Tensor1D; choices: tf.Tensor2D } {
    const { experts: E, topK: k, capacityFactor: cf } = this.opts;
    const N = real.length;
    let score: tf.Tensor2D = this.bias ? probs.add(this.bias) : probs;
    if (this.masked.size > 0) score = score.add(this.offsets(EXCLUDED));
    const choices = tf.topk(score, k).indices as tf.Tensor2D;
    // [N, k, E]: one-hot of each (token, slot) choice, padding rows zeroed.
    const isReal = tf.tensor2d(real, [N, 1]).notEqual(0).toFloat();
    const chosenCells = tf.oneHot(choices, E).toFloat().mul(isReal.expandDims(2));
    let slotP = chosenCells.mul(probs.expandDims(1)).sum(2) as tf.Tensor2D;
    // Padding rows (all 0) divide by 1: a clamped tiny divisor would give the gradient 0/0.
    if (this.opts.normTopK) slotP = slotP.div(slotP.sum(1, true).add(tf.onesLike(isReal).sub(isReal)));
    let served = chosenCells;
    const nReal = real.reduce((a, v) => a + (v === 0 ? 0 : 1), 0);
    if (cf !== null) {
      const capacity = Math.ceil(((k * nReal) / E) * cf);
      const slotMajor = chosenCells.transpose([1, 0, 2]).reshape([k * N, E]);
      const fits = tf.cumsum(slotMajor, 0).lessEqual(capacity).toFloat();
      served = slotMajor.mul(fits).reshape([k, N, E]).transpose([1, 0, 2]);
    }
    return {
      weights: served.mul(slotP.expandDims(2)).sum(1) as tf.Tensor2D,
      served: served.sum(1) as tf.Tensor2D,
      chosen: chosenCells.sum([0, 1]) as tf.Tensor1D,
      choices,
    };
  }

  /** Each unmasked expert takes its top-C real tokens by p (C = ⌈tokens·cf/E⌉, cf defaulting to k); the weights are p itself. */
  private expertChoice(probs: tf.Tensor2D, real: Float32Array): Pick<Routing, 'weights' | 'served'> {
    const { experts: E, topK: k, capacityFactor: cf } = this.opts;
    const N = real.length;
    const nReal = real.reduce((a, v) => a + (v === 0 ? 0 : 1), 0);
    const C = Math.min(nReal, Math.ceil((nReal * (cf ?? k)) / E));
    if (C === 0) return { weights: tf.zerosLike(probs), served: tf.zerosLike(probs) };
    const isReal = tf.tensor2d(real, [N, 1]).notEqual(0);
    const score = tf.where(isReal, probs, tf.fill([N, E], EXCLUDED)).transpose() as tf.Tensor2D;
    const best = tf.topk(score, C).indices;
    let served = tf.oneHot(best, N).toFloat().sum(1).transpose() as tf.Tensor2D;
    if (this.masked.size > 0) served = served.mul(tf.onesLike(this.offsets(1)).sub(this.offsets(1)));
    return { weights: served.mul(probs), served };
  }

  /** Training passes' choices per expert, summed on the device until updateBias reads them. */
  private countLoad(chosen: tf.Tensor1D): void {
    const next = tf.keep(this.load ? this.load.add(chosen) : chosen.clone()) as tf.Tensor1D;
    this.load?.dispose();
    this.load = next;
  }

  /** DeepSeek-V3's name for the balancing bias buffer. */
  get biasName(): string {
    return `${this.gate.name}.e_score_correction_bias`;
  }

  /** Turn on DeepSeek-V3's aux-loss-free balancing with a zero bias. */
  enableBalancingBias(): tf.Variable {
    const E = this.opts.experts;
    this.bias ??= tf.tidy(() => tf.variable(tf.zeros([E]), false));
    return this.bias;
  }

  /**
   * b_e += γ · sign(mean load − load_e) over the choices counted since the last call (the
   * trainer's afterStep), then the count restarts. Overloaded experts become less likely picks.
   */
  updateBias(gamma: number): void {
    if (!this.bias) throw new Error(`router ${this.gate.name}: the balancing bias is off (enableBalancingBias first)`);
    const { bias, load } = this;
    if (!load) return;
    tf.tidy(() => bias.assign(bias.add(load.mean().sub(load).sign().mul(gamma))));
    load.dispose();
    this.load = null;
  }

  dispose(): void {
    this.gate.dispose();
    this.noise?.dispose();
    this.bias?.dispose();
    this.load?.dispose();
  }
}

function checked(o: RouterOptions, name: string): RouterOptions {
  const bad = (msg: string): never => {
    throw new Error(`router ${name}: ${msg}`);
  };
  if (!Number.isInteger(o.topK) || o.topK < 1 || o.topK > o.experts) bad(`top-k ${o.topK} must be in 1..${o.experts}`);
  if (o.capacityFactor !== null && !(o.capacityFactor > 0)) bad(`capacity factor must be positive or null (dropless), got ${o.capacityFactor}`);
  if (!(o.jitter >= 0 && o.jitter < 1)) bad(`jitter must be in [0, 1), got ${o.jitter}`);
  if (o.mode !== 'token-choice' && o.mode !== 'expert-choice') bad(`unknown routing mode '${o.mode as string}'`);
  return o;
}

/**
 * The sparse dispatch's plan for a routing. It reads `served` back synchronously, which is safe
 * only where tensors live in host memory (wasm, cpu, tfjs-node: a copy, no GPU stall); on webgpu
 * MoE layers combine densely instead (see tensorsOnHost).
 */
export function sparsePlan(r: Routing): Dispatch {
  const [N, E] = r.served.shape;
  const served = r.served.dataSync();
  const counts = new Int32Array(E);
  const tokens: number[] = [];
  const cells: number[] = [];
  for (let e = 0; e < E; e++) {
    for (let n = 0; n < N; n++) {
      if (served[n * E + e] === 0) continue;
      tokens.push(n);
      cells.push(n * E + e);
      counts[e]! += 1;
    }
  }
  const weights = tf.gather(r.weights.reshape([N * E]), tf.tensor1d(cells, 'int32')) as tf.Tensor1D;
  return { tokens: Int32Array.from(tokens), counts, weights };
}
