import * as tf from '@tensorflow/tfjs';
import type { Linear } from '../base/linear.js';
import type { CausalLM } from '../base/model.js';
import { linearsByName, type LoraAdapter } from './adapter.js';

/** A merge that can be undone: the original base weights are kept, so unmerge restores them bit for bit. */
export interface Merge {
  unmerge(): void;
}

/**
 * Fold adapters into the base: W += scale·(B A) per targeted module (one orientation serves both
 * nn.Linear and Conv1D, since molora keeps every base weight as [in, out]). The adapters are
 * detached first so nothing is applied twice.
 */
export function mergeAdapters(model: CausalLM, adapters: LoraAdapter[]): Merge {
  const byName = linearsByName(model);
  const originals = new Map<Linear, tf.Tensor2D>();
  for (const adapter of adapters) {
    adapter.detach();
    for (const [module, layer] of adapter.layers) {
      const lin = byName.get(module)!;
      if (!originals.has(lin)) originals.set(lin, lin.weightT);
      const before = lin.weightT;
      lin.weightT = tf.tidy(() => before.add(layer.deltaWeightT()));
      if (before !== originals.get(lin)) before.dispose();
    }
  }
  return {
    unmerge() {
      for (const [lin, w] of originals) {
        lin.weightT.dispose();
        lin.weightT = w;
      }
      originals.clear();
    },
  };
}
