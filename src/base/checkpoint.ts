import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, isAbsolute } from 'node:path';
import { openSafetensors, SafetensorsError, type Dtype, type SafetensorsFile, type TensorInfo } from './safetensors.js';

/** The weights of a Hugging Face model folder, one file or many shards, read tensor by tensor. */
export interface Checkpoint {
  dir: string;
  /** Tensor names, in file (or weight_map) order. */
  keys(): string[];
  has(name: string): boolean;
  /** The file that holds `name`. */
  fileOf(name: string): string;
  read(name: string): { dtype: Dtype; shape: number[]; data: Float32Array | Int32Array | Uint8Array };
  info(name: string): TensorInfo;
  /** Reads after close() are errors: the caller said it was done with these weights. */
  close(): void;
}

const SINGLE = 'model.safetensors';
const INDEX = 'model.safetensors.index.json';
/** Extensions of torch.save / pickle weights, which can run arbitrary code when loaded. */
const PICKLE = /\.(bin|pt|pth|ckpt|pkl)$/;

/** tensor name -> the open file holding it, from the index's weight_map. */
function openShards(dir: string): Map<string, SafetensorsFile> {
  const indexPath = join(dir, INDEX);
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new SafetensorsError(indexPath, `cannot read the shard index (${(err as Error).message})`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new SafetensorsError(indexPath, 'has no "weight_map" object');
  }
  const shards = new Map<string, SafetensorsFile>();
  const byTensor = new Map<string, SafetensorsFile>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') throw new SafetensorsError(indexPath, `weight_map entry is not a file name`, tensor);
    let file = shards.get(shard);
    if (!file) {
      // The index is data from the hub: a shard name must not reach outside the folder.
      const path = resolve(dir, shard);
      const rel = relative(resolve(dir), path);
      if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
        throw new SafetensorsError(indexPath, `weight_map names shard '${shard}', which is outside the model folder`, tensor);
      }
      if (!existsSync(path)) throw new SafetensorsError(indexPath, `weight_map names shard '${shard}', which is missing`, tensor);
      file = openSafetensors(path);
      shards.set(shard, file);
    }
    if (!file.tensors.has(tensor)) throw new SafetensorsError(file.path, `is listed for this shard in ${INDEX} but the shard does not hold it`, tensor);
    byTensor.set(tensor, file);
  }
  return byTensor;
}

/** Why a folder has no weights we will load: pickle only, stray shards, or nothing. */
function noWeights(dir: string): SafetensorsError {
  const files = readdirSync(dir);
  const pickles = files.filter((f) => PICKLE.test(f));
  if (pickles.length > 0) {
    return new SafetensorsError(
      dir,
      `has only pickle weights (${pickles.join(', ')}), which molora refuses to load because unpickling can run arbitrary code: convert them to safetensors`,
    );
  }
  const stray = files.filter((f) => f.endsWith('.safetensors'));
  if (stray.length > 0) return new SafetensorsError(dir, `has ${stray.join(', ')} but neither ${SINGLE} nor ${INDEX}`);
  return new SafetensorsError(dir, `no weights file: expected ${SINGLE} or ${INDEX}`);
}

/** Open a model folder's weights: model.safetensors, else the shards listed in the index. */
export function openCheckpoint(dir: string): Checkpoint {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new SafetensorsError(dir, 'is not a folder');
  let byTensor: Map<string, SafetensorsFile>;
  if (existsSync(join(dir, SINGLE))) {
    // Transformers prefers the single file when both exist; so do we.
    const file = openSafetensors(join(dir, SINGLE));
    byTensor = new Map([...file.tensors.keys()].map((k) => [k, file]));
  } else if (existsSync(join(dir, INDEX))) {
    byTensor = openShards(dir);
  } else {
    throw noWeights(dir);
  }

  let closed = false;
  const fileFor = (name: string): SafetensorsFile => {
    if (closed) throw new SafetensorsError(dir, 'checkpoint was closed', name);
    const file = byTensor.get(name);
    if (!file) throw new SafetensorsError(dir, 'not in the checkpoint', name);
    return file;
  };
  return {
    dir,
    keys: () => [...byTensor.keys()],
    has: (name) => byTensor.has(name),
    fileOf: (name) => fileFor(name).path,
    info: (name) => {
      const info = fileFor(name).tensors.get(name)!;
      return { ...info, shape: info.shape.slice() };
    },
    read: (name) => fileFor(name).read(name),
    close: () => {
      closed = true;
    },
  };
}
