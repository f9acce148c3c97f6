import { bool, choice, int, path, required } from './options.js';

/** `molora init-base` and a recipe's init-base step (src/base/options.ts). */
export const INIT_BASE_OPTIONS = {
  arch: required(choice(['llama', 'gpt2'] as const, 'llama or gpt2', { arg: 'arch' })),
  layers: required(int('transformer blocks', 1)),
  hidden: required(int('hidden size', 1, { arg: 'd' })),
  heads: required(int('attention heads', 1, { arg: 'h' })),
  kvHeads: int('key/value heads (llama GQA); default = heads', 1, { arg: 'k' }),
  ffn: required(int('feed-forward (intermediate) size', 1, { arg: 'f' })),
  vocab: int("vocabulary size; default = the byte-level tokenizer's 259", 1, { arg: 'v' }),
  maxPositions: int('context length', 1),
  tie: bool('tie lm_head to the embedding (llama; gpt2 always ties)', { aliases: ['tieWordEmbeddings'] }),
  out: required(path('folder to write', { scope: 'cli' })),
  overwrite: bool('replace a model already in --out', { scope: 'cli' }),
  seed: int('init seed', 0, { default: 0 }),
} as const;
