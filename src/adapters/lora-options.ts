import { bool, canonicalKeys, choice, float, int, list, path, ranges, required, string, type Table, type Values } from '../base/options.js';
import { COLUMN_OPTIONS, DATA_OPTIONS, TRAINER_OPTIONS } from '../train/train-options.js';
import { AdapterConfigError, DEFAULT_ALPHA, DEFAULT_LORA, DEFAULT_RANK, DEFAULT_TARGETS, validateLoraConfig, type LoraConfig } from './config.js';

/**
 * train-adapter's LoRA settings (src/base/options.ts). The names are the CLI's, the recipes' and
 * LoraConfig's fields; `aliases` are the older API spellings (the camelCase of PEFT's keys, which
 * loraConfigFrom still accepts), and `peft` names the key each lands in in adapter_config.json
 * (loraConfigOf, then loraConfigJson).
 */
export const LORA_OPTIONS = {
  name: string('adapter name for logs (default: the output folder)'),
  rank: int('LoRA rank r', 1, { arg: 'r', default: DEFAULT_RANK, aliases: ['r'], peft: 'r' }),
  alpha: float('lora_alpha; scale = alpha/r (alpha/√r with --rslora)', 0, Infinity, { arg: 'a', default: DEFAULT_ALPHA, aliases: ['loraAlpha'], peft: 'lora_alpha' }),
  dropout: float('lora_dropout on the adapter input', 0, 0.99, { arg: 'p', default: 0, aliases: ['loraDropout'], peft: 'lora_dropout' }),
  rslora: bool('rank-stabilised scaling alpha/√r', { aliases: ['useRslora'], peft: 'use_rslora' }),
  targets: list('module-name suffixes to adapt, comma-separated', { default: [...DEFAULT_TARGETS], aliases: ['targetModules'], peft: 'target_modules' }),
  targetRegex: string('adapt modules whose full name matches this regex (instead of --targets)', { arg: 're', peft: 'target_modules' }),
  layers: ranges('only these transformer layers, e.g. 0-3,6 (layers_to_transform)', { aliases: ['layersToTransform'], peft: 'layers_to_transform' }),
  init: choice(['kaiming', 'gaussian'] as const, 'A init: kaiming (PEFT default) or gaussian; B starts at 0', { default: 'kaiming', peft: 'init_lora_weights' }),
} as const;

export type LoraSettings = Values<typeof LORA_OPTIONS>;

/** The settings as LoraConfig's fields (unset ones left to DEFAULT_LORA); --target-regex is a regex `targets`. */
export function loraConfigOf(s: LoraSettings): Partial<LoraConfig> {
  const config: Partial<LoraConfig> = { rank: s.rank, alpha: s.alpha, dropout: s.dropout, rslora: s.rslora, targets: s.targetRegex ?? s.targets, layers: s.layers, init: s.init };
  return Object.fromEntries(Object.entries(config).filter(([, v]) => v !== undefined));
}

/** LoraConfig's fields under their former names (PEFT's keys in camelCase): the API still takes them. */
export interface LoraConfigAliases {
  /** @deprecated Use `rank`. */
  r?: number;
  /** @deprecated Use `alpha`. */
  loraAlpha?: number;
  /** @deprecated Use `dropout`. */
  loraDropout?: number;
  /** @deprecated Use `rslora`. */
  useRslora?: boolean;
  /** @deprecated Use `targets`. */
  targetModules?: string[] | string;
  /** @deprecated Use `layers`. */
  layersToTransform?: number[] | null;
}

/**
 * The config, answering also to its former names (r, loraAlpha, targetModules…: LORA_OPTIONS'
 * aliases), so scripts that read `adapter.config.r` keep working. The getters are not
 * enumerable: JSON, spreads and equality see only the fields.
 */
export function withFormerNames(c: LoraConfig): LoraConfig & Readonly<LoraConfigAliases> {
  const out = { ...c };
  const table: Table = LORA_OPTIONS;
  for (const [field, option] of Object.entries(table)) {
    if (!(field in out)) continue;
    for (const alias of option.aliases ?? []) {
      Object.defineProperty(out, alias, { get: () => out[field as keyof LoraConfig], enumerable: false });
    }
  }
  return out;
}

/** What the API takes for a LoRA config: any of LoraConfig's fields, under their names or former names. */
export type LoraConfigInput = Partial<LoraConfig> & LoraConfigAliases;

const sameValue = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * The one way into a LoraConfig from the API (createLora, createMixLora, trainAdapter): former
 * names (LORA_OPTIONS' aliases) under the field they name, a setting given under two names with
 * two values refused, unknown keys refused, the rest from DEFAULT_LORA, then validated.
 * `{ ...DEFAULT_LORA, r: 4 }`, the usual way to write a config under the former names, gives rank
 * twice: a field still at DEFAULT_LORA's value yields to its former name given beside it.
 */
export function loraConfigFrom(input: LoraConfigInput = {}, source = 'LoRA config'): LoraConfig {
  const fail = (msg: string): never => {
    throw new AdapterConfigError(`${source}: ${msg}`);
  };
  const table: Table = LORA_OPTIONS;
  const formerGiven = (k: string): boolean => (table[k]?.aliases ?? []).some((a) => a in input && input[a as keyof LoraConfigInput] !== undefined);
  const spreadDefault = (k: string, v: unknown): boolean => k in DEFAULT_LORA && sameValue(v, DEFAULT_LORA[k as keyof LoraConfig]) && formerGiven(k);
  const given = Object.fromEntries(Object.entries(input).filter(([k, v]) => v !== undefined && !spreadDefault(k, v)));
  const fields = canonicalKeys(LORA_OPTIONS, given, fail, sameValue);
  const unknown = Object.keys(fields).filter((k) => !(k in DEFAULT_LORA));
  if (unknown.length > 0) fail(`unknown LoRA setting(s) ${unknown.map((k) => `'${k}'`).join(', ')} (settings: ${Object.keys(DEFAULT_LORA).join(', ')})`);
  // Every key is now one of LoraConfig's fields, its value typed as that field (or its alias) by LoraConfigInput.
  const config = { ...DEFAULT_LORA, ...fields } as LoraConfig;
  validateLoraConfig(config, source);
  return config;
}

/** What createMixLora takes besides the LoRA settings: the mixture. */
export interface MixLoraOptions {
  experts: number;
  topK: number;
  /** Default 0.01. */
  auxCoef?: number;
  /** Default 0.02. */
  routerStd?: number;
}

/** train-adapter's MixLoRA settings: given moeExperts, LoRA experts in each FFN under a router. */
export const MIXLORA_OPTIONS = {
  moeExperts: int('MixLoRA: n LoRA experts in each FFN, picked per token by a trained top-k router; writes mixlora_config.json + mixlora.safetensors. FFN projections in --targets get experts (all of them if none is named), the other targets a plain LoRA', 1),
  topK: int('MixLoRA: experts per token (default 2)', 1, { arg: 'k' }),
  moeAuxCoef: float('MixLoRA: load-balancing loss coefficient (default 0.01)', 0, Infinity, { arg: 'c' }),
} as const;

/** The MixLoRA settings as trainAdapter's `mixlora` option (undefined: a plain LoRA run). */
export function mixLoraOf(s: Values<typeof MIXLORA_OPTIONS> & { targetRegex?: string }): MixLoraOptions | undefined {
  if (s.moeExperts === undefined) {
    if (s.topK !== undefined || s.moeAuxCoef !== undefined) throw new Error('--top-k and --moe-aux-coef need --moe-experts');
    return undefined;
  }
  if (s.targetRegex !== undefined) throw new Error('--moe-experts takes --targets, not --target-regex');
  const topK = s.topK ?? 2;
  if (topK > s.moeExperts) throw new Error(`--top-k ${topK} exceeds --moe-experts ${s.moeExperts}`);
  return { experts: s.moeExperts, topK, auxCoef: s.moeAuxCoef };
}

/** `molora train-adapter` and a recipe's train-adapter step: every setting, in --help's order. */
export const TRAIN_ADAPTER_OPTIONS = {
  model: required(path('base model folder (Hugging Face layout)')),
  out: required(path('output folder: the PEFT adapter, metrics.jsonl, checkpoints', { scope: 'cli' })),
  ...LORA_OPTIONS,
  ...COLUMN_OPTIONS,
  ...DATA_OPTIONS,
  ...TRAINER_OPTIONS,
  ...MIXLORA_OPTIONS,
} as const;
