import * as tf from '@tensorflow/tfjs';
import type { Linear } from '../base/linear.js';
import type { CausalLM } from '../base/model.js';
import type { Rng } from '../base/rng.js';
import { AdapterConfigError, moduleRankScale, targetsModule, type LoraConfig } from './config.js';
import { loraConfigFrom, withFormerNames, type LoraConfigAliases, type LoraConfigInput } from './lora-options.js';
import { initLoraWeights, LoraLayer } from './lora.js';

/** PEFT's tensor key for one LoRA matrix of one module. */
export function peftKey(module: string, which: 'A' | 'B'): string {
  return `base_model.model.${module}.lora_${which}.weight`;
}

/**
 * A named LoRA adapter: one LoraLayer per targeted module. Attaching hooks its layers onto the
 * base's linears (several adapters may be attached; their deltas add); detaching removes them.
 */
export class LoraAdapter {
  /** While attached: the functions that take each layer's hook off its linear again. */
  private unhooks: (() => void)[] | null = null;

  /** The LoRA settings; the former names (config.r, config.loraAlpha…) still read, deprecated. */
  readonly config: LoraConfig & Readonly<LoraConfigAliases>;

  constructor(
    readonly name: string,
    config: LoraConfig,
    readonly layers: Map<string, LoraLayer>,
  ) {
    this.config = withFormerNames(config);
  }

  /**
   * Trainable variables under their PEFT keys (the trainer's and the optimizer's names), holding
   * A and B as stored, transposed; saveAdapter writes them in PEFT's orientation.
   */
  params(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const [module, l] of this.layers) {
      out.set(peftKey(module, 'A'), l.aT);
      out.set(peftKey(module, 'B'), l.bT);
    }
    return out;
  }

  get parameterCount(): number {
    let n = 0;
    for (const l of this.layers.values()) n += l.parameterCount;
    return n;
  }

  attach(model: CausalLM): void {
    if (this.unhooks) throw new Error(`adapter '${this.name}' is already attached`);
    const byName = linearsByName(model);
    this.unhooks = [...this.layers].map(([module, layer]) => byName.get(module)!.addHook(layer));
  }

  detach(): void {
    for (const unhook of this.unhooks ?? []) unhook();
    this.unhooks = null;
  }

  dispose(): void {
    this.detach();
    for (const l of this.layers.values()) l.dispose();
  }
}

export function linearsByName(model: CausalLM): Map<string, Linear> {
  return new Map(model.linears().map((l) => [l.name, l]));
}

/** The base's linears this config targets; none at all is an error that lists what exists. */
export function targetedLinears(model: CausalLM, config: LoraConfig, source: string): Linear[] {
  const hits = model.linears().filter((l) => targetsModule(config, l.name));
  if (hits.length === 0) {
    const suffixes = [...new Set(model.linears().map((l) => l.name.split('.').pop()))].join(', ');
    throw new AdapterConfigError(
      `${source}: targets (target_modules) ${JSON.stringify(config.targets)}${config.layers ? ` on layers ${config.layers}` : ''} match no module of the ${model.config.modelType} base (its linear layers: ${suffixes})`,
    );
  }
  return hits;
}

/**
 * A fresh adapter (A random, B zero) on every targeted linear of the base. Settings left out are
 * DEFAULT_LORA's; former names (r, loraAlpha, targetModules…) are still accepted (loraConfigFrom).
 */
export function createLora(model: CausalLM, input: LoraConfigInput, name: string, rng: Rng): LoraAdapter {
  const config = loraConfigFrom(input, `adapter '${name}'`);
  const layers = new Map<string, LoraLayer>();
  for (const lin of targetedLinears(model, config, `adapter '${name}'`)) {
    const { r, scale } = moduleRankScale(config, lin.name);
    const w = initLoraWeights(lin.inFeatures, lin.outFeatures, r, config.init, rng);
    layers.set(lin.name, newLayer(lin, w.aT, w.bT, r, scale, config.dropout));
  }
  return new LoraAdapter(name, config, layers);
}

export function newLayer(lin: Linear, aT: Float32Array, bT: Float32Array, r: number, scale: number, dropout: number): LoraLayer {
  return new LoraLayer(lin.name, variable(aT, [lin.inFeatures, r]), variable(bT, [r, lin.outFeatures]), scale, dropout);
}

/** A trainable variable holding a copy of `data` (tfjs names must be unique, so none is given). */
function variable(data: Float32Array, shape: [number, number]): tf.Variable<tf.Rank.R2> {
  const t = tf.tensor2d(data, shape);
  const v = tf.variable(t, true);
  t.dispose();
  return v;
}
