// molora's library API; the CLI is a thin layer over these.
export { initBackend, activeBackend, type BackendInfo, type BackendName } from './base/backend.js';
export { readConfig, parseConfig, SUPPORTED_MODEL_TYPES, type ModelConfig } from './base/config.js';
export { loadBase, weightCount } from './base/load.js';
export { CausalLM, type TokenBatch, type ForwardOptions } from './base/model.js';
export { KVCache } from './base/kvcache.js';
export { Linear, type LinearHook } from './base/linear.js';
export type { FFN } from './base/mlp.js';
export type { ForwardContext } from './base/context.js';
export { generate, type GenerateOptions, type GenerateResult } from './base/generate.js';
export { logprobs, logSoftmax } from './base/scoring.js';
export { initBase, type InitBaseOptions } from './base/init.js';
export { saveModel, modelTensors } from './base/export.js';
export { inspectFolder, type FolderSummary } from './base/inspect.js';
export { openSafetensors, writeSafetensors } from './base/safetensors.js';
export { openCheckpoint } from './base/checkpoint.js';
export { loadTokenizer, type Tokenizer } from './base/tokenizer.js';
export { Rng } from './base/rng.js';
