import * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraAdapter } from '../adapters/adapter.js';
import { loraConfigJson } from '../adapters/config.js';
import { transposedTensors } from '../adapters/peft.js';
import { writeJsonAtomic } from '../base/atomic.js';
import { readF32 } from '../base/host.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../base/safetensors.js';
import type { MoleComposition } from './composition.js';
import { gateGroups, gateKey, MoleGate, MoleGates, TAU_MIN, validateGateOptions, type GateOptions } from './mole.js';

/**
 * A gate folder: gate_config.json (experts with fingerprints, level, granularity, top-k,
 * temperature, balance α, gated modules) and gate.safetensors (per gate `<gate>.mole_gate.e`
 * [N·out, N] and, for a learned temperature, the scalar `<gate>.mole_gate.rho`, τ = TAU_MIN +
 * softplus(ρ)). A gate only fits the experts it was trained with, so loading checks each one.
 */
export const GATE_CONFIG = 'gate_config.json';
export const GATE_WEIGHTS = 'gate.safetensors';
const FORMAT = 'molora.mole_gate';
const VERSION = 1;

export class GateFolderError extends Error {}

/**
 * What identifies an expert: sha256 of its adapter_config.json as PEFT would write it (so
 * formatting and ignored keys do not count), and sha256 of its tensors in PEFT's layout
 * (name, shape and float32 bytes of each, in name order).
 */
export interface ExpertFingerprint {
  config: string;
  tensors: string;
}

export async function expertFingerprint(adapter: LoraAdapter): Promise<ExpertFingerprint> {
  const config = createHash('sha256').update(JSON.stringify(loraConfigJson(adapter.config))).digest('hex');
  const h = createHash('sha256');
  const tensors = await transposedTensors(adapter.params());
  for (const key of Object.keys(tensors).sort()) {
    const t = tensors[key]!;
    h.update(`${key}\0${t.dtype}\0${t.shape.join(',')}\0`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return { config, tensors: h.digest('hex') };
}

interface GateConfigJson {
  format: string;
  version: number;
  experts: { name: string; config_sha256: string; tensors_sha256: string }[];
  level: GateOptions['level'];
  granularity: GateOptions['granularity'];
  top_k: number | null;
  temperature: { mode: 'learned'; tau_min: number } | { mode: 'fixed'; value: number };
  balance_alpha: number;
  modules: string[];
  gates: { name: string; modules: string[] }[];
}

/** Write the composition's gate to `dir`, each file atomically. */
export async function saveGate(composition: MoleComposition, dir: string): Promise<void> {
  const gates = composition.gate;
  if (!gates) throw new GateFolderError('save gate: the composition mixes with static weights, it has no gate');
  const o = gates.options;
  const tensors: Record<string, TensorToWrite> = {};
  for (const [key, v] of gates.params()) tensors[key] = { dtype: 'F32', shape: v.shape, data: await readF32(v) };
  const config: GateConfigJson = {
    format: FORMAT,
    version: VERSION,
    experts: await expertRecords(composition),
    level: o.level,
    granularity: o.granularity,
    top_k: o.topK,
    temperature: o.temperature.mode === 'learned' ? { mode: 'learned', tau_min: TAU_MIN } : { mode: 'fixed', value: o.temperature.value },
    balance_alpha: o.balanceAlpha,
    modules: gates.modules,
    gates: gates.gates.map((g) => ({ name: g.name, modules: [...g.modules] })),
  };
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, GATE_WEIGHTS), tensors, { format: 'pt' });
  writeJsonAtomic(join(dir, GATE_CONFIG), config);
}

/**
 * Load the gate in `dir` and put it in use. The composition must hold exactly the gate's experts,
 * unchanged (by fingerprint); their order may differ (the gate's tensors are permuted to it).
 */
export async function loadGate(composition: MoleComposition, dir: string): Promise<MoleGates> {
  const configPath = join(dir, GATE_CONFIG);
  const cfg = readGateConfig(configPath);
  const fail = (msg: string): never => {
    throw new GateFolderError(`gate ${dir}: ${msg}`);
  };
  const trained = cfg.experts.map((e) => e.name);
  const loaded = composition.experts;
  await checkExperts(composition, cfg.experts, fail);
  const modules = composition.gatedModules();
  if (cfg.modules.join('\n') !== modules.join('\n')) fail(`gates modules [${cfg.modules.join(', ')}], the experts adapt [${modules.join(', ')}] on this base`);

  const options: GateOptions = {
    level: cfg.level,
    granularity: cfg.granularity,
    topK: cfg.top_k,
    temperature: cfg.temperature.mode === 'learned' ? { mode: 'learned' } : { mode: 'fixed', value: cfg.temperature.value },
    balanceAlpha: cfg.balance_alpha,
  };
  const groups = gateGroups(cfg.modules, cfg.level);
  if (JSON.stringify(groups) !== JSON.stringify(cfg.gates)) fail(`its gates ${JSON.stringify(cfg.gates.map((g) => g.name))} do not follow from level '${cfg.level}' over its modules`);

  const weightsPath = join(dir, GATE_WEIGHTS);
  if (!existsSync(weightsPath)) fail(`${GATE_WEIGHTS} not found`);
  const file = openSafetensors(weightsPath);
  const expected = new Set(groups.flatMap((g) => [gateKey(g.name, 'e'), ...(options.temperature.mode === 'learned' ? [gateKey(g.name, 'rho')] : [])]));
  for (const key of file.tensors.keys()) if (!expected.has(key)) fail(`${GATE_WEIGHTS} holds unexpected tensor '${key}'`);
  const N = trained.length;
  // Column/row-block i of the composition's gate is expert order[i] of the file.
  const order = loaded.map((name) => trained.indexOf(name));
  const out = new Map(composition.model.linears().map((l) => [l.name, l.outFeatures]));
  const built: MoleGate[] = [];
  try {
    for (const g of groups) {
      const width = out.get(g.modules[0]!)!;
      const e = readTensor(file, gateKey(g.name, 'e'), [N * width, N], fail);
      const rho = options.temperature.mode === 'learned' ? readTensor(file, gateKey(g.name, 'rho'), [], fail) : null;
      const eVar = tf.tidy(() => tf.variable(tf.tensor2d(permute(e, order, width), [N * width, N]), true));
      const rhoVar = rho ? tf.tidy(() => tf.variable(tf.scalar(rho[0]!), true)) : null;
      built.push(new MoleGate(g.name, g.modules, eVar, rhoVar, options.temperature.mode === 'fixed' ? options.temperature.value : null));
    }
  } catch (err) {
    for (const g of built) g.dispose();
    throw err;
  }
  const gates = new MoleGates(loaded, options, built);
  composition.useGate(gates);
  return gates;
}

export type ExpertRecord = GateConfigJson['experts'][number];

/** The records of the composition's experts, in its order, as gate and router configs store them. */
export async function expertRecords(composition: MoleComposition): Promise<ExpertRecord[]> {
  const records: ExpertRecord[] = [];
  for (const name of composition.experts) {
    const f = await expertFingerprint(composition.expert(name));
    records.push({ name, config_sha256: f.config, tensors_sha256: f.tensors });
  }
  return records;
}

/** The composition must hold exactly the recorded experts (any order), each unchanged by fingerprint. */
export async function checkExperts(composition: MoleComposition, records: readonly ExpertRecord[], fail: (msg: string) => never): Promise<void> {
  const trained = records.map((e) => e.name);
  const loaded = composition.experts;
  for (const e of records) {
    if (!loaded.includes(e.name)) fail(`expert '${e.name}' is missing: the gate was trained with [${trained.join(', ')}], the composition has [${loaded.join(', ')}]`);
    const f = await expertFingerprint(composition.expert(e.name));
    if (f.config !== e.config_sha256) fail(`expert '${e.name}' changed: its adapter_config.json differs from the one the gate was trained with (sha256 ${short(f.config)}, expected ${short(e.config_sha256)})`);
    if (f.tensors !== e.tensors_sha256) fail(`expert '${e.name}' changed: its tensors differ from the ones the gate was trained with (sha256 ${short(f.tensors)}, expected ${short(e.tensors_sha256)})`);
  }
  for (const name of loaded) {
    if (!trained.includes(name)) fail(`expert '${name}' is extra: the gate was trained with [${trained.join(', ')}] only`);
  }
}

function short(sha: string): string {
  return `${sha.slice(0, 12)}…`;
}

/** A float tensor of gate.safetensors with exactly this shape, or `fail` naming what is wrong. */
export function readTensor(file: ReturnType<typeof openSafetensors>, key: string, shape: number[], fail: (m: string) => never): Float32Array {
  if (!file.tensors.has(key)) fail(`${GATE_WEIGHTS} lacks tensor '${key}'`);
  const t = file.read(key);
  if (t.shape.join(',') !== shape.join(',')) fail(`tensor '${key}' has shape [${t.shape}], this base and these experts need [${shape}]`);
  if (!(t.data instanceof Float32Array)) fail(`tensor '${key}' has dtype ${t.dtype}, expected a float type`);
  return t.data as Float32Array;
}

/** e [N·width, N] in file expert order → composition order: new block/column i = old order[i]. */
function permute(e: Float32Array, order: number[], width: number): Float32Array {
  const N = order.length;
  const outE = new Float32Array(e.length);
  for (let i = 0; i < N; i++) {
    for (let r = 0; r < width; r++) {
      const src = (order[i]! * width + r) * N;
      const dst = (i * width + r) * N;
      for (let j = 0; j < N; j++) outE[dst + j] = e[src + order[j]!]!;
    }
  }
  return outE;
}

function readGateConfig(path: string): GateConfigJson {
  if (!existsSync(path)) throw new GateFolderError(`${path}: not found (is this a gate folder?)`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new GateFolderError(`${path}: invalid JSON: ${(e as Error).message}`);
  }
  const bad = (msg: string): never => {
    throw new GateFolderError(`${path}: ${msg}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('expected a JSON object');
  const c = raw as GateConfigJson;
  if (c.format !== FORMAT) bad(`format ${JSON.stringify(c.format)} is not ${JSON.stringify(FORMAT)}`);
  if (c.version !== VERSION) bad(`version ${JSON.stringify(c.version)} is not supported (this molora reads ${VERSION})`);
  const strings = (v: unknown): boolean => Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (!Array.isArray(c.experts) || c.experts.length === 0) bad('experts must be a non-empty list');
  for (const e of c.experts) {
    if (typeof e?.name !== 'string' || typeof e.config_sha256 !== 'string' || typeof e.tensors_sha256 !== 'string') {
      bad('each expert needs a name, config_sha256 and tensors_sha256');
    }
  }
  if (new Set(c.experts.map((e) => e.name)).size !== c.experts.length) bad('expert names repeat');
  if (!strings(c.modules) || c.modules.length === 0) bad('modules must be a non-empty list of module names');
  if (!Array.isArray(c.gates) || !c.gates.every((g) => typeof g?.name === 'string' && strings(g.modules))) bad('gates must list {name, modules}');
  const t = c.temperature;
  if (t?.mode === 'learned' && t.tau_min !== TAU_MIN) bad(`tau_min ${t.tau_min} differs from this molora's ${TAU_MIN}`);
  if (t?.mode !== 'learned' && t?.mode !== 'fixed') bad(`temperature.mode must be 'learned' or 'fixed'`);
  try {
    validateGateOptions(
      { level: c.level, granularity: c.granularity, topK: c.top_k ?? null, temperature: t, balanceAlpha: c.balance_alpha },
      c.experts.length,
    );
  } catch (e) {
    bad((e as Error).message);
  }
  return { ...c, top_k: c.top_k ?? null };
}
