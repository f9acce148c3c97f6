import * as tf from '@tensorflow/tfjs';
import { requireBackend } from './backend.js';
import { openCheckpoint } from './checkpoint.js';
import { readConfig, type ModelConfig } from './config.js';
import { buildGpt2, GPT2_IGNORED } from './gpt2.js';
import { buildLlama, LLAMA_IGNORED } from './llama.js';
import type { WeightPacking } from './linear.js';
import { estimateModelBytes, estimateTrainingBytes, planPacking, type TrainingShape } from './memory.js';
import { CausalLM, type ModelParts } from './model.js';
import { sparseFfnLayout } from './sparse-ffn.js';
import { loadTokenizer } from './tokenizer.js';
import { CheckpointWeights, type WeightSource } from './weights.js';

export interface LoadOptions {
  /** Where notes about ignored tensors go; stderr by default. */
  warn?: (msg: string) => void;
  /** The training run the model is loaded for: its memory is planned before any weight is read. */
  training?: TrainingRun;
}

/** What a training run adds to a model's memory (memory.estimateTrainingBytes). */
export interface TrainingRun {
  batch: number;
  seq: number;
  /** Parameters trained: 'all' of the base's, or a count (0 before an adapter exists: a LoRA's are well under 1 % of the base). */
  trainableParams: number | 'all';
}

/** Build the model's parts; on error every tensor made so far is freed (tidy walks the parts it returns). */
export function buildParts(cfg: ModelConfig, w: WeightSource): ModelParts {
  const build = cfg.arch === 'gpt2' ? buildGpt2 : buildLlama;
  return tf.tidy(() => build(cfg, w) as unknown as tf.TensorContainer) as unknown as ModelParts;
}

/** Load a Hugging Face model folder (config.json, safetensors, tokenizer.json) as a frozen model. */
export function loadBase(dir: string, opts: LoadOptions = {}): CausalLM {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  requireBackend(`loading ${dir}`);
  const cfg = readConfig(dir);
  const packing = opts.training
    ? planTraining(cfg, opts.training, `training ${dir} at batch ${opts.training.batch} × seq ${opts.training.seq}`)
    : planPacking((p) => estimateModelBytes(weightCount(cfg), p, largestWeight(cfg)), `loading ${dir}`, leanWeightBytes(cfg));
  if (packing === 'per-use') {
    warn(`${dir}: packing each weight per product to fit the wasm heap (XNNPACK keeps no packed copies; frozen matMuls 15-45 % slower)`);
  }
  const ckpt = openCheckpoint(dir);
  try {
    const weights = new CheckpointWeights(ckpt);
    const parts = buildParts(cfg, weights);
    const ignored = cfg.arch === 'gpt2' ? GPT2_IGNORED : LLAMA_IGNORED;
    const extra = weights.unused().filter((k) => !ignored.test(k) && !(cfg.tieWordEmbeddings && k === 'lm_head.weight'));
    if (extra.length > 0) {
      warn(`${dir}: ignoring ${extra.length} tensor(s) the ${cfg.modelType} model does not use: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', …' : ''}`);
    }
    const tokenizer = loadTokenizer(dir, { bosId: cfg.bosId, eosId: cfg.eosIds[0] ?? null, padId: cfg.padId });
    const model = new CausalLM(cfg, parts, tokenizer, dir);
    for (const l of model.linears()) l.packing = packing;
    return model;
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

/** Elements of the model's largest matMul weight (the head, or a wide FFN). */
export function largestWeight(cfg: ModelConfig): number {
  const ffn = cfg.moe ? Math.max(cfg.moe.expertFfn, cfg.moe.sharedFfn) : cfg.ffn;
  return cfg.hidden * Math.max(cfg.vocabSize, ffn, cfg.heads * cfg.headDim);
}

/** A training run's shape for the memory estimate. */
export function trainingShape(cfg: ModelConfig, run: TrainingRun): TrainingShape {
  return {
    params: weightCount(cfg), trainableParams: run.trainableParams === 'all' ? weightCount(cfg) : run.trainableParams, batch: run.batch, seq: run.seq, hidden: cfg.hidden,
    layers: cfg.layers, heads: cfg.heads, ffn: cfg.ffn, vocab: cfg.vocabSize, largestWeight: largestWeight(cfg),
  };
}

/** The weight packing a training run of `cfg` fits the wasm heap with (memory.planPacking); refuses when none does. */
export function planTraining(cfg: ModelConfig, run: TrainingRun, what: string): WeightPacking {
  const shape = trainingShape(cfg, run);
  return planPacking((packing) => estimateTrainingBytes({ ...shape, packing }), what, leanWeightBytes(cfg));
}

/** The weights with nothing packed but the largest: the least any run of `cfg` holds. */
function leanWeightBytes(cfg: ModelConfig): number {
  return estimateModelBytes(weightCount(cfg), 'per-use', largestWeight(cfg));
}
