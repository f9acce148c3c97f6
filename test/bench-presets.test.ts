import * as tf from '@tensorflow/tfjs';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { parseConfig } from '../src/base/config.js';
import { baseConfigJson } from '../src/base/init.js';
import { weightCount } from '../src/base/load.js';
import { heapUsage } from '../src/base/memory.js';
import { gpuBufferBytes } from '../src/bench/peak-memory.js';
import { PRESET_NAMES, PRESETS, resolveBenchShape, type PresetName } from '../src/bench/presets.js';
import { benchTrain } from '../src/bench/train.js';

// The CLI as users run it: the built dist/ (npm test builds first).
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const MiB = 2 ** 20;
const TINY = { layers: 2, hidden: 64, heads: 4, kvHeads: 2, ffn: 128, vocab: 512, batch: 2, seq: 16 };
const LORA = { rank: 4, alpha: 8, targets: ['q_proj', 'v_proj'], steps: 2, warmup: 1 };

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

describe('bench presets', () => {
  // Parameter counts as Hugging Face reports them for the real checkpoints (tied heads): an
  // independent check that every shape field of each preset is the published one.
  it.each([
    ['smollm2-135m', 134_515_008],
    ['smollm2-360m', 361_821_120],
    ['llama-1b', 1_235_814_400],
  ] as [PresetName, number][])('%s has the published model\'s parameter count', (name, params) => {
    const p = PRESETS[name];
    expect(weightCount(parseConfig(baseConfigJson({ arch: 'llama', out: '', ...p }), name))).toBe(params);
    expect(p.hidden / p.heads).toBe(64);
  });

  it('without a preset the shape is the PyTorch peer\'s defaults', () => {
    expect(resolveBenchShape({})).toEqual({ layers: 4, hidden: 256, heads: 4, kvHeads: 4, ffn: 688, vocab: 2048, tieWordEmbeddings: false, batch: 4, seq: 128 });
  });

  it('flags given override the preset\'s fields and leave the others', () => {
    expect(resolveBenchShape({ preset: 'smollm2-360m', layers: 2, batch: 8, seq: undefined })).toEqual({
      layers: 2, hidden: 960, heads: 15, kvHeads: 5, ffn: 2560, vocab: 49152, tieWordEmbeddings: true, batch: 8, seq: 128,
    });
  });

  it('--help lists every preset with its shapes; an unknown preset is refused naming the choices', () => {
    for (const cmd of ['train', 'gate', 'forward']) {
      const help = execFileSync('node', [CLI, 'bench', cmd, '--help'], { encoding: 'utf8' });
      for (const n of PRESET_NAMES) expect(help).toContain(n);
      expect(help).toContain('SmolLM2-135M: 30 layers, hidden 576, 9/3 heads, FFN 1536, vocab 49152, tied head');
    }
    const r = spawnSync('node', [CLI, 'bench', 'train', '--preset', 'smollm2-1b'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`expected one of ${PRESET_NAMES.join(', ')}, got 'smollm2-1b'`);
  });
});

describe('bench train memory figures', () => {
  it('gpuBufferBytes reads the webgpu backend\'s allocated bytes, and nothing from other backends', () => {
    expect(gpuBufferBytes({ numTensors: 1, numDataBuffers: 1, numBytes: 4, unreliable: false, numBytesAllocatedInGPU: 4096 } as unknown as tf.MemoryInfo)).toBe(4096);
    expect(gpuBufferBytes(tf.memory())).toBeNull();
  });

  it('on wasm: the heap\'s size as its peak, the process\'s peak RSS, no GPU buffers, and no tensors left', async () => {
    const before = tf.memory().numTensors;
    const r = await benchTrain({ ...resolveBenchShape({ preset: 'smollm2-135m', ...TINY }), ...LORA });
    expect(tf.memory().numTensors).toBe(before);
    expect(r.backend).toBe('wasm');
    // The heap never shrinks, so the figure is its size now; it held at least the model's weights.
    expect(r.peak_heap_mib! * MiB).toBe(heapUsage().heapBytes);
    expect(r.peak_heap_mib! * MiB).toBeGreaterThan(4 * TINY.vocab * TINY.hidden);
    expect(r.peak_rss_mib).toBeGreaterThan(0);
    expect(r.peak_rss_mib).toBeLessThanOrEqual(process.resourceUsage().maxRSS / 1024);
    expect(r.peak_gpu_buffers_mib).toBeNull();
    expect(r.memory_note).toBe('the wasm backend reports no GPU buffers');
    expect(Number.isFinite(r.loss)).toBe(true);
  });

  it('off wasm the heap figure is null and the note says why', async () => {
    await initBackend({ backend: 'cpu', warn: () => {} });
    const r = await benchTrain({ ...resolveBenchShape(TINY), ...LORA, steps: 1, warmup: 0 });
    expect(r.backend).toBe('cpu');
    expect(r.peak_heap_mib).toBeNull();
    expect(r.memory_note).toBe('no wasm heap on the cpu backend; the cpu backend reports no GPU buffers');
    await initBackend({ backend: 'wasm' });
  });

  it('bench train --json puts the preset and resolved shapes before the figures', () => {
    const args = ['bench', 'train', '--preset', 'smollm2-135m', '--layers', '2', '--hidden', '64', '--heads', '4', '--kv-heads', '2', '--ffn', '128', '--vocab', '512', '--batch', '2', '--seq', '16', '--steps', '1', '--warmup', '0', '--json'];
    const r = JSON.parse(execFileSync('node', [CLI, ...args], { encoding: 'utf8' }));
    expect(Object.keys(r).slice(0, 12)).toEqual(['preset', 'layers', 'hidden', 'heads', 'kvHeads', 'ffn', 'vocab', 'tieWordEmbeddings', 'batch', 'seq', 'rank', 'targets']);
    expect(r).toMatchObject({ preset: 'smollm2-135m', layers: 2, tieWordEmbeddings: true, batch: 2, seq: 16, backend: 'wasm', peak_gpu_buffers_mib: null });
    expect(r.peak_heap_mib).toBeGreaterThan(0);
    expect(r.peak_rss_mib).toBeGreaterThan(r.peak_heap_mib);
  });
});
