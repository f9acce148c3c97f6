import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import type { MoleModel } from './mole-model.js';

/**
 * One task's composition: the experts (name → PEFT adapter folder), then either a gate folder or
 * static weights (neither: the plain sum), and optionally experts to drop (`mask`, renormalising
 * the rest) or a single expert to keep (`only`).
 */
export interface ProfileEntry {
  experts: Record<string, string>;
  gate?: string;
  weights?: Record<string, number>;
  mask?: string[];
  only?: string;
}

/**
 * A profiles file: `{"tasks": {"<task>": ProfileEntry}}`. Relative folders resolve against the
 * file's own folder, so a run directory can carry its profiles with it.
 */
export interface Profiles {
  file: string;
  tasks: Record<string, ProfileEntry>;
}

export function readProfiles(file: string): Profiles {
  if (!existsSync(file)) throw new Error(`${file}: profiles file not found`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: invalid JSON: ${(e as Error).message}`);
  }
  const tasks = (raw as { tasks?: unknown })?.tasks;
  if (typeof tasks !== 'object' || tasks === null || Array.isArray(tasks)) throw new Error(`${file}: expected {"tasks": {"<task>": {...}}}`);
  const base = dirname(file);
  const resolve = (p: string): string => (isAbsolute(p) ? p : join(base, p));
  const out: Record<string, ProfileEntry> = {};
  for (const [task, e] of Object.entries(tasks as Record<string, Partial<ProfileEntry>>)) {
    const bad = (msg: string): never => {
      throw new Error(`${file}: task '${task}': ${msg}`);
    };
    if (typeof e?.experts !== 'object' || e.experts === null || Object.keys(e.experts).length === 0) bad('"experts" must map expert names to adapter folders');
    if (e.gate !== undefined && e.weights !== undefined) bad('give "gate" or "weights", not both');
    if (e.mask !== undefined && e.only !== undefined) bad('give "mask" or "only", not both');
    const names = Object.keys(e.experts!);
    for (const n of [...(e.mask ?? []), ...(e.only ? [e.only] : []), ...Object.keys(e.weights ?? {})]) {
      if (!names.includes(n)) bad(`'${n}' is not one of its experts (${names.join(', ')})`);
    }
    out[task] = {
      ...e,
      experts: Object.fromEntries(Object.entries(e.experts!).map(([n, d]) => [n, resolve(d)])),
      gate: e.gate === undefined ? undefined : resolve(e.gate),
    } as ProfileEntry;
  }
  return { file, tasks: out };
}

export function profileFor(p: Profiles, task: string): ProfileEntry {
  const e = p.tasks[task];
  if (!e) throw new Error(`${p.file}: no task '${task}' (tasks: ${Object.keys(p.tasks).join(', ')})`);
  return e;
}

/** Switch a model to a profile: experts are reloaded from their folders, the base never is. */
export async function applyProfile(m: MoleModel, e: ProfileEntry): Promise<void> {
  const c = m.composition;
  c.mask(null);
  // Back to the plain sum: a gate or router is over the old experts, and old shares by name
  // would give the new experts weight 0.
  c.useWeights(null);
  for (const name of c.experts) m.removeExpert(name);
  for (const [name, dir] of Object.entries(e.experts)) m.addExpert(name, dir);
  if (e.gate) await m.useGate(e.gate);
  else if (e.weights) m.useWeights(e.weights);
  if (e.only) m.soloExpert(e.only);
  else if (e.mask) m.mask(e.mask);
}
