import * as tf from '@tensorflow/tfjs';
import { linearsByName, LoraAdapter } from '../adapters/adapter.js';
import type { ForwardContext } from '../base/context.js';
import type { Linear, LinearHook } from '../base/linear.js';
import type { CausalLM, ForwardOptions, TokenBatch } from '../base/model.js';
import type { KVCache } from '../base/kvcache.js';
import { Rng } from '../base/rng.js';
import { createGates, gateWeights, perToken, selection, type GateInit, type GateOptions, type MoleGate, type MoleGates, type Selection } from './mole.js';
import { readF32 } from '../base/host.js';
import { FEATURE_PARTS, featureWidth, promptFeatures, routeWeights, type PromptRouter } from './prompt-router.js';
import { StackCache } from './stacked.js';
import { GateStats, type GateStatsReport } from './stats.js';

/**
 * Per-row choices for the next forward passes, so one batch can mix expert sets while the base
 * runs once. Every given field has one entry per batch row; N columns are in expert order.
 */
export interface RowSpec {
  /** [B, N] 0/1: the experts each row may use (ANDed with the global mask). */
  mask?: number[][];
  /** [B, N] weights per row; static mixing only (a gate sets its own). */
  weights?: number[][];
  /** A task label per row, for gate statistics per task. */
  tasks?: (string | number)[];
  /**
   * Per row, the index of the expert its task names, or −1: while training, each MoLE gate then
   * adds a routing cross-entropy on its probabilities at the row's real tokens (MoA-style labels).
   */
  routeTo?: number[];
}

/** One gate's most recent weights, on the host: probs is G, weights is what was applied. */
export interface GateTrace {
  gate: string;
  modules: readonly string[];
  /** Rows of both arrays (B·T); N columns each, row-major. */
  rows: number;
  probs: Float32Array;
  weights: Float32Array;
}

interface Expert {
  name: string;
  adapter: LoraAdapter;
  /** Its variables' trainable flags before it was frozen, restored on removal. */
  trainable: boolean[];
}

/**
 * static: Σ wᵢ Eᵢ(x), shares by name summing to 1 (absent names 0), renormalised over the experts a
 * mask keeps; null is the plain sum, every kept expert at 1. gate: MoLE. router: per-row weights
 * that a prompt router chose before the pass (see routeInput).
 */
type Mixing = { kind: 'static'; weights: Map<string, number> | null } | { kind: 'gate'; gates: MoleGates } | { kind: 'router'; router: PromptRouter };

/** A router's choice for the rows of a pass: probabilities and the weights applied, [B][N] (lastRouting). */
export interface Routing {
  probs: number[][];
  weights: number[][];
}

/** The same, on the device, [B, N] each: made before the pass without reading anything back. */
interface DeviceRouting {
  probs: tf.Tensor2D;
  weights: tf.Tensor2D;
}

/** One gate's most recent probabilities and applied weights, kept on the device until lastWeights reads them. */
interface KeptTrace {
  modules: readonly string[];
  probs: tf.Tensor2D;
  weights: tf.Tensor2D;
}

/** What the hooks of one forward pass share, built by the first gated linear that runs. */
interface Pass {
  /** 0/1 per batch row and expert, or null (every expert, every row); one row when all rows agree. */
  allowed: number[][] | null;
  /** Gate mixing: the allowed experts as logit offsets at the gate's unit level. */
  selection: Selection | null;
  /** Static or router mixing: the experts' weights, [1, N] when all rows agree, else [B·T, N]; null under a gate. */
  weights: tf.Tensor2D | null;
  /** Block-level gates: weights computed at the block's input linear, for its other linears. */
  blockWeights: Map<string, tf.Tensor2D>;
}

/**
 * N frozen LoRA experts composed on a frozen base: every linear that at least one expert adapts
 * gets a hook adding Σᵢ wᵢ·Eᵢ(x), with w from a MoLE gate, or static weights (by default all 1:
 * the plain sum of the adapters). An expert that does not adapt a module contributes a zero there.
 *
 * Masks keep a subset of experts without retraining (gate weights renormalised over the kept
 * ones), per batch or per row. Experts are frozen (their variables stop being trainable) and owned
 * by the composition until removed; do not also attach them to the base. Hooks add up like
 * attached adapters, so keep one composition attached per base.
 */
export class MoleComposition {
  private readonly entries: Expert[] = [];
  private mixing: Mixing = { kind: 'static', weights: null };
  private maskNames: Set<string> | null = null;
  private rows: RowSpec | null = null;
  /** Removers of the hooks rehook() installed: the model's input hook and one per gated linear. */
  private readonly unhooks: (() => void)[] = [];
  private readonly passes = new WeakMap<ForwardContext, Pass>();
  private readonly stacks = new StackCache();
  private attached = true;
  private stats: GateStats | null = null;
  private collecting = false;
  private trace: Map<string, KeptTrace> | null = null;
  /**
   * The router's choice for the pass about to run (kept tensors: owned here, or by the KV cache
   * whose prefill made it), and the choices cached decoding steps reuse.
   */
  private routing: (DeviceRouting & { cache: KVCache | null }) | null = null;
  private readonly cachedRouting = new WeakMap<KVCache, DeviceRouting>();

  constructor(readonly model: CausalLM) {}

  /** Expert names, in the order of gate columns, masks and weights. */
  get experts(): string[] {
    return this.entries.map((e) => e.name);
  }

  expert(name: string): LoraAdapter {
    return this.find(name).adapter;
  }

  /** Linears at least one expert adapts, in module order: where the hooks (and gates) go. */
  gatedModules(): string[] {
    return this.model.linears().filter((l) => this.entries.some((e) => e.adapter.layers.has(l.name))).map((l) => l.name);
  }

  get gate(): MoleGates | null {
    return this.mixing.kind === 'gate' ? this.mixing.gates : null;
  }

  get router(): PromptRouter | null {
    return this.mixing.kind === 'router' ? this.mixing.router : null;
  }

  /** Trainable variables: the gate's or the router's (none under static weights; experts and base are frozen). */
  params(): Map<string, tf.Variable> {
    return this.gate?.params() ?? this.router?.params() ?? new Map();
  }

  /**
   * The router's choice for the rows of the last pass it routed (null before one, without a
   * router, or once the KV cache that held it is gone).
   */
  async lastRouting(): Promise<Routing | null> {
    const r = this.router ? this.routing : null;
    if (!r || r.weights.isDisposed) return null;
    return { probs: (await r.probs.array()) as number[][], weights: (await r.weights.array()) as number[][] };
  }

  /** Add a frozen expert. Not once a gate is set: its shape depends on the experts. */
  addExpert(name: string, adapter: LoraAdapter): void {
    if (!name) throw new Error('expert: a name is required');
    if (this.entries.some((e) => e.name === name)) throw new Error(`expert '${name}' is already in the composition`);
    if (this.gate) throw new Error(`expert '${name}': the gate was built for experts [${this.experts.join(', ')}]; remove it (useWeights) before adding experts`);
    const linears = linearsByName(this.model);
    for (const [module, l] of adapter.layers) {
      const lin = linears.get(module);
      if (!lin) throw new Error(`expert '${name}': adapts '${module}', which is not a linear of this base`);
      if (l.inFeatures !== lin.inFeatures || l.outFeatures !== lin.outFeatures) {
        throw new Error(`expert '${name}': '${module}' maps ${l.inFeatures} → ${l.outFeatures} features, the base linear ${lin.inFeatures} → ${lin.outFeatures}`);
      }
    }
    const vars = [...adapter.params().values()];
    this.entries.push({ name, adapter, trainable: vars.map((v) => v.trainable) });
    for (const v of vars) v.trainable = false;
    // The modules gated may change: stacks are rebuilt at the next pass.
    this.stacks.clear();
    this.rehook();
  }

  /** Take an expert out (unfrozen, and no longer owned: the caller disposes it). */
  removeExpert(name: string): LoraAdapter {
    const ex = this.find(name);
    if (this.gate) throw new Error(`expert '${name}': the gate was built for experts [${this.experts.join(', ')}]; remove it (useWeights) before removing experts`);
    this.entries.splice(this.entries.indexOf(ex), 1);
    [...ex.adapter.params().values()].forEach((v, i) => (v.trainable = ex.trainable[i]!));
    this.maskNames?.delete(name);
    this.stacks.clear();
    this.rehook();
    return ex.adapter;
  }

  /**
   * Hot-swap: copy `replacement`'s tensors into expert `name`'s variables (same modules and
   * shapes), so gates, hooks and the base stay as they are. The replacement stays the caller's.
   */
  swapExpert(name: string, replacement: LoraAdapter): void {
    const ex = this.find(name);
    const layers = ex.adapter.layers;
    const modules = [...layers.keys()];
    const missing = modules.filter((m) => !replacement.layers.has(m));
    const extra = [...replacement.layers.keys()].filter((m) => !layers.has(m));
    if (missing.length || extra.length) {
      throw new Error(`swap of expert '${name}': the replacement must adapt the same modules${missing.length ? `; it lacks ${missing.join(', ')}` : ''}${extra.length ? `; it adds ${extra.join(', ')}` : ''}`);
    }
    for (const m of modules) {
      const [a, b] = [layers.get(m)!, replacement.layers.get(m)!];
      if (a.rank !== b.rank) throw new Error(`swap of expert '${name}': '${m}' has rank ${b.rank} in the replacement, ${a.rank} in the expert`);
    }
    for (const m of modules) layers.get(m)!.assignFrom(replacement.layers.get(m)!);
    ex.adapter = new LoraAdapter(name, replacement.config, layers);
  }

  /** Mix with this gate set (it must be over these experts, in this order). Disposes the previous gate. */
  useGate(gates: MoleGates): void {
    if (gates.experts.join('\n') !== this.experts.join('\n')) {
      throw new Error(`gate is over experts [${gates.experts.join(', ')}], the composition has [${this.experts.join(', ')}]`);
    }
    const modules = this.gatedModules();
    if (gates.modules.join('\n') !== modules.join('\n')) {
      const missing = modules.filter((m) => !gates.gateFor(m));
      const extra = gates.modules.filter((m) => !modules.includes(m));
      throw new Error(`gate does not cover the experts' modules${missing.length ? `; ungated: ${missing.join(', ')}` : ''}${extra.length ? `; not adapted by any expert: ${extra.join(', ')}` : ''}`);
    }
    const linears = linearsByName(this.model);
    for (const g of gates.gates) {
      const rows = this.entries.length * linears.get(g.input)!.outFeatures;
      if (g.e.shape[0] !== rows) throw new Error(`gate '${g.name}': e has ${g.e.shape[0]} rows, ${g.input} needs N·out = ${rows}`);
    }
    this.setMixing({ kind: 'gate', gates });
  }

  /** A fresh gate over the current experts (see createGates), now in use. */
  initGate(options: Partial<GateOptions> = {}, rng: Rng = new Rng(0), init: Partial<GateInit> = {}): MoleGates {
    const linears = linearsByName(this.model);
    const modules = this.gatedModules().map((m) => ({ module: m, outFeatures: linears.get(m)!.outFeatures }));
    const gates = createGates(this.experts, modules, options, rng, init);
    this.useGate(gates);
    return gates;
  }

  /**
   * Route each row with this prompt router (over these experts, in this order): before every
   * pass it reads the prompts and picks each row's top-k allowed experts. Disposes a previous gate.
   */
  useRouter(router: PromptRouter): void {
    if (router.experts.join('\n') !== this.experts.join('\n')) {
      throw new Error(`router is over experts [${router.experts.join(', ')}], the composition has [${this.experts.join(', ')}]`);
    }
    const features = featureWidth(this.model.config.hidden);
    if (router.weight.shape[0] !== features) throw new Error(`router reads ${router.weight.shape[0]} features, this base gives ${features} (${FEATURE_PARTS.length} × hidden_size)`);
    this.setMixing({ kind: 'router', router });
  }

  /** Stop routing and hand the router back undisposed; mixing returns to static (every expert at 1). */
  releaseRouter(): PromptRouter {
    const router = this.router;
    if (!router) throw new Error('release router: the composition has no router');
    this.mixing = { kind: 'static', weights: null };
    this.setRouting(null);
    return router;
  }

  /**
   * Static mixing Σ wᵢ Eᵢ(x), no gate: each expert's share of the mix, in expert order or by name
   * (unnamed experts get 0). Shares are ≥ 0 and sum to 1 (see checkShares); null is the plain sum,
   * every expert at full strength. A gate or router in use is disposed.
   */
  useWeights(weights: number[] | Record<string, number> | null): void {
    let shares: Map<string, number> | null = null;
    if (weights) {
      if (Array.isArray(weights) && weights.length !== this.entries.length) {
        throw new Error(`static weights: ${weights.length} given for ${this.entries.length} experts [${this.experts.join(', ')}]`);
      }
      const pairs = Array.isArray(weights) ? this.experts.map((n, i) => [n, weights[i]!] as [string, number]) : Object.entries(weights);
      for (const [n] of pairs) this.find(n);
      checkShares(pairs, 'static weights');
      shares = new Map(pairs);
    }
    this.validate(this.maskNames, this.rows, shares);
    this.setMixing({ kind: 'static', weights: shares });
  }

  /**
   * Keep only these experts (gate weights and static shares renormalised over them); null keeps
   * every expert. Keeping none is refused: that is the base alone (detach() runs it).
   */
  mask(names: string[] | null): void {
    if (names) for (const n of names) this.find(n);
    const kept = names ? new Set(names) : null;
    this.validate(kept, this.rows, this.staticShares());
    this.maskNames = kept;
  }

  /** One expert alone at full strength: mask([name]) (MoleModel.soloExpert, `--only`). */
  solo(name: string): void {
    this.mask([name]);
  }

  /** @deprecated the old name of solo, kept for scripts. */
  only(name: string): void {
    this.solo(name);
  }

  /** Per-row masks, weights and task labels for the following passes; null clears them. */
  setRows(spec: RowSpec | null): void {
    if (spec) {
      const N = this.entries.length;
      const lengths = [spec.mask?.length, spec.weights?.length, spec.tasks?.length, spec.routeTo?.length].filter((n) => n !== undefined);
      if (lengths.some((n) => n !== lengths[0])) throw new Error(`row spec: mask, weights, tasks and routeTo give different row counts (${lengths.join(', ')})`);
      spec.routeTo?.forEach((e, b) => {
        if (!Number.isInteger(e) || e < -1 || e >= N) throw new Error(`row spec: routeTo row ${b} must be an expert index in [0, ${N}) or −1, got ${e}`);
      });
      spec.mask?.forEach((row, b) => {
        if (row.length !== N || row.some((m) => m !== 0 && m !== 1)) throw new Error(`row spec: mask row ${b} must hold ${N} entries of 0 or 1 (experts ${this.experts.join(', ')})`);
      });
      spec.weights?.forEach((row, b) => {
        if (row.length !== N) throw new Error(`row spec: weights row ${b} must hold ${N} weights (experts ${this.experts.join(', ')})`);
        checkShares(this.experts.map((n, i) => [n, row[i]!]), `row spec: weights row ${b}`);
      });
      if (spec.weights && this.mixing.kind !== 'static') throw new Error(`row spec: per-row weights are for static mixing; the ${this.mixing.kind} sets its own (use mask)`);
      this.validate(this.maskNames, spec, this.staticShares());
    }
    this.rows = spec;
  }

  /** A mask row (for setRows) keeping these experts. */
  maskRow(names: string[]): number[] {
    for (const n of names) this.find(n);
    return this.experts.map((n) => (names.includes(n) ? 1 : 0));
  }

  /**
   * Start (true: from zero) or stop accumulating gate statistics, which stay on the device until
   * gateStats() reads them; stopping frees them.
   */
  collectStats(on: boolean): void {
    this.stats?.dispose();
    this.stats = on ? new GateStats(this.experts) : null;
    this.collecting = on;
  }

  async gateStats(): Promise<GateStatsReport> {
    if (!this.stats) throw new Error('no gate statistics: call collectStats(true) before the forward passes');
    return this.stats.report();
  }

  /** Keep each gate's most recent per-token weights (for inspection; slow); false frees them. */
  traceWeights(on: boolean): void {
    for (const t of this.trace?.values() ?? []) tf.dispose([t.probs, t.weights]);
    this.trace = on ? new Map() : null;
  }

  /** Each gate's most recent per-token probabilities and weights, read to the host. */
  async lastWeights(): Promise<Map<string, GateTrace>> {
    if (!this.trace) throw new Error('no gate trace: call traceWeights(true) before the forward pass');
    const out = new Map<string, GateTrace>();
    for (const [gate, t] of this.trace) {
      out.set(gate, { gate, modules: t.modules, rows: t.weights.shape[0], probs: await readF32(t.probs), weights: await readF32(t.weights) });
    }
    return out;
  }

  /** Remove the hooks: the base runs alone until attach(). */
  detach(): void {
    for (const unhook of this.unhooks.splice(0)) unhook();
    this.attached = false;
  }

  attach(): void {
    this.attached = true;
    this.rehook();
  }

  /** Detach and free the gate and every expert still in the composition. */
  dispose(): void {
    this.detach();
    this.collectStats(false);
    this.traceWeights(false);
    this.setRouting(null);
    this.gate?.dispose();
    this.router?.dispose();
    for (const e of this.entries) e.adapter.dispose();
    this.entries.length = 0;
    this.stacks.clear();
  }

  private find(name: string): Expert {
    const e = this.entries.find((x) => x.name === name);
    if (!e) throw new Error(`no expert '${name}' in the composition (experts: ${this.experts.join(', ') || 'none'})`);
    return e;
  }

  private setMixing(m: Mixing): void {
    if (this.gate && (m.kind !== 'gate' || m.gates !== this.gate)) this.gate.dispose();
    if (this.router && (m.kind !== 'router' || m.router !== this.router)) this.router.dispose();
    this.mixing = m;
    this.setRouting(null);
    if (this.stats) this.collectStats(true);
  }

  private rehook(): void {
    const attached = this.attached;
    this.detach();
    this.attached = attached;
    if (!attached) return;
    this.unhooks.push(this.model.addInputHook((input, opts) => this.routeInput(input, opts)));
    const linears = linearsByName(this.model);
    for (const module of this.gatedModules()) {
      const lin = linears.get(module)!;
      const hook: LinearHook = { delta: (x, ctx) => this.delta(lin, x, ctx) };
      this.unhooks.push(lin.addHook(hook));
    }
  }

  /**
   * Σᵢ wᵢ·Eᵢ(x) at one gated linear, every expert in one pair of products (StackedExperts).
   * Frozen experts run as at inference: no dropout.
   */
  private delta(lin: Linear, x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    const pass = this.pass(ctx);
    const module = lin.name;
    const layers = this.entries.map((e) => e.adapter.layers.get(module) ?? null);
    const experts = this.stacks.get(module, layers, lin.inFeatures, lin.outFeatures);

    if (this.mixing.kind !== 'gate') return experts.mix(experts.project(x), pass.weights!);
    const { gates } = this.mixing;
    const gate = gates.gateFor(module)!;
    // With one mask for every row, excluded experts have weight 0 everywhere.
    const kept = pass.allowed?.length === 1 ? pass.allowed[0]! : null;
    const observing = this.collecting || this.trace !== null;
    if (kept && kept.filter((m) => m === 1).length === 1 && !ctx.training && !observing) {
      // One expert left: G' = 1 exactly, so the gate need not run.
      const only = layers[kept.indexOf(1)];
      return only ? only.delta(x, { ...ctx, training: false }) : tf.zeros([x.shape[0], lin.outFeatures]);
    }
    const u = experts.project(x);
    if (module !== gate.input) {
      const shared = pass.blockWeights.get(gate.name);
      if (!shared) throw new Error(`block gate '${gate.name}': ${module} ran before ${gate.input}, whose expert outputs are the gate's input`);
      return experts.mix(u, shared);
    }
    const { granularity, topK } = gates.options;
    const z = gate.scaledLogits(experts, u, ctx, granularity);
    const g = gateWeights(z, pass.selection, topK);
    // Excluded experts have weight exactly 0 (softmax of −1e9), so they add nothing.
    const weights = perToken(g.weights, ctx, granularity);
    this.observe(gates, gate, ctx, z, perToken(g.probs, ctx, granularity), weights);
    if (gate.modules.length > 1) pass.blockWeights.set(gate.name, weights);
    return experts.mix(u, weights);
  }

  /**
   * Balance loss, routing cross-entropy, statistics and trace for one gate's run; z is the gate's
   * scaled logits per unit, probs (G = softmax z) and weights are per token.
   */
  private observe(gates: MoleGates, gate: MoleGate, ctx: ForwardContext, z: tf.Tensor2D, probs: tf.Tensor2D, weights: tf.Tensor2D): void {
    gates.balance.add(ctx, gate.name, probs);
    const routeTo = this.rows?.routeTo;
    if (ctx.training && routeTo) {
      // log G from the logits: log of G itself would underflow (or need a clamp that stops the
      // gradient) exactly where the gate is confidently wrong.
      const logProbs = perToken(tf.logSoftmax(z), ctx, gates.options.granularity);
      ctx.aux.push({ name: ROUTING_AUX, value: routingCrossEntropy(logProbs, routeTo, ctx, gates.gates.length) });
    }
    if (this.collecting) this.stats!.record(gate.name, gate.modules, weights, ctx, this.rows?.tasks?.map(String) ?? null);
    if (this.trace) {
      const old = this.trace.get(gate.name);
      this.trace.set(gate.name, { modules: gate.modules, probs: tf.keep(probs.clone()), weights: tf.keep(weights.clone()) });
      if (old) tf.dispose([old.probs, old.weights]);
    }
  }

  private pass(ctx: ForwardContext): Pass {
    const cached = this.passes.get(ctx);
    // A context reused outside the tidy that built its pass: build it again.
    if (cached && !cached.selection?.offset.isDisposed && !cached.weights?.isDisposed) return cached;
    const pass = this.newPass(ctx);
    this.passes.set(ctx, pass);
    return pass;
  }

  private newPass(ctx: ForwardContext): Pass {
    const { batch: B, seq: T } = ctx;
    const N = this.entries.length;
    const rows = this.rows;
    for (const [field, n] of [['mask', rows?.mask?.length], ['weights', rows?.weights?.length], ['tasks', rows?.tasks?.length], ['routeTo', rows?.routeTo?.length]] as const) {
      if (n !== undefined && n !== B) throw new Error(`composition: row ${field} were set for ${n} rows, the batch has ${B}`);
    }
    const allowed = this.allowedRows();
    const pass: Pass = { allowed, selection: null, weights: null, blockWeights: new Map() };
    const mixing = this.mixing;
    if (mixing.kind === 'router') {
      const chosen = this.routing?.weights;
      if (!chosen || chosen.isDisposed || chosen.shape[0] !== B) throw new Error(`composition: the router chose for ${chosen?.shape[0] ?? 0} rows, the batch has ${B}`);
      // The router applied the masks when it chose.
      pass.weights = chosen.reshape([B, 1, N]).tile([1, T, 1]).reshape([B * T, N]) as tf.Tensor2D;
      return pass;
    }
    if (mixing.kind === 'static') {
      const w = this.staticRows(mixing.weights, allowed, rows?.weights);
      pass.weights = weightRows(w, T);
      return pass;
    }
    if (rows?.weights) throw new Error('composition: per-row weights are for static mixing; the gate sets its own (use mask)');
    if (allowed && (allowed.length > 1 || allowed[0]!.includes(0))) {
      const perSequence = mixing.gates.options.granularity === 'sequence';
      const units = allowed.length === 1 || perSequence ? allowed : allowed.flatMap((row) => Array<number[]>(T).fill(row));
      pass.selection = selection(units, perSequence ? B : B * T, N);
    }
    return pass;
  }

  /**
   * The input hook: under a router, choose each row's experts from its prompt before the pass
   * runs. A cached decoding step reuses the choice its prefill made (the prompt is all it read).
   */
  private routeInput(input: TokenBatch, opts: ForwardOptions): void {
    if (this.mixing.kind !== 'router') return;
    const cache = opts.cache;
    const reused = cache && cache.length > 0 ? this.cachedRouting.get(cache) : undefined;
    if (reused) {
      this.setRouting(reused, cache!);
      return;
    }
    const router = this.mixing.router;
    const allowed = this.allowedRows();
    const routing = tf.tidy(() => {
      const probs = tf.softmax(router.logits(promptFeatures(this.model, input)));
      return { probs: tf.keep(probs), weights: tf.keep(routeWeights(probs, allowed, router.options.topK)) };
    });
    if (cache) {
      cache.owned.push(routing.probs, routing.weights);
      this.cachedRouting.set(cache, routing);
    }
    this.setRouting(routing, cache ?? null);
    if (this.collecting) this.recordRouting(routing.weights);
  }

  /** Make `r` the routing in use, freeing the previous one unless a KV cache owns it. */
  private setRouting(r: DeviceRouting | null, cache: KVCache | null = null): void {
    const old = this.routing;
    this.routing = r ? { ...r, cache } : null;
    if (old && !old.cache && old.weights !== r?.weights) tf.dispose([old.probs, old.weights]);
  }

  /** Routing statistics: one 'router' gate whose units are rows. */
  private recordRouting(weights: tf.Tensor2D): void {
    const B = weights.shape[0];
    tf.tidy(() => {
      const realTokens = new Float32Array(B).fill(1);
      const rowsCtx = { batch: B, seq: 1, training: false, tokenMask: tf.tensor2d(realTokens, [B, 1]), realTokens, aux: [], rng: null };
      this.stats!.record('router', [], weights, rowsCtx, this.rows?.tasks?.map(String) ?? null);
    });
  }

  /**
   * The global mask ANDed with the row masks, collapsed to one row when all rows agree. A row
   * that keeps no expert would silently run the base alone, so it is an error.
   */
  private allowedRows(names = this.maskNames, rowMask = this.rows?.mask): number[][] | null {
    if (!names && !rowMask) return null;
    const global = this.experts.map((n) => (!names || names.has(n) ? 1 : 0));
    if (!global.includes(1)) throw new Error(`mask: leaves none of the experts [${this.experts.join(', ')}]; that is the base model alone, which needs no experts`);
    if (!rowMask) return [global];
    if (rowMask.some((row) => row.length !== global.length)) throw new Error(`composition: row masks must have ${global.length} columns (experts ${this.experts.join(', ')})`);
    const rows = rowMask.map((row) => row.map((m, i) => m * global[i]!));
    rows.forEach((r, b) => {
      if (!r.includes(1)) throw new Error(`row spec: mask row ${b} leaves none of the experts${names ? ' the global mask keeps' : ''}; that row would be the base model alone`);
    });
    return rows.every((r) => r.join() === rows[0]!.join()) ? [rows[0]!] : rows;
  }

  /** The static shares in use; null under the plain sum, a gate or a router. */
  private staticShares(): Map<string, number> | null {
    return this.mixing.kind === 'static' ? this.mixing.weights : null;
  }

  /** Run the checks a pass would, on settings about to be made, so that the setter reports them. */
  private validate(names: Set<string> | null, rows: RowSpec | null, shares: Map<string, number> | null): void {
    const allowed = this.allowedRows(names, rows?.mask);
    if (shares || rows?.weights) this.staticRows(shares, allowed, rows?.weights);
  }

  /**
   * Static weights per row (one row when all rows agree): shares renormalised over the experts each
   * row keeps, or under the plain sum (no shares) 1 for each kept expert.
   */
  private staticRows(shares: Map<string, number> | null, allowed: number[][] | null, rowShares: number[][] | undefined): number[][] {
    const given = rowShares ?? [this.experts.map((n) => (shares ? (shares.get(n) ?? 0) : 1))];
    const count = Math.max(given.length, allowed?.length ?? 1);
    return Array.from({ length: count }, (_, b) => {
      const mask = allowed?.[allowed.length === 1 ? 0 : b];
      const kept = given[given.length === 1 ? 0 : b]!.map((w, i) => (mask ? w * mask[i]! : w));
      if (!shares && !rowShares) return kept;
      const total = kept.reduce((a, w) => a + w, 0);
      if (total === 0) {
        const names = this.experts.filter((_, i) => !mask || mask[i]);
        throw new Error(`static weights${count > 1 ? ` (row ${b})` : ''}: the experts kept [${names.join(', ')}] all have weight 0; that is the base model alone`);
      }
      return kept.map((w) => w / total);
    });
  }
}

/** Weights per row ([B][N], or one row for all) → [1, N], or [B·T, N] with each row's weights on its tokens. */
function weightRows(rows: number[][], T: number): tf.Tensor2D {
  const N = rows[0]!.length;
  if (rows.length === 1 || rows.every((r) => r.join() === rows[0]!.join())) return tf.tensor2d(rows[0]!, [1, N]);
  const out = new Float32Array(rows.length * T * N);
  rows.forEach((r, b) => {
    for (let t = 0; t < T; t++) out.set(r, (b * T + t) * N);
  });
  return tf.tensor2d(out, [rows.length * T, N]);
}

/** Static shares must sum to 1 within this, so that typed decimals (0.33 × 3) pass; they are then renormalised exactly. */
const SHARE_SUM_TOLERANCE = 0.01;

/**
 * Static weights are shares of the mix: finite, ≥ 0, summing to 1. A sum far from 1 scales every
 * adapter (1e30 drowns the model, all zeros is the base alone), so it is refused rather than
 * rescaled behind the user's back.
 */
function checkShares(pairs: [string, number][], what: string): void {
  for (const [n, w] of pairs) {
    if (typeof w !== 'number' || !Number.isFinite(w)) throw new Error(`${what}: the weight of expert '${n}' is ${String(w)}, not a finite number`);
    if (w < 0) throw new Error(`${what}: the weight of expert '${n}' is ${w}; weights are shares of the mix, ≥ 0`);
  }
  const sum = pairs.reduce((a, [, w]) => a + w, 0);
  const given = pairs.map(([n, w]) => `${n}=${w}`).join(',');
  if (sum === 0) throw new Error(`${what}: every weight is 0 (${given}); that is the base model alone`);
  // The 1e-12 keeps sums exactly 0.01 off inside: 0.33 × 3 is 1 − 0.010000000000000009 in floating point.
  if (Math.abs(sum - 1) > SHARE_SUM_TOLERANCE + 1e-12) {
    throw new Error(`${what}: the weights sum to ${sum} (${given}); they are each expert's share of the mix and must sum to 1, e.g. ${pairs.map(([n]) => `${n}=${+(1 / pairs.length).toFixed(3)}`).join(',')}. For every expert at full strength (the plain sum), give no weights`);
  }
}

/** The name under which MoLE gates leave their routing cross-entropy in ForwardContext.aux. */
export const ROUTING_AUX = 'mole_routing';

/**
 * −log G_label at every real token of the labelled rows, averaged, and divided by the number of
 * gates so that the sum over gates is their mean. logProbs: log G, [B·T, N] per token.
 */
function routingCrossEntropy(logProbs: tf.Tensor2D, routeTo: number[], ctx: ForwardContext, gates: number): tf.Scalar {
  const { batch: B, seq: T } = ctx;
  const N = logProbs.shape[1];
  const pick = new Float32Array(B * T * N);
  routeTo.forEach((e, b) => {
    if (e >= 0) for (let t = 0; t < T; t++) pick[(b * T + t) * N + e] = 1;
  });
  const picked = tf.tensor2d(pick, [B * T, N]).mul(ctx.tokenMask);
  return logProbs.mul(picked).sum().div(picked.sum().maximum(1).mul(-gates)) as tf.Scalar;
}
