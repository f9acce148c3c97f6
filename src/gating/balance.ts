import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from '../base/context.js';
import { matMul } from '../base/ops.js';

/** The name the balance loss carries in ForwardContext.aux. */
export const BALANCE_AUX = 'mole_balance';

/** Keeps log q finite if an expert's mean weight underflows. */
const Q_MIN = 1e-12;

/** α·(−Σᵢ log qᵢ) (MoLE's L_bal scaled by α): smallest when every expert gets the same mean weight. */
export function balanceLoss(q: tf.Tensor1D, alpha: number): tf.Scalar {
  return q.maximum(Q_MIN).log().sum().mul(-alpha);
}

/** Each column's mean over real tokens: G [B·T, N] → [N]; padding rows (tokenMask 0) do not count. */
export function realTokenMean(g: tf.Tensor2D, tokenMask: tf.Tensor2D): tf.Tensor1D {
  const [rows, N] = g.shape;
  if (tokenMask.shape[0] !== rows) throw new Error(`balance loss: gate weights have ${rows} rows, the token mask ${tokenMask.shape[0]}`);
  return matMul(tokenMask.reshape([1, rows]), g).reshape([N]).div(tokenMask.sum().maximum(1));
}

/**
 * Collects each gate's mean weights during one training pass and, once every gate has run,
 * leaves one loss on ctx.aux: qᵢ = mean over the gates of their real-token means of Gᵢ (the
 * gates' own softmax, before masks and top-k). Keyed by the pass's context, so passes never mix;
 * a gate running twice in a pass is an error rather than a double count. Nothing is collected
 * when α = 0 or outside training.
 */
export class BalanceCollector {
  private readonly pending = new WeakMap<ForwardContext, Map<string, tf.Tensor1D>>();

  constructor(
    readonly alpha: number,
    readonly gates: readonly string[],
  ) {}

  add(ctx: ForwardContext, gate: string, g: tf.Tensor2D): void {
    if (this.alpha === 0 || !ctx.training) return;
    let seen = this.pending.get(ctx);
    if (!seen) {
      seen = new Map();
      this.pending.set(ctx, seen);
    }
    if (seen.has(gate)) throw new Error(`balance loss: gate '${gate}' ran twice in one forward pass`);
    seen.set(gate, realTokenMean(g, ctx.tokenMask));
    if (seen.size < this.gates.length) return;
    this.pending.delete(ctx);
    const q = tf.stack([...seen.values()]).mean(0) as tf.Tensor1D;
    ctx.aux.push({ name: BALANCE_AUX, value: balanceLoss(q, this.alpha) });
  }
}
