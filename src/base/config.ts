import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readJsonObject } from './json.js';

/** Families molora runs; the values are the config.json `model_type`s each family covers. */
export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'gpt2', 'mixtral', 'qwen2_moe', 'olmoe'] as const;
export type Arch = 'llama' | 'gpt2';

/** The sparse MoE FFN of mixtral / qwen2_moe / olmoe (REFERENCE.md §4), in one set of names. */
export interface MoEConfig {
  experts: number;
  topK: number;
  /** Intermediate size of each routed expert. */
  expertFfn: number;
  /** Renormalise the k chosen probabilities to sum to 1: Mixtral always, the others per `norm_topk_prob`. */
  normTopK: boolean;
  /** Width of Qwen2-MoE's sigmoid-gated shared expert; 0 for none. */
  sharedFfn: number;
  auxLossCoef: number;
  /** ST-MoE router z-loss coefficient, `router_z_loss_coef`; 0 unless set (the HF families have none). */
  zLossCoef: number;
  /** Mixtral's training-time input jitter ε: x · U(1−ε, 1+ε). */
  jitter: number;
  /** Per layer: true where the FFN is the sparse block (Qwen2-MoE's mlp_only_layers / decoder_sparse_step). */
  sparse: boolean[];
}

/** A config.json normalised into the names the model code uses. */
export interface ModelConfig {
  modelType: string;
  arch: Arch;
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  maxPositions: number;
  normEps: number;
  ropeTheta: number;
  /** Mistral/Qwen2 sliding-window attention span, or null for full attention. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  /** Qwen2 carries biases on q/k/v. */
  qkvBias: boolean;
  /** OLMoE: RMSNorm over the whole q and k projections (all heads at once), before RoPE. */
  qkNorm: boolean;
  /** OLMoE's clip_qkv: q, k, v clamped to [−c, c]; null for none. */
  clipQkv: number | null;
  /** Sparse MoE FFN settings; null for dense models. */
  moe: MoEConfig | null;
  bosId: number | null;
  eosIds: number[];
  padId: number | null;
  /** The config.json as read, kept so exports write back what came in. */
  raw: Record<string, unknown>;
}

export class ConfigError extends Error {}

export function readConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new ConfigError(`${path}: not found (is ${dir} a Hugging Face model folder?)`);
  return parseConfig(readJsonObject(path, (m) => new ConfigError(m)), path);
}

/** Typed reads of one config.json's keys; errors name the file, the key and the model type. */
interface ConfigReader {
  raw: Record<string, unknown>;
  source: string;
  modelType: string;
  /** A finite number: `fallback` when the key is absent, an error when it is absent and required. */
  num(key: string, fallback?: number): number;
  /** A token id or a list of them; [] when absent. */
  ids(key: string): number[];
}

/** The fields parseConfig takes from the family's own keys (the rest are common to all). */
type FamilyFields = Omit<ModelConfig, 'modelType' | 'raw' | 'bosId' | 'eosIds' | 'padId'>;

export function parseConfig(raw: Record<string, unknown>, source = 'config.json'): ModelConfig {
  const r = configReader(raw, source, supportedModelType(raw, source));
  const cfg: ModelConfig = {
    modelType: r.modelType,
    raw,
    bosId: r.ids('bos_token_id')[0] ?? null,
    eosIds: r.ids('eos_token_id'),
    padId: r.ids('pad_token_id')[0] ?? null,
    ...(r.modelType === 'gpt2' ? gpt2Fields(r) : llamaFields(r)),
  };
  validate(cfg, source);
  return cfg;
}

function supportedModelType(raw: Record<string, unknown>, source: string): string {
  const modelType = raw.model_type;
  if (typeof modelType !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(
      `${source}: unsupported model_type ${JSON.stringify(modelType)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  return modelType;
}

function configReader(raw: Record<string, unknown>, source: string, modelType: string): ConfigReader {
  return {
    raw,
    source,
    modelType,
    num(key, fallback) {
      const v = raw[key];
      if (v === undefined || v === null) {
        if (fallback !== undefined) return fallback;
        throw new ConfigError(`${source}: missing required key '${key}' for model_type ${modelType}`);
      }
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(`${source}: '${key}' must be a number`);
      return v;
    },
    ids(key) {
      const v = raw[key];
      if (v === undefined || v === null) return [];
      return (Array.isArray(v) ? v : [v]).filter((x): x is number => typeof x === 'number');
    },
  };
}

/** GPT2Config's keys (n_embd, n_head, …); GPT-2 always ties its head and biases its projections. */
function gpt2Fields(r: ConfigReader): FamilyFields {
  const { raw, num } = r;
  const hidden = num('n_embd');
  const heads = num('n_head');
  const act = raw.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new') throw new ConfigError(`${r.source}: activation_function '${act}' is not supported (gelu_new only)`);
  return {
    arch: 'gpt2',
    vocabSize: num('vocab_size'),
    hidden,
    layers: num('n_layer'),
    heads,
    kvHeads: heads,
    headDim: hidden / heads,
    ffn: typeof raw.n_inner === 'number' ? raw.n_inner : 4 * hidden,
    maxPositions: num('n_positions', 1024),
    normEps: num('layer_norm_epsilon', 1e-5),
    ropeTheta: 0,
    slidingWindow: null,
    tieWordEmbeddings: true,
    qkvBias: true,
    qkNorm: false,
    clipQkv: null,
    moe: null,
  };
}

/** LlamaConfig's keys, and the per-family differences of Mistral, Qwen2, Mixtral, Qwen2-MoE and OLMoE. */
function llamaFields(r: ConfigReader): FamilyFields {
  const { raw, num, modelType } = r;
  const hidden = num('hidden_size');
  const heads = num('num_attention_heads');
  const scaling = raw.rope_scaling;
  if (scaling !== undefined && scaling !== null) {
    throw new ConfigError(`${r.source}: rope_scaling ${JSON.stringify(scaling)} is not supported yet`);
  }
  const useWindow = modelType === 'mistral' || modelType === 'mixtral' || raw.use_sliding_window === true;
  const window = raw.sliding_window;
  const layers = num('num_hidden_layers');
  return {
    arch: 'llama',
    vocabSize: num('vocab_size'),
    hidden,
    layers,
    heads,
    kvHeads: num('num_key_value_heads', heads),
    headDim: num('head_dim', hidden / heads),
    ffn: num('intermediate_size'),
    maxPositions: num('max_position_embeddings', 2048),
    normEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    slidingWindow: useWindow && typeof window === 'number' ? window : null,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' || (modelType === 'qwen2_moe' && raw.qkv_bias !== false) || raw.attention_bias === true,
    qkNorm: modelType === 'olmoe',
    clipQkv: modelType === 'olmoe' && raw.clip_qkv !== undefined && raw.clip_qkv !== null ? num('clip_qkv') : null,
    moe: parseMoE(r, layers),
  };
}

/** HF's defaults for absent keys are those of MixtralConfig, Qwen2MoeConfig and OlmoeConfig. */
function parseMoE(r: ConfigReader, layers: number): MoEConfig | null {
  const { raw, num, modelType, source } = r;
  const common = { zLossCoef: num('router_z_loss_coef', 0), jitter: num('router_jitter_noise', 0) };
  if (modelType === 'mixtral') {
    return {
      ...common,
      experts: num('num_local_experts', 8),
      topK: num('num_experts_per_tok', 2),
      expertFfn: num('intermediate_size'),
      normTopK: true,
      sharedFfn: 0,
      auxLossCoef: num('router_aux_loss_coef', 0.001),
      sparse: new Array<boolean>(layers).fill(true),
    };
  }
  if (modelType === 'olmoe') {
    return {
      ...common,
      experts: num('num_experts', 64),
      topK: num('num_experts_per_tok', 8),
      expertFfn: num('intermediate_size'),
      normTopK: raw.norm_topk_prob === true,
      sharedFfn: 0,
      auxLossCoef: num('router_aux_loss_coef', 0.01),
      sparse: new Array<boolean>(layers).fill(true),
    };
  }
  if (modelType === 'qwen2_moe') {
    const only = raw.mlp_only_layers ?? [];
    if (!Array.isArray(only) || only.some((i) => !Number.isInteger(i))) {
      throw new ConfigError(`${source}: 'mlp_only_layers' must be a list of layer indices`);
    }
    const experts = num('num_experts', 60);
    const step = num('decoder_sparse_step', 1);
    if (!Number.isInteger(step) || step < 1) throw new ConfigError(`${source}: 'decoder_sparse_step' must be a positive integer, got ${step}`);
    return {
      ...common,
      experts,
      topK: num('num_experts_per_tok', 4),
      expertFfn: num('moe_intermediate_size', 1408),
      normTopK: raw.norm_topk_prob === true,
      sharedFfn: num('shared_expert_intermediate_size', 5632),
      auxLossCoef: num('router_aux_loss_coef', 0.001),
      sparse: Array.from({ length: layers }, (_, i) => !only.includes(i) && experts > 0 && (i + 1) % step === 0),
    };
  }
  return null;
}

/** The config.json key each checked field is read from, so that errors name what the file says. */
function configKeys(c: ModelConfig): Record<'vocabSize' | 'hidden' | 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'ffn' | 'experts' | 'topK' | 'expertFfn', string> {
  const gpt2 = c.arch === 'gpt2';
  return {
    vocabSize: 'vocab_size',
    hidden: gpt2 ? 'n_embd' : 'hidden_size',
    layers: gpt2 ? 'n_layer' : 'num_hidden_layers',
    heads: gpt2 ? 'n_head' : 'num_attention_heads',
    kvHeads: gpt2 ? 'n_head' : 'num_key_value_heads',
    headDim: 'head_dim',
    ffn: gpt2 ? 'n_inner' : 'intermediate_size',
    experts: c.modelType === 'mixtral' ? 'num_local_experts' : 'num_experts',
    topK: 'num_experts_per_tok',
    expertFfn: c.modelType === 'qwen2_moe' ? 'moe_intermediate_size' : 'intermediate_size',
  };
}

function validate(c: ModelConfig, source: string): void {
  const bad = (msg: string): never => {
    throw new ConfigError(`${source}: ${msg}`);
  };
  const key = configKeys(c);
  // head_dim is hidden / heads unless the file sets it: then the fault is the division.
  const derivedHeadDim = c.arch === 'gpt2' || c.raw.head_dim === undefined || c.raw.head_dim === null;
  for (const k of ['vocabSize', 'hidden', 'layers', 'heads', 'kvHeads', 'ffn'] as const) {
    if (!Number.isInteger(c[k]) || c[k] <= 0) bad(`${key[k]} must be a positive integer, got ${c[k]}`);
  }
  if (derivedHeadDim && c.hidden % c.heads !== 0) bad(`${key.hidden} ${c.hidden} is not divisible by ${key.heads} ${c.heads}`);
  if (!Number.isInteger(c.headDim) || c.headDim <= 0) bad(`head_dim must be a positive integer, got ${c.headDim}`);
  if (c.heads % c.kvHeads !== 0) bad(`num_attention_heads (${c.heads}) must be a multiple of num_key_value_heads (${c.kvHeads})`);
  if (c.headDim % 2 !== 0 && c.arch === 'llama') bad(`head_dim (${derivedHeadDim ? `${key.hidden} / ${key.heads} = ` : ''}${c.headDim}) must be even for RoPE`);
  if (c.clipQkv !== null && !(c.clipQkv > 0)) bad(`clip_qkv must be positive, got ${c.clipQkv}`);
  const m = c.moe;
  if (m && m.sparse.some((s) => s)) {
    for (const k of ['experts', 'topK', 'expertFfn'] as const) {
      if (!Number.isInteger(m[k]) || m[k] <= 0) bad(`${key[k]} must be a positive integer, got ${m[k]}`);
    }
    if (m.topK > m.experts) bad(`num_experts_per_tok (${m.topK}) exceeds ${key.experts} (${m.experts})`);
    if (!Number.isInteger(m.sharedFfn) || m.sharedFfn < 0) bad(`shared_expert_intermediate_size must be a non-negative integer, got ${m.sharedFfn}`);
    if (!(m.jitter >= 0 && m.jitter < 1)) bad(`router_jitter_noise must be in [0, 1), got ${m.jitter}`);
  }
}
