import { bool, float, int, path, required } from '../base/options.js';
import { COLUMN_OPTIONS, DATA_OPTIONS, TRAINER_OPTIONS } from '../train/train-options.js';

/** train-moe's own settings (src/base/options.ts), besides the shared data and trainer ones. */
export const MOE_TRAINING_OPTIONS = {
  routerOnly: bool('train only the routers; experts stay frozen'),
  auxCoef: float('load-balancing loss coefficient (default: router_aux_loss_coef from config.json); 0 = off', 0, Infinity, { arg: 'c' }),
  zCoef: float('router z-loss coefficient (default: router_z_loss_coef, usually 0)', 0, Infinity, { arg: 'c' }),
  balanceBias: float('DeepSeek-V3 aux-loss-free balancing: per-expert selection bias moved by γ·sign(mean load − load) after each update', 0, Infinity, { arg: 'gamma' }),
} as const;

/** `molora train-moe` and a recipe's train-moe step: every setting, in --help's order. */
export const TRAIN_MOE_OPTIONS = {
  model: required(path('sparse MoE model folder (mixtral, qwen2_moe, olmoe; e.g. from molora upcycle)')),
  out: required(path('output folder: the trained model, metrics.jsonl, checkpoints', { scope: 'cli' })),
  ...MOE_TRAINING_OPTIONS,
  ...COLUMN_OPTIONS,
  ...DATA_OPTIONS,
  ...TRAINER_OPTIONS,
} as const;

/** `molora upcycle` and a recipe's upcycle step. */
export const UPCYCLE_OPTIONS = {
  model: required(path('dense model folder (llama, mistral, qwen2)')),
  experts: required(int('routed experts per layer', 1)),
  topK: required(int('experts per token (weights renormalised over the k)', 1, { arg: 'k' })),
  shared: int('always-on shared experts (a Qwen2-MoE shared expert of width n·ffn)', 0, { default: 0 }),
  noise: float('Gaussian noise std added to each expert copy; 0 keeps exact copies (output equals the dense model)', 0, Infinity, { arg: 'sigma', default: 0 }),
  seed: int('seed for the router init and the noise', 0, { default: 0 }),
  out: required(path('folder to write (config.json, model.safetensors, tokenizer files)', { scope: 'cli' })),
  overwrite: bool('replace a model already in --out', { scope: 'cli' }),
} as const;
