import { namedPaths, path, required, withHelp, type Values } from '../base/options.js';
import { COLUMN_OPTIONS, DATA_OPTIONS, LR_OPTION, TRAINER_OPTIONS } from '../train/train-options.js';
import { ROUTER_OPTIONS } from './routing-settings.js';
import { DEFAULT_GATE_LR } from './train-gate.js';

export { parseTemperature, ROUTER_OPTIONS, routerSettings, type RouterFlags } from './routing-settings.js';

/** `molora train-gate` and a recipe's train-gate step: every setting, in --help's order. */
export const TRAIN_GATE_OPTIONS = {
  model: required(path('base model folder')),
  experts: required(
    namedPaths('a frozen PEFT LoRA expert; repeat (at least 2); the order fixes the router columns. With --task-column, rows whose task equals an expert name teach the router', { flag: 'expert' }),
  ),
  out: required(path('output folder for the router', { scope: 'cli' })),
  ...ROUTER_OPTIONS,
  ...COLUMN_OPTIONS,
  ...DATA_OPTIONS,
  ...TRAINER_OPTIONS,
  // No fixed default: it depends on the router (gateLr).
  lr: withHelp(LR_OPTION, `peak learning rate (default: ${Object.entries(DEFAULT_GATE_LR).map(([r, lr]) => `${lr} for ${r}`).join(', ')})`, { default: undefined }),
} as const;

/** The learning rate a train-gate run uses: the one given, else its router's default. */
export function gateLr(lr: number | undefined, settings: { router?: keyof typeof DEFAULT_GATE_LR }): number {
  return lr ?? DEFAULT_GATE_LR[settings.router ?? 'prompt'];
}
