import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { attachAdapters, writeAdapterFolder } from './peft.js';
import type { CausalLM } from '../base/model.js';
import { openSafetensors } from '../base/safetensors.js';
import { buildMixLora, mixLoraKey, type MixLoraAdapter, type MixLoraConfig, type MixLoraValues } from './mixlora.js';
import { readJsonObject } from '../base/json.js';

/**
 * A MixLoRA adapter folder, kept apart from plain PEFT files so no LoRA loader half-reads it:
 *
 * mixlora_config.json: MixLoRA's adapter_config keys (TUDB-Labs/MixLoRA),
 *   {"peft_type": "MIXLORA", "task_type": "CAUSAL_LM", "routing_strategy": "mixtral",
 *    "num_experts", "top_k", "router_aux_loss_coef", "router_init_range",
 *    "r", "lora_alpha", "lora_dropout", "use_rslora", "init_lora_weights", "bias": "none",
 *    "target_modules": [FFN projections with experts + modules with a plain LoRA],
 *    "layers_to_transform", "base_model_name_or_path"}
 * mixlora.safetensors (metadata {"format": "pt"}), PEFT's key layout with an experts.<j> infix:
 *   base_model.model.<ffn>.experts.<j>.<proj>.lora_A.weight [r, in], ….lora_B.weight [out, r]
 *   base_model.model.<ffn>.router.weight [E, D]
 *   base_model.model.<module>.lora_A.weight / lora_B.weight for the plain LoRA modules,
 * where <ffn> is the FFN's module path (model.layers.3.mlp; transformer.h.3.mlp on GPT-2).
 */
export const MIXLORA_CONFIG = 'mixlora_config.json';
export const MIXLORA_WEIGHTS = 'mixlora.safetensors';

const KNOWN_KEYS = new Set([
  'peft_type', 'task_type', 'routing_strategy', 'num_experts', 'top_k', 'router_aux_loss_coef', 'router_init_range',
  'r', 'lora_alpha', 'lora_dropout', 'use_rslora', 'init_lora_weights', 'bias', 'target_modules', 'layers_to_transform',
  'base_model_name_or_path', 'jitter_noise',
]);

export function isMixLoraFolder(dir: string): boolean {
  return existsSync(join(dir, MIXLORA_CONFIG));
}

export function mixLoraConfigJson(c: MixLoraConfig): Record<string, unknown> {
  return {
    peft_type: 'MIXLORA',
    task_type: 'CAUSAL_LM',
    routing_strategy: 'mixtral',
    base_model_name_or_path: c.baseModel,
    num_experts: c.experts,
    top_k: c.topK,
    router_aux_loss_coef: c.auxCoef,
    router_init_range: c.routerStd,
    r: c.rank,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    use_rslora: c.rslora,
    init_lora_weights: c.init === 'gaussian' ? 'gaussian' : true,
    bias: 'none',
    target_modules: c.targets,
    layers_to_transform: c.layers,
  };
}

export function parseMixLoraConfig(raw: Record<string, unknown>, source: string, warn: (m: string) => void): MixLoraConfig {
  const bad = (msg: string): never => {
    throw new Error(`${source}: ${msg}`);
  };
  if (raw.peft_type !== 'MIXLORA') bad(`peft_type ${JSON.stringify(raw.peft_type)} is not MIXLORA`);
  if ((raw.routing_strategy ?? 'mixtral') !== 'mixtral') bad(`routing_strategy ${JSON.stringify(raw.routing_strategy)} is not supported (mixtral only)`);
  if ((raw.jitter_noise ?? 0) !== 0) bad('jitter_noise is not supported');
  if (raw.bias !== undefined && raw.bias !== 'none') bad(`bias ${JSON.stringify(raw.bias)} is not supported (only "none")`);
  const unknown = Object.keys(raw).filter((k) => !KNOWN_KEYS.has(k));
  if (unknown.length > 0) warn(`${source}: ignoring unknown config key(s): ${unknown.join(', ')}`);
  const num = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) bad(`'${key}' must be a number`);
    return v as number;
  };
  const targets = raw.target_modules;
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) bad('target_modules must be a list of module names');
  const layers = raw.layers_to_transform;
  if (!(layers === undefined || layers === null || (Array.isArray(layers) && layers.every((l) => Number.isInteger(l))))) {
    bad('layers_to_transform must be a list of layer indices or null');
  }
  return {
    rank: num('r'),
    alpha: num('lora_alpha'),
    dropout: num('lora_dropout', 0),
    rslora: raw.use_rslora === true,
    init: raw.init_lora_weights === 'gaussian' ? 'gaussian' : 'kaiming',
    targets: targets as string[],
    layers: (layers as number[] | null | undefined) ?? null,
    experts: num('num_experts'),
    topK: num('top_k', 2),
    auxCoef: num('router_aux_loss_coef', 0.001),
    routerStd: num('router_init_range', 0.02),
    baseModel: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
  };
}

/** Write mixlora_config.json + mixlora.safetensors, each atomically. */
export async function saveMixLora(adapter: MixLoraAdapter, dir: string): Promise<void> {
  await writeAdapterFolder(dir, adapter.params(), { weights: MIXLORA_WEIGHTS, config: MIXLORA_CONFIG }, mixLoraConfigJson(adapter.config));
}

export function readMixLoraConfig(dir: string, warn: (m: string) => void): MixLoraConfig {
  const path = join(dir, MIXLORA_CONFIG);
  if (!existsSync(path)) throw new Error(`${path}: not found (is ${dir} a MixLoRA adapter folder?)`);
  return parseMixLoraConfig(readJsonObject(path), path, warn);
}

/**
 * Load a MixLoRA folder for this base (not attached yet). The config fixes which tensors must be
 * there and their shapes; a missing, extra or misshapen tensor is an error naming it.
 */
export function loadMixLora(model: CausalLM, dir: string, opts: { name?: string; warn?: (m: string) => void } = {}): MixLoraAdapter {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const config = readMixLoraConfig(dir, warn);
  const path = join(dir, MIXLORA_WEIGHTS);
  if (!existsSync(path)) throw new Error(`${path}: not found`);
  const file = openSafetensors(path);
  const used = new Set<string>();
  const read = (key: string, shape: [number, number]): Float32Array => {
    if (!file.tensors.has(key)) throw new Error(`${path}: tensor '${key}' is missing (the config and the base call for it)`);
    const t = file.read(key);
    if (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1]) {
      throw new Error(`${path}: tensor '${key}' has shape [${t.shape}], the base and ${MIXLORA_CONFIG} imply [${shape}]`);
    }
    if (!(t.data instanceof Float32Array)) throw new Error(`${path}: tensor '${key}' has dtype ${t.dtype}, expected a float type`);
    used.add(key);
    return transpose(t.data, shape[0], shape[1]);
  };
  const values: MixLoraValues = {
    router: (ffn, D, E) => read(mixLoraKey(ffn, 'router'), [E, D]),
    lora: (module, inF, outF, r) => ({ aT: read(mixLoraKey(module, 'lora_A'), [r, inF]), bT: read(mixLoraKey(module, 'lora_B'), [outF, r]) }),
  };
  const adapter = buildMixLora(model, config, opts.name ?? dir, values, path);
  const extra = [...file.tensors.keys()].filter((k) => !used.has(k));
  if (extra.length > 0) {
    adapter.dispose();
    throw new Error(`${path}: tensor '${extra[0]}'${extra.length > 1 ? ` (and ${extra.length - 1} more)` : ''} matches nothing ${MIXLORA_CONFIG} describes on this base`);
  }
  return adapter;
}

/** Row-major [rows, cols] → [cols, rows] on the host. */
function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j]!;
  return out;
}

/**
 * `--adapter DIR…`: attach each folder, PEFT LoRA or MixLoRA, in turn; all are active at once
 * (at most one MixLoRA per block). Returns them for disposal; on error none stays attached.
 */
export function attachAdapterFolders(model: CausalLM, dirs: string[], warn?: (m: string) => void): { dispose(): void }[] {
  const out: { dispose(): void }[] = [];
  try {
    for (const dir of dirs) {
      if (isMixLoraFolder(dir)) {
        const a = loadMixLora(model, dir, { warn });
        out.push(a);
        a.attach(model);
      } else out.push(...attachAdapters(model, [dir], warn));
    }
  } catch (e) {
    for (const a of out.reverse()) a.dispose();
    throw e;
  }
  return out;
}
