import type * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { diskError, writeFileAtomic, writeJsonAtomic } from '../base/atomic.js';
import { readF32 } from '../base/host.js';
import type { RngState } from '../base/rng.js';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../base/safetensors.js';
import type { AdamW, AdamWState } from './optimizer.js';
import { SCHEDULE_KINDS, type ScheduleConfig } from './schedule.js';

/**
 * A training checkpoint is a folder `<outDir>/checkpoint-<step>/`:
 *   params.safetensors     the trained parameters, by the caller's names
 *   buffers.safetensors    non-trained state that must survive a resume (only if there is some)
 *   optimizer.safetensors  AdamW moments, `<name>.exp_avg` / `<name>.exp_avg_sq`
 *   state.json             step, epoch, RNG, data-sampler state, schedule, metrics
 *   …                      whatever the caller's save() writes (e.g. the PEFT adapter)
 * It is assembled in a temp folder and renamed into place, so a crash leaves either the whole
 * checkpoint or none; `<outDir>/latest` then names it.
 */
export const PARAMS_FILE = 'params.safetensors';
export const BUFFERS_FILE = 'buffers.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
export const LATEST_FILE = 'latest';
/**
 * The largest parameter magnitude a checkpoint takes. Trained weights sit many orders below it (and
 * F16 exports overflow at 65504); a run past it has diverged, though every value is still finite.
 */
export const MAX_PARAM = 1e6;
const FORMAT = 'molora-train-checkpoint';
const VERSION = 1;

export interface BestMetric {
  step: number;
  val_loss: number;
}

export interface TrainState {
  step: number;
  /** The data sampler's epoch, when it reports one. */
  epoch: number | null;
  rng: RngState;
  /** Opaque to the trainer: whatever the data sampler's state() returned. */
  sampler: unknown;
  schedule: ScheduleConfig;
  /** The last logged training/eval values, and the best validation loss so far. */
  last: Record<string, unknown> | null;
  best: BestMetric | null;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export interface CheckpointContents {
  state: TrainState;
  params: Map<string, tf.Variable>;
  buffers: Map<string, tf.Variable>;
  optimizer: AdamW;
  /** The caller's own artifact, written into the checkpoint folder before it is renamed into place. */
  extra?: (dir: string) => void | Promise<void>;
}

export function checkpointName(step: number): string {
  return `checkpoint-${step}`;
}

/**
 * Write `<outDir>/checkpoint-<step>` and point `latest` at it; returns its path. Refuses (and
 * writes nothing) when a parameter holds NaN or Inf or exceeds MAX_PARAM, so a good checkpoint is
 * never replaced by a diverged one.
 */
export async function saveCheckpoint(outDir: string, c: CheckpointContents): Promise<string> {
  const params = await hostTensors(c.params, 'parameter', MAX_PARAM);
  const buffers = await hostTensors(c.buffers, 'buffer', Infinity);
  const opt = await c.optimizer.state();
  const name = checkpointName(c.state.step);
  const final = join(outDir, name);
  const tmp = join(outDir, `.${name}.${process.pid}.tmp`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    writeSafetensors(join(tmp, PARAMS_FILE), params);
    if (c.buffers.size) writeSafetensors(join(tmp, BUFFERS_FILE), buffers);
    const moments: Record<string, TensorToWrite> = {};
    for (const [key, data] of Object.entries(opt.moments)) {
      moments[key] = { dtype: 'F32', shape: params[key.slice(0, key.lastIndexOf('.'))]!.shape, data };
    }
    writeSafetensors(join(tmp, OPTIMIZER_FILE), moments, { step: String(opt.step) });
    await c.extra?.(tmp);
    writeJsonAtomic(join(tmp, STATE_FILE), { format: FORMAT, version: VERSION, ...c.state });
    if (existsSync(final)) {
      // Re-saving a step (a resume from an earlier checkpoint): move the old one aside first.
      const old = join(outDir, `.${name}.${process.pid}.old`);
      rmSync(old, { recursive: true, force: true });
      renameSync(final, old);
      renameSync(tmp, final);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(tmp, final);
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw diskError(e, final, 'write the checkpoint');
  }
  writeFileAtomic(join(outDir, LATEST_FILE), name + '\n');
  return final;
}

/**
 * Temp folders and files a killed run left in its folder: checkpoints being assembled
 * (`.checkpoint-<step>.<pid>.tmp`) and writeFileAtomic's `.<file>.<pid>.<ms>.tmp`. Only safe to
 * call holding the folder's lock: then no other writer's temp can be there.
 */
const STALE_TEMP = /^\.(checkpoint-\d+|.+\.\d+)\.\d+\.tmp$/;

export function removeStaleTemps(outDir: string): void {
  for (const f of readdirSync(outDir)) if (STALE_TEMP.test(f)) rmSync(join(outDir, f), { recursive: true, force: true });
}

async function hostTensors(vars: Map<string, tf.Variable>, what: string, limit: number): Promise<Record<string, TensorToWrite>> {
  const out: Record<string, TensorToWrite> = {};
  for (const [name, v] of vars) {
    const data = await readF32(v);
    for (let i = 0; i < data.length; i++) {
      if (!(Number.isFinite(data[i]!) && Math.abs(data[i]!) <= limit)) throw new CheckpointError(`${what} '${name}' holds ${data[i]} at index ${i}`);
    }
    out[name] = { dtype: 'F32', shape: v.shape.slice(), data };
  }
  return out;
}

/**
 * The checkpoint folder `path` names: a checkpoint itself (it has state.json) or a run folder
 * (its `latest` file names one).
 */
export function resolveCheckpoint(path: string): string {
  if (!existsSync(path)) throw new CheckpointError(`${path}: not found`);
  if (!statSync(path).isDirectory()) throw new CheckpointError(`${path}: not a folder`);
  if (existsSync(join(path, STATE_FILE))) return path;
  const latest = join(path, LATEST_FILE);
  if (!existsSync(latest)) {
    throw new CheckpointError(`${path}: neither a checkpoint (no ${STATE_FILE}) nor a run folder (no ${LATEST_FILE} file)`);
  }
  const name = readFileSync(latest, 'utf8').trim();
  const dir = join(path, name);
  if (!name || name.includes('/') || !existsSync(join(dir, STATE_FILE))) {
    throw new CheckpointError(`${latest}: names '${name}', which is not a checkpoint folder in ${path}`);
  }
  return dir;
}

export interface LoadedCheckpoint {
  dir: string;
  state: TrainState;
  params: Map<string, Float32Array>;
  buffers: Map<string, Float32Array>;
  optimizer: AdamWState;
}

/**
 * Read and check a whole checkpoint against the variables it will be loaded into. Nothing is
 * assigned here: the caller applies it only once every file has passed.
 */
export function loadCheckpoint(dir: string, params: Map<string, tf.Variable>, buffers: Map<string, tf.Variable>): LoadedCheckpoint {
  const state = readState(join(dir, STATE_FILE));
  const p = readTensors(join(dir, PARAMS_FILE), params, (n) => n, 'trained parameter');
  const bufferFile = join(dir, BUFFERS_FILE);
  // A checkpoint with buffers the run does not declare is refused too (readTensors names them).
  const b = buffers.size || existsSync(bufferFile) ? readTensors(bufferFile, buffers, (n) => n, 'buffer') : new Map<string, Float32Array>();
  const moments = new Map<string, tf.Variable>();
  for (const [name, v] of params) {
    moments.set(`${name}.exp_avg`, v);
    moments.set(`${name}.exp_avg_sq`, v);
  }
  const m = readTensors(join(dir, OPTIMIZER_FILE), moments, (key) => key.slice(0, key.lastIndexOf('.')), 'optimizer moment');
  return { dir, state, params: p, buffers: b, optimizer: { step: state.step, moments: Object.fromEntries(m) } };
}

/** Every expected tensor present as F32 with the variable's shape, and nothing else. */
function readTensors(
  path: string,
  expected: Map<string, tf.Variable>,
  paramOf: (key: string) => string,
  what: string,
): Map<string, Float32Array> {
  if (!existsSync(path)) throw new CheckpointError(`${path}: missing`);
  const file = openSafetensors(path);
  const out = new Map<string, Float32Array>();
  for (const [key, v] of expected) {
    const info = file.tensors.get(key);
    if (!info) throw new CheckpointError(`${path}: has no tensor '${key}' for ${what} '${paramOf(key)}'`);
    if (info.dtype !== 'F32') throw new CheckpointError(`${path}: tensor '${key}' is ${info.dtype}, expected F32`);
    if (info.shape.length !== v.shape.length || info.shape.some((d, i) => d !== v.shape[i])) {
      throw new CheckpointError(`${path}: tensor '${key}' has shape [${info.shape}], this run's ${what} is [${v.shape}]`);
    }
    out.set(key, file.read(key).data as Float32Array);
  }
  const extra = [...file.tensors.keys()].filter((k) => !expected.has(k));
  if (extra.length) {
    throw new CheckpointError(`${path}: holds tensors this run does not have (${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', …' : ''}); was it written for a different model or adapter setup?`);
  }
  return out;
}

function readState(path: string): TrainState {
  if (!existsSync(path)) throw new CheckpointError(`${path}: missing`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new CheckpointError(`${path}: invalid JSON: ${(e as Error).message}`);
  }
  const bad = (msg: string): never => {
    throw new CheckpointError(`${path}: ${msg}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return bad('expected a JSON object');
  const s = raw as Record<string, unknown>;
  if (s.format !== FORMAT) bad(`not a molora training checkpoint (format ${JSON.stringify(s.format)})`);
  if (s.version !== VERSION) bad(`checkpoint version ${JSON.stringify(s.version)} is not supported (this molora reads ${VERSION})`);
  if (!Number.isInteger(s.step) || (s.step as number) < 0) bad(`'step' must be a non-negative integer`);
  if (s.epoch !== null && typeof s.epoch !== 'number') bad(`'epoch' must be a number or null`);
  const rng = s.rng;
  if (!Array.isArray(rng) || rng.length !== 4 || !rng.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32)) {
    bad(`'rng' must be four unsigned 32-bit integers`);
  }
  const sch = s.schedule as Record<string, unknown> | undefined;
  if (
    typeof sch !== 'object' || sch === null ||
    !(SCHEDULE_KINDS as readonly unknown[]).includes(sch.kind) ||
    !['lr', 'minLr', 'warmup', 'total'].every((k) => typeof sch[k] === 'number')
  ) {
    bad(`'schedule' must be {kind, lr, minLr, warmup, total}`);
  }
  const best = s.best as BestMetric | null;
  if (best !== null && (typeof best !== 'object' || typeof best.step !== 'number' || typeof best.val_loss !== 'number')) {
    bad(`'best' must be null or {step, val_loss}`);
  }
  if (s.last !== null && (typeof s.last !== 'object' || Array.isArray(s.last))) bad(`'last' must be null or an object`);
  return {
    step: s.step as number,
    epoch: s.epoch as number | null,
    rng: rng as RngState,
    sampler: s.sampler,
    schedule: sch as unknown as ScheduleConfig,
    last: s.last as Record<string, unknown> | null,
    best,
  };
}
