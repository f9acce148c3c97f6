import * as tf from '@tensorflow/tfjs';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { saveModel } from '../src/base/export.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import { logprobs } from '../src/base/scoring.js';
import { writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';

beforeAll(async () => {
  await initBackend();
});

let cleanups: (() => void)[] = [];
afterEach(() => {
  cleanups.forEach((c) => c());
  cleanups = [];
});

function copyFixture(name: string): string {
  const t = tempDir();
  cleanups.push(t.cleanup);
  cpSync(join(MODEL_FIXTURES, name), t.dir, { recursive: true });
  return t.dir;
}

/** Rewrite a folder's model.safetensors through `edit`. */
function editWeights(dir: string, edit: (tensors: Record<string, TensorToWrite>) => void): void {
  const ckpt = openCheckpoint(dir);
  const tensors: Record<string, TensorToWrite> = {};
  for (const k of ckpt.keys()) {
    const t = ckpt.read(k);
    tensors[k] = { dtype: ckpt.info(k).dtype as TensorToWrite['dtype'], shape: t.shape, data: t.data };
  }
  ckpt.close();
  edit(tensors);
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

const quiet = { warn: () => {} };
const probe = { ids: Int32Array.from([4, 8, 15, 16, 23, 42]), batch: 2, seq: 3 };

describe('loading errors', () => {
  it('an unsupported model_type lists the supported ones', () => {
    const dir = copyFixture('llama-gqa');
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'falcon' }));
    expect(() => loadBase(dir, quiet)).toThrow(/unsupported model_type "falcon"; supported: llama, mistral, qwen2, gpt2/);
  });

  it('a missing tensor that the config requires names the folder and the tensor', () => {
    const dir = copyFixture('llama-gqa');
    editWeights(dir, (t) => delete t['model.layers.1.mlp.up_proj.weight']);
    expect(() => loadBase(dir, quiet)).toThrow(new RegExp(`${dir}.*model\\.layers\\.1\\.mlp\\.up_proj\\.weight.*missing`));
    expect(tf.memory().numTensors).toBe(0);
  });

  it('a tensor whose shape disagrees with config.json names the file, tensor and both shapes', () => {
    const dir = copyFixture('qwen2');
    editWeights(dir, (t) => {
      const b = t['model.layers.0.self_attn.q_proj.bias']!;
      t['model.layers.0.self_attn.q_proj.bias'] = { ...b, shape: [b.shape[0]! / 2, 2] };
    });
    expect(() => loadBase(dir, quiet)).toThrow(/model\.safetensors: tensor 'model\.layers\.0\.self_attn\.q_proj\.bias' has shape \[16,2\], config\.json implies \[32\]/);
  });

  it('extra tensors are reported, known buffers are not', () => {
    const dir = copyFixture('gpt2');
    const warnings: string[] = [];
    loadBase(dir, { warn: (m) => warnings.push(m) }).dispose();
    expect(warnings).toEqual([]);
    editWeights(dir, (t) => (t['h.0.attn.extra.weight'] = { dtype: 'F32', shape: [2], data: new Float32Array(2) }));
    loadBase(dir, { warn: (m) => warnings.push(m) }).dispose();
    expect(warnings.join('\n')).toMatch(/ignoring 1 tensor.*h\.0\.attn\.extra\.weight/);
  });
});

describe('init-base and save', () => {
  it.each(['llama', 'gpt2'] as const)('init-base writes a %s folder that loads, runs and round-trips', async (arch) => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    await initBase({ arch, layers: 2, hidden: 32, heads: 4, kvHeads: arch === 'llama' ? 2 : undefined, ffn: 48, out: t.dir, seed: 3 });
    const model = loadBase(t.dir, quiet);
    expect(model.tokenizer).not.toBeNull();
    expect(model.config.vocabSize).toBe(259);
    const a = await logprobs(model, probe);
    const copy = join(t.dir, 'copy');
    await saveModel(model, copy);
    const again = loadBase(copy, quiet);
    const b = await logprobs(again, probe);
    a.forEach((row, i) => row.forEach((v, j) => expect(maxAbsDiff(v, b[i]![j]!)).toBe(0)));
    model.dispose();
    again.dispose();
  });

  it('the same seed gives the same weights', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    for (const d of ['a', 'b']) await initBase({ arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 24, out: join(t.dir, d), seed: 9 });
    expect(readFileSync(join(t.dir, 'a', 'model.safetensors')).equals(readFileSync(join(t.dir, 'b', 'model.safetensors')))).toBe(true);
  });

  it.each(['F16', 'BF16'] as const)('a model saved as %s reloads within that dtype\'s rounding', async (dtype) => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'), quiet);
    await saveModel(model, t.dir, dtype);
    const half = loadBase(t.dir, quiet);
    expect(JSON.parse(readFileSync(join(t.dir, 'config.json'), 'utf8')).torch_dtype).toBe(dtype === 'F16' ? 'float16' : 'bfloat16');
    const a = await logprobs(model, probe);
    const b = await logprobs(half, probe);
    const tol = dtype === 'F16' ? 0.02 : 0.2;
    a.forEach((row, i) => row.forEach((v, j) => expect(maxAbsDiff(v, b[i]![j]!)).toBeLessThan(tol)));
    model.dispose();
    half.dispose();
  });
});
