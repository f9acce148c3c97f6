import * as tf from '@tensorflow/tfjs';
import { installKernelPatches } from './kernels.js';
import { guardWasmHeap } from './memory.js';
import { prepareWasmThreads } from './wasm-threads.js';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';
export const BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  name: BackendName;
  /** Why this backend was chosen, for logs and `molora inspect`. */
  reason: string;
}

export interface BackendOptions {
  /** Explicit choice (the `--backend` flag); wins over MOLORA_BACKEND. */
  backend?: string;
  /** Where warnings go; stderr by default. */
  warn?: (msg: string) => void;
  /**
   * Threads for the wasm backend's matMuls (its threaded build, see wasm-threads.ts); wins over
   * MOLORA_THREADS. 1 (the default) runs the single-threaded build.
   */
  threads?: number;
}

let active: BackendInfo | null = null;

/**
 * Pick and start the tfjs backend: an explicit choice, then MOLORA_BACKEND, then the best one
 * importable (tfjs-node-gpu, tfjs-node, wasm). An explicit choice that cannot start is an error,
 * never a silent fallback; landing on the pure-JS cpu backend is always announced.
 */
export async function initBackend(opts: BackendOptions = {}): Promise<BackendInfo> {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const requested = opts.backend ?? process.env.MOLORA_BACKEND ?? '';
  if (requested && !BACKENDS.includes(requested as BackendName)) {
    throw new Error(`unknown backend '${requested}'; choose one of: ${BACKENDS.join(', ')}`);
  }
  // Once started, only an explicit choice switches: MOLORA_BACKEND is read at the first call.
  if (active && (!opts.backend || opts.backend === active.name)) return active;

  tf.enableProdMode();
  const threads = opts.threads ?? threadsFromEnv();
  let info: BackendInfo;
  if (requested) {
    if (!(await start(requested as BackendName, threads))) {
      throw new Error(`backend '${requested}' could not start${hint(requested as BackendName)}`);
    }
    info = { name: requested as BackendName, reason: opts.backend ? '--backend' : 'MOLORA_BACKEND' };
  } else if (await start('tensorflow')) {
    info = { name: 'tensorflow', reason: 'tfjs-node is installed' };
  } else if (await start('wasm', threads)) {
    info = { name: 'wasm', reason: 'default (no tfjs-node installed)' };
  } else if (await start('cpu')) {
    info = { name: 'cpu', reason: 'wasm failed to start' };
  } else {
    throw new Error('no tfjs backend could start');
  }
  if (info.name === 'cpu') {
    warn('WARNING: running on the pure-JS cpu backend, about 40x slower than wasm. ' +
      'Use --backend wasm, or install @tensorflow/tfjs-node(-gpu).');
  }
  // After setBackend: the wasm module has registered its kernels, so ours replace them.
  installKernelPatches();
  guardWasmHeap();
  active = info;
  return info;
}

export function activeBackend(): BackendInfo | null {
  return active;
}

async function start(name: BackendName, threads = 1): Promise<boolean> {
  let finish: (() => void) | null = null;
  try {
    if (name === 'tensorflow') {
      if (!(await importFirst(['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']))) return false;
    } else if (name === 'wasm') {
      await import('@tensorflow/tfjs-backend-wasm');
      if (threads > 1) finish = await prepareWasmThreads(threads);
    }
    return await tf.setBackend(name);
  } catch {
    return false;
  } finally {
    finish?.();
  }
}

/** MOLORA_THREADS, an integer ≥ 1, or 1 when unset. */
function threadsFromEnv(): number {
  const raw = process.env.MOLORA_THREADS;
  if (raw === undefined || raw === '') return 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`MOLORA_THREADS must be an integer ≥ 1, got '${raw}'`);
  return n;
}

async function importFirst(modules: string[]): Promise<boolean> {
  for (const m of modules) {
    try {
      await import(m);
      return true;
    } catch {
      // not installed: try the next
    }
  }
  return false;
}

function hint(name: BackendName): string {
  return name === 'tensorflow'
    ? ': install @tensorflow/tfjs-node-gpu (CUDA) or @tensorflow/tfjs-node'
    : '';
}
