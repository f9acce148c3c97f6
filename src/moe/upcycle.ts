import * as tf from '@tensorflow/tfjs';
import { parseConfig, type ModelConfig } from '../base/config.js';
import { modelTensors } from '../base/export.js';
import type { HostTensor } from '../base/host-tensor.js';
import { buildParts } from '../base/load.js';
import { CausalLM } from '../base/model.js';
import { Rng } from '../base/rng.js';
import type { WeightSource } from '../base/weights.js';
// The upcycled model is built through src/base, which reads sparse layers through this registration.
import './register.js';

export interface UpcycleOptions {
  experts: number;
  topK: number;
  /** Always-on shared experts, each a copy of the dense MLP; default 0. */
  shared?: number;
  /** Std of the Gaussian noise added to every routed expert's copy (weight units); default 0, exact copies. */
  noise?: number;
  /** Std of the fresh router init; default 0.02 (HF's initializer_range). */
  routerStd?: number;
  /** router_aux_loss_coef of the new config; default 0.01. */
  auxLossCoef?: number;
  seed?: number;
}

/**
 * Sparse upcycling (Komatsuzaki et al.): a dense Llama-family model becomes a sparse MoE whose
 * routed experts all start as copies of each layer's dense MLP (plus optional noise); attention,
 * norms, embeddings and head are copied; each router is freshly initialised with a small std.
 *
 * With no shared experts and no q/k/v biases the result is a Mixtral (`model_type` mixtral,
 * classic per-expert keys). With shared experts (or biases) it is a Qwen2-MoE, whose one
 * sigmoid-gated shared expert holds the s shared copies side by side (width s·I: a sum of
 * SwiGLUs is one wider SwiGLU); its gate starts at zero, so sigmoid = ½, and every copy's
 * down projection is scaled so that, with renormalised top-k, the output starts equal to the
 * dense model's: routed experts by 1/(s+1), the shared block by 2/(s+1).
 */
export async function upcycle(dense: CausalLM, o: UpcycleOptions): Promise<CausalLM> {
  const cfg = parseConfig(upcycledConfigJson(dense.config, o), 'upcycled config');
  const source = new UpcycleWeights(await modelTensors(dense), cfg, o);
  return new CausalLM(cfg, buildParts(cfg, source), dense.tokenizer, dense.dir);
}

/** The config.json of the upcycled model: the dense model's settings under the MoE family's keys. */
export function upcycledConfigJson(c: ModelConfig, o: UpcycleOptions): Record<string, unknown> {
  if (c.arch !== 'llama' || c.moe || c.qkNorm) {
    throw new Error(`upcycle: needs a dense Llama-family model (llama, mistral, qwen2), got model_type ${c.modelType}`);
  }
  const shared = o.shared ?? 0;
  for (const [k, v] of [['experts', o.experts], ['topK', o.topK]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`upcycle: ${k} must be a positive integer, got ${v}`);
  }
  if (o.topK > o.experts) throw new Error(`upcycle: topK ${o.topK} exceeds experts ${o.experts}`);
  if (!Number.isInteger(shared) || shared < 0) throw new Error(`upcycle: shared must be a non-negative integer, got ${shared}`);
  // Every setting written explicitly: the MoE families' defaults (rope_theta, rms_norm_eps…) differ from Llama's.
  const common = {
    hidden_size: c.hidden,
    intermediate_size: c.ffn,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieWordEmbeddings,
    vocab_size: c.vocabSize,
    hidden_act: 'silu',
    num_experts_per_tok: o.topK,
    router_aux_loss_coef: o.auxLossCoef ?? 0.01,
    output_router_logits: false,
  };
  if (shared === 0 && !c.qkvBias) {
    return {
      ...c.raw,
      ...common,
      architectures: ['MixtralForCausalLM'],
      model_type: 'mixtral',
      num_local_experts: o.experts,
      router_jitter_noise: 0,
      sliding_window: c.slidingWindow,
    };
  }
  return {
    ...c.raw,
    ...common,
    architectures: ['Qwen2MoeForCausalLM'],
    model_type: 'qwen2_moe',
    num_experts: o.experts,
    moe_intermediate_size: c.ffn,
    shared_expert_intermediate_size: shared * c.ffn,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    qkv_bias: true,
    use_sliding_window: c.slidingWindow !== null,
    sliding_window: c.slidingWindow,
  };
}

/** The upcycled model's tensors, made on demand from the dense model's (REFERENCE.md §4 keys). */
class UpcycleWeights implements WeightSource {
  private readonly dense: Map<string, HostTensor>;
  private readonly rng: Rng;
  private readonly shared: number;

  constructor(dense: Map<string, HostTensor>, private readonly cfg: ModelConfig, private readonly o: UpcycleOptions) {
    this.dense = dense;
    this.rng = new Rng(o.seed ?? 0);
    this.shared = o.shared ?? 0;
  }

  has(key: string): boolean {
    return this.source(key) !== null;
  }

  get(key: string, shape: number[]): tf.Tensor {
    return tf.tensor(this.read(key, shape), shape, 'float32');
  }

  read(key: string, shape: number[]): Float32Array {
    const make = this.source(key);
    if (!make) throw new Error(`upcycle: no source for tensor '${key}'`);
    const t = make();
    if (t.shape.join() !== shape.join()) throw new Error(`upcycle: '${key}' would be [${t.shape}], the config implies [${shape}]`);
    return t.data;
  }

  /** How to make `key`, or null if the upcycled model has no such tensor (a thunk: has() draws no randomness). */
  private source(key: string): (() => HostTensor) | null {
    const s = this.shared;
    const D = this.cfg.hidden;
    const E = this.cfg.moe!.experts;
    const m = /^model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.(.+)$/.exec(key);
    const dense = this.dense.get(key);
    if (!m) return dense ? () => dense : this.zeroBias(key);
    const mlp = (proj: string) => this.dense.get(`model.layers.${m[1]}.mlp.${proj}.weight`);
    const part = m[2]!;
    if (part === 'gate.weight') return () => ({ shape: [E, D], data: this.rng.normalArray(E * D, this.o.routerStd ?? 0.02) });
    if (part === 'shared_expert_gate.weight') return () => ({ shape: [1, D], data: new Float32Array(D) });
    const expert = /^experts\.\d+\.(w1|w3|w2|gate_proj|up_proj|down_proj)\.weight$/.exec(part);
    if (expert) {
      const proj = { w1: 'gate_proj', w3: 'up_proj', w2: 'down_proj' }[expert[1]!] ?? expert[1]!;
      const w = mlp(proj);
      const noise = this.o.noise ?? 0;
      const scale = proj === 'down_proj' ? 1 / (s + 1) : 1;
      return w ? () => ({ shape: w.shape, data: w.data.map((v) => scale * v + (noise > 0 ? noise * this.rng.normal() : 0)) }) : null;
    }
    const sharedProj = /^shared_expert\.(gate_proj|up_proj|down_proj)\.weight$/.exec(part);
    const w = sharedProj ? mlp(sharedProj[1]!) : undefined;
    if (!w) return null;
    return sharedProj![1] === 'down_proj' ? () => repeatColumns(w, s, 2 / (s + 1)) : () => repeatRows(w, s);
  }

  /** Qwen2-MoE always has q/k/v biases; a dense model without them gets zeros. */
  private zeroBias(key: string): (() => HostTensor) | null {
    const w = /^model\.layers\.\d+\.self_attn\.[qkv]_proj\.bias$/.test(key) && this.cfg.qkvBias
      ? this.dense.get(key.replace(/\.bias$/, '.weight'))
      : undefined;
    return w ? () => ({ shape: [w.shape[0]!], data: new Float32Array(w.shape[0]!) }) : null;
  }
}

/** [R, C] stacked n times: [n·R, C]. */
function repeatRows(t: HostTensor, n: number): HostTensor {
  const data = new Float32Array(n * t.data.length);
  for (let i = 0; i < n; i++) data.set(t.data, i * t.data.length);
  return { shape: [n * t.shape[0]!, t.shape[1]!], data };
}

/** [R, C] side by side n times, scaled: [R, n·C]. */
function repeatColumns(t: HostTensor, n: number, scale: number): HostTensor {
  const [R, C] = t.shape as [number, number];
  const data = new Float32Array(R * n * C);
  for (let r = 0; r < R; r++) {
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < C; c++) data[r * n * C + i * C + c] = scale * t.data[r * C + c]!;
    }
  }
  return { shape: [R, n * C], data };
}
