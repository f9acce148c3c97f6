import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openCheckpoint } from './checkpoint.js';
import { readConfig } from './config.js';
import { openSafetensors } from './safetensors.js';
import { weightCount } from './load.js';

export interface TensorSummary {
  name: string;
  dtype: string;
  shape: number[];
  file: string;
}

export interface FolderSummary {
  kind: 'model' | 'adapter';
  dir: string;
  /** model_type for a model, peft_type for an adapter. */
  type: string;
  architecture: Record<string, unknown>;
  parameters: number;
  dtypes: Record<string, number>;
  tensors: TensorSummary[];
}

/** What `molora inspect` shows: the folder's kind, architecture, size and every tensor. */
export function inspectFolder(dir: string): FolderSummary {
  const isAdapter = existsSync(join(dir, 'adapter_config.json'));
  if (!isAdapter && !existsSync(join(dir, 'config.json'))) {
    throw new Error(`${dir}: neither a model folder (config.json) nor an adapter folder (adapter_config.json)`);
  }
  const tensors = listTensors(dir, isAdapter ? 'adapter_model.safetensors' : undefined);
  const dtypes: Record<string, number> = {};
  let parameters = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + n;
    parameters += n;
  }
  if (isAdapter) {
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    return { kind: 'adapter', dir, type: String(cfg.peft_type ?? 'unknown'), architecture: cfg, parameters, dtypes, tensors };
  }
  const cfg = readConfig(dir);
  const { raw: _raw, ...architecture } = cfg;
  return {
    kind: 'model',
    dir,
    type: cfg.modelType,
    architecture: { ...architecture, expectedParameters: weightCount(cfg) },
    parameters,
    dtypes,
    tensors,
  };
}

function listTensors(dir: string, adapterFile?: string): TensorSummary[] {
  if (adapterFile) {
    const path = join(dir, adapterFile);
    const st = openSafetensors(path);
    return [...st.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, file: path }));
  }
  const ckpt = openCheckpoint(dir);
  try {
    return ckpt.keys().map((name) => {
      const info = ckpt.info(name);
      return { name, dtype: info.dtype, shape: info.shape, file: ckpt.fileOf(name) };
    });
  } finally {
    ckpt.close();
  }
}
