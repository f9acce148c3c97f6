import { existsSync, realpathSync } from 'node:fs';
import { basename, dirname, isAbsolute, relative, resolve } from 'node:path';
import { lockFolder, type FolderLock } from './lock.js';

/**
 * The files that make a folder a model, adapter or gate molora would replace (the names of
 * base/checkpoint.ts, adapters/peft.ts, adapters/mixlora-io.ts and gating/gate-io.ts, which base/
 * does not import).
 */
const ARTIFACTS: [string, string][] = [
  ['model.safetensors', 'a model'],
  ['model.safetensors.index.json', 'a model'],
  ['config.json', 'a model'],
  ['adapter_model.safetensors', 'an adapter'],
  ['adapter_config.json', 'an adapter'],
  ['mixlora_config.json', 'a MixLoRA adapter'],
  ['gate_config.json', 'a gate'],
];

/** An input folder a command reads, by the flag that named it: ['--model', dir]. */
export type Input = [flag: string, dir: string];

export interface OutputSpec {
  /** The folder the command writes. */
  out: string;
  inputs?: Input[];
  /** Replace a model, adapter or gate already in `out` (--overwrite). */
  overwrite?: boolean;
  log?: (m: string) => void;
}

/**
 * Everything a writer checks before any work: `out` is none of its inputs, nor inside or around
 * one; it is locked for this process (which also proves it writable); and, unless overwriting,
 * it holds no model, adapter or gate. `check` replaces that last test (a training run's own rules).
 */
export function claimOutput(
  spec: OutputSpec,
  check = (out: string): void => {
    if (!spec.overwrite) refuseArtifact(out);
  },
): FolderLock {
  for (const [flag, dir] of spec.inputs ?? []) refuseOverlap(spec.out, flag, dir);
  const lock = lockFolder(spec.out, spec.log);
  try {
    check(spec.out);
  } catch (e) {
    lock.release();
    throw e;
  }
  return lock;
}

/** Throws if `out` holds a model, adapter or gate. */
export function refuseArtifact(out: string): void {
  const found = ARTIFACTS.find(([f]) => existsSync(resolve(out, f)));
  if (found) throw new Error(`${out} already holds ${found[1]} (${found[0]}); pass --overwrite to replace it, or choose another --out`);
}

function refuseOverlap(out: string, flag: string, input: string): void {
  const [o, i] = [real(out), real(input)];
  const inside = (a: string, b: string): boolean => {
    const r = relative(b, a);
    return r !== '' && !r.startsWith('..') && !isAbsolute(r);
  };
  const how = o === i ? 'is the same folder as' : inside(o, i) ? 'is inside' : inside(i, o) ? 'contains' : null;
  if (how) throw new Error(`--out ${out} ${how} ${flag} ${input}: writing there could destroy the input; choose another --out`);
}

/** The path with symlinks resolved as far as it exists, so two spellings of one folder compare equal. */
function real(p: string): string {
  const abs = resolve(p);
  if (existsSync(abs)) return realpathSync(abs);
  const parent = dirname(abs);
  return parent === abs ? abs : resolve(real(parent), basename(abs));
}
