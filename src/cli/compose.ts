import type { Command } from 'commander';
import { loadBase } from '../base/load.js';
import { attachAdapterFolders } from '../adapters/mixlora-io.js';
import { maskExperts, parseExpertMask } from '../moe/moe.js';
import { applyProfile, profileFor, readProfiles } from '../gating/profile.js';
import { MoleModel } from '../gating/mole-model.js';
import { collect, int, nameList, namedNumbers, namedPaths } from './args.js';
import { servedFormat, type DataFormat } from '../data/record.js';
import { addColumnFlags, readFormatFlags } from './train.js';

/** The flags that choose what runs on the base: plain adapters, or experts with a gate, weights, a mask or a profile. */
export interface ComposeFlags {
  model: string;
  adapter?: string[];
  expert?: [string, string][];
  gate?: string;
  weights?: Record<string, number>;
  mask?: string[];
  only?: string;
  profile?: string;
  task?: string;
  maskExperts?: string;
}

export function addComposeFlags(c: Command): Command {
  return c
    .option('--adapter <dir>', 'PEFT LoRA (or MixLoRA) adapter folder, always on; repeat to sum several', collect, [])
    .option('--expert <name=dir>', 'a frozen LoRA expert for MoLE composition; repeat', namedPaths, [])
    .option('--gate <dir>', 'a trained gate folder (gate_config.json + gate.safetensors) over the --expert set')
    .option('--weights <name=w,…>', "static mix instead of a gate: each expert's share, ≥ 0 and summing to 1, e.g. a=0.5,b=0.5 (unnamed experts get 0). Without --gate or --weights every expert adds at full strength", namedNumbers)
    .option('--mask <names>', 'drop these experts and renormalise the remaining gate weights or --weights shares; dropping every expert is an error', nameList)
    .option('--only <name>', 'keep a single expert, at full strength')
    .option('--profile <file>', 'per-task profiles JSON: {"tasks": {"<task>": {"experts": {…}, "gate"?, "weights"?, "mask"?, "only"?}}}')
    .option('--task <name>', 'the profile to use (with --profile)')
    .option('--mask-experts <spec>', 'sparse MoE models: drop routed experts everywhere (3,5) or per layer (0:3,1:5); top-k renormalises over the rest');
}

/** The data flags of the commands that run a model over data without training (eval, gates). */
export function addScoringFlags(c: Command): Command {
  return addColumnFlags(c).option('--seq-len <n>', 'longest sequence; a longer prompt/completion row keeps its whole completion and the end of its prompt', int(2), 256);
}

/** The adapter folders the flags put on the base (plain adapters and experts), whose recorded row formats apply. */
export function adapterDirs(o: ComposeFlags): string[] {
  return [...(o.adapter ?? []), ...(o.expert ?? []).map(([, dir]) => dir)];
}

/** The row format to score with: the format flags (@files read), else what the adapters in use recorded (servedFormat). */
export function scoringFormat(o: ComposeFlags & DataFormat, warn: (msg: string) => void = (m) => process.stderr.write(`molora: ${m}\n`)): DataFormat {
  const given = readFormatFlags(o, warn);
  return servedFormat(Object.keys(given).length ? given : null, adapterDirs(o), warn) ?? {};
}

/** The base with its adapters and expert composition, as the flags ask. */
export async function openComposed(o: ComposeFlags): Promise<MoleModel> {
  const experts = o.expert ?? [];
  if ((o.gate || o.weights || o.mask || o.only) && experts.length === 0 && !o.profile) {
    throw new Error('--gate, --weights, --mask and --only act on experts: add --expert NAME=DIR');
  }
  if (o.gate && o.weights) throw new Error('give --gate or --weights, not both');
  if (o.mask && o.only) throw new Error('give --mask or --only, not both');
  if (!o.profile !== !o.task) throw new Error('--profile and --task go together');
  const base = loadBase(o.model);
  const m = new MoleModel(base);
  try {
    attachAdapterFolders(base, o.adapter ?? []);
    if (o.profile) await applyProfile(m, profileFor(readProfiles(o.profile), o.task!));
    for (const [name, dir] of experts) m.addExpert(name, dir);
    if (o.gate) await m.useGate(o.gate);
    else if (o.weights) m.useWeights(o.weights);
    if (o.only) m.soloExpert(o.only);
    else if (o.mask) m.mask(o.mask);
    if (o.maskExperts) maskExperts(base, parseExpertMask(o.maskExperts));
  } catch (e) {
    m.dispose();
    throw e;
  }
  return m;
}
