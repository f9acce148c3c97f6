import * as tf from '@tensorflow/tfjs';
import { openCheckpoint } from './checkpoint.js';
import { readConfig, type ModelConfig } from './config.js';
import { buildGpt2, GPT2_IGNORED } from './gpt2.js';
import { buildLlama, LLAMA_IGNORED } from './llama.js';
import { assertFitsMemory } from './memory.js';
import { CausalLM, type ModelParts } from './model.js';
import { sparseFfnLayout } from './sparse-ffn.js';
import { loadTokenizer } from './tokenizer.js';
import { CheckpointWeights, type WeightSource } from './weights.js';

export interface LoadOptions {
  /** Where notes about ignored tensors go; stderr by default. */
  warn?: (msg: string) => void;
}

/** Build the model's parts; on error every tensor made so far is freed (tidy walks the parts it returns). */
export function buildParts(cfg: ModelConfig, w: WeightSource): ModelParts {
  const build = cfg.arch === 'gpt2' ? buildGpt2 : buildLlama;
  return tf.tidy(() => build(cfg, w) as unknown as tf.TensorContainer) as unknown as ModelParts;
}

/** Load a Hugging Face model folder (config.json, safetensors, tokenizer.json) as a frozen model. */
export function loadBase(dir: string, opts: LoadOptions = {}): CausalLM {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const cfg = readConfig(dir);
  const ckpt = openCheckpoint(dir);
  try {
    // Weights are decoded to float32; a tied head adds a transposed copy of the embedding.
    assertFitsMemory(4 * (weightCount(cfg) + (cfg.tieWordEmbeddings ? cfg.vocabSize * cfg.hidden : 0)), `loading ${dir}`);
    const weights = new CheckpointWeights(ckpt);
    const parts = buildParts(cfg, weights);
    const ignored = cfg.arch === 'gpt2' ? GPT2_IGNORED : LLAMA_IGNORED;
    const extra = weights.unused().filter((k) => !ignored.test(k) && !(cfg.tieWordEmbeddings && k === 'lm_head.weight'));
    if (extra.length > 0) {
      warn(`${dir}: ignoring ${extra.length} tensor(s) the ${cfg.modelType} model does not use: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', …' : ''}`);
    }
    const tokenizer = loadTokenizer(dir, { bosId: cfg.bosId, eosId: cfg.eosIds[0] ?? null, padId: cfg.padId });
    return new CausalLM(cfg, parts, tokenizer, dir);
  } finally {
    ckpt.close();
  }
}

/** Parameter count implied by a config (what `inspect` reports and the heap check uses). */
export function weightCount(cfg: ModelConfig): number {
  const D = cfg.hidden;
  if (cfg.arch === 'gpt2') {
    const perLayer = 4 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * cfg.ffn + cfg.ffn) + (cfg.ffn * D + D);
    return cfg.vocabSize * D + cfg.maxPositions * D + cfg.layers * perLayer + 2 * D;
  }
  const q = cfg.heads * cfg.headDim;
  const kv = cfg.kvHeads * cfg.headDim;
  const bias = cfg.qkvBias ? q + 2 * kv : 0;
  const qkNorm = cfg.qkNorm ? q + kv : 0;
  const perLayer = 2 * D + D * q + 2 * D * kv + bias + qkNorm + q * D;
  let ffn = 0;
  for (let i = 0; i < cfg.layers; i++) ffn += cfg.moe?.sparse[i] ? sparseFfnLayout(cfg).weightCount(cfg) : 3 * D * cfg.ffn;
  const head = cfg.tieWordEmbeddings ? 0 : cfg.vocabSize * D;
  return cfg.vocabSize * D + cfg.layers * perLayer + ffn + D + head;
}

