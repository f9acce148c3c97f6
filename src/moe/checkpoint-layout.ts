import * as tf from '@tensorflow/tfjs';
import type { ModelConfig, MoEConfig } from '../base/config.js';
import type { HostTensor } from '../base/host-tensor.js';
import { readHost } from '../base/host.js';
import { Linear } from '../base/linear.js';
import { SwiGLU } from '../base/mlp.js';
import type { LinearReader } from '../base/sparse-ffn.js';
import type { WeightSource } from '../base/weights.js';
import { RouterLosses } from './moe-losses.js';
import { MoEFFN, type ExpertLayout, type SharedExpert } from './moe.js';
import { Router } from './router.js';

/** One expert's projections: Mixtral's w1 (gate), w3 (up), w2 (down); the others' gate/up/down_proj. */
function expertNames(modelType: string): [string, string, string] {
  return modelType === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
}

/** The router losses every MoE layer of one model reports to, or null for a dense model. */
export function moeLosses(cfg: ModelConfig): RouterLosses | null {
  const m = cfg.moe;
  if (!m) return null;
  return new RouterLosses(m.sparse.filter((s) => s).length, {
    experts: m.experts,
    topK: m.topK,
    auxCoef: m.auxLossCoef,
    zCoef: m.zLossCoef,
    normalise: false,
  });
}

/**
 * Layer i's sparse MoE FFN, from whichever layout the checkpoint stores (REFERENCE.md §4):
 * - Mixtral classic: model.layers.i.block_sparse_moe.{gate, experts.e.{w1,w3,w2}};
 * - packed (transformers ≥ 5): model.layers.i.mlp.gate.weight [E, D],
 *   mlp.experts.gate_up_proj [E, 2I, D] (gate rows, then up rows), mlp.experts.down_proj [E, D, I];
 * - Qwen2-MoE / OLMoE: model.layers.i.mlp.{gate, experts.e.{gate,up,down}_proj}, plus Qwen2-MoE's
 *   shared_expert.* and shared_expert_gate [1, D].
 * Packed experts still become one Linear per projection, named as the per-expert layout would
 * name them under mlp.experts (so LoRA can target them); an export packs them again.
 */
export function buildMoEFFN(cfg: ModelConfig, w: WeightSource, i: number, linear: LinearReader, losses: RouterLosses): MoEFFN {
  const m = cfg.moe!;
  const D = cfg.hidden;
  const { experts: E, expertFfn: I } = m;
  const names = expertNames(cfg.modelType);
  const mlp = `model.layers.${i}.mlp`;
  const classic = `model.layers.${i}.block_sparse_moe`;
  const packed = cfg.modelType === 'mixtral'
    ? !w.has(`${classic}.gate.weight`) && w.has(`${mlp}.experts.gate_up_proj`)
    : !w.has(`${mlp}.experts.0.${names[0]}.weight`) && w.has(`${mlp}.experts.gate_up_proj`);
  const prefix = cfg.modelType === 'mixtral' && !packed ? classic : mlp;
  const layout: ExpertLayout = packed ? 'packed' : 'per-expert';
  const expertName = (e: number, j: number): string => `${prefix}.experts.${e}.${names[j]}`;

  const router = new Router(linear(`${prefix}.gate`, D, E), {
    experts: E,
    topK: m.topK,
    normTopK: m.normTopK,
    mode: 'token-choice',
    capacityFactor: null,
    jitter: m.jitter,
  });
  // A model trained with aux-loss-free balancing keeps its selection bias (DeepSeek-V3's key).
  const biasKey = `${prefix}.gate.e_score_correction_bias`;
  if (w.has(biasKey)) {
    const b = w.get(biasKey, [E]);
    router.enableBalancingBias().assign(b);
    b.dispose();
  }
  let experts: SwiGLU[];
  if (packed) {
    const gateUp = w.get(`${prefix}.experts.gate_up_proj`, [E, 2 * I, D]);
    const down = w.get(`${prefix}.experts.down_proj`, [E, D, I]);
    // Per expert, weights as [in, out]: gate/up rows of gate_up_proj transposed, down_proj[e] transposed.
    const mats = tf.tidy(() => Array.from({ length: E }, (_, e) => [
      gateUp.slice([e, 0, 0], [1, I, D]).reshape([I, D]).transpose() as tf.Tensor2D,
      gateUp.slice([e, I, 0], [1, I, D]).reshape([I, D]).transpose() as tf.Tensor2D,
      down.slice([e, 0, 0], [1, D, I]).reshape([D, I]).transpose() as tf.Tensor2D,
    ]));
    gateUp.dispose();
    down.dispose();
    experts = mats.map((ws, e) => new SwiGLU(...(ws.map((wT, j) => new Linear(expertName(e, j), wT, null, false)) as [Linear, Linear, Linear])));
  } else {
    experts = Array.from({ length: E }, (_, e) => new SwiGLU(
      linear(expertName(e, 0), D, I),
      linear(expertName(e, 1), D, I),
      linear(expertName(e, 2), I, D),
    ));
  }
  const shared: SharedExpert[] = [];
  if (m.sharedFfn > 0) {
    const S = m.sharedFfn;
    shared.push({
      mlp: new SwiGLU(linear(`${mlp}.shared_expert.gate_proj`, D, S), linear(`${mlp}.shared_expert.up_proj`, D, S), linear(`${mlp}.shared_expert.down_proj`, S, D)),
      gate: linear(`${mlp}.shared_expert_gate`, D, 1),
    });
  }
  return new MoEFFN(i, prefix, router, experts, shared, layout, losses);
}

/** Parameters of one sparse MoE FFN: router, routed experts, shared expert and its gate. */
export function moeWeightCount(m: MoEConfig, hidden: number): number {
  const shared = m.sharedFfn > 0 ? 3 * hidden * m.sharedFfn + hidden : 0;
  return hidden * m.experts + m.experts * 3 * hidden * m.expertFfn + shared;
}

/** A packed layer's experts in the packed checkpoint layout: gate_up_proj [E, 2I, D], down_proj [E, D, I]. */
export async function packedExpertTensors(moe: MoEFFN): Promise<Map<string, HostTensor>> {
  const [E, D, I] = [moe.experts.length, moe.experts[0]!.gate.inFeatures, moe.experts[0]!.gate.outFeatures];
  const gateUp = await readHost(() => tf.stack(moe.experts.map((x) => tf.concat([x.gate.weightT.transpose(), x.up.weightT.transpose()], 0))));
  const down = await readHost(() => tf.stack(moe.experts.map((x) => x.down.weightT.transpose())));
  return new Map([
    [`${moe.prefix}.experts.gate_up_proj`, { shape: [E, 2 * I, D], data: gateUp }],
    [`${moe.prefix}.experts.down_proj`, { shape: [E, D, I], data: down }],
  ]);
}
