import * as tf from '@tensorflow/tfjs';
import { saveModel } from '../base/export.js';
import type { Linear } from '../base/linear.js';
import { loadBase } from '../base/load.js';
import { holding } from '../base/lock.js';
import type { CausalLM } from '../base/model.js';
import { claimOutput, type Input } from '../base/output.js';
import { linearsByName, type LoraAdapter } from './adapter.js';
import { loadAdapter } from './peft.js';

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

export interface MergeFolderOptions {
  model: string;
  adapters: string[];
  out: string;
  /** Replace a model already in `out` (never an input: the base or an adapter). */
  overwrite?: boolean;
}

/**
 * `molora merge`: the base with the adapters folded in, written as a plain model folder. The
 * output may not be (or lie inside, or contain) an input, so merging onto the base itself is
 * refused before anything is read; a failure leaves no new folder behind.
 */
export async function mergeFolder(o: MergeFolderOptions): Promise<void> {
  if (o.adapters.length === 0) throw new Error('merge needs at least one --adapter DIR');
  const inputs: Input[] = [['--model', o.model], ...o.adapters.map((dir): Input => ['--adapter', dir])];
  await holding(
    claimOutput({ ...o, inputs }),
    async () => {
      const model = loadBase(o.model);
      try {
        const adapters = o.adapters.map((dir) => loadAdapter(model, dir));
        mergeAdapters(model, adapters);
        await saveModel(model, o.out);
        for (const a of adapters) a.dispose();
      } finally {
        model.dispose();
      }
    },
    { discard: true },
  );
}
