import * as tf from '@tensorflow/tfjs';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { MoEFFN } from '../gating/moe.js';
import { diskError, makeDir, writeJsonAtomic } from './atomic.js';
import { NormedProjection } from './llama.js';
import type { CausalLM } from './model.js';
import { packedExpertTensors } from './moe-weights.js';
import type { Norm } from './norm.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';

export type SaveDtype = 'F32' | 'F16' | 'BF16';
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** The model's weights under their Hugging Face keys, in checkpoint orientation ([out, in] for nn.Linear). */
export function modelTensors(model: CausalLM): Map<string, HostTensor> {
  const p = model.parts;
  const out = new Map<string, HostTensor>();
  const put = (key: string, t: tf.Tensor, transpose = false): void => {
    const host = transpose ? tf.tidy(() => t.transpose()) : t;
    out.set(key, { shape: host.shape, data: host.dataSync() as Float32Array });
    if (transpose) host.dispose();
  };
  for (const e of p.posEmbed ? [p.embed, p.posEmbed] : [p.embed]) put(`${e.name}.weight`, e.table, e.layout === 'columns');
  // Packed MoE experts are written as the two packed tensors, not one key per expert linear.
  const packed = model.blocks.flatMap((b) => (b.ffn instanceof MoEFFN && b.ffn.layout === 'packed' ? [b.ffn] : []));
  const inPacked = new Set(packed.flatMap((m) => m.experts.flatMap((e) => e.linears())));
  const linears = model.blocks.flatMap((b) => b.linears()).filter((l) => !inPacked.has(l));
  if (!model.config.tieWordEmbeddings) linears.push(p.head);
  for (const b of model.blocks) {
    const qkNorms: Norm[] = b.attn.linears().flatMap((l) => (l instanceof NormedProjection && l.norm ? [l.norm] : []));
    for (const n of [b.norm1, b.norm2, ...qkNorms]) {
      put(`${n.name}.weight`, n.weight);
      if (n.bias) put(`${n.name}.bias`, n.bias);
    }
  }
  for (const m of packed) for (const [key, t] of packedExpertTensors(m)) out.set(key, t);
  for (const l of linears) {
    put(`${l.name}.weight`, l.weightT, !l.conv1d);
    if (l.bias) put(`${l.name}.bias`, l.bias);
  }
  put(`${p.norm.name}.weight`, p.norm.weight);
  if (p.norm.bias) put(`${p.norm.name}.bias`, p.norm.bias);
  return out;
}

/**
 * Write a Hugging Face model folder: config.json, model.safetensors and, when the source folder
 * has them, its tokenizer files. Each file is written atomically, model.safetensors last: a folder
 * that has it is complete (recipes take it as the sign a step finished).
 */
export function saveModel(model: CausalLM, dir: string, dtype: SaveDtype = 'F32'): void {
  makeDir(dir);
  const torchDtype = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype];
  writeJsonAtomic(join(dir, 'config.json'), { ...model.config.raw, torch_dtype: torchDtype });
  if (model.dir && model.dir !== dir) {
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json']) {
      const src = join(model.dir, f);
      try {
        if (existsSync(src)) copyFileSync(src, join(dir, f));
      } catch (e) {
        throw diskError(e, join(dir, f));
      }
    }
  }
  const files: Record<string, TensorToWrite> = {};
  for (const [key, t] of modelTensors(model)) files[key] = { dtype, shape: t.shape, data: t.data };
  writeSafetensors(join(dir, 'model.safetensors'), files, { format: 'pt' });
}
