import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import type { Linear } from '../base/linear.js';
import type { FFN, SwiGLU } from '../base/mlp.js';
import type { CausalLM } from '../base/model.js';
import { tensorsOnHost } from '../base/backend.js';
import { routerLossPart, RouterStatsSlot, type RouterLosses, type RouterStats } from './moe-losses.js';
import { sparsePlan, type Dispatch, type Router, type RouterOptions } from './router.js';

/** An always-on expert: Qwen2-MoE's, gated by sigmoid(g·x), or DeepSeek's, ungated. */
export interface SharedExpert {
  mlp: SwiGLU;
  /** [D → 1] gate (Qwen2-MoE's shared_expert_gate); null adds the expert ungated. */
  gate: Linear | null;
}

/** How the checkpoint stored the experts, so an export writes them back the same way. */
export type ExpertLayout = 'per-expert' | 'packed';

/**
 * Rows of y summed into [n, D] at the given row ids; the gradient is gather(dy, ids). The stock
 * UnsortedSegmentSum gradient also masks negative ids with a broadcast LogicalAnd, which was a
 * quarter of a MoE backward on wasm; these ids are always valid.
 */
export function scatterAdd(y: tf.Tensor2D, ids: tf.Tensor1D, n: number): tf.Tensor2D {
  const f = tf.customGrad((yy, save) => {
    (save as tf.GradSaveFunc)([ids]);
    return {
      value: tf.unsortedSegmentSum(yy as tf.Tensor2D, ids, n),
      gradFunc: (dy, saved) => tf.gather(dy as tf.Tensor2D, saved[0]!),
    };
  });
  return f(y) as tf.Tensor2D;
}

/**
 * Sparse MoE FFN (REFERENCE.md §4): y = Σ_j w_j E_{S_j}(x) + shared experts. Dropless sparse
 * dispatch: each expert gathers only its own tokens, runs its SwiGLU on them with plain 2-D
 * matMuls, and one segment sum adds the weighted outputs back. Padding reaches no routed expert
 * (shared experts run on every row, as in a dense FFN). On webgpu, where the plan would have to
 * be read back mid-pass, every unmasked expert runs on every row and the [N, E] routing weights
 * (zero off the chosen experts) combine them: the same sum at E/k times the expert FLOPs.
 */
export class MoEFFN implements FFN {
  /** The last pass's routing statistics (load, aux, z-loss, entropy, drops), while collecting. */
  readonly stats = new RouterStatsSlot();

  constructor(
    readonly layer: number,
    /** HF module path of the block: model.layers.i.block_sparse_moe or model.layers.i.mlp. */
    readonly prefix: string,
    readonly router: Router,
    readonly experts: SwiGLU[],
    readonly shared: SharedExpert[],
    readonly layout: ExpertLayout,
    /** The model-wide router losses this layer reports to while training. */
    readonly losses: RouterLosses,
  ) {
    if (experts.length !== router.opts.experts) {
      throw new Error(`${prefix}: ${experts.length} experts for a router over ${router.opts.experts}`);
    }
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const real = ctx.realTokens;
    if (real.length !== x.shape[0]) throw new Error(`${this.prefix}: ${x.shape[0]} rows but a ${real.length}-token mask`);
    const xin = this.router.jitterInput(x, ctx);
    const r = this.router.route(xin, ctx, real);
    const y = this.withShared(tensorsOnHost() ? this.combine(xin, sparsePlan(r), ctx) : denseCombine(this, xin, r.weights, ctx), xin, ctx);
    this.stats.record(this.layer, r, ctx);
    if (ctx.training) this.losses.add(ctx, routerLossPart(r.logits, r.probs, ctx, r.chosen));
    return y;
  }

  /** y plus the shared experts' outputs on every row (each times sigmoid(g·x) when gated). */
  withShared(y: tf.Tensor2D, x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    for (const s of this.shared) {
      const out = s.mlp.forward(x, ctx);
      y = y.add(s.gate ? out.mul(tf.sigmoid(s.gate.forward(x, ctx))) : out);
    }
    return y;
  }

  /** Gather each expert's tokens, run it, weight, and scatter-add back into [N, D]. */
  private combine(x: tf.Tensor2D, d: Dispatch, ctx: ForwardContext): tf.Tensor2D {
    const N = x.shape[0];
    if (d.tokens.length === 0) return tf.zerosLike(x);
    const rows = tf.tensor1d(d.tokens, 'int32');
    const active = [...d.counts.keys()].filter((e) => d.counts[e]! > 0);
    const xs = tf.gather(x, rows);
    // One gather and a split: the backward is one concat and one segment sum, not E of each.
    const parts = (active.length === 1 ? [xs] : tf.split(xs, active.map((e) => d.counts[e]!))) as tf.Tensor2D[];
    const ys = parts.map((part, i) => this.experts[active[i]!]!.forward(part, ctx));
    const y = (ys.length === 1 ? ys[0]! : tf.concat(ys, 0)).mul(d.weights.reshape([-1, 1])) as tf.Tensor2D;
    return scatterAdd(y, rows, N);
  }

  /** Take experts out of routing at inference (an empty list restores all); p renormalises over the rest. */
  maskExperts(experts: Iterable<number>): void {
    const { experts: E, topK, mode } = this.router.opts;
    const set = new Set(experts);
    for (const e of set) {
      if (!Number.isInteger(e) || e < 0 || e >= E) throw new Error(`${this.prefix}: cannot mask expert ${e}; experts are 0..${E - 1}`);
    }
    const left = E - set.size;
    if (left < (mode === 'token-choice' ? topK : 1)) {
      throw new Error(`${this.prefix}: masking ${set.size} of ${E} experts leaves ${left}, fewer than the ${topK} each token needs`);
    }
    this.router.masked.clear();
    for (const e of set) this.router.masked.add(e);
  }

  /** Router, experts, shared experts and their gates: every linear an export writes or LoRA targets. */
  linears(): Linear[] {
    return [
      this.router.gate,
      ...this.experts.flatMap((e) => e.linears()),
      ...this.shared.flatMap((s) => [...s.mlp.linears(), ...(s.gate ? [s.gate] : [])]),
    ];
  }

  dispose(): void {
    this.stats.clear();
    this.router.dispose();
    for (const e of this.experts) e.dispose();
    for (const s of this.shared) {
      s.mlp.dispose();
      s.gate?.dispose();
    }
  }
}

/** Every unmasked expert on every row, combined with the [N, E] routing weights: the webgpu path. */
function denseCombine(moe: MoEFFN, x: tf.Tensor2D, weights: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
  const N = x.shape[0];
  const terms = moe.experts.flatMap((expert, e) => (moe.router.masked.has(e) ? [] : [expert.forward(x, ctx).mul(weights.slice([0, e], [N, 1]))]));
  return (terms.length === 1 ? terms[0]! : tf.addN(terms)) as tf.Tensor2D;
}

/**
 * The dense combine on any backend: the same routing, then every expert on every token, with the
 * shared experts. What webgpu runs; on the other backends a reference for benchmarks and tests.
 */
export function computeAll(moe: MoEFFN, x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
  const r = moe.router.route(x, ctx, ctx.realTokens);
  return moe.withShared(denseCombine(moe, x, r.weights, ctx), x, ctx);
}

/** The model's sparse MoE FFNs, in layer order. */
export function moeLayers(model: CausalLM): MoEFFN[] {
  return model.blocks.flatMap((b) => (b.ffn instanceof MoEFFN ? [b.ffn] : []));
}

/** Change routing in every MoE layer (capacity factor, expert choice, jitter, renormalisation). */
export function configureRouting(model: CausalLM, changes: Partial<Pick<RouterOptions, 'normTopK' | 'mode' | 'capacityFactor' | 'jitter'>>): void {
  for (const m of moeLayers(model)) m.router.configure(changes);
}

/** Start (or stop, freeing the kept statistics) recording each MoE layer's routing statistics. */
export function collectRouterStats(model: CausalLM, on: boolean): void {
  for (const m of moeLayers(model)) {
    m.stats.on = on;
    if (!on) m.stats.clear();
  }
}

/** Each MoE layer's routing in the last pass recorded (collectRouterStats). */
export async function routerStatsOf(model: CausalLM): Promise<RouterStats[]> {
  const out: RouterStats[] = [];
  for (const m of moeLayers(model)) {
    const s = await m.stats.read();
    if (s) out.push(s);
  }
  return out;
}

/**
 * Make the routers trainable: every gate weight (and noise projection) becomes a tf.Variable in
 * place. Keyed `<module>.weight_t`: the values are [in, out], transposed from the HF layout.
 */
export function routerParams(model: CausalLM): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const m of moeLayers(model)) {
    for (const l of [m.router.gate, ...(m.router.noise ? [m.router.noise] : [])]) out.set(`${l.name}.weight_t`, l.trainableWeight());
  }
  return out;
}

/** Turn on DeepSeek-V3 aux-loss-free balancing in every MoE layer; returns the buffers for TrainSpec.buffers. */
export function enableBalancingBias(model: CausalLM): Map<string, tf.Variable> {
  return new Map(moeLayers(model).map((m) => [m.router.biasName, m.router.enableBalancingBias()]));
}

/** The trainer's afterStep for aux-loss-free balancing: b_e += γ · sign(mean load − load_e) in every layer. */
export function updateBalancingBias(model: CausalLM, gamma = 1e-3): void {
  for (const m of moeLayers(model)) m.router.updateBias(gamma);
}

/** One entry of an expert mask: an expert in one layer, or in every MoE layer (layer null). */
export interface ExpertMaskEntry {
  layer: number | null;
  expert: number;
}

/** "3,5" masks experts 3 and 5 everywhere; "0:3,1:5" masks expert 3 of layer 0 and 5 of layer 1. */
export function parseExpertMask(spec: string): ExpertMaskEntry[] {
  return spec.split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => {
    const m = /^(?:(\d+):)?(\d+)$/.exec(s);
    if (!m) throw new Error(`expert mask '${s}': expected EXPERT or LAYER:EXPERT`);
    return { layer: m[1] === undefined ? null : Number(m[1]), expert: Number(m[2]) };
  });
}

/** Replace every MoE layer's mask with `entries` (an empty list unmasks all); on error nothing changes. */
export function maskExperts(model: CausalLM, entries: ExpertMaskEntry[]): void {
  const layers = moeLayers(model);
  const byLayer = new Map(layers.map((m) => [m.layer, new Set<number>()]));
  for (const { layer, expert } of entries) {
    if (layer === null) for (const s of byLayer.values()) s.add(expert);
    else {
      const s = byLayer.get(layer);
      if (!s) throw new Error(`expert mask ${layer}:${expert}: layer ${layer} has no sparse MoE FFN (MoE layers: ${[...byLayer.keys()].join(', ')})`);
      s.add(expert);
    }
  }
  const before = layers.map((m) => [...m.router.masked]);
  try {
    for (const m of layers) m.maskExperts(byLayer.get(m.layer)!);
  } catch (e) {
    layers.forEach((m, i) => m.maskExperts(before[i]!));
    throw e;
  }
}
