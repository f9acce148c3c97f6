import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

const require = createRequire(import.meta.url);
const BUILD = '@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd';

/**
 * tfjs-backend-wasm ships a threaded build (XNNPACK's products on a pthread pool over a shared
 * heap) that it turns off in Node (tfjs#3830). Three things stand in its way, each bridged here
 * only while the backend starts:
 * - the pthread workers are started from blob: URLs, which Node's Worker cannot load: the
 *   worker script goes to a temporary file, and the main script the workers import is the
 *   package's own threaded-simd.js;
 * - the C++ caps the pool at half the logical cores (it assumes two hyper-threads per core), so
 *   os.cpus() reports each core twice;
 * - idle pthread workers keep the process alive: they are unref'd, and the spare ones stopped.
 *
 * Call before tf.setBackend('wasm'); call the returned function once it has resolved (or failed).
 * `threads` is the pool size, main thread included.
 */
export async function prepareWasmThreads(threads: number): Promise<() => void> {
  if (!Number.isInteger(threads) || threads < 2) throw new Error(`wasm threads: need an integer ≥ 2, got ${threads}`);
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  const dir = mkdtempSync(join(tmpdir(), 'molora-wasm-'));
  const workerScript = join(dir, 'pthread-worker.js');
  // The package keeps the worker script as a string; tfjs escapes its newlines the same way
  // before making its blob.
  const { wasmWorkerContents } = require(`${BUILD}.worker.js`) as { wasmWorkerContents: string };
  writeFileSync(workerScript, wasmWorkerContents.replace(/\n/g, '\\n'));
  const mainScript = require.resolve(`${BUILD}.js`);

  const createObjectURL = URL.createObjectURL;
  const postMessage = Worker.prototype.postMessage;
  const cpus = os.cpus;
  URL.createObjectURL = () => workerScript;
  Worker.prototype.postMessage = function (this: Worker, msg: unknown, ...rest: unknown[]) {
    const m = msg as { cmd?: string; urlOrBlob?: unknown } | null;
    const fixed = m?.cmd === 'load' && typeof m.urlOrBlob !== 'string' ? { ...m, urlOrBlob: mainScript } : msg;
    return (postMessage as (...a: unknown[]) => void).call(this, fixed, ...rest);
  } as typeof Worker.prototype.postMessage;
  os.cpus = () => [...cpus(), ...cpus()];
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  wasm.setThreadsCount(threads);
  return () => {
    URL.createObjectURL = createObjectURL;
    Worker.prototype.postMessage = postMessage;
    os.cpus = cpus;
    rmSync(dir, { recursive: true, force: true });
    if (tf.getBackend() !== 'wasm') return;
    const pthreads = (tf.backend() as BackendWasm).wasm as unknown as { PThread?: { unusedWorkers: Worker[]; runningWorkers: Worker[] } };
    const pool = pthreads.PThread;
    if (!pool) return;
    // The pool's threads were made when the backend started; nothing makes threads later.
    for (const w of pool.unusedWorkers) void w.terminate();
    pool.unusedWorkers.length = 0;
    for (const w of pool.runningWorkers) w.unref();
  };
}

/** Threads the wasm backend runs its products on (1 without the threaded build). */
export function wasmThreadCount(): number {
  return tf.getBackend() === 'wasm' ? (tf.backend() as BackendWasm).wasm.tfjs.getThreadsCount() : 1;
}

/**
 * Put the wasm backend's products on one thread for the rest of the run: a new one-thread pool
 * replaces the global one (tfjs' init_with_threads_count). The old pool's threads sleep on; no
 * new thread is needed, which is why this only goes down (a bigger pool would need workers this
 * build can only start while the backend starts).
 */
export function dropToOneThread(): void {
  if (tf.getBackend() !== 'wasm') return;
  const module = (tf.backend() as BackendWasm).wasm;
  module.tfjs.initWithThreadsCount(1);
  if (module.tfjs.getThreadsCount() !== 1) throw new Error(`wasm threads: asked for 1, the pool has ${module.tfjs.getThreadsCount()}`);
}
