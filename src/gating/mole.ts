import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import type { Rng } from '../base/rng.js';
import { BalanceCollector } from './balance.js';
import { NORM_EPS, type StackedExperts } from './stacked.js';

/**
 * The MoLE gate (REFERENCE.md §3, the paper rather than its released code). At a gated linear
 * the N frozen experts give outputs Eᵢ(x); the gate reads them, not the block input:
 *   E_Ω = Norm(E₀(x) ⊕ … ⊕ E_{N−1}(x))   (LayerNorm without affine over the concatenation)
 *   ε = E_Ω · e,  e: [N·out, N]           G = softmax(ε / τ)
 * and the composition adds Σᵢ Gᵢ·Eᵢ(x) to the frozen base output.
 */

/**
 * 'layer': one gate per gated linear. 'block': one gate per transformer block, shared by the
 * block's gated linears; its input is the expert outputs at the block's first gated linear in
 * module order (q_proj, c_attn), which runs first, and its weights apply to every gated linear of
 * the block. A gated linear outside the blocks (lm_head) keeps its own gate.
 */
export type GateLevel = 'layer' | 'block';

/**
 * 'token': weights per position (handles variable length and mixed-task sequences).
 * 'sequence': the paper's per-sample gate, one weight vector per row: the logits are averaged
 * over the row's real tokens. Like the paper's, it sees the whole row, later tokens included, and
 * a pass with a KV cache sees only its new tokens: generate without the cache (mole-model.ts does).
 * 'prefix': per-sample but causal: position t averages the logits of the row's real tokens up
 * to t. Teacher-forced training then sees what generation sees; the paper's whole-row pooling
 * lets a gate trained on next-token loss read the answer it is meant to predict.
 */
export type Granularity = 'token' | 'sequence' | 'prefix';

/** τ learned (τ = TAU_MIN + softplus(ρ), positive for any ρ) or fixed. */
export type Temperature = { mode: 'learned' } | { mode: 'fixed'; value: number };

export interface GateOptions {
  level: GateLevel;
  granularity: Granularity;
  /** Keep each row's k largest weights and renormalise; null keeps every expert. */
  topK: number | null;
  temperature: Temperature;
  /** α in L = L_task + α·(−Σᵢ log qᵢ); 0 turns the balance loss off. */
  balanceAlpha: number;
}

export const DEFAULT_GATE_OPTIONS: GateOptions = {
  level: 'layer',
  granularity: 'token',
  topK: null,
  temperature: { mode: 'learned' },
  balanceAlpha: 0.5,
};

/** How fresh gates start: e ~ N(0, eStd²) keeps every gate near uniform; τ starts at tau. */
export interface GateInit {
  eStd: number;
  tau: number;
}

export const DEFAULT_GATE_INIT: GateInit = { eStd: 0.01, tau: 1 };

/** Floor of a learned temperature: softplus alone underflows to 0 for very negative ρ. */
export const TAU_MIN = 0.01;

/** Added to the logits of excluded experts: exp(−1e9 − max) is exactly 0 in float32. */
const EXCLUDED = -1e9;

/** One gate: the projection e and the temperature, for one linear or one block. */
export class MoleGate {
  constructor(
    /** The module name (layer level) or the block's prefix, e.g. model.layers.3 (block level). */
    readonly name: string,
    /** The gated linears it weights, in module order; the first one's expert outputs are its input. */
    readonly modules: readonly string[],
    /** [N·out, N]: rows are expert i's output features at i·out … (i+1)·out − 1. */
    readonly e: tf.Variable<tf.Rank.R2>,
    /** Learned temperature's pre-activation (scalar), or null when τ is fixed. */
    readonly rho: tf.Variable<tf.Rank.R0> | null,
    readonly fixedTau: number | null,
  ) {
    if ((rho === null) === (fixedTau === null)) throw new Error(`gate '${name}': needs exactly one of a learned ρ or a fixed τ`);
  }

  get input(): string {
    return this.modules[0]!;
  }

  get experts(): number {
    return this.e.shape[1];
  }

  temperature(): tf.Scalar {
    return this.rho ? tf.softplus(this.rho).add(TAU_MIN) : tf.scalar(this.fixedTau!);
  }

  /**
   * ε/τ from the experts at the input linear (u = x·A of their stacked LoRA matrices; an expert
   * that does not adapt it gives zeros): [B·T, N] per token, or [B, N] per sequence. Averaging
   * the logits over a row's real tokens equals projecting the averaged E_Ω (the projection is
   * linear), with N columns to average instead of N·out.
   */
  scaledLogits(experts: StackedExperts, u: tf.Tensor2D, ctx: ForwardContext, granularity: Granularity): tf.Tensor2D {
    if (experts.catWidth !== this.e.shape[0]) {
      throw new Error(`gate '${this.name}': the experts' outputs at ${this.input} have ${experts.catWidth} features, its e expects ${this.e.shape[0]}`);
    }
    let z = experts.normProject(u, this.e);
    if (granularity === 'sequence') z = poolSequence(z, ctx);
    else if (granularity === 'prefix') z = poolPrefix(z, ctx);
    return z.div(this.temperature());
  }

  dispose(): void {
    this.e.dispose();
    this.rho?.dispose();
  }
}

/** LayerNorm without affine over each row. */
export function normalise(x: tf.Tensor2D): tf.Tensor2D {
  const centred = x.sub(x.mean(1, true));
  return centred.mul(centred.square().mean(1, true).add(NORM_EPS).rsqrt());
}

/** [B·T, K] → [B, K]: each row's mean over its real tokens (ctx.tokenMask); a row with none gives 0. */
export function poolSequence(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
  const { batch: B, seq: T } = ctx;
  const K = x.shape[1];
  const sums = x.mul(ctx.tokenMask).reshape([B, T, K]).sum(1);
  const counts = ctx.tokenMask.reshape([B, T]).sum(1, true).maximum(1);
  return sums.div(counts);
}

/** [B·T, K] → [B·T, K]: at each position, the mean over the row's real tokens so far (0 before the first). */
export function poolPrefix(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
  const { batch: B, seq: T } = ctx;
  const K = x.shape[1];
  // Cumsum runs on the last axis: tfjs' Cumsum gradient gets the shape wrong on any other.
  const sums = x.mul(ctx.tokenMask).reshape([B, T, K]).transpose([0, 2, 1]).cumsum(2).transpose([0, 2, 1]);
  const counts = ctx.tokenMask.reshape([B, 1, T]).cumsum(2).reshape([B, T, 1]).maximum(1);
  return sums.div(counts).reshape([B * T, K]);
}

/** Weights per unit → per token: [B, N] (per sequence) to [B·T, N], a row's weights on each of its tokens. */
export function perToken(g: tf.Tensor2D, ctx: ForwardContext, granularity: Granularity): tf.Tensor2D {
  const { batch: B, seq: T } = ctx;
  const N = g.shape[1];
  return granularity !== 'sequence' || T === 1 ? g : tf.tile(g.reshape([B, 1, N]), [1, T, 1]).reshape([B * T, N]);
}

/**
 * Which experts each unit (token or sequence row) may use, as logit offsets: 0 allowed,
 * EXCLUDED masked ([units or 1, N]); `any` is 0 for units with no allowed expert (their weights
 * become 0: the base alone), null when every unit has one.
 */
export interface Selection {
  offset: tf.Tensor2D;
  any: tf.Tensor2D | null;
}

/** Logit offsets for a 0/1 mask given per unit (or one row for all units). */
export function selection(allowed: number[][], units: number, N: number): Selection {
  const rows = allowed.length;
  const offset = new Float32Array(rows * N);
  const any = new Float32Array(rows);
  allowed.forEach((row, u) => {
    row.forEach((m, i) => (offset[u * N + i] = m ? 0 : EXCLUDED));
    any[u] = row.some((m) => m) ? 1 : 0;
  });
  if (rows !== 1 && rows !== units) throw new Error(`selection: ${rows} mask rows for ${units} units`);
  return { offset: tf.tensor2d(offset, [rows, N]), any: any.every((a) => a === 1) ? null : tf.tensor2d(any, [rows, 1]) };
}

/**
 * G = softmax(z) and the weights actually applied, G' = softmax over the allowed and kept logits.
 * That is the paper's renormalisation G'ᵢ = mᵢGᵢ / Σₖ mₖGₖ (same value), without its 0/0 when
 * every allowed Gᵢ underflows. Top-k picks among the allowed experts; the kept set is a constant
 * (TopK has no gradient) and the gradient flows through the renormalised probabilities. With
 * k = 1 the kept weight is always 1, so the task loss alone gives the gate no gradient.
 */
export function gateWeights(z: tf.Tensor2D, sel: Selection | null, topK: number | null): { probs: tf.Tensor2D; weights: tf.Tensor2D } {
  const probs = tf.softmax(z);
  const N = z.shape[1];
  let logits: tf.Tensor2D = sel ? z.add(sel.offset) : z;
  let weights: tf.Tensor2D = sel ? tf.softmax(logits) : probs;
  if (topK !== null && topK < N) {
    logits = logits.add(constant(weights, (w) => tf.onesLike(w).sub(topKMask(w, topK)).mul(EXCLUDED)));
    weights = tf.softmax(logits);
  }
  if (sel?.any) weights = weights.mul(sel.any);
  return { probs, weights };
}

/** 1 at each row's k largest entries, 0 elsewhere. */
function topKMask(w: tf.Tensor2D, k: number): tf.Tensor2D {
  return tf.oneHot(tf.topk(w, k).indices, w.shape[1]).sum(1).cast('float32') as tf.Tensor2D;
}

/** f(x) as a constant for differentiation: its ops are not taped, its gradient to x is zero. */
function constant(x: tf.Tensor2D, f: (x: tf.Tensor2D) => tf.Tensor2D): tf.Tensor2D {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor2D;
    return { value: f(input), gradFunc: () => tf.zerosLike(input) };
  });
  return op(x) as tf.Tensor2D;
}

/** The gates of one composition, over experts in a fixed order. */
export class MoleGates {
  readonly balance: BalanceCollector;
  private readonly byModule = new Map<string, MoleGate>();

  constructor(
    readonly experts: readonly string[],
    readonly options: GateOptions,
    readonly gates: readonly MoleGate[],
  ) {
    validateGateOptions(options, experts.length);
    for (const g of gates) {
      if (g.experts !== experts.length) throw new Error(`gate '${g.name}': e has ${g.experts} columns for ${experts.length} experts`);
      for (const m of g.modules) {
        if (this.byModule.has(m)) throw new Error(`gated module '${m}' belongs to two gates`);
        this.byModule.set(m, g);
      }
    }
    this.balance = new BalanceCollector(options.balanceAlpha, gates.map((g) => g.name));
  }

  gateFor(module: string): MoleGate | undefined {
    return this.byModule.get(module);
  }

  /** Every gated module, in module order. */
  get modules(): string[] {
    return this.gates.flatMap((g) => g.modules);
  }

  /** Trainable variables under their gate.safetensors keys (the trainer's names). */
  params(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const g of this.gates) {
      out.set(gateKey(g.name, 'e'), g.e);
      if (g.rho) out.set(gateKey(g.name, 'rho'), g.rho);
    }
    return out;
  }

  get parameterCount(): number {
    let n = 0;
    for (const v of this.params().values()) n += v.size;
    return n;
  }

  dispose(): void {
    for (const g of this.gates) g.dispose();
  }
}

export function gateKey(gate: string, which: 'e' | 'rho'): string {
  return `${gate}.mole_gate.${which}`;
}

export function validateGateOptions(o: GateOptions, experts: number): void {
  const bad = (msg: string): never => {
    throw new Error(`gate options: ${msg}`);
  };
  if (o.level !== 'layer' && o.level !== 'block') bad(`level must be 'layer' or 'block', got ${JSON.stringify(o.level)}`);
  if (!['token', 'sequence', 'prefix'].includes(o.granularity)) bad(`granularity must be 'token', 'sequence' or 'prefix', got ${JSON.stringify(o.granularity)}`);
  if (o.topK !== null && !(Number.isInteger(o.topK) && o.topK >= 1 && o.topK <= experts)) bad(`top_k must be an integer in [1, ${experts}], got ${o.topK}`);
  if (o.temperature.mode === 'fixed' && !(o.temperature.value > 0 && Number.isFinite(o.temperature.value))) {
    bad(`a fixed temperature must be positive, got ${o.temperature.value}`);
  }
  if (o.temperature.mode !== 'fixed' && o.temperature.mode !== 'learned') bad(`temperature mode must be 'learned' or 'fixed'`);
  if (!(o.balanceAlpha >= 0 && Number.isFinite(o.balanceAlpha))) bad(`balance α must be ≥ 0, got ${o.balanceAlpha}`);
}

/** The block a module sits in (model.layers.3, transformer.h.0), or null outside the blocks. */
export function blockOf(module: string): string | null {
  return /^(.*?\.(?:layers|h|block|blocks|layer)\.\d+)\./.exec(module)?.[1] ?? null;
}

/** Gated modules (in module order) grouped per gate at this level. */
export function gateGroups(modules: readonly string[], level: GateLevel): { name: string; modules: string[] }[] {
  if (level === 'layer') return modules.map((m) => ({ name: m, modules: [m] }));
  const groups = new Map<string, string[]>();
  for (const m of modules) {
    const name = blockOf(m) ?? m;
    groups.set(name, [...(groups.get(name) ?? []), m]);
  }
  return [...groups].map(([name, ms]) => ({ name, modules: ms }));
}

/**
 * Fresh gates over `experts` for the gated modules (module order, each with its output width).
 * e ~ N(0, eStd²) and τ = init.tau, so every gate starts close to uniform weights.
 */
export function createGates(
  experts: readonly string[],
  modules: readonly { module: string; outFeatures: number }[],
  options: Partial<GateOptions>,
  rng: Rng,
  init: Partial<GateInit> = {},
): MoleGates {
  const opts: GateOptions = { ...DEFAULT_GATE_OPTIONS, ...options };
  const { eStd, tau } = { ...DEFAULT_GATE_INIT, ...init };
  validateGateOptions(opts, experts.length);
  if (experts.length === 0) throw new Error('gate: no experts to gate');
  if (opts.temperature.mode === 'learned' && !(tau > TAU_MIN)) throw new Error(`gate: initial τ must exceed ${TAU_MIN}, got ${tau}`);
  const width = new Map(modules.map((m) => [m.module, m.outFeatures]));
  const N = experts.length;
  const gates = gateGroups(modules.map((m) => m.module), opts.level).map(({ name, modules: ms }) => {
    const rows = N * width.get(ms[0]!)!;
    const e = tf.tidy(() => tf.variable(tf.tensor2d(rng.normalArray(rows * N, eStd), [rows, N]), true));
    // softplus⁻¹(τ − TAU_MIN) = log(expm1(τ − TAU_MIN)).
    const rho = opts.temperature.mode === 'learned' ? tf.tidy(() => tf.variable(tf.scalar(Math.log(Math.expm1(tau - TAU_MIN))), true)) : null;
    return new MoleGate(name, ms, e, rho, opts.temperature.mode === 'fixed' ? opts.temperature.value : null);
  });
  return new MoleGates(experts, opts, gates);
}
