import { loadBase } from '../base/load.js';
import { Rng } from '../base/rng.js';
import { writeDataRecord } from '../data/record.js';
import { createMixLora } from './mixlora.js';
import { saveMixLora } from './mixlora-io.js';
import { routingOn } from '../moe/train-moe.js';
import { trainLm, type LmTrainOptions } from '../train/lm.js';
import { inRunFolder, type TrainResult } from '../train/trainer.js';
import { createLora } from './adapter.js';
import type { Values } from '../base/options.js';
import { loraConfigFrom, MIXLORA_OPTIONS, mixLoraOf, type LoraConfigInput, type MixLoraOptions } from './lora-options.js';
import { saveAdapter } from './peft.js';

/**
 * MixLoRA's settings come flat, spelled as the CLI and recipes spell them (`moeExperts`, `topK`,
 * `moeAuxCoef`; MIXLORA_OPTIONS), or as the `mixlora` object createMixLora takes, not both.
 */
export interface TrainAdapterOptions extends LmTrainOptions, Partial<Values<typeof MIXLORA_OPTIONS>> {
  model: string;
  /** Adapter name (recorded in logs); defaults to the output folder's name. */
  name?: string;
  /** LoRA settings; left-out ones are DEFAULT_LORA's, and former names (r, loraAlpha…) are accepted. */
  lora?: LoraConfigInput;
  /** Train a MixLoRA adapter instead: LoRA experts in each FFN under a top-k router (src/adapters/mixlora.ts). */
  mixlora?: MixLoraOptions;
}

/**
 * `molora train-adapter`: a fresh LoRA adapter on the frozen base, trained on next-token loss
 * from CSV or JSONL. The output folder is a PEFT adapter plus metrics.jsonl and checkpoints; with
 * `mixlora`, a MixLoRA folder whose eval lines also log each layer's routing. Either records the
 * row format it was trained with in molora_data.json (data/record.ts).
 */
export function trainAdapter(o: TrainAdapterOptions): Promise<TrainResult> {
  return inRunFolder(o, [['--model', o.model]], () => trainIn(o));
}

async function trainIn(o: TrainAdapterOptions): Promise<TrainResult> {
  const model = loadBase(o.model, { warn: o.log, training: { batch: o.batchSize, seq: o.seqLen, trainableParams: 0 } });
  try {
    const lora = loraConfigFrom(o.lora, 'train-adapter options');
    // GPT-2's Conv1D layers store [in, out]; PEFT records that as fan_in_fan_out.
    const config = { ...lora, fanInFanOut: model.config.arch === 'gpt2', baseModel: lora.baseModel ?? o.model };
    const mixlora = mixLoraSettings(o);
    if (mixlora) {
      const mix = createMixLora(model, config, mixlora, o.name ?? o.out, new Rng(o.seed));
      mix.attach(model);
      try {
        return await trainLm(model, mix.params(), async (dir) => { await saveMixLora(mix, dir); writeDataRecord(dir, o); }, {
          ...o,
          onEval: async (step, data) => ({ ...(await o.onEval?.(step, data)), router: await routingOn(model, mix.ffns.map((f) => f.stats), data.dataset.val ?? data.dataset.train, o) }),
        });
      } finally {
        mix.dispose();
      }
    }
    const adapter = createLora(model, config, o.name ?? o.out, new Rng(o.seed));
    adapter.attach(model);
    try {
      return await trainLm(model, adapter.params(), async (dir) => { await saveAdapter(adapter, dir); writeDataRecord(dir, o); }, o);
    } finally {
      adapter.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** The MixLoRA settings, given flat or as `mixlora`; undefined for a plain LoRA run. */
function mixLoraSettings(o: TrainAdapterOptions): MixLoraOptions | undefined {
  const flat = (Object.keys(MIXLORA_OPTIONS) as (keyof typeof MIXLORA_OPTIONS)[]).filter((k) => o[k] !== undefined);
  if (flat.length === 0) return o.mixlora;
  if (o.mixlora) throw new Error(`give MixLoRA's settings flat (${flat.join(', ')}) or as mixlora, not both`);
  return mixLoraOf(o);
}
