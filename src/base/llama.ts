import * as tf from '@tensorflow/tfjs';
import { Attention } from './attention.js';
import { Block } from './block.js';
import type { ModelConfig } from './config.js';
import type { ForwardContext } from './context.js';
import { Linear } from './linear.js';
import { SwiGLU, type FFN } from './mlp.js';
import type { ModelParts } from './model.js';
import { RMSNorm } from './norm.js';
import { Rope } from './rope.js';
import { sparseFfnLayout } from './sparse-ffn.js';
import { Embedding, readRowBlocks, transposedBlocks } from './vocab.js';
import type { WeightSource } from './weights.js';

/** Checkpoint buffers that carry no weights (old exports saved RoPE's inv_freq). */
export const LLAMA_IGNORED = /\.rotary_emb\.inv_freq$/;

/**
 * OLMoE's q/k/v projection: the linear (with its hooks), then an RMSNorm over all heads at once
 * (q_norm, k_norm) and the clip_qkv clamp, in that order, as modeling_olmoe does before RoPE.
 */
export class NormedProjection extends Linear {
  constructor(
    base: Linear,
    readonly norm: RMSNorm | null,
    readonly clip: number | null,
  ) {
    super(base.name, base.weightT, base.bias, false);
  }

  override forward(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D {
    let y = super.forward(x, ctx);
    if (this.norm) y = this.norm.forward(y);
    return this.clip === null ? y : tf.clipByValue(y, -this.clip, this.clip);
  }

  override dispose(): void {
    super.dispose();
    this.norm?.dispose();
  }
}

/**
 * Llama / Mistral / Qwen2 (REFERENCE.md §1), and the sparse MoE families Mixtral, Qwen2-MoE and
 * OLMoE (§4), whose blocks differ only in the FFN and OLMoE's q/k norm: keys model.*, linear
 * weights [out, in].
 */
export function buildLlama(cfg: ModelConfig, w: WeightSource): ModelParts {
  const D = cfg.hidden;
  const qDim = cfg.heads * cfg.headDim;
  const kvDim = cfg.kvHeads * cfg.headDim;
  const linear = (name: string, inF: number, outF: number, bias = false, key = name): Linear =>
    new Linear(
      name,
      tf.tidy(() => w.get(`${key}.weight`, [outF, inF]).transpose() as tf.Tensor2D),
      bias ? (w.get(`${name}.bias`, [outF]) as tf.Tensor1D) : null,
      false,
    );
  const norm = (name: string, width = D): RMSNorm => new RMSNorm(name, w.get(`${name}.weight`, [width]) as tf.Tensor1D, cfg.normEps);
  const rope = new Rope(cfg.headDim, cfg.ropeTheta);
  const sparse = cfg.moe?.sparse.some((s) => s) ? sparseFfnLayout(cfg).reader(cfg, w, linear) : null;
  const projection = (p: string, which: 'q' | 'k' | 'v', outF: number): Linear => {
    const base = linear(`${p}.self_attn.${which}_proj`, D, outF, cfg.qkvBias);
    const qkNorm = cfg.qkNorm && which !== 'v' ? norm(`${p}.self_attn.${which}_norm`, outF) : null;
    return qkNorm || cfg.clipQkv !== null ? new NormedProjection(base, qkNorm, cfg.clipQkv) : base;
  };

  const blocks = Array.from({ length: cfg.layers }, (_, i) => {
    const p = `model.layers.${i}`;
    const attn = new Attention(
      { heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.headDim },
      {
        q: projection(p, 'q', qDim),
        k: projection(p, 'k', kvDim),
        v: projection(p, 'v', kvDim),
      },
      linear(`${p}.self_attn.o_proj`, qDim, D),
      rope,
    );
    const mlp: FFN = sparse && cfg.moe!.sparse[i]
      ? sparse(i)
      : new SwiGLU(
        linear(`${p}.mlp.gate_proj`, D, cfg.ffn),
        linear(`${p}.mlp.up_proj`, D, cfg.ffn),
        linear(`${p}.mlp.down_proj`, cfg.ffn, D),
      );
    return new Block(i, norm(`${p}.input_layernorm`), attn, norm(`${p}.post_attention_layernorm`), mlp);
  });

  // [V, D] row blocks transposed are the [D, V] weight's column blocks. A tied head is the
  // embedding matrix; the embedding then reads the head's columns, holding no copy of its own.
  const headKey = cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const head = new Linear('lm_head', transposedBlocks(readRowBlocks(w, headKey, cfg.vocabSize, D)), null, false);
  const embed = cfg.tieWordEmbeddings
    ? new Embedding('model.embed_tokens', [...head.columnBlocks], 'columns')
    : new Embedding('model.embed_tokens', readRowBlocks(w, 'model.embed_tokens.weight', cfg.vocabSize, D));
  return { embed, posEmbed: null, blocks, norm: norm('model.norm'), head, rope };
}
