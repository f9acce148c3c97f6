import type { ModelConfig } from './config.js';
import type { HostTensor } from './host-tensor.js';
import type { Linear } from './linear.js';
import type { FFN } from './mlp.js';
import type { WeightSource } from './weights.js';

/** Reads `${name}.weight` [out, in] (and the bias) into a Linear, as the Llama builder does. */
export type LinearReader = (name: string, inF: number, outF: number, bias?: boolean) => Linear;

/**
 * How the layers a config declares sparse (`cfg.moe.sparse`) are counted, read and written.
 * src/base parses the config but knows no sparse FFN nor its checkpoint layouts (Mixtral,
 * Qwen2-MoE, OLMoE, packed experts); src/moe registers them when it is imported, as the package
 * entry and the CLI do. The base stays loadable on its own for dense models.
 */
export interface SparseFfnLayout {
  /** Parameters of one sparse layer: the heap check and `inspect` count them before loading. */
  weightCount(cfg: ModelConfig): number;
  /** One model's reader of its sparse layers; called once per model so they can share state (router losses). */
  reader(cfg: ModelConfig, w: WeightSource, linear: LinearReader): (layer: number) => FFN;
  /**
   * The FFN's weights when its checkpoint layout packs several linears into one tensor, with the
   * linears they hold (an export writes those no other way); null when each linear is its own key.
   */
  packedTensors(ffn: FFN): { tensors: () => Promise<Map<string, HostTensor>>; linears: Linear[] } | null;
}

let registered: SparseFfnLayout | null = null;

/** Called once by src/moe; a second, different layout is refused rather than silently replacing the first. */
export function registerSparseFfn(layout: SparseFfnLayout): void {
  if (registered && registered !== layout) throw new Error('a sparse FFN layout is already registered');
  registered = layout;
}

/** The registered layout, or null while none is (a base with no sparse layer needs none). */
export function registeredSparseFfn(): SparseFfnLayout | null {
  return registered;
}

/** The layout for a config with sparse layers; a clear error when src/moe was never imported. */
export function sparseFfnLayout(cfg: ModelConfig): SparseFfnLayout {
  if (!registered) {
    throw new Error(`${cfg.modelType} has sparse MoE layers, and no sparse FFN layout is registered: import 'molora' (or its src/moe/register.js) before loading it`);
  }
  return registered;
}
