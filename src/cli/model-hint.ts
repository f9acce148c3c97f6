import type { Command } from 'commander';
import { readConfig } from '../base/config.js';
import { PRESETS, resolveBenchShape, type PresetName } from '../bench/presets.js';

/**
 * The hidden size of the model a command is about to run, from its flags, before the backend
 * starts: `--model`'s config.json, or a bench command's shape flags and preset. It decides
 * whether wasm's products get threads (base/threads.ts); undefined means one thread. A folder
 * whose config cannot be read is left to the command itself, which says why.
 */
export function hiddenSizeOf(action: Command): number | undefined {
  const o = action.opts();
  if (typeof o.model === 'string') {
    try {
      return readConfig(o.model).hidden;
    } catch {
      return undefined;
    }
  }
  if (action.options.some((opt) => opt.long === '--hidden')) return resolveBenchShape(o).hidden;
  if (typeof o.preset === 'string' && o.preset in PRESETS) return PRESETS[o.preset as PresetName].hidden;
  return undefined;
}
