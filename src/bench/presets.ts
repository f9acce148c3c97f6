import type { ModelShape } from './forward.js';

/** A benchmark model's shapes and the batch it is usually measured at. */
export interface BenchShape extends ModelShape {
  batch: number;
  seq: number;
}

export interface BenchPreset extends BenchShape {
  about: string;
}

/**
 * Published model shapes, so nobody types them. The batches are the ones issue 13's CPU table
 * was measured at (the 360M and 1B shapes fit the WASM heap only at one row); GPU runs pass
 * their own --batch/--seq. Every head dimension is 64, as in the real models.
 */
export const PRESETS = {
  peer: {
    about: "../shared/peers/torch_lora_step.py's defaults",
    layers: 4, hidden: 256, heads: 4, kvHeads: 4, ffn: 688, vocab: 2048, tieWordEmbeddings: false,
    batch: 4, seq: 128,
  },
  'smollm2-135m': {
    about: 'SmolLM2-135M',
    layers: 30, hidden: 576, heads: 9, kvHeads: 3, ffn: 1536, vocab: 49152, tieWordEmbeddings: true,
    batch: 2, seq: 128,
  },
  'smollm2-360m': {
    about: 'SmolLM2-360M',
    layers: 32, hidden: 960, heads: 15, kvHeads: 5, ffn: 2560, vocab: 49152, tieWordEmbeddings: true,
    batch: 1, seq: 128,
  },
  'llama-1b': {
    about: 'Llama-3.2-1B',
    layers: 16, hidden: 2048, heads: 32, kvHeads: 8, ffn: 8192, vocab: 128256, tieWordEmbeddings: true,
    batch: 1, seq: 128,
  },
} as const satisfies Record<string, BenchPreset>;

export type PresetName = keyof typeof PRESETS;
export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[];

/** With no --preset, the shape flags default to the peer's, as they always did. */
export const DEFAULT_PRESET: PresetName = 'peer';

/** Shape flags as given: undefined means "not given", so the preset's value stands. */
export type BenchShapeFlags = Partial<BenchShape> & { preset?: PresetName };

/** The preset's shape (the peer's without one), with every flag that was given put over it. */
export function resolveBenchShape(flags: BenchShapeFlags): BenchShape {
  const { about: _about, ...base } = PRESETS[flags.preset ?? DEFAULT_PRESET];
  const given = Object.fromEntries(
    (Object.keys(base) as (keyof BenchShape)[]).filter((k) => flags[k] !== undefined).map((k) => [k, flags[k]]),
  ) as Partial<BenchShape>;
  return { ...base, ...given };
}

/** One line per preset, for --help. */
export function presetHelp(): string {
  return PRESET_NAMES.map((n) => {
    const p = PRESETS[n];
    return `  ${n.padEnd(13)} ${p.about}: ${p.layers} layers, hidden ${p.hidden}, ${p.heads}/${p.kvHeads} heads, FFN ${p.ffn}, vocab ${p.vocab}` +
      `${p.tieWordEmbeddings ? ', tied head' : ''}; batch ${p.batch} × seq ${p.seq}`;
  }).join('\n');
}
