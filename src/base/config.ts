import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

/** Families molora runs; the values are the config.json `model_type`s each family covers. */
export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'gpt2'] as const;
export type Arch = 'llama' | 'gpt2';

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
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError(`${path}: invalid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${path}: expected a JSON object`);
  }
  return parseConfig(raw as Record<string, unknown>, path);
}

export function parseConfig(raw: Record<string, unknown>, source = 'config.json'): ModelConfig {
  const modelType = raw.model_type;
  if (typeof modelType !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(
      `${source}: unsupported model_type ${JSON.stringify(modelType)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  const num = (key: string, fallback?: number): number => {
    const v = raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ConfigError(`${source}: missing required key '${key}' for model_type ${modelType}`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(`${source}: '${key}' must be a number`);
    return v;
  };
  const ids = (key: string): number[] => {
    const v = raw[key];
    if (v === undefined || v === null) return [];
    return (Array.isArray(v) ? v : [v]).filter((x): x is number => typeof x === 'number');
  };
  const common = {
    modelType,
    raw,
    bosId: ids('bos_token_id')[0] ?? null,
    eosIds: ids('eos_token_id'),
    padId: ids('pad_token_id')[0] ?? null,
  };

  let cfg: ModelConfig;
  if (modelType === 'gpt2') {
    const hidden = num('n_embd');
    const heads = num('n_head');
    const act = raw.activation_function ?? 'gelu_new';
    if (act !== 'gelu_new') throw new ConfigError(`${source}: activation_function '${act}' is not supported (gelu_new only)`);
    cfg = {
      ...common,
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
    };
  } else {
    const hidden = num('hidden_size');
    const heads = num('num_attention_heads');
    const scaling = raw.rope_scaling;
    if (scaling !== undefined && scaling !== null) {
      throw new ConfigError(`${source}: rope_scaling ${JSON.stringify(scaling)} is not supported yet`);
    }
    const useWindow = modelType === 'mistral' || raw.use_sliding_window === true;
    const window = raw.sliding_window;
    cfg = {
      ...common,
      arch: 'llama',
      vocabSize: num('vocab_size'),
      hidden,
      layers: num('num_hidden_layers'),
      heads,
      kvHeads: num('num_key_value_heads', heads),
      headDim: num('head_dim', hidden / heads),
      ffn: num('intermediate_size'),
      maxPositions: num('max_position_embeddings', 2048),
      normEps: num('rms_norm_eps', 1e-6),
      ropeTheta: num('rope_theta', 10000),
      slidingWindow: useWindow && typeof window === 'number' ? window : null,
      tieWordEmbeddings: raw.tie_word_embeddings === true,
      qkvBias: modelType === 'qwen2' || raw.attention_bias === true,
    };
  }
  validate(cfg, source);
  return cfg;
}

function validate(c: ModelConfig, source: string): void {
  const bad = (msg: string): never => {
    throw new ConfigError(`${source}: ${msg}`);
  };
  for (const k of ['vocabSize', 'hidden', 'layers', 'heads', 'kvHeads', 'headDim', 'ffn'] as const) {
    if (!Number.isInteger(c[k]) || c[k] <= 0) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.heads % c.kvHeads !== 0) bad(`num_attention_heads (${c.heads}) must be a multiple of num_key_value_heads (${c.kvHeads})`);
  if (c.headDim % 2 !== 0 && c.arch === 'llama') bad(`head_dim (${c.headDim}) must be even for RoPE`);
}
