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

/** Which tokens each expert runs on and with what weight: a host-side plan plus differentiable weights. */
export interface Dispatch {
  /** Token row of each assignment, grouped by expert (expert 0's first). */
  tokens: Int32Array;
  /** Assignments per expert; they sum to tokens.length. */
  counts: Int32Array;
  /** [M] routing weight of each assignment, in `tokens` order: the router's gradient flows through these. */
  weights: tf.Tensor1D;
  /** (token, slot) choices that overflowed an expert's capacity and were skipped. */
  dropped: number;
  /** Real tokens left with no expert at all (residual only). */
  droppedTokens: number;
}

export interface Routing {
  /** [N, E] router logits (noisy ones under noisy top-k training). */
  logits: tf.Tensor2D;
  /** [N, E] softmax of the logits in float32, masked experts at exactly 0. */
  probs: tf.Tensor2D;
  hostLogits: Float32Array;
  hostProbs: Float32Array;
  /** Token choice: [N·k] chosen experts per token, slot-major within a token; −1 on padding. Null for expert choice. */
  choices: Int32Array | null;
  dispatch: Dispatch;
}

/** Logit offset that takes a masked expert out of the softmax (exp underflows to exactly 0, no NaN). */
const MASKED = -1e9;

/**
 * Top-k router: z = x W_gᵀ (no bias), p = softmax(z), then a host-side selection whose indices
 * are constants (TopK has no usable gradient), while the weights are gathered from p so the
 * task loss trains the router. Options: Shazeer's noisy top-k, Mixtral's jitter, a capacity
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
  /** (token, slot) choices per expert in training passes since the last updateBias. */
  private readonly load: Float64Array;

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
    this.load = new Float64Array(opts.experts);
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

  /** Route the rows of x; `real` (1 = real token, 0 = padding) keeps padding out of every expert. */
  route(x: tf.Tensor2D, ctx: ForwardContext, real: Float32Array): Routing {
    const { experts: E } = this.opts;
    const N = x.shape[0];
    let logits = this.gate.forward(x, ctx);
    if (this.noise && ctx.training && ctx.rng) {
      const eps = tf.tensor2d(ctx.rng.normalArray(N * E, 1), [N, E]);
      logits = logits.add(eps.mul(tf.softplus(this.noise.forward(x, ctx))));
    }
    if (this.masked.size > 0) {
      const off = new Float32Array(E);
      for (const e of this.masked) off[e] = MASKED;
      logits = logits.add(tf.tensor2d(off, [1, E]));
    }
    const probs = tf.softmax(logits);
    const hostLogits = logits.dataSync() as Float32Array;
    const hostProbs = probs.dataSync() as Float32Array;
    if (this.opts.mode === 'expert-choice') {
      return { logits, probs, hostLogits, hostProbs, choices: null, dispatch: this.expertChoice(probs, hostProbs, real) };
    }
    const choices = this.topK(hostProbs, real);
    if (ctx.training) for (const e of choices) if (e >= 0) this.load[e]! += 1;
    return { logits, probs, hostLogits, hostProbs, choices, dispatch: this.tokenChoice(probs, choices, real) };
  }

  /** The k best experts of each real token by p (+ bias), best first. */
  private topK(p: Float32Array, real: Float32Array): Int32Array {
    const { experts: E, topK: k } = this.opts;
    const N = real.length;
    const bias = this.bias ? (this.bias.dataSync() as Float32Array) : null;
    const out = new Int32Array(N * k).fill(-1);
    const score = new Float64Array(E);
    for (let n = 0; n < N; n++) {
      if (real[n] === 0) continue;
      for (let e = 0; e < E; e++) score[e] = this.masked.has(e) ? -Infinity : p[n * E + e]! + (bias ? bias[e]! : 0);
      for (let j = 0; j < k; j++) {
        let best = -1;
        for (let e = 0; e < E; e++) if (score[e] !== -Infinity && (best < 0 || score[e]! > score[best]!)) best = e;
        out[n * k + j] = best;
        score[best] = -Infinity;
      }
    }
    return out;
  }

  private tokenChoice(probs: tf.Tensor2D, choices: Int32Array, real: Float32Array): Dispatch {
    const { experts: E, topK: k, capacityFactor: cf } = this.opts;
    const N = real.length;
    let nReal = 0;
    for (let n = 0; n < N; n++) nReal += real[n] === 0 ? 0 : 1;
    const capacity = cf === null ? Infinity : Math.ceil(((k * nReal) / E) * cf);
    // Slot-major, so every token's first choice is served before any second choice.
    const kept = new Uint8Array(N * k);
    const counts = new Int32Array(E);
    let dropped = 0;
    for (let j = 0; j < k; j++) {
      for (let n = 0; n < N; n++) {
        const e = choices[n * k + j]!;
        if (e < 0) continue;
        if (counts[e]! < capacity) {
          counts[e]! += 1;
          kept[n * k + j] = 1;
        } else dropped++;
      }
    }
    let droppedTokens = 0;
    for (let n = 0; n < N; n++) {
      if (real[n] === 0) continue;
      let any = false;
      for (let j = 0; j < k; j++) any ||= kept[n * k + j] === 1;
      if (!any) droppedTokens++;
    }
    // Real tokens only: a padding row would renormalise over whatever p it pointed at (0/0 if masked).
    const realIndex = new Int32Array(N).fill(-1);
    let r = 0;
    for (let n = 0; n < N; n++) if (real[n] !== 0) realIndex[n] = r++;
    const start = prefix(counts);
    const tokens = new Int32Array(start[E]!);
    const slot = new Int32Array(start[E]!);
    const fill = start.slice(0, E);
    for (let n = 0; n < N; n++) {
      for (let j = 0; j < k; j++) {
        if (!kept[n * k + j]) continue;
        const at = fill[choices[n * k + j]!]!++;
        tokens[at] = n;
        slot[at] = realIndex[n]! * k + j;
      }
    }
    const weights = tf.tidy(() => {
      // p at every real token's k choices, [nReal, k].
      const cells = new Int32Array(nReal * k);
      for (let n = 0; n < N; n++) {
        if (realIndex[n]! < 0) continue;
        for (let j = 0; j < k; j++) cells[realIndex[n]! * k + j] = n * E + choices[n * k + j]!;
      }
      let w = tf.gather(probs.reshape([N * E]), tf.tensor1d(cells, 'int32')).reshape([nReal, k]);
      if (this.opts.normTopK) w = w.div(w.sum(1, true));
      return tf.gather(w.reshape([nReal * k]), tf.tensor1d(slot, 'int32')) as tf.Tensor1D;
    });
    return { tokens, counts, weights, dropped, droppedTokens };
  }

  /** Each unmasked expert takes its top-C real tokens by p; the weights are p itself. */
  private expertChoice(probs: tf.Tensor2D, p: Float32Array, real: Float32Array): Dispatch {
    const { experts: E, topK: k, capacityFactor: cf } = this.opts;
    const N = real.length;
    const realRows: number[] = [];
    for (let n = 0; n < N; n++) if (real[n] !== 0) realRows.push(n);
    const C = Math.min(realRows.length, Math.ceil((realRows.length * (cf ?? k)) / E));
    const tokens: number[] = [];
    const flat: number[] = [];
    const counts = new Int32Array(E);
    const covered = new Uint8Array(N);
    for (let e = 0; e < E; e++) {
      if (this.masked.has(e)) continue;
      const best = realRows.slice().sort((a, b) => p[b * E + e]! - p[a * E + e]! || a - b).slice(0, C);
      best.sort((a, b) => a - b);
      for (const n of best) {
        tokens.push(n);
        flat.push(n * E + e);
        covered[n] = 1;
      }
      counts[e] = best.length;
    }
    const droppedTokens = realRows.filter((n) => !covered[n]).length;
    const weights = tf.tidy(() => tf.gather(probs.reshape([N * E]), tf.tensor1d(Int32Array.from(flat), 'int32')) as tf.Tensor1D);
    return { tokens: Int32Array.from(tokens), counts, weights, dropped: 0, droppedTokens };
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
    const E = this.opts.experts;
    const mean = this.load.reduce((a, b) => a + b, 0) / E;
    const step = Float32Array.from(this.load, (l) => gamma * Math.sign(mean - l));
    const bias = this.bias;
    tf.tidy(() => bias.assign(bias.add(tf.tensor1d(step))));
    this.load.fill(0);
  }

  dispose(): void {
    this.gate.dispose();
    this.noise?.dispose();
    this.bias?.dispose();
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

/** Exclusive prefix sums, with the total appended. */
function prefix(counts: Int32Array): Int32Array {
  const out = new Int32Array(counts.length + 1);
  for (let e = 0; e < counts.length; e++) out[e + 1] = out[e]! + counts[e]!;
  return out;
}
