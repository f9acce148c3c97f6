import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { saveModel } from '../src/base/export.js';
import { generate } from '../src/base/generate.js';
import { loadBase, weightCount } from '../src/base/load.js';
import { writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { MoEFFN, moeLayers } from '../src/moe/moe.js';
import { MODEL_FIXTURES, maxAbsDiff, readReference, tempDir } from './helpers.js';
// These folders load through src/base, which reads sparse layers with the layouts src/moe registers.
import '../src/moe/register.js';

// The MoE fixtures' layouts, export and greedy decoding (their log-prob parity is moe-parity.test.ts).
const MODELS = ['mixtral', 'mixtral-packed', 'qwen2-moe', 'olmoe'];
const quiet = { warn: () => {} };

beforeAll(async () => {
  await initBackend();
});

describe('MoE checkpoints', () => {
  it('mixtral greedy decoding with the KV cache matches the reference tokens', async () => {
    const model = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const { greedy } = readReference('mixtral');
    const out = await generate(model, [greedy.prompt], { maxNewTokens: greedy.tokens.length, stopIds: [], useCache: true });
    expect(out.tokens[0]).toEqual(greedy.tokens);
    model.dispose();
  });

  it('reads each layout into MoE FFNs named by their HF module paths', () => {
    const classic = loadBase(join(MODEL_FIXTURES, 'mixtral'), quiet);
    const packed = loadBase(join(MODEL_FIXTURES, 'mixtral-packed'), quiet);
    const qwen = loadBase(join(MODEL_FIXTURES, 'qwen2-moe'), quiet);
    try {
      expect(moeLayers(classic).map((m) => [m.prefix, m.layout])).toEqual([
        ['model.layers.0.block_sparse_moe', 'per-expert'],
        ['model.layers.1.block_sparse_moe', 'per-expert'],
      ]);
      expect(moeLayers(packed).map((m) => m.layout)).toEqual(['packed', 'packed']);
      expect(moeLayers(packed)[0]!.experts[3]!.linears().map((l) => l.name)).toEqual([
        'model.layers.0.mlp.experts.3.w1', 'model.layers.0.mlp.experts.3.w3', 'model.layers.0.mlp.experts.3.w2',
      ]);
      // mlp_only_layers [0]: layer 0 is dense, layer 1 sparse with a gated shared expert.
      expect(qwen.blocks.map((b) => b.ffn instanceof MoEFFN)).toEqual([false, true]);
      expect(qwen.linears().map((l) => l.name)).toEqual(expect.arrayContaining([
        'model.layers.1.mlp.gate', 'model.layers.1.mlp.experts.5.down_proj',
        'model.layers.1.mlp.shared_expert.up_proj', 'model.layers.1.mlp.shared_expert_gate',
      ]));
    } finally {
      classic.dispose();
      packed.dispose();
      qwen.dispose();
    }
  });

  it.each(MODELS)('%s: weightCount equals the checkpoint, and an export writes the same keys and values back', async (name) => {
    const dir = join(MODEL_FIXTURES, name);
    const model = loadBase(dir, quiet);
    const { dir: out, cleanup } = tempDir();
    try {
      await saveModel(model, out);
      const [a, b] = [openCheckpoint(dir), openCheckpoint(out)];
      expect(b.keys().sort()).toEqual(a.keys().sort());
      let params = 0;
      for (const k of a.keys()) {
        const [x, y] = [a.read(k), b.read(k)];
        expect(y.shape, k).toEqual(x.shape);
        expect(maxAbsDiff(y.data as Float32Array, x.data as Float32Array), k).toBe(0);
        params += x.shape.reduce((p, d) => p * d, 1);
      }
      expect(weightCount(model.config)).toBe(params);
      a.close();
      b.close();
    } finally {
      cleanup();
      model.dispose();
    }
  });

  it('a missing expert tensor is an error naming it', () => {
    const { dir, cleanup } = tempDir();
    try {
      const ck = openCheckpoint(join(MODEL_FIXTURES, 'qwen2-moe'));
      const tensors: Record<string, TensorToWrite> = {};
      for (const k of ck.keys()) {
        if (k !== 'model.layers.1.mlp.experts.2.up_proj.weight') tensors[k] = { dtype: 'F32', shape: ck.read(k).shape, data: ck.read(k).data };
      }
      ck.close();
      writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
      copyFileSync(join(MODEL_FIXTURES, 'qwen2-moe', 'config.json'), join(dir, 'config.json'));
      expect(() => loadBase(dir, quiet)).toThrow(/'model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight' is required by config\.json but missing/);
    } finally {
      cleanup();
    }
  });
});
