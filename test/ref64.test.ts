import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MODEL_FIXTURES, maxAbsDiff, readReference } from './helpers.js';
import { logprobs64, readTensors64 } from './ref64.js';

// The host float64 reference (ref64.ts) against the PyTorch float64 fixtures, whose log-probs are
// rounded to 6 decimals: agreement to ~1e-6 shows it computes the same model, so the tests that
// use it on folders molora writes (upcycle, MixLoRA) check against an independent float64 forward.
describe('host float64 reference', () => {
  it.each(['llama-gqa', 'mistral', 'mistral-swa', 'qwen2', 'mixtral'])('%s: every case agrees with the PyTorch float64 log-probs to 1e-6 (their rounding)', (name) => {
    const dir = join(MODEL_FIXTURES, name);
    const W = readTensors64(join(dir, 'model.safetensors'));
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    let worst = 0;
    let compared = 0;
    for (const c of readReference(name).cases) {
      const got = logprobs64(W, cfg, c.ids, c.attention_mask);
      c.logprobs.forEach((row, b) => row.forEach((want, t) => {
        if (!want) return expect(got[b]![t]).toBeNull();
        worst = Math.max(worst, maxAbsDiff(got[b]![t]!, want));
        compared++;
      }));
    }
    expect(compared).toBeGreaterThan(30);
    expect(worst).toBeLessThan(1e-6);
  });
});
