import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../base/atomic.js';
import { readHost } from '../base/host.js';
import type { CausalLM } from '../base/model.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../base/safetensors.js';
import { linearsByName, LoraAdapter, newLayer } from './adapter.js';
import { AdapterConfigError, loraConfigJson, moduleRankScale, parseLoraConfig, type LoraConfig } from './config.js';
import type { LoraLayer } from './lora.js';
import { readJsonObject } from '../base/json.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';

/**
 * Variables kept transposed for fast matMuls, back in file orientation on the host, under their
 * keys: for LoRA that is lora_A [r, in] and lora_B [out, r], for Linear and Conv1D alike.
 */
export async function transposedTensors(params: Map<string, tf.Tensor>): Promise<Record<string, TensorToWrite>> {
  const out: Record<string, TensorToWrite> = {};
  for (const [key, v] of params) {
    out[key] = { dtype: 'F32', shape: [...v.shape].reverse(), data: await readHost(() => v.transpose()) };
  }
  return out;
}

/**
 * Write an adapter folder: its parameters in the file orientation (transposedTensors) and its
 * config JSON, each file atomically. PEFT and MixLoRA folders differ only in names and config.
 */
export async function writeAdapterFolder(dir: string, params: Map<string, tf.Tensor>, files: { weights: string; config: string }, config: unknown): Promise<void> {
  const tensors = await transposedTensors(params);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, files.weights), tensors, { format: 'pt' });
  writeJsonAtomic(join(dir, files.config), config);
}

/** Write a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), each file atomically. */
export async function saveAdapter(adapter: LoraAdapter, dir: string): Promise<void> {
  await writeAdapterFolder(dir, adapter.params(), { weights: ADAPTER_WEIGHTS, config: ADAPTER_CONFIG }, loraConfigJson(adapter.config));
}

export function readAdapterConfig(dir: string, warn: (m: string) => void): LoraConfig {
  const path = join(dir, ADAPTER_CONFIG);
  if (!existsSync(path)) {
    // MixLoRA folders (src/adapters/mixlora-io.ts) carry mixlora_config.json instead: routed experts, not one LoRA.
    if (existsSync(join(dir, 'mixlora_config.json'))) {
      throw new AdapterConfigError(`${dir}: a MixLoRA adapter (LoRA experts routed per token in the FFN), not a plain PEFT LoRA; it cannot be merged or used as a MoLE expert, only attached with --adapter`);
    }
    throw new AdapterConfigError(`${path}: not found (is ${dir} a PEFT adapter folder?)`);
  }
  return parseLoraConfig(readJsonObject(path, (m) => new AdapterConfigError(m)), path, warn);
}

/**
 * Load a PEFT LoRA adapter for this base (not attached yet). Every tensor must name a linear of the
 * base with the shapes its config implies; anything else is an error naming the tensor.
 */
export function loadAdapter(model: CausalLM, dir: string, opts: { name?: string; warn?: (m: string) => void } = {}): LoraAdapter {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const config = readAdapterConfig(dir, warn);
  const path = join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(path)) {
    const pickle = existsSync(join(dir, 'adapter_model.bin'));
    throw new AdapterConfigError(`${path}: not found${pickle ? ' (adapter_model.bin is pickle, which molora never loads: convert it to safetensors)' : ''}`);
  }
  const file = openSafetensors(path);
  const linears = linearsByName(model);
  const pairs = new Map<string, { A?: string; B?: string }>();
  for (const key of file.tensors.keys()) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (!m) throw new AdapterConfigError(`${path}: tensor '${key}' is not a LoRA A/B weight (embedding and DoRA tensors are not supported)`);
    const [, module, which] = m as unknown as [string, string, 'A' | 'B'];
    if (!linears.has(module)) {
      throw new AdapterConfigError(`${path}: tensor '${key}' targets module '${module}', which the ${model.config.modelType} base does not have`);
    }
    pairs.set(module, { ...pairs.get(module), [which]: key });
  }
  if (pairs.size === 0) throw new AdapterConfigError(`${path}: holds no LoRA tensors, so it matches no module of the base`);

  const layers = new Map<string, LoraLayer>();
  try {
    for (const [module, keys] of pairs) {
      if (!keys.A || !keys.B) throw new AdapterConfigError(`${path}: module '${module}' has lora_${keys.A ? 'A' : 'B'} but no lora_${keys.A ? 'B' : 'A'}`);
      const lin = linears.get(module)!;
      const { r, scale } = moduleRankScale(config, module);
      const a = readChecked(file, path, keys.A, [r, lin.inFeatures]);
      const b = readChecked(file, path, keys.B, [lin.outFeatures, r]);
      layers.set(module, newLayer(lin, transpose(a, r, lin.inFeatures), transpose(b, lin.outFeatures, r), r, scale, config.dropout));
    }
  } catch (e) {
    for (const l of layers.values()) l.dispose();
    throw e;
  }
  return new LoraAdapter(opts.name ?? dir, config, layers);
}

function readChecked(file: ReturnType<typeof openSafetensors>, path: string, key: string, shape: number[]): Float32Array {
  const t = file.read(key);
  if (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1]) {
    throw new AdapterConfigError(`${path}: tensor '${key}' has shape [${t.shape}], the base and adapter_config.json imply [${shape}]`);
  }
  if (!(t.data instanceof Float32Array)) throw new AdapterConfigError(`${path}: tensor '${key}' has dtype ${t.dtype}, expected a float type`);
  return t.data;
}

/** Row-major [rows, cols] → [cols, rows] on the host. */
function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j]!;
  return out;
}

/** Load and attach each adapter folder in turn: all are active and their deltas sum. */
export function attachAdapters(model: CausalLM, dirs: string[], warn?: (m: string) => void): LoraAdapter[] {
  const adapters: LoraAdapter[] = [];
  try {
    for (const dir of dirs) {
      const a = loadAdapter(model, dir, { warn });
      a.attach(model);
      adapters.push(a);
    }
  } catch (e) {
    for (const a of adapters) a.dispose();
    throw e;
  }
  return adapters;
}
