import * as tf from '@tensorflow/tfjs';
import { buildMask, type AttentionInputs } from './attention.js';
import type { Block } from './block.js';
import type { ModelConfig } from './config.js';
import type { ForwardContext } from './context.js';
import { HookList } from './hook-list.js';
import { KVCache, positionsFromMask } from './kvcache.js';
import type { Linear } from './linear.js';
import type { Norm } from './norm.js';
import type { Rng } from './rng.js';
import type { Rope } from './rope.js';
import type { Embedding } from './vocab.js';
import type { Tokenizer } from './tokenizer.js';

/** A batch of token ids, row-major [B, T]; attentionMask 1 marks real tokens (default all 1). */
export interface TokenBatch {
  ids: Int32Array;
  batch: number;
  seq: number;
  attentionMask?: Uint8Array;
  /**
   * Per row, how many of its real tokens (counted from its first real one) are the prompt: what a
   * router may read. Absent: every real token. Teacher-forced batches set it so that a router
   * never sees the completion; generate sets it so that every step routes on the prompt alone.
   */
  promptLens?: Int32Array;
}

/**
 * Runs at the start of every pass that is not plain, before any layer: a router reads the
 * batch here and decides which experts the pass's linear hooks use.
 */
export type InputHook = (input: TokenBatch, opts: ForwardOptions) => void;

export interface ForwardOptions {
  cache?: KVCache;
  training?: boolean;
  rng?: Rng | null;
  /** The base alone: no linear hooks, no input hooks (see ForwardContext.plain). */
  plain?: boolean;
}

export interface ModelParts {
  embed: Embedding;
  /** GPT-2's learned positions; null for RoPE models. */
  posEmbed: Embedding | null;
  blocks: Block[];
  norm: Norm;
  /** lm_head; a tied model's embedding reads its weightT (Embedding's 'columns' layout). */
  head: Linear;
  rope: Rope | null;
}

/** A frozen decoder-only transformer: embeddings → blocks → final norm → lm_head. */
export class CausalLM {
  readonly blocks: Block[];
  private readonly inputHookList = new HookList<InputHook>('model input hooks');

  constructor(
    readonly config: ModelConfig,
    readonly parts: ModelParts,
    public tokenizer: Tokenizer | null = null,
    /** The folder it was loaded from, if any. */
    readonly dir: string | null = null,
  ) {
    this.blocks = parts.blocks;
  }

  /** The input hooks, in the order added: a frozen copy (change them with addInputHook). */
  get inputHooks(): readonly InputHook[] {
    return this.inputHookList.snapshot();
  }

  /** Run h at the start of every pass that is not plain, until the remover this returns is called. */
  addInputHook(h: InputHook): () => void {
    return this.inputHookList.add(h);
  }

  newCache(batch: number): KVCache {
    return new KVCache(batch, this.blocks.length);
  }

  /** Final hidden states [B·T, D] and the context plug-ins wrote to (aux losses). */
  hidden(input: TokenBatch, opts: ForwardOptions = {}): { h: tf.Tensor2D; ctx: ForwardContext } {
    const { batch: B, seq: T } = input;
    if (input.ids.length !== B * T) throw new Error(`ids has ${input.ids.length} entries, expected batch×seq = ${B * T}`);
    const mask = input.attentionMask ?? new Uint8Array(B * T).fill(1);
    if (!opts.plain) for (const hook of this.inputHookList.items) hook(input, opts);
    const cache = opts.cache;
    let keyMask: Uint8Array;
    let positions: Int32Array;
    if (cache) {
      if (cache.batch !== B) throw new Error(`KV cache holds ${cache.batch} rows, batch has ${B}`);
      ({ keyMask, positions } = cache.extend(mask, T));
    } else {
      keyMask = mask;
      positions = positionsFromMask(mask, B, T, new Int32Array(B));
    }
    const S = keyMask.length / B;
    if (S > this.config.maxPositions) {
      throw new Error(`sequence of ${S} tokens exceeds the model's ${this.config.maxPositions} positions`);
    }
    const p = this.parts;
    const realTokens = Float32Array.from(mask);
    const ctx: ForwardContext = {
      batch: B,
      seq: T,
      training: opts.training ?? false,
      tokenMask: tf.tensor2d(realTokens, [B * T, 1]),
      realTokens,
      aux: [],
      rng: opts.rng ?? null,
      plain: opts.plain ?? false,
    };
    const inputs: AttentionInputs = {
      rope: p.rope ? p.rope.tables(positions) : null,
      mask: buildMask(keyMask, B, T, S, this.config.heads / this.config.kvHeads, this.config.slidingWindow),
    };
    const ids = tf.tensor1d(input.ids, 'int32');
    let x = p.embed.gather(ids);
    if (p.posEmbed) x = x.add(p.posEmbed.gather(tf.tensor1d(positions, 'int32')));
    this.blocks.forEach((block, i) => {
      x = block.forward(x, ctx, inputs, cache?.layers[i]);
    });
    return { h: p.norm.forward(x), ctx };
  }

  /** Logits [B·T, V]. */
  forward(input: TokenBatch, opts: ForwardOptions = {}): tf.Tensor2D {
    const { h, ctx } = this.hidden(input, opts);
    return this.parts.head.forward(h, ctx);
  }

  /** Every linear layer, in Hugging Face module order (what adapters target). */
  linears(): Linear[] {
    return [...this.blocks.flatMap((b) => b.linears()), this.parts.head];
  }

  dispose(): void {
    const p = this.parts;
    p.embed.dispose();
    p.posEmbed?.dispose();
    for (const b of this.blocks) b.dispose();
    p.norm.dispose();
    p.head.dispose();
  }
}
