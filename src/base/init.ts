import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { writeJsonAtomic } from './atomic.js';
import { parseConfig, type Arch } from './config.js';
import { saveModel } from './export.js';
import { buildParts } from './load.js';
import { holding } from './lock.js';
import { CausalLM } from './model.js';
import { claimOutput } from './output.js';
import { Rng } from './rng.js';
import { BYTE_LEVEL_SPECIALS, byteLevelTokenizerConfig, byteLevelTokenizerJson } from './tokenizer.js';
import type { WeightSource } from './weights.js';

export interface InitBaseOptions {
  arch: Arch;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads?: number;
  ffn: number;
  /** Defaults to the byte-level tokenizer's size (256 bytes + specials). */
  vocab?: number;
  maxPositions?: number;
  tieWordEmbeddings?: boolean;
  seed?: number;
  out: string;
  /** Replace a model already in `out`. */
  overwrite?: boolean;
}

/**
 * Hugging Face's default init: N(0, 0.02) for matrices (GPT-2 scales residual projections by
 * 1/√(2L)), ones for norm weights, zeros for biases.
 */
export class RandomWeights implements WeightSource {
  constructor(
    private readonly rng: Rng,
    private readonly layers: number,
    private readonly std = 0.02,
  ) {}

  /** A fresh init holds no optional tensors: builders use their default key layout. */
  has(): boolean {
    return false;
  }

  get(key: string, shape: number[]): tf.Tensor {
    return tf.tensor(this.read(key, shape), shape);
  }

  read(key: string, shape: number[]): Float32Array {
    const n = shape.reduce((a, b) => a * b, 1);
    if (/\.bias$/.test(key)) return new Float32Array(n);
    if (/(norm|ln_\d|ln_f)\.weight$/.test(key)) return new Float32Array(n).fill(1);
    const std = /\.c_proj\.weight$/.test(key) ? this.std / Math.sqrt(2 * this.layers) : this.std;
    return this.rng.normalArray(n, std);
  }
}

/** The config.json Hugging Face would write for these sizes. */
export function baseConfigJson(o: InitBaseOptions): Record<string, unknown> {
  const vocab = o.vocab ?? BYTE_LEVEL_SPECIALS.vocabSize;
  const ids = { bos_token_id: BYTE_LEVEL_SPECIALS.bosId, eos_token_id: BYTE_LEVEL_SPECIALS.eosId, pad_token_id: BYTE_LEVEL_SPECIALS.padId };
  if (vocab < BYTE_LEVEL_SPECIALS.vocabSize) {
    throw new Error(`--vocab ${vocab} is smaller than the byte-level tokenizer's ${BYTE_LEVEL_SPECIALS.vocabSize} tokens`);
  }
  if (o.hidden % o.heads !== 0) throw new Error(`--hidden ${o.hidden} must be divisible by --heads ${o.heads}`);
  if (o.arch === 'gpt2') {
    if (o.kvHeads !== undefined && o.kvHeads !== o.heads) throw new Error('gpt2 has no grouped K/V heads: drop --kv-heads');
    return {
      architectures: ['GPT2LMHeadModel'],
      model_type: 'gpt2',
      vocab_size: vocab,
      n_embd: o.hidden,
      n_layer: o.layers,
      n_head: o.heads,
      n_inner: o.ffn,
      n_positions: o.maxPositions ?? 1024,
      activation_function: 'gelu_new',
      layer_norm_epsilon: 1e-5,
      initializer_range: 0.02,
      resid_pdrop: 0,
      embd_pdrop: 0,
      attn_pdrop: 0,
      tie_word_embeddings: true,
      ...ids,
      torch_dtype: 'float32',
    };
  }
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: vocab,
    hidden_size: o.hidden,
    intermediate_size: o.ffn,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads ?? o.heads,
    head_dim: o.hidden / o.heads,
    hidden_act: 'silu',
    max_position_embeddings: o.maxPositions ?? 2048,
    initializer_range: 0.02,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    tie_word_embeddings: o.tieWordEmbeddings ?? false,
    ...ids,
    torch_dtype: 'float32',
  };
}

/**
 * `molora init-base`: a randomly initialised HF model folder with a byte-level tokenizer. A
 * failure leaves no folder behind (when it made the folder) and no model.safetensors.
 */
export async function initBase(o: InitBaseOptions): Promise<void> {
  const cfg = parseConfig(baseConfigJson(o), 'init-base options');
  await holding(
    claimOutput(o),
    async () => {
      // Llama tokenizers add bos themselves in Hugging Face; molora's promptIds does the same.
      writeJsonAtomic(join(o.out, 'tokenizer.json'), byteLevelTokenizerJson({ addBos: cfg.arch === 'llama' }));
      writeJsonAtomic(join(o.out, 'tokenizer_config.json'), byteLevelTokenizerConfig());
      writeJsonAtomic(join(o.out, 'generation_config.json'), {
        bos_token_id: cfg.bosId,
        eos_token_id: cfg.eosIds[0],
        pad_token_id: cfg.padId,
      });
      const model = new CausalLM(cfg, buildParts(cfg, new RandomWeights(new Rng(o.seed ?? 0), cfg.layers)));
      try {
        await saveModel(model, o.out);
      } finally {
        model.dispose();
      }
    },
    { discard: true },
  );
}
