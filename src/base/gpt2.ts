import * as tf from '@tensorflow/tfjs';
import { Attention } from './attention.js';
import { Block } from './block.js';
import type { ModelConfig } from './config.js';
import { Linear } from './linear.js';
import { GeluMLP } from './mlp.js';
import type { ModelParts } from './model.js';
import { LayerNorm } from './norm.js';
import { Embedding, readRowBlocks, transposedBlocks } from './vocab.js';
import type { WeightSource } from './weights.js';

/** The causal-mask buffers some GPT-2 exports carry; they hold no weights. */
export const GPT2_IGNORED = /\.attn\.(masked_)?bias$/;

/**
 * GPT-2 (REFERENCE.md §1). Module names are GPT2LMHeadModel's (transformer.h.i.…), which is what
 * PEFT adapters address; checkpoint keys may come with or without the `transformer.` prefix.
 * Conv1D weights are already [in, out], the orientation the forward wants.
 */
export function buildGpt2(cfg: ModelConfig, w: WeightSource): ModelParts {
  const D = cfg.hidden;
  const prefixed = w.has('transformer.wte.weight');
  const key = (module: string, param: string): string => `${prefixed ? module : module.replace(/^transformer\./, '')}.${param}`;
  const conv1d = (name: string, inF: number, outF: number): Linear =>
    new Linear(name, w.get(key(name, 'weight'), [inF, outF]) as tf.Tensor2D, w.get(key(name, 'bias'), [outF]) as tf.Tensor1D, true);
  const norm = (name: string): LayerNorm =>
    new LayerNorm(name, w.get(key(name, 'weight'), [D]) as tf.Tensor1D, w.get(key(name, 'bias'), [D]) as tf.Tensor1D, cfg.normEps);

  const blocks = Array.from({ length: cfg.layers }, (_, i) => {
    const p = `transformer.h.${i}`;
    const attn = new Attention(
      { heads: cfg.heads, kvHeads: cfg.heads, headDim: cfg.headDim },
      { qkv: conv1d(`${p}.attn.c_attn`, D, 3 * D) },
      conv1d(`${p}.attn.c_proj`, D, D),
      null,
    );
    const mlp = new GeluMLP(conv1d(`${p}.mlp.c_fc`, D, cfg.ffn), conv1d(`${p}.mlp.c_proj`, cfg.ffn, D));
    return new Block(i, norm(`${p}.ln_1`), attn, norm(`${p}.ln_2`), mlp);
  });

  // The head is the token embedding transposed ([V, D] row blocks transposed are the tied [D, V]
  // weight's column blocks); the embedding reads the head's columns, holding no copy of its own.
  const head = new Linear('lm_head', transposedBlocks(readRowBlocks(w, key('transformer.wte', 'weight'), cfg.vocabSize, D)), null, false);
  const embed = new Embedding('transformer.wte', [...head.columnBlocks], 'columns');
  const posEmbed = new Embedding('transformer.wpe', readRowBlocks(w, key('transformer.wpe', 'weight'), cfg.maxPositions, D));
  return { embed, posEmbed, blocks, norm: norm('transformer.ln_f'), head, rope: null };
}
