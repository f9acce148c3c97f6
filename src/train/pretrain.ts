import * as tf from '@tensorflow/tfjs';
import { saveModel } from '../base/export.js';
import { loadBase } from '../base/load.js';
import type { CausalLM } from '../base/model.js';
import { trainLm, type LmTrainOptions } from './lm.js';
import { inRunFolder, type TrainResult } from './trainer.js';

export interface PretrainOptions extends LmTrainOptions {
  /** Model folder to start from (e.g. from init-base). */
  model: string;
}

/** A tensor field replaced by a trainable variable holding the same values. */
function trainable<K extends string>(owner: { readonly [k in K]: tf.Tensor }, key: K, name: string, out: Map<string, tf.Variable>): void {
  const old = owner[key];
  // The model's parts mark their weights readonly because inference never swaps them; full
  // training must, and every consumer reads the field at call time.
  const v = old instanceof tf.Variable ? old : tf.variable(old, true, `${name}_${out.size}`);
  (owner as Record<K, tf.Tensor>)[key] = v;
  if (v !== old) old.dispose();
  out.set(name, v);
}

/**
 * Every weight of the model as a trainable variable, in place, keyed by its Hugging Face name
 * (linear weights are held transposed, hence `.weight_t`). A tied head reads a transposed copy
 * of the embedding, which training the embedding would not update, so tied models are refused.
 */
export function allParams(model: CausalLM): Map<string, tf.Variable> {
  if (model.config.tieWordEmbeddings) {
    throw new Error(`pretrain: ${model.dir ?? 'the model'} ties lm_head to the embedding; full training needs an untied head (init-base without --tie)`);
  }
  const p = model.parts;
  const out = new Map<string, tf.Variable>();
  trainable(p.embed, 'weight', `${p.embed.name}.weight`, out);
  if (p.posEmbed) trainable(p.posEmbed, 'weight', `${p.posEmbed.name}.weight`, out);
  for (const b of model.blocks) {
    for (const n of [b.norm1, b.norm2]) {
      trainable(n, 'weight', `${n.name}.weight`, out);
      if (n.bias) trainable(n as { bias: tf.Tensor }, 'bias', `${n.name}.bias`, out);
    }
  }
  trainable(p.norm, 'weight', `${p.norm.name}.weight`, out);
  if (p.norm.bias) trainable(p.norm as { bias: tf.Tensor }, 'bias', `${p.norm.name}.bias`, out);
  for (const l of model.linears()) {
    out.set(`${l.name}.weight_t`, l.trainableWeight());
    if (l.bias) trainable(l as { bias: tf.Tensor }, 'bias', `${l.name}.bias`, out);
  }
  return out;
}

/**
 * `pretrain` (a recipe step): full-parameter next-token training of a model folder on CSV text
 * with the shared trainer (resume, checkpoints, progress, metrics.jsonl). The output folder is
 * the whole model in Hugging Face layout, tokenizer files included.
 */
export function pretrain(o: PretrainOptions): Promise<TrainResult> {
  return inRunFolder(o, [['--model', o.model]], async () => {
    const model = loadBase(o.model, { warn: o.log, training: { batch: o.batchSize, seq: o.seqLen, trainableParams: 'all' } });
    try {
      return await trainLm(model, allParams(model), (dir) => saveModel(model, dir), o);
    } finally {
      model.dispose();
    }
  });
}
