import * as tf from '@tensorflow/tfjs';
import { Attention } from './attention.js';
import { Block } from './block.js';
import type { ModelConfig } from './config.js';
import { Linear } from './linear.js';
import { SwiGLU } from './mlp.js';
import type { ModelParts } from './model.js';
import { RMSNorm } from './norm.js';
import { Rope } from './rope.js';
import type { WeightSource } from './weights.js';

/** Checkpoint buffers that carry no weights (old exports saved RoPE's inv_freq). */
export const LLAMA_IGNORED = /\.rotary_emb\.inv_freq$/;

/** Llama / Mistral / Qwen2 (REFERENCE.md §1): keys model.*, linear weights [out, in]. */
export function buildLlama(cfg: ModelConfig, w: WeightSource): ModelParts {
  const D = cfg.hidden;
  const qDim = cfg.heads * cfg.headDim;
  const kvDim = cfg.kvHeads * cfg.headDim;
  const linear = (name: string, inF: number, outF: number, bias = false): Linear =>
    new Linear(
      name,
      tf.tidy(() => w.get(`${name}.weight`, [outF, inF]).transpose() as tf.Tensor2D),
      bias ? (w.get(`${name}.bias`, [outF]) as tf.Tensor1D) : null,
      false,
    );
  const norm = (name: string): RMSNorm => new RMSNorm(name, w.get(`${name}.weight`, [D]) as tf.Tensor1D, cfg.normEps);
  const rope = new Rope(cfg.headDim, cfg.ropeTheta);

  const blocks = Array.from({ length: cfg.layers }, (_, i) => {
    const p = `model.layers.${i}`;
    const attn = new Attention(
      { heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.headDim },
      {
        q: linear(`${p}.self_attn.q_proj`, D, qDim, cfg.qkvBias),
        k: linear(`${p}.self_attn.k_proj`, D, kvDim, cfg.qkvBias),
        v: linear(`${p}.self_attn.v_proj`, D, kvDim, cfg.qkvBias),
      },
      linear(`${p}.self_attn.o_proj`, qDim, D),
      rope,
    );
    const mlp = new SwiGLU(
      linear(`${p}.mlp.gate_proj`, D, cfg.ffn),
      linear(`${p}.mlp.up_proj`, D, cfg.ffn),
      linear(`${p}.mlp.down_proj`, cfg.ffn, D),
    );
    return new Block(i, norm(`${p}.input_layernorm`), attn, norm(`${p}.post_attention_layernorm`), mlp);
  });

  const embed = { name: 'model.embed_tokens', weight: w.get('model.embed_tokens.weight', [cfg.vocabSize, D]) as tf.Tensor2D };
  const head = cfg.tieWordEmbeddings
    ? new Linear('lm_head', embed.weight.transpose(), null, false)
    : linear('lm_head', D, cfg.vocabSize);
  return { embed, posEmbed: null, blocks, norm: norm('model.norm'), head, rope };
}
