import { choice, custom, float, int, OptionValueError, type Values } from '../base/options.js';
import type { GateOptions } from './mole.js';
import type { RouterOptions } from './prompt-router.js';
import { ROUTING_LOSSES } from './router-train.js';

/**
 * 'prompt' (default): the prompt router, one hard decision per row from the base's hidden states
 * (prompt-router.ts). 'centroid': the same feature, training-free, nearest task centroid (needs a
 * task column naming experts). 'mole': the paper's gates inside every adapted linear (mole.ts).
 */
export const ROUTERS = ['prompt', 'centroid', 'mole'] as const;
export type RouterKind = (typeof ROUTERS)[number];

/** The routing settings as trainGate runs them: MoLE's under `gate`, the prompt router's under `routerOptions`. */
export interface RoutingSettings {
  router?: RouterKind;
  /** Prompt and centroid routers. */
  routerOptions?: Partial<RouterOptions>;
  /** Prompt router: what teaches it (router-train.ts); 'auto' by default. */
  routingLoss?: (typeof ROUTING_LOSSES)[number];
  /** Prompt router: L2 penalty λ on its standardised weights (DEFAULT_ROUTER_L2). */
  routerL2?: number;
  /** MoLE gates (router 'mole'). */
  gate?: Partial<GateOptions>;
  /**
   * Mask robustness: in training, each row drops one random expert with this probability, never
   * the expert named like the row's task. The gate learns not to lean on experts a task does not
   * need, so masking one expert at inference spares the other tasks. 0 (default) turns it off.
   */
  maskDropout?: number;
}

/** A MoLE gate temperature as given: 'learn' (a learnable τ) or a fixed positive τ (a number, or its text). */
export function parseTemperature(v: unknown): 'learn' | number {
  if (v === 'learn') return v;
  const t = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
  if (typeof t === 'number' && t > 0) return t;
  throw new OptionValueError(`must be 'learn' or a positive number, got ${JSON.stringify(v)}`);
}

/** train-gate's routing settings (src/base/options.ts); the MoLE ones only with router 'mole'. */
export const ROUTER_OPTIONS = {
  router: choice(ROUTERS, "prompt: one decision per row from the base's hidden states at the prompt (default); centroid: the same feature, training-free nearest task centroid (needs --task-column); mole: the MoLE paper's gates in every adapted linear"),
  routingLoss: choice(ROUTING_LOSSES, "prompt router: labels (cross-entropy on --task-column values that name experts), lm (the LM loss alone: each row's likelihood under its routed expert), both; auto (default) takes labels when the task column names experts, else lm"),
  routerL2: float('prompt router: L2 penalty (λ/2)·|W|² on its standardised weights (default 1e-2)', 0, Infinity, { arg: 'lambda' }),
  topK: int('experts per row (prompt, centroid; default 1: the chosen expert at full strength) or per unit (mole), renormalised', 1, { arg: 'k' }),
  level: choice(['layer', 'block'] as const, 'mole only: one gate per gated linear (layer, default) or per transformer block (block)', { arg: 'level' }),
  granularity: choice(['token', 'sequence', 'prefix'] as const, 'mole only: token (default): weights per position; sequence: one per row, pooled over its real tokens (sees the answer while training); prefix: per row but causal', { arg: 'g' }),
  balance: float('mole only: balance-loss coefficient α in α·(−Σ log qᵢ) (default 0.5); 0 disables it', 0, Infinity, { arg: 'alpha' }),
  temperature: custom("mole only: 'learn' (default) for a learnable τ, or a fixed positive value", parseTemperature, { arg: 't' }),
  maskDropout: float('mole only: each training row drops one random expert (never the one named like its task) with probability p (default 0)', 0, 0.99, { arg: 'p' }),
} as const;

/** The routing settings as the CLI and recipes give them (each optional; MoLE's only with router 'mole'). */
export type RouterFlags = Values<typeof ROUTER_OPTIONS>;

/** Flags → train-gate options, refusing MoLE flags for other routers (they would be ignored). */
export function routerSettings(f: RouterFlags): RoutingSettings {
  const router = f.router ?? 'prompt';
  const mole = { level: f.level, granularity: f.granularity, balance: f.balance, temperature: f.temperature, maskDropout: f.maskDropout };
  const given = Object.entries(mole).filter(([, v]) => v !== undefined).map(([k]) => k);
  if (router !== 'mole') {
    if (given.length) throw new Error(`${given.join(', ')}: MoLE gate settings, for router 'mole' only (this is router '${router}')`);
    if (router === 'centroid' && (f.routingLoss !== undefined || f.routerL2 !== undefined)) throw new Error(`the centroid router is not trained: routing loss and L2 are for router 'prompt'`);
    return { router, routerOptions: f.topK !== undefined ? { topK: f.topK } : undefined, routingLoss: f.routingLoss, routerL2: f.routerL2 };
  }
  if (f.routingLoss !== undefined || f.routerL2 !== undefined) throw new Error(`routing loss and router L2 are for router 'prompt', not 'mole'`);
  const t = parseTemperature(f.temperature ?? 'learn');
  const gate: Partial<GateOptions> = {
    temperature: t === 'learn' ? { mode: 'learned' } : { mode: 'fixed', value: t },
    ...(f.level !== undefined && { level: f.level }),
    ...(f.granularity !== undefined && { granularity: f.granularity }),
    ...(f.topK !== undefined && { topK: f.topK }),
    ...(f.balance !== undefined && { balanceAlpha: f.balance }),
  };
  return { router, gate, maskDropout: f.maskDropout };
}

