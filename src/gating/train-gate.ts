import * as tf from '@tensorflow/tfjs';
import { loadBase } from '../base/load.js';
import type { Input } from '../base/output.js';
import { Rng } from '../base/rng.js';
import { evalBatches, type TokenStore } from '../data/index.js';
import { loadLmData, toLmBatch, trainLm, type LmTrainOptions } from '../train/lm.js';
import { inRunFolder, type TrainResult } from '../train/trainer.js';
import { loadAdapter } from '../adapters/peft.js';
import { MoleComposition } from './composition.js';
import type { CausalLM } from '../base/model.js';
import { centroidRouter, createRouter, type RouterOptions } from './prompt-router.js';
import { saveRouting } from './router-io.js';
import { ROUTERS, routerSettings, type RouterFlags, type RouterKind, type RoutingSettings } from './routing-settings.js';
import { DEFAULT_ROUTER_L2, ExpertLossCache, fitsFullBatch, RouterTrainingSet, featureStats, resolveRoutingLoss, routedLoss, routerLoss, routingAccuracy, ROUTING_LOSSES, taskExperts, withL2, type RoutingLoss } from './router-train.js';
import type { GateStatsReport } from './stats.js';

/**
 * Learning rates that need no tuning: the prompt router is one linear layer over standardised
 * features (convex with labels), and 1e-3 left it short of separable tasks in 400 steps where
 * 1e-2 routed them all (docs/routing.md); MoLE's gates keep the trainer's 1e-3.
 */
export const DEFAULT_GATE_LR: Record<RouterKind, number> = { prompt: 1e-2, centroid: 1e-2, mole: 1e-3 };

/**
 * The routing settings come flat, spelled as the CLI and recipes spell them (`router`, `topK`,
 * `level`, `granularity`, `balance`, `temperature`, `maskDropout`, …; ROUTER_OPTIONS), or
 * already resolved into the nested `gate` / `routerOptions` objects, not both.
 */
export interface TrainGateOptions extends LmTrainOptions, RoutingSettings, Partial<Pick<RouterFlags, FlatOnly>> {
  model: string;
  /** Expert name → PEFT adapter folder; the order fixes the gate's columns. */
  experts: [string, string][];
  /** Prompt router: most training rows it fits full-batch (FULL_BATCH_ROWS); more train on batches. */
  fullBatchRows?: number;
}

/** Settings that exist only flat: the nested objects hold them under other names. */
const FLAT_ONLY = ['topK', 'level', 'granularity', 'balance', 'temperature'] as const;
type FlatOnly = (typeof FLAT_ONLY)[number];

/** The options with their routing settings resolved (routerSettings), whichever way they came. */
function resolveRouting(o: TrainGateOptions): TrainGateOptions {
  const flat = FLAT_ONLY.filter((k) => o[k] !== undefined);
  if (flat.length === 0) return o;
  if (o.gate !== undefined || o.routerOptions !== undefined) {
    throw new Error(`give the routing settings flat (${flat.join(', ')}) or as gate / routerOptions, not both`);
  }
  return { ...o, ...routerSettings(o) };
}

/** Validation batches the per-eval gate statistics look at (enough for stable means, cheap). */
const STATS_BATCHES = 8;

/**
 * `molora train-gate`: N frozen LoRA experts on the frozen base, and a router over them: by
 * default the prompt router (trainPromptRouter), or the training-free centroid router, or a
 * MoLE gate per gated layer (or block) trained on next-token loss plus the balance loss (and a
 * routing cross-entropy where the task column names experts). Only the router's parameters
 * train. The output folder holds gate_config.json + gate.safetensors, metrics.jsonl (routing
 * accuracy, or the per-layer mean gate weights and entropy, at each eval) and checkpoints.
 */
export function trainGate(o: TrainGateOptions): Promise<TrainResult> {
  const inputs: Input[] = [['--model', o.model], ...o.experts.map(([name, dir]): Input => [`--expert ${name}`, dir])];
  return inRunFolder(o, inputs, () => trainIn(o));
}

async function trainIn(given: TrainGateOptions): Promise<TrainResult> {
  const o = resolveRouting(given);
  if (o.experts.length < 2) throw new Error(`a gate composes at least 2 experts; got ${o.experts.length}`);
  const kind = o.router ?? 'prompt';
  if (!ROUTERS.includes(kind)) throw new Error(`router must be one of ${ROUTERS.join(', ')}, got '${kind}'`);
  if (kind !== 'mole' && (o.gate || o.maskDropout)) throw new Error(`MoLE gate options (level, granularity, temperature, balance, mask dropout) are for --router mole, not '${kind}'`);
  if (kind === 'mole' && (o.routerOptions || o.routingLoss || o.routerL2 !== undefined)) throw new Error(`router options (top-k, routing loss, L2) are for --router prompt or centroid, not 'mole'`);
  const model = loadBase(o.model, { warn: o.log, training: { batch: o.batchSize, seq: o.seqLen, trainableParams: 0 } });
  const comp = new MoleComposition(model);
  try {
    for (const [name, dir] of o.experts) comp.addExpert(name, loadAdapter(model, dir, { name, warn: o.log }));
    if (kind === 'prompt') return await trainPromptRouter(model, comp, o);
    if (kind === 'centroid') return await fitCentroidRouter(model, comp, o);
    comp.initGate(o.gate ?? {}, new Rng(o.seed));
    const p = o.maskDropout ?? 0;
    if (!(p >= 0 && p < 1)) throw new Error(`mask dropout must be in [0, 1), got ${p}`);
    return await trainLm(model, comp.params(), (dir) => saveRouting(comp, dir), {
      ...o,
      // Rows whose task names an expert teach every gate to pick it (routing cross-entropy); mask
      // dropout trains for masking.
      beforeBatch: (b, training, rng, { dataset }) => {
        if (!training) return comp.setRows(null);
        const routeTo = Array.from(b.taskIds, (t) => comp.experts.indexOf(dataset.taskNames[t] ?? ''));
        const mask = p > 0 ? dropoutMasks(comp.experts, b.taskIds, dataset.taskNames, p, rng) : undefined;
        comp.setRows(routeTo.some((e) => e >= 0) || mask ? { ...(mask && { mask }), ...(routeTo.some((e) => e >= 0) && { routeTo }) } : null);
      },
      onEval: async (_step, { dataset }) => ({ gates: summariseGates(await gateStatsOn(comp, dataset.val ?? dataset.train, dataset.taskNames, o.seqLen)) }),
    });
  } finally {
    comp.dispose();
    model.dispose();
  }
}

/**
 * The prompt router: trained by the shared trainer (resume, checkpoints, eval) on its routing
 * loss; validation reports the routed model's LM loss and the routing accuracy. The composition
 * stays on static weights while it trains (the loss routes each row itself); the saved folder
 * holds the router.
 */
async function trainPromptRouter(model: CausalLM, comp: MoleComposition, o: TrainGateOptions): Promise<TrainResult> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const router = createRouter(comp.experts, model.config.hidden, o.routerOptions ?? {}, new Rng(o.seed));
  let labels: Int32Array = new Int32Array(0);
  let kind: RoutingLoss = 'labels';
  let full: RouterTrainingSet | null = null;
  const cache = new ExpertLossCache();
  const l2 = o.routerL2 ?? DEFAULT_ROUTER_L2;
  if (!(l2 >= 0 && Number.isFinite(l2))) throw new Error(`router L2 must be a finite number ≥ 0, got ${l2}`);
  try {
    return await trainLm(model, router.params(), (dir) => saveRouter(comp, router, dir), {
      ...o,
      // Which loss the data allows, the features' standardiser (one plain pass) and, for data
      // small enough, the whole training set as one batch; before step 1.
      onData: async (data) => {
        labels = taskExperts(data.dataset, comp.experts);
        const r = resolveRoutingLoss(o.routingLoss ?? 'auto', labels, comp.experts);
        kind = r.loss;
        const stats = await featureStats(comp, data, null, o.seqLen, fitsFullBatch(data.dataset.train.size, model.config.hidden, o.fullBatchRows));
        router.standardise(stats.std);
        log(`router: routing loss '${kind}' (${r.why})`);
        if (!stats.rows) return log(`router: ${data.dataset.train.size} training rows: trained on batches of ${o.batchSize}`);
        const set = await RouterTrainingSet.create(comp, stats.rows, labels, kind);
        full = set;
        const fit = await set.fit(router, kind, l2);
        log(`router: fitted on all ${set.size} training rows first (${fit.iterations} full-batch iterations, loss ${fit.loss.toFixed(4)}); every step then uses them all`);
      },
      // The LM terms need the experts' losses on the batch's rows: computed (once per row) before the pass.
      prepare: async (b, training) => {
        if (training && !full && kind !== 'labels') await cache.fill(comp, b);
      },
      loss: (b, training) => {
        if (!training) return routedLoss(comp, router, b);
        return withL2(full ? full.loss(router, kind) : routerLoss(comp, router, b, labels, kind, cache), router, l2);
      },
      onEval: async (_step, data) => ({ routing_accuracy: await routingAccuracy(comp, router, data, labels, o.seqLen) }),
    });
  } finally {
    (full as RouterTrainingSet | null)?.dispose();
    router.dispose();
  }
}

/** Save the router through the composition (which takes it for the save, then lets it go). */
async function saveRouter(comp: MoleComposition, router: ReturnType<typeof createRouter>, dir: string): Promise<void> {
  comp.useRouter(router);
  try {
    await saveRouting(comp, dir);
  } finally {
    comp.releaseRouter();
  }
}

/** The training-free router: one plain pass over the training rows, centroids per labelled expert. */
async function fitCentroidRouter(model: CausalLM, comp: MoleComposition, o: TrainGateOptions): Promise<TrainResult> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const data = await loadLmData(model, o, log);
  const labels = taskExperts(data.dataset, comp.experts);
  if (!labels.some((e) => e >= 0)) throw new Error(`the centroid router needs a task column whose values name experts (${comp.experts.join(', ')})`);
  const { sums, counts, std } = await featureStats(comp, data, labels, o.seqLen);
  const router = centroidRouter(comp.experts, sums, counts, std, o.routerOptions ?? {});
  comp.useRouter(router);
  await saveRouting(comp, o.out);
  log(`centroid router: ${counts.map((c, i) => `${comp.experts[i]} ${c} rows`).join(', ')}; wrote ${o.out}`);
  return { status: 'done', step: 0, checkpoint: null, lastLoss: null, best: null };
}

/** Gate statistics (per task when the data has tasks) over a store's first batches, in order. */
export async function gateStatsOn(comp: MoleComposition, store: TokenStore, names: string[], seqLen: number, batches = STATS_BATCHES): Promise<GateStatsReport> {
  comp.collectStats(true);
  try {
    let n = 0;
    for (const b of evalBatches(store, { batchSize: 8, seqLen })) {
      if (n++ >= batches) break;
      comp.setRows(names.length ? { tasks: Array.from(b.taskIds, (t) => names[t]!) } : null);
      tf.tidy(() => void comp.model.forward(toLmBatch(b)));
    }
    comp.setRows(null);
    return await comp.gateStats();
  } finally {
    comp.collectStats(false);
  }
}

/** The compact per-layer form logged to metrics.jsonl: gate → mean weight per expert, entropy. */
export function summariseGates(r: GateStatsReport): Record<string, { weights: Record<string, number>; entropy: number }> {
  return Object.fromEntries(
    r.gates.map((g) => [g.gate, { weights: Object.fromEntries(r.experts.map((e, i) => [e, round(g.meanWeight[i]!)])), entropy: round(g.entropy) }]),
  );
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

/** Per-row expert masks for mask dropout: with probability p a row loses one expert other than its own task's. */
export function dropoutMasks(experts: string[], taskIds: Int32Array, taskNames: string[], p: number, rng: Rng): number[][] {
  return Array.from(taskIds, (t) => {
    const row = experts.map(() => 1);
    if (rng.next() < p) {
      const others = experts.map((_, i) => i).filter((i) => experts[i] !== taskNames[t]);
      if (others.length > 0) row[others[rng.int(others.length)]!] = 0;
    }
    return row;
  });
}
