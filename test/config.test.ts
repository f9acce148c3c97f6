import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/base/config.js';

const LLAMA = { model_type: 'llama', vocab_size: 96, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64 };
const GPT2 = { model_type: 'gpt2', vocab_size: 96, n_embd: 128, n_layer: 2, n_head: 4 };
const MIXTRAL = { ...LLAMA, model_type: 'mixtral', num_local_experts: 2, num_experts_per_tok: 1 };
const QWEN2_MOE = { ...LLAMA, model_type: 'qwen2_moe', num_experts: 2, num_experts_per_tok: 1, moe_intermediate_size: 16, shared_expert_intermediate_size: 0 };

/** The error parseConfig gives, or '' when it accepts the config. */
function errorOf(raw: Record<string, unknown>): string {
  try {
    parseConfig(raw);
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('config.json errors name the keys the file holds', () => {
  it.each<[string, Record<string, unknown>, RegExp]>([
    ['heads that do not divide the width (llama)', { ...LLAMA, num_attention_heads: 3 }, /hidden_size 128 is not divisible by num_attention_heads 3/],
    ['heads that do not divide the width (gpt2)', { ...GPT2, n_head: 3 }, /n_embd 128 is not divisible by n_head 3/],
    ['an odd derived head size', { ...LLAMA, hidden_size: 36 }, /head_dim \(hidden_size \/ num_attention_heads = 9\) must be even for RoPE/],
    ['an odd explicit head size', { ...LLAMA, head_dim: 9 }, /head_dim \(9\) must be even for RoPE/],
    ['a zero FFN width', { ...LLAMA, intermediate_size: 0 }, /intermediate_size must be a positive integer, got 0/],
    ['a fractional layer count', { ...GPT2, n_layer: 1.5 }, /n_layer must be a positive integer, got 1\.5/],
    ['zero KV heads', { ...LLAMA, num_key_value_heads: 0 }, /num_key_value_heads must be a positive integer, got 0/],
    ['zero Mixtral experts', { ...MIXTRAL, num_local_experts: 0 }, /num_local_experts must be a positive integer, got 0/],
    ['top-k above the experts', { ...MIXTRAL, num_experts_per_tok: 3 }, /num_experts_per_tok \(3\) exceeds num_local_experts \(2\)/],
    ['a zero Qwen2-MoE expert width', { ...QWEN2_MOE, moe_intermediate_size: 0 }, /moe_intermediate_size must be a positive integer, got 0/],
  ])('%s', (_, raw, message) => {
    const err = errorOf(raw);
    expect(err).toMatch(message);
    // Never the internal field names (headDim, kvHeads, expertFfn, …).
    expect(err).not.toMatch(/headDim|kvHeads|vocabSize|expertFfn|topK|\bffn\b|\bhidden\b|\bheads\b/);
  });

  it('an explicit head_dim need not divide the width (as in Hugging Face)', () => {
    expect(errorOf({ ...LLAMA, num_attention_heads: 3, num_key_value_heads: 3, head_dim: 32 })).toBe('');
  });
});
