import type { Command } from 'commander';
import type { MixLoraOptions } from '../adapters/mixlora.js';
import { float, int } from './args.js';

/** train-adapter's MixLoRA flags. */
export function addMixLoraFlags(c: Command): Command {
  return c
    .option('--moe-experts <n>', 'MixLoRA: n LoRA experts in each FFN, picked per token by a trained top-k router; writes mixlora_config.json + mixlora.safetensors. FFN projections in --targets get experts (all of them if none is named), the other targets a plain LoRA', int(1))
    .option('--top-k <k>', 'MixLoRA: experts per token (default 2)', int(1))
    .option('--moe-aux-coef <c>', 'MixLoRA: load-balancing loss coefficient (default 0.01)', float(0));
}

export interface MixLoraFlags {
  moeExperts?: number;
  topK?: number;
  moeAuxCoef?: number;
  targetRegex?: string;
}

/** addMixLoraFlags' values as trainAdapter's `mixlora` option (undefined: a plain LoRA run). */
export function mixLoraOptions(o: MixLoraFlags): MixLoraOptions | undefined {
  if (o.moeExperts === undefined) {
    if (o.topK !== undefined || o.moeAuxCoef !== undefined) throw new Error('--top-k and --moe-aux-coef need --moe-experts');
    return undefined;
  }
  if (o.targetRegex !== undefined) throw new Error('--moe-experts takes --targets, not --target-regex');
  const topK = o.topK ?? 2;
  if (topK > o.moeExperts) throw new Error(`--top-k ${topK} exceeds --moe-experts ${o.moeExperts}`);
  return { experts: o.moeExperts, topK, auxCoef: o.moeAuxCoef };
}
