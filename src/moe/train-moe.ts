import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { modelTensors, saveModel } from '../base/export.js';
import { readF32 } from '../base/host.js';
import { loadBase } from '../base/load.js';
import { holding } from '../base/lock.js';
import type { CausalLM } from '../base/model.js';
import { claimOutput } from '../base/output.js';
import { writeSafetensors, type TensorToWrite } from '../base/safetensors.js';
import { evalBatches, type TokenStore } from '../data/index.js';
import { toLmBatch, trainLm, type LmTrainOptions } from '../train/lm.js';
import { inRunFolder, type TrainResult } from '../train/trainer.js';
import type { RouterStats, RouterStatsSlot } from './moe-losses.js';
import { enableBalancingBias, moeLayers, routerParams, updateBalancingBias } from './moe.js';
import { upcycle, type UpcycleOptions } from './upcycle.js';

export interface UpcycleFolderOptions extends UpcycleOptions {
  /** Dense Llama-family model folder. */
  model: string;
  /** Where the sparse MoE model folder goes. */
  out: string;
  /** Replace a model already in `out` (never the dense input). */
  overwrite?: boolean;
  warn?: (msg: string) => void;
}

/** `molora upcycle`: a dense model folder in, a Mixtral / Qwen2-MoE folder (tokenizer files copied) out. */
export async function upcycleFolder(o: UpcycleFolderOptions): Promise<CausalLM['config']> {
  return holding(
    claimOutput({ out: o.out, inputs: [['--model', o.model]], overwrite: o.overwrite, log: o.warn }),
    async () => {
      const dense = loadBase(o.model, { warn: o.warn });
      try {
        const moe = await upcycle(dense, o);
        try {
          await saveModel(moe, o.out);
          return moe.config;
        } finally {
          moe.dispose();
        }
      } finally {
        dense.dispose();
      }
    },
    { discard: true },
  );
}

/**
 * Make every routed and shared expert weight (and the shared-expert gate) trainable in place; with
 * routerParams this is all of the sparse FFN. Keyed `<module>.weight_t` like routerParams.
 */
export function expertParams(model: CausalLM): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const m of moeLayers(model)) {
    for (const l of m.linears()) if (l !== m.router.gate) out.set(`${l.name}.weight_t`, l.trainableWeight());
  }
  return out;
}

/** One layer's routing over the eval batches, as logged in metrics.jsonl. */
export interface LayerRouting {
  tokens: number;
  /** Share of the (token, slot) assignments per expert. */
  load: number[];
  /** HF balance loss E·Σ f·P (k at perfect balance). */
  aux: number;
  z_loss: number;
  /** Mean router entropy in nats (ln E is uniform). */
  entropy: number;
}

/** Batches the per-eval routing statistics look at: enough for stable means, cheap. */
const STATS_BATCHES = 8;

/**
 * Per-layer routing over a store's first batches (inference passes, so no bias update or aux
 * loss), token-weighted across batches. `slots` are the routed layers' statistics, recorded for
 * these passes only.
 */
export async function routingOn(
  model: CausalLM,
  slots: RouterStatsSlot[],
  store: TokenStore,
  o: { batchSize: number; seqLen: number },
  batches = STATS_BATCHES,
): Promise<Record<string, LayerRouting>> {
  const sums = new Map<number, LayerRouting>();
  let n = 0;
  for (const slot of slots) slot.on = true;
  try {
    for (const b of evalBatches(store, o)) {
      if (n++ >= batches) break;
      tf.tidy(() => void model.hidden(toLmBatch(b)));
      for (const slot of slots) {
        const s = await slot.read();
        if (s) add(sums, s);
      }
    }
  } finally {
    for (const slot of slots) {
      slot.on = false;
      slot.clear();
    }
  }
  const r = (x: number, t: number): number => Math.round((x / Math.max(t, 1)) * 1e4) / 1e4;
  return Object.fromEntries(
    [...sums].map(([layer, s]) => [
      String(layer),
      { tokens: s.tokens, load: s.load.map((l) => r(l, s.tokens)), aux: r(s.aux, s.tokens), z_loss: r(s.z_loss, s.tokens), entropy: r(s.entropy, s.tokens) },
    ]),
  );
}

/** One pass's statistics of a layer, added to its token-weighted sums. */
function add(sums: Map<number, LayerRouting>, s: RouterStats): void {
  const acc = sums.get(s.layer) ?? { tokens: 0, load: s.load.map(() => 0), aux: 0, z_loss: 0, entropy: 0 };
  acc.tokens += s.tokens;
  s.load.forEach((l, e) => (acc.load[e]! += l * s.tokens));
  acc.aux += s.aux * s.tokens;
  acc.z_loss += s.zLoss * s.tokens;
  acc.entropy += s.entropy * s.tokens;
  sums.set(s.layer, acc);
}

/**
 * saveModel, plus each router's aux-loss-free balancing bias when it is on, under DeepSeek-V3's
 * key `<gate>.e_score_correction_bias`: it changes which experts are picked, so inference needs it.
 */
export async function saveMoeModel(model: CausalLM, dir: string): Promise<void> {
  await saveModel(model, dir);
  const biased = moeLayers(model).filter((m) => m.router.bias);
  if (biased.length === 0) return;
  const files: Record<string, TensorToWrite> = {};
  for (const [key, t] of await modelTensors(model)) files[key] = { dtype: 'F32', shape: t.shape, data: t.data };
  for (const m of biased) files[m.router.biasName] = { dtype: 'F32', shape: [m.router.opts.experts], data: await readF32(m.router.bias!) };
  writeSafetensors(join(dir, 'model.safetensors'), files, { format: 'pt' });
}

export interface TrainMoeOptions extends LmTrainOptions {
  /** Sparse MoE model folder (Mixtral, Qwen2-MoE, OLMoE; e.g. from upcycleFolder). */
  model: string;
  /** Train only the routers; experts stay as they are. */
  routerOnly?: boolean;
  /** router_aux_loss_coef for this run (default: the config's); 0 turns the balance loss off. Recorded in the saved config. */
  auxCoef?: number;
  /** Router z-loss coefficient (default: the config's router_z_loss_coef, usually 0). Recorded in the saved config. */
  zCoef?: number;
  /** DeepSeek-V3 aux-loss-free balancing: after each update b_e += γ·sign(mean load − load_e). */
  balanceBias?: number;
}

/**
 * `molora train-moe`: train a sparse MoE model's FFNs (routers and experts, or only the routers)
 * on next-token loss plus the router losses; attention, norms, embeddings and head stay frozen.
 * The output folder is the whole model in HF layout (also written into each checkpoint), plus
 * metrics.jsonl whose eval lines carry per-layer routing: `router: {"<layer>": LayerRouting}`.
 */
export function trainMoe(o: TrainMoeOptions): Promise<TrainResult> {
  return inRunFolder(o, [['--model', o.model]], () => trainIn(o));
}

async function trainIn(o: TrainMoeOptions): Promise<TrainResult> {
  const gamma = o.balanceBias;
  if (gamma !== undefined && !(gamma > 0)) throw new Error(`balance bias γ must be positive, got ${gamma}`);
  for (const [k, v] of [['aux coefficient', o.auxCoef], ['z-loss coefficient', o.zCoef]] as const) {
    if (v !== undefined && !(v >= 0)) throw new Error(`${k} must be >= 0, got ${v}`);
  }
  const model = loadBase(o.model, { warn: o.log, training: { batch: o.batchSize, seq: o.seqLen, trainableParams: 0 } });
  try {
    const layers = moeLayers(model);
    if (layers.length === 0) {
      throw new Error(`${o.model}: model_type ${model.config.modelType} has no sparse MoE FFN to train (upcycle a dense model first: molora upcycle)`);
    }
    const raw = model.config.raw;
    for (const losses of new Set(layers.map((m) => m.losses))) {
      losses.opts = { ...losses.opts, auxCoef: o.auxCoef ?? losses.opts.auxCoef, zCoef: o.zCoef ?? losses.opts.zCoef };
    }
    if (o.auxCoef !== undefined) raw.router_aux_loss_coef = o.auxCoef;
    if (o.zCoef !== undefined) raw.router_z_loss_coef = o.zCoef;
    const params = new Map([...routerParams(model), ...(o.routerOnly ? [] : expertParams(model))]);
    const buffers = gamma !== undefined ? enableBalancingBias(model) : undefined;
    return await trainLm(model, params, (dir) => saveMoeModel(model, dir), {
      ...o,
      buffers,
      afterStep: (step) => {
        if (gamma !== undefined) updateBalancingBias(model, gamma);
        o.afterStep?.(step);
      },
      onEval: async (step, data) => ({
        ...(await o.onEval?.(step, data)),
        router: await routingOn(model, moeLayers(model).map((m) => m.stats), data.dataset.val ?? data.dataset.train, o),
      }),
    });
  } finally {
    model.dispose();
  }
}
