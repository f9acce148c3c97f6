import * as tf from '@tensorflow/tfjs';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { diskError, makeDir, writeJsonAtomic } from './atomic.js';
import type { HostTensor } from './host-tensor.js';
import { concatF32, readHost } from './host.js';
import type { Linear } from './linear.js';
import { NormedProjection } from './llama.js';
import type { CausalLM } from './model.js';
import type { Norm } from './norm.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';
import { registeredSparseFfn } from './sparse-ffn.js';

export type SaveDtype = 'F32' | 'F16' | 'BF16';
export type { HostTensor };

/** The model's weights under their Hugging Face keys, in checkpoint orientation ([out, in] for nn.Linear). */
export async function modelTensors(model: CausalLM): Promise<Map<string, HostTensor>> {
  const p = model.parts;
  const out = new Map<string, HostTensor>();
  const put = async (key: string, t: tf.Tensor): Promise<void> => {
    out.set(key, { shape: t.shape, data: await readHost(() => t.clone()) });
  };
  const D = model.config.hidden;
  for (const e of [p.embed, p.posEmbed]) if (e) out.set(`${e.name}.weight`, { shape: [e.rows, D], data: await e.read() });
  // Packed MoE experts are written as the two packed tensors, not one key per expert linear.
  const sparse = registeredSparseFfn();
  const packed = sparse ? model.blocks.flatMap((b) => sparse.packedTensors(b.ffn) ?? []) : [];
  const inPacked = new Set(packed.flatMap((m) => m.linears));
  const linears = model.blocks.flatMap((b) => b.linears()).filter((l) => !inPacked.has(l));
  if (!model.config.tieWordEmbeddings) linears.push(p.head);
  for (const b of model.blocks) {
    const qkNorms: Norm[] = b.attn.linears().flatMap((l) => (l instanceof NormedProjection && l.norm ? [l.norm] : []));
    for (const n of [b.norm1, b.norm2, ...qkNorms]) {
      await put(`${n.name}.weight`, n.weight);
      if (n.bias) await put(`${n.name}.bias`, n.bias);
    }
  }
  for (const m of packed) for (const [key, t] of await m.tensors()) out.set(key, t);
  for (const l of linears) {
    if (l.conv1d) await put(`${l.name}.weight`, l.weightT);
    else out.set(`${l.name}.weight`, { shape: [l.outFeatures, l.inFeatures], data: await fileOrientation(l) });
    if (l.bias) await put(`${l.name}.bias`, l.bias);
  }
  await put(`${p.norm.name}.weight`, p.norm.weight);
  if (p.norm.bias) await put(`${p.norm.name}.bias`, p.norm.bias);
  return out;
}

/** An nn.Linear's weight [out, in]: each column block of weightT transposed is a block of its rows. */
async function fileOrientation(l: Linear): Promise<Float32Array> {
  const rows: Float32Array[] = [];
  for (const b of l.columnBlocks) rows.push(await readHost(() => b.transpose()));
  return concatF32(rows);
}

/**
 * Write a Hugging Face model folder: config.json, model.safetensors and, when the source folder
 * has them, its tokenizer files. Each file is written atomically, model.safetensors last: a folder
 * that has it is complete (recipes take it as the sign a step finished).
 */
export async function saveModel(model: CausalLM, dir: string, dtype: SaveDtype = 'F32'): Promise<void> {
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
  for (const [key, t] of await modelTensors(model)) files[key] = { dtype, shape: t.shape, data: t.data };
  writeSafetensors(join(dir, 'model.safetensors'), files, { format: 'pt' });
}
