import * as tf from '@tensorflow/tfjs';
import { LoraAdapter, newLayer } from './adapter.js';
import { targetsModule, type LoraConfig } from './config.js';
import { loraConfigFrom, type LoraConfigInput, type MixLoraOptions } from './lora-options.js';
import { initLoraWeights, LoraLayer } from './lora.js';
import type { ForwardContext } from '../base/context.js';
import { Linear } from '../base/linear.js';
import { GeluMLP, geluNew, SwiGLU, type FFN } from '../base/mlp.js';
import type { CausalLM } from '../base/model.js';
import type { Rng } from '../base/rng.js';
import { tensorsOnHost } from '../base/backend.js';
import { RouterLosses, routerLossPart, RouterStatsSlot, type RouterStats } from '../moe/moe-losses.js';
import { Router, sparsePlan, type Dispatch } from '../moe/router.js';
import { scatterAdd } from '../moe/moe.js';

/**
 * MixLoRA (Li et al. 2024, arXiv 2404.15159; TUDB-Labs/MixLoRA): E LoRA experts inside each dense
 * FFN, picked per token by a trainable top-k router, on a frozen base. Expert j is the shared FFN
 * with its own LoRA deltas on the adapted projections,
 *   E_j(x) = (W_down + ΔW_down_j)(silu((W_gate + ΔW_gate_j) x) ⊙ (W_up + ΔW_up_j) x),
 * and, as in the reference code, y = Σ_{j∈top-k} w_j E_j(x) with p = softmax(W_r x) and
 * w = p over the top k renormalised to sum to 1, so y = FFN(x) + Σ w_j (E_j(x) − FFN(x)):
 * with B = 0 at init the model is exactly the base. GPT-2's MLP is the same with c_fc / gelu / c_proj.
 * Training adds HF's load-balancing loss (router_aux_loss_coef · E·Σ f·P over all layers).
 */
export interface MixLoraConfig {
  rank: number;
  alpha: number;
  dropout: number;
  rslora: boolean;
  init: LoraConfig['init'];
  /**
   * MixLoRA's one list: FFN projections named here (gate_proj, up_proj, down_proj; c_fc, c_proj
   * on GPT-2) get the experts; modules outside the FFNs that it names (q_proj, v_proj…) a plain LoRA.
   */
  targets: string[];
  layers: number[] | null;
  experts: number;
  topK: number;
  /** router_aux_loss_coef: HF balance loss weight while training; 0 turns it off. */
  auxCoef: number;
  /** Std of the router's N(0, σ) init (MixLoRA's router_init_range). */
  routerStd: number;
  baseModel: string | null;
}

/** A dense FFN as in-projections, an activation over their outputs, and an out-projection. */
interface FfnParts {
  ins: Linear[];
  out: Linear;
  act(h: tf.Tensor2D[]): tf.Tensor2D;
}

function partsOf(ffn: FFN, where: string): FfnParts {
  if (ffn instanceof SwiGLU) return { ins: [ffn.gate, ffn.up], out: ffn.down, act: ([g, u]) => g!.mul(g!.sigmoid()).mul(u!) };
  if (ffn instanceof GeluMLP) return { ins: [ffn.fc], out: ffn.proj, act: ([h]) => geluNew(h!) };
  throw new Error(`${where}: MixLoRA adds LoRA experts to a dense FFN (SwiGLU or GPT-2 MLP); this block has a ${ffn.constructor.name}`);
}

/** The module path of an FFN (model.layers.i.mlp) from one of its projections' names. */
function ffnPrefix(parts: FfnParts): string {
  return parts.out.name.slice(0, parts.out.name.lastIndexOf('.'));
}

function projName(lin: Linear): string {
  return lin.name.slice(lin.name.lastIndexOf('.') + 1);
}

/**
 * One block's FFN with MixLoRA experts; it stands in for the dense FFN while attached. Sparse like
 * MoEFFN: the shared in-projections run once on every row, then each expert gathers its tokens,
 * adds its LoRA deltas, and one down projection over all (token, expert) rows plus a segment sum
 * combines them. Padding rows reach no expert and come out 0. On webgpu every expert runs on
 * every row, weighted by the [N, E] routing weights (see MoEFFN).
 */
export class MixLoraFFN implements FFN {
  /** The last pass's routing statistics, while collecting. */
  readonly stats = new RouterStatsSlot();
  private readonly parts: FfnParts;

  constructor(
    readonly layer: number,
    /** The FFN's module path: experts are <prefix>.experts.<j>.<proj>, the router <prefix>.router. */
    readonly prefix: string,
    /** The block's frozen dense FFN (the block owns it). */
    readonly base: FFN,
    readonly router: Router,
    /** Per expert, its LoRA on each adapted projection, keyed by the base linear's name. */
    readonly experts: Map<string, LoraLayer>[],
    readonly losses: RouterLosses,
  ) {
    this.parts = partsOf(base, prefix);
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const real = ctx.realTokens;
    const N = x.shape[0];
    if (real.length !== N) throw new Error(`${this.prefix}: ${N} rows but a ${real.length}-token mask`);
    const r = this.router.route(x, ctx, real);
    this.stats.record(this.layer, r, ctx);
    if (ctx.training) this.losses.add(ctx, routerLossPart(r.logits, r.probs, ctx, r.chosen));
    return tensorsOnHost() ? this.sparse(x, sparsePlan(r), ctx) : this.dense(x, r.weights, ctx);
  }

  /** Each expert on its own tokens (rows grouped by expert), one down projection, one segment sum. */
  private sparse(x: tf.Tensor2D, d: Dispatch, ctx: ForwardContext): tf.Tensor2D {
    const N = x.shape[0];
    if (d.tokens.length === 0) return tf.zerosLike(x);
    const rows = tf.tensor1d(d.tokens, 'int32');
    const active = [...d.counts.keys()].filter((e) => d.counts[e]! > 0);
    const sizes = active.map((e) => d.counts[e]!);
    const split = (t: tf.Tensor2D): tf.Tensor2D[] => (active.length === 1 ? [t] : (tf.split(t, sizes) as tf.Tensor2D[]));
    const join = (ts: tf.Tensor2D[]): tf.Tensor2D => (ts.length === 1 ? ts[0]! : tf.concat(ts, 0));
    // Each expert's LoRA on `lin` added to its slice of `base` (rows grouped by expert), from its slice of `input`.
    const withDeltas = (lin: Linear, base: tf.Tensor2D, input: tf.Tensor2D): tf.Tensor2D => {
      const layers = active.map((e) => this.experts[e]!.get(lin.name));
      if (layers.every((l) => !l)) return base;
      const bs = split(base);
      const xs = split(input);
      return join(bs.map((b, i) => (layers[i] ? b.add(layers[i]!.delta(xs[i]!, ctx)) : b)));
    };
    const { ins, out, act } = this.parts;
    const xs = tf.gather(x, rows) as tf.Tensor2D;
    const a = act(ins.map((lin) => withDeltas(lin, tf.gather(lin.forward(x, ctx), rows) as tf.Tensor2D, xs)));
    const y = withDeltas(out, out.forward(a, ctx), a);
    return scatterAdd(y.mul(d.weights.reshape([-1, 1])) as tf.Tensor2D, rows, N);
  }

  /** Every unmasked expert on every row (the in-projections shared), weighted by the [N, E] routing weights. */
  private dense(x: tf.Tensor2D, weights: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const N = x.shape[0];
    const { ins, out, act } = this.parts;
    const bases = ins.map((lin) => lin.forward(x, ctx));
    const terms = this.experts.flatMap((layers, e) => {
      if (this.router.masked.has(e)) return [];
      const withDelta = (lin: Linear, base: tf.Tensor2D, input: tf.Tensor2D): tf.Tensor2D => {
        const l = layers.get(lin.name);
        return l ? base.add(l.delta(input, ctx)) : base;
      };
      const a = act(ins.map((lin, i) => withDelta(lin, bases[i]!, x)));
      return [withDelta(out, out.forward(a, ctx), a).mul(weights.slice([0, e], [N, 1])) as tf.Tensor2D];
    });
    return terms.length === 1 ? terms[0]! : tf.addN(terms);
  }

  /** The dense FFN's linears: what exports write and plain LoRA adapters target. */
  linears(): Linear[] {
    return this.base.linears();
  }

  /** Called by the block that holds it: the base FFN is the block's. */
  dispose(): void {
    this.base.dispose();
  }

  /** The adapter's own tensors: router and expert LoRAs. */
  disposeExperts(): void {
    this.stats.clear();
    this.router.dispose();
    for (const e of this.experts) for (const l of e.values()) l.dispose();
  }
}

/** A file / trainer key for a tensor of this adapter, in PEFT's layout (`base_model.model.<module>.…`). */
export function mixLoraKey(module: string, param: 'lora_A' | 'lora_B' | 'router'): string {
  return param === 'router' ? `base_model.model.${module}.router.weight` : `base_model.model.${module}.${param}.weight`;
}

/**
 * A MixLoRA adapter: MixLoraFFNs for the adapted blocks and an optional plain LoRA on other
 * modules. Attaching swaps each block's FFN for its MixLoraFFN and hooks the plain LoRA on;
 * detaching restores both. The adapter owns its tensors, the model its own.
 */
export class MixLoraAdapter {
  private attachedTo: CausalLM | null = null;

  constructor(
    readonly name: string,
    readonly config: MixLoraConfig,
    readonly ffns: MixLoraFFN[],
    readonly plain: LoraAdapter | null,
  ) {}

  /** Trainable variables under their file keys (router weights kept [in, out], LoRA as LoraLayer keeps them). */
  params(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>(this.plain?.params() ?? []);
    for (const f of this.ffns) {
      out.set(mixLoraKey(f.prefix, 'router'), f.router.gate.trainableWeight());
      for (const e of f.experts) {
        for (const l of e.values()) {
          out.set(mixLoraKey(l.module, 'lora_A'), l.aT);
          out.set(mixLoraKey(l.module, 'lora_B'), l.bT);
        }
      }
    }
    return out;
  }

  /** Each adapted layer's routing in the last pass recorded (collectStats). */
  async stats(): Promise<RouterStats[]> {
    const out: RouterStats[] = [];
    for (const f of this.ffns) {
      const s = await f.stats.read();
      if (s) out.push(s);
    }
    return out;
  }

  /** Start (or stop, freeing what was kept) recording each adapted layer's routing statistics. */
  collectStats(on: boolean): void {
    for (const f of this.ffns) {
      f.stats.on = on;
      if (!on) f.stats.clear();
    }
  }

  attach(model: CausalLM): void {
    if (this.attachedTo) throw new Error(`MixLoRA adapter '${this.name}' is already attached`);
    for (const f of this.ffns) {
      const block = model.blocks[f.layer];
      if (!block || block.ffn !== f.base) {
        throw new Error(`MixLoRA adapter '${this.name}': block ${f.layer} no longer holds the FFN its experts were built on (is another MixLoRA attached?)`);
      }
    }
    for (const f of this.ffns) model.blocks[f.layer]!.ffn = f;
    this.plain?.attach(model);
    this.attachedTo = model;
  }

  detach(): void {
    const model = this.attachedTo;
    if (!model) return;
    for (const f of this.ffns) if (model.blocks[f.layer]?.ffn === f) model.blocks[f.layer]!.ffn = f.base;
    this.plain?.detach();
    this.attachedTo = null;
  }

  dispose(): void {
    this.detach();
    for (const f of this.ffns) f.disposeExperts();
    this.plain?.dispose();
  }
}

/** Initial values for an adapter's tensors: fresh ones, or a file's. */
export interface MixLoraValues {
  /** The router of the FFN at `ffn` (its module path), as [D, E]: the transpose of the file's [E, D]. */
  router(ffn: string, D: number, E: number): Float32Array;
  /** aT [in, r] and bT [r, out] for the LoRA on `module` over a linear of this shape. */
  lora(module: string, inF: number, outF: number, r: number): { aT: Float32Array; bT: Float32Array };
}

/** Fresh values: routers N(0, routerStd), LoRA A as the config's init, B = 0. */
function freshValues(config: MixLoraConfig, rng: Rng): MixLoraValues {
  return {
    router: (_m, D, E) => rng.normalArray(D * E, config.routerStd),
    lora: (_m, inF, outF, r) => initLoraWeights(inF, outF, r, config.init, rng),
  };
}

/** The plan a config implies on a base: which blocks get experts on which projections, which modules a plain LoRA. */
interface MixLoraPlan {
  ffns: { layer: number; prefix: string; base: FFN; projections: Linear[] }[];
  plain: Linear[];
}

function planMixLora(model: CausalLM, c: MixLoraConfig, source: string): MixLoraPlan {
  const layers = c.layers;
  const ffns: MixLoraPlan['ffns'] = [];
  const inFfn = new Set<Linear>();
  for (const block of model.blocks) {
    if (layers && !layers.includes(block.index)) continue;
    const parts = partsOf(block.ffn, `${source}: block ${block.index}`);
    const all = [...parts.ins, parts.out];
    const projections = all.filter((l) => c.targets.includes(projName(l)));
    if (projections.length === 0) {
      throw new Error(`${source}: target_modules ${JSON.stringify(c.targets)} name none of block ${block.index}'s FFN projections (${all.map(projName).join(', ')})`);
    }
    for (const l of all) inFfn.add(l);
    ffns.push({ layer: block.index, prefix: ffnPrefix(parts), base: block.ffn, projections });
  }
  if (ffns.length === 0) throw new Error(`${source}: layers_to_transform ${JSON.stringify(layers)} selects no block of the ${model.config.layers}-layer base`);
  const lora = asLoraConfig(c, model);
  const plain = model.linears().filter((l) => !inFfn.has(l) && targetsModule(lora, l.name));
  const others = c.targets.filter((t) => !ffns.some((f) => f.projections.some((l) => projName(l) === t)));
  if (others.length > 0 && plain.length === 0) {
    throw new Error(`${source}: target_modules ${JSON.stringify(others)} match no module of the ${model.config.modelType} base outside the FFNs`);
  }
  return { ffns, plain };
}

/** The plain-LoRA view of the config (PEFT's settings for the non-FFN targets). */
function asLoraConfig(c: MixLoraConfig, model: CausalLM): LoraConfig {
  return {
    rank: c.rank,
    alpha: c.alpha,
    dropout: c.dropout,
    rslora: c.rslora,
    targets: c.targets,
    layers: c.layers,
    init: c.init,
    fanInFanOut: model.config.arch === 'gpt2',
    rankPattern: {},
    alphaPattern: {},
    baseModel: c.baseModel,
  };
}

function validateMixLoraConfig(c: MixLoraConfig, source: string): void {
  const bad = (msg: string): never => {
    throw new Error(`${source}: ${msg}`);
  };
  if (!Number.isInteger(c.experts) || c.experts < 1) bad(`num_experts must be a positive integer, got ${c.experts}`);
  if (!Number.isInteger(c.topK) || c.topK < 1 || c.topK > c.experts) bad(`top_k must be in 1..${c.experts}, got ${c.topK}`);
  if (!Number.isInteger(c.rank) || c.rank < 1) bad(`rank (r) must be a positive integer, got ${c.rank}`);
  if (!(c.dropout >= 0 && c.dropout < 1)) bad(`dropout (lora_dropout) must be in [0, 1), got ${c.dropout}`);
  if (!(c.auxCoef >= 0)) bad(`router_aux_loss_coef must be >= 0, got ${c.auxCoef}`);
  if (!(c.routerStd >= 0)) bad(`router_init_range must be >= 0, got ${c.routerStd}`);
  if (c.targets.length === 0) bad('targets (target_modules) is empty');
}

/** Build an adapter for `model` from a config and its tensors' values (not attached yet). */
export function buildMixLora(model: CausalLM, c: MixLoraConfig, name: string, values: MixLoraValues, source: string): MixLoraAdapter {
  validateMixLoraConfig(c, source);
  const plan = planMixLora(model, c, source);
  const scale = c.rslora ? c.alpha / Math.sqrt(c.rank) : c.alpha / c.rank;
  const losses = new RouterLosses(plan.ffns.length, { experts: c.experts, topK: c.topK, auxCoef: c.auxCoef, zCoef: 0, normalise: false });
  const ffns: MixLoraFFN[] = [];
  const plainLayers = new Map<string, LoraLayer>();
  try {
    for (const p of plan.ffns) {
      const D = model.config.hidden;
      const gate = new Linear(`${p.prefix}.router`, variable(values.router(p.prefix, D, c.experts), [D, c.experts]), null, false);
      const router = new Router(gate, { experts: c.experts, topK: c.topK, normTopK: true, mode: 'token-choice', capacityFactor: null, jitter: 0 });
      const experts: Map<string, LoraLayer>[] = [];
      ffns.push(new MixLoraFFN(p.layer, p.prefix, p.base, router, experts, losses));
      for (let j = 0; j < c.experts; j++) {
        const e = new Map<string, LoraLayer>();
        experts.push(e);
        for (const lin of p.projections) {
          const module = `${p.prefix}.experts.${j}.${projName(lin)}`;
          const w = values.lora(module, lin.inFeatures, lin.outFeatures, c.rank);
          e.set(lin.name, new LoraLayer(module, variable(w.aT, [lin.inFeatures, c.rank]), variable(w.bT, [c.rank, lin.outFeatures]), scale, c.dropout));
        }
      }
    }
    for (const lin of plan.plain) {
      const w = values.lora(lin.name, lin.inFeatures, lin.outFeatures, c.rank);
      plainLayers.set(lin.name, newLayer(lin, w.aT, w.bT, c.rank, scale, c.dropout));
    }
  } catch (e) {
    for (const f of ffns) f.disposeExperts();
    for (const l of plainLayers.values()) l.dispose();
    throw e;
  }
  const plain = plainLayers.size > 0 ? new LoraAdapter(name, asLoraConfig(c, model), plainLayers) : null;
  return new MixLoraAdapter(name, c, ffns, plain);
}

/**
 * A fresh MixLoRA adapter on a dense base, from the LoRA settings as createLora takes them (former
 * names too: loraConfigFrom). If `targets` names none of the FFN projections, the experts adapt
 * all of them (and the named modules get a plain LoRA).
 */
export function createMixLora(model: CausalLM, input: LoraConfigInput, mix: MixLoraOptions, name: string, rng: Rng): MixLoraAdapter {
  const lora = loraConfigFrom(input, `MixLoRA adapter '${name}'`);
  if (!Array.isArray(lora.targets)) throw new Error(`MixLoRA adapter '${name}': targets (target_modules) must be a list of module names, not a regex`);
  const ffnProjections = new Set(
    model.blocks.flatMap((b) => {
      const p = partsOf(b.ffn, `MixLoRA adapter '${name}': block ${b.index}`);
      return [...p.ins, p.out].map(projName);
    }),
  );
  const targets = lora.targets.some((t) => ffnProjections.has(t)) ? lora.targets : [...lora.targets, ...ffnProjections];
  const config: MixLoraConfig = {
    rank: lora.rank,
    alpha: lora.alpha,
    dropout: lora.dropout,
    rslora: lora.rslora,
    init: lora.init,
    targets,
    layers: lora.layers,
    experts: mix.experts,
    topK: mix.topK,
    auxCoef: mix.auxCoef ?? 0.01,
    routerStd: mix.routerStd ?? 0.02,
    baseModel: lora.baseModel,
  };
  return buildMixLora(model, config, name, freshValues(config, rng), `MixLoRA adapter '${name}'`);
}

/** A trainable variable holding a copy of `data`. */
function variable(data: Float32Array, shape: [number, number]): tf.Variable<tf.Rank.R2> {
  const t = tf.tensor2d(data, shape);
  const v = tf.variable(t, true);
  t.dispose();
  return v;
}
