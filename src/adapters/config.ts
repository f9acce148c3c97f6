/**
 * LoRA adapter configuration, read from and written as PEFT's adapter_config.json
 * (REFERENCE.md §2). The fields are named as the CLI's flags and the recipes' fields
 * (LORA_OPTIONS in lora-options.ts, whose `peft` entries give each field's key in the file);
 * parseLoraConfig and loraConfigJson map the file's keys to the fields and back.
 */
export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout: number;
  /** Rank-stabilised scaling: alpha/√r instead of alpha/r. */
  rslora: boolean;
  /** Module-name suffixes, or one regex matched against the whole module name. */
  targets: string[] | string;
  /** Only these transformer layers (layers_to_transform); null: all. */
  layers: number[] | null;
  /** 'kaiming' is PEFT's `true` (kaiming-uniform A); 'gaussian' draws A from N(0, 1/r). B starts at 0 either way. */
  init: 'kaiming' | 'gaussian';
  fanInFanOut: boolean;
  /** Per-module overrides, keyed by a pattern matched against the end of the module name. */
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  baseModel: string | null;
}

export class AdapterConfigError extends Error {}

/** molora's rank and alpha when none is given (PEFT's LoraConfig defaults to r 8, alpha 8). */
export const DEFAULT_RANK = 8;
export const DEFAULT_ALPHA = 16;
export const DEFAULT_TARGETS: readonly string[] = ['q_proj', 'v_proj'];

export const DEFAULT_LORA: LoraConfig = {
  rank: DEFAULT_RANK,
  alpha: DEFAULT_ALPHA,
  dropout: 0,
  rslora: false,
  targets: [...DEFAULT_TARGETS],
  layers: null,
  init: 'kaiming',
  fanInFanOut: false,
  rankPattern: {},
  alphaPattern: {},
  baseModel: null,
};

/** Keys PEFT writes for LoRA; anything else in a file is reported and ignored. */
const KNOWN_KEYS = new Set([
  'peft_type', 'task_type', 'r', 'lora_alpha', 'lora_dropout', 'target_modules', 'use_rslora', 'fan_in_fan_out',
  'bias', 'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern', 'modules_to_save', 'use_dora',
  'base_model_name_or_path', 'init_lora_weights', 'inference_mode', 'revision', 'auto_mapping', 'megatron_config',
  'megatron_core', 'loftq_config', 'layer_replication', 'exclude_modules', 'lora_bias', 'runtime_config',
  'eva_config', 'corda_config', 'trainable_token_indices', 'use_qalora', 'qalora_group_size', 'target_parameters',
]);

/** Parse a PEFT adapter_config.json object; `source` names the file in errors. */
export function parseLoraConfig(raw: Record<string, unknown>, source: string, warn: (m: string) => void): LoraConfig {
  const bad = (msg: string): never => {
    throw new AdapterConfigError(`${source}: ${msg}`);
  };
  if (raw.peft_type !== 'LORA') bad(`peft_type ${JSON.stringify(raw.peft_type)} is not supported (LORA only)`);
  const unknown = Object.keys(raw).filter((k) => !KNOWN_KEYS.has(k));
  if (unknown.length > 0) warn(`${source}: ignoring unknown config key(s): ${unknown.join(', ')}`);
  if (raw.use_dora === true) bad('use_dora adapters (DoRA) are not supported');
  if (raw.bias !== undefined && raw.bias !== 'none') bad(`bias ${JSON.stringify(raw.bias)} is not supported (only "none")`);
  if (raw.lora_bias === true) bad('lora_bias adapters are not supported');
  if (Array.isArray(raw.modules_to_save) && raw.modules_to_save.length > 0) {
    bad(`modules_to_save (${raw.modules_to_save.join(', ')}) is not supported: those modules would be silently dropped`);
  }
  if (raw.layer_replication) bad('layer_replication is not supported');
  const init = raw.init_lora_weights ?? true;
  if (typeof init === 'string' && /^(pissa|olora|loftq|corda|eva)/i.test(init)) {
    bad(`init_lora_weights "${init}" rewrote the base model's weights; this adapter only fits that modified base`);
  }
  if (raw.loftq_config && Object.keys(raw.loftq_config as object).length > 0) bad('LoftQ adapters only fit their quantised base');

  const num = (key: string, fallback: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) bad(`'${key}' must be a number`);
    return v as number;
  };
  const targets = raw.target_modules;
  if (!(typeof targets === 'string' || (Array.isArray(targets) && targets.every((t) => typeof t === 'string')))) {
    bad('target_modules must be a list of module names or a regex string');
  }
  const layers = raw.layers_to_transform;
  const cfg: LoraConfig = {
    // PEFT's own defaults for a file that leaves them out (LoraConfig: r 8, lora_alpha 8).
    rank: num('r', 8),
    alpha: num('lora_alpha', 8),
    dropout: num('lora_dropout', 0),
    rslora: raw.use_rslora === true,
    targets: targets as string[] | string,
    layers: layers === undefined || layers === null ? null : typeof layers === 'number' ? [layers] : (layers as number[]),
    init: init === 'gaussian' ? 'gaussian' : 'kaiming',
    fanInFanOut: raw.fan_in_fan_out === true,
    rankPattern: (raw.rank_pattern as Record<string, number>) ?? {},
    alphaPattern: (raw.alpha_pattern as Record<string, number>) ?? {},
    baseModel: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
  };
  validateLoraConfig(cfg, source);
  return cfg;
}

export function validateLoraConfig(c: LoraConfig, source = 'LoRA config'): void {
  if (!Number.isInteger(c.rank) || c.rank <= 0) throw new AdapterConfigError(`${source}: rank (r) must be a positive integer, got ${c.rank}`);
  if (!(c.dropout >= 0 && c.dropout < 1)) throw new AdapterConfigError(`${source}: dropout (lora_dropout) must be in [0, 1), got ${c.dropout}`);
  if (Array.isArray(c.targets) && c.targets.length === 0) throw new AdapterConfigError(`${source}: targets (target_modules) is empty`);
}

/** The adapter_config.json PEFT itself would write for this config. */
export function loraConfigJson(c: LoraConfig): Record<string, unknown> {
  return {
    alpha_pattern: c.alphaPattern,
    auto_mapping: null,
    base_model_name_or_path: c.baseModel,
    bias: 'none',
    fan_in_fan_out: c.fanInFanOut,
    inference_mode: true,
    init_lora_weights: c.init === 'gaussian' ? 'gaussian' : true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: c.layers,
    loftq_config: {},
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: c.rank,
    rank_pattern: c.rankPattern,
    revision: null,
    target_modules: c.targets,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: c.rslora,
  };
}

/** Does a module (full HF path) fall under this config's targets and layers? PEFT's rules. */
export function targetsModule(c: LoraConfig, module: string): boolean {
  const hit =
    typeof c.targets === 'string'
      ? new RegExp(`^(?:${c.targets})$`).test(module)
      : c.targets.some((t) => module === t || module.endsWith(`.${t}`));
  if (!hit || c.layers === null) return hit;
  const layer = layerIndex(module);
  return layer !== null && c.layers.includes(layer);
}

/** The transformer layer a module sits in (…layers.3… or …h.3…), or null. */
export function layerIndex(module: string): number | null {
  const m = /\.(?:layers|h|block|blocks|layer)\.(\d+)\./.exec(module);
  return m ? Number(m[1]) : null;
}

/** Rank and scale for one module, after rank_pattern / alpha_pattern. */
export function moduleRankScale(c: LoraConfig, module: string): { r: number; scale: number } {
  const match = (pattern: Record<string, number>): number | undefined => {
    const key = Object.keys(pattern).find((k) => new RegExp(`(^|\\.)${k}$`).test(module));
    return key === undefined ? undefined : pattern[key];
  };
  const r = match(c.rankPattern) ?? c.rank;
  const alpha = match(c.alphaPattern) ?? c.alpha;
  return { r, scale: c.rslora ? alpha / Math.sqrt(r) : alpha / r };
}
