import * as tf from '@tensorflow/tfjs';
import { installKernelPatches } from './kernels.js';
import { guardWasmHeap } from './memory.js';
import { chooseThreads, isThreadCount, parseThreadSetting, type ThreadChoice, type ThreadSetting } from './threads.js';
import { guardThreads } from './thread-guard.js';
import { dropToOneThread, prepareWasmThreads } from './wasm-threads.js';
import { defaultImporter, describeAdapter, startWebGpu, webGpuAdapter, WebGpuUnavailable, type AdapterSummary, type Importer, type StartOptions } from './webgpu.js';

export type BackendName = 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export const BACKENDS: readonly BackendName[] = ['tensorflow', 'webgpu', 'wasm', 'cpu'];

export interface BackendInfo {
  name: BackendName;
  /** Why this backend was chosen, for logs and `molora inspect`. */
  reason: string;
  /** The GPU behind webgpu (absent on the other backends). */
  adapter?: AdapterSummary;
  /** wasm only: the threads its products run on, and why that many (threads.ts). */
  threads?: ThreadChoice;
}

export interface BackendOptions {
  /** Explicit choice (the `--backend` flag); wins over MOLORA_BACKEND. */
  backend?: string;
  /** Where warnings and the GPU line go; stderr by default. */
  warn?: (msg: string) => void;
  /** Loads the optional packages (tfjs-node, webgpu); tests inject a failing one to play "not installed". */
  importer?: Importer;
  /** Whether the machine has a GPU device node, which the automatic order checks before starting Dawn; tests inject one. */
  gpuDevicePresent?: () => boolean;
  /**
   * Threads for the wasm backend's products (its threaded build, see wasm-threads.ts); wins over
   * MOLORA_THREADS. 'auto' (the default) takes the idle cores for a model big enough to gain
   * (threads.ts), else one thread, the single-threaded build.
   */
  threads?: ThreadSetting;
  /** The model's hidden size, for 'auto' threads; unknown means one thread. */
  hiddenSize?: number;
}

let active: BackendInfo | null = null;

/**
 * Pick and start the tfjs backend: an explicit choice, then MOLORA_BACKEND, then the best one
 * that starts: tfjs-node(-gpu), webgpu on a hardware adapter, wasm, and the pure-JS cpu backend
 * (announced). An explicit choice that cannot start is an error saying why, never a silent
 * fallback.
 */
export async function initBackend(opts: BackendOptions = {}): Promise<BackendInfo> {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const importer = opts.importer ?? defaultImporter;
  const requested = opts.backend ?? process.env.MOLORA_BACKEND ?? '';
  if (requested && !BACKENDS.includes(requested as BackendName)) {
    throw new Error(`unknown backend '${requested}'; choose one of: ${BACKENDS.join(', ')}`);
  }
  // Once started, only an explicit choice switches: MOLORA_BACKEND is read at the first call.
  if (active && (!opts.backend || opts.backend === active.name)) return active;

  tf.enableProdMode();
  const threads = await wasmThreads(requested, opts);
  const probe = { importer, warn, gpuDevicePresent: opts.gpuDevicePresent, threads: threads.count };
  const info = requested ? await forced(requested as BackendName, opts.backend ? '--backend' : 'MOLORA_BACKEND', probe) : await automatic(probe);
  if (info.name === 'wasm') announceThreads(info, threads, warn);
  if (info.name === 'cpu') {
    warn('WARNING: running on the pure-JS cpu backend, about 40x slower than wasm. ' +
      'Use --backend wasm, or install @tensorflow/tfjs-node(-gpu).');
  }
  if (info.adapter) warn(`webgpu on ${describeAdapter(info.adapter)}`);
  // After setBackend: the wasm module has registered its kernels, so ours replace them (and
  // loading a backend package may have re-registered tfjs's stock gradients over ours).
  installKernelPatches();
  guardWasmHeap();
  active = info;
  return info;
}

export function activeBackend(): BackendInfo | null {
  return active;
}

/**
 * Refuse to build a model before initBackend: tfjs would run it on its pure-JS cpu backend
 * (about 40× slower than wasm) or, after a bare tf.setBackend('wasm'), without molora's kernel
 * fixes, some of which correct wrong numbers (kernels.ts). `what` names the work refused.
 */
export function requireBackend(what: string): void {
  if (active) return;
  throw new Error(`${what}: no backend started; call \`await initBackend()\` (exported by molora) first. ` +
    `Without it tfjs runs on its pure-JS cpu backend, about 40× slower than wasm, without molora's kernel fixes`);
}

/** What a benchmark's --json says about where it ran: the backend and, on webgpu, the adapter. */
export interface BackendReport {
  backend: string;
  adapter: AdapterSummary | null;
}

export function backendReport(): BackendReport {
  return { backend: tf.getBackend(), adapter: webGpuAdapter() };
}

/**
 * Whether tensors live in host memory, so a synchronous read is a copy: true on wasm, cpu and
 * tfjs-node, false on webgpu, where it throws (a GPU buffer cannot be mapped synchronously).
 * Plans that need host values mid-pass (the sparse MoE dispatch) run only where this holds.
 */
export function tensorsOnHost(): boolean {
  return tf.getBackend() !== 'webgpu';
}

type Probe = Omit<StartOptions, 'hardwareOnly'> & { importer: Importer; threads: number };

async function forced(name: BackendName, reason: string, probe: Probe): Promise<BackendInfo> {
  if (name === 'webgpu') {
    try {
      return { name, reason, adapter: await startWebGpu({ ...probe, hardwareOnly: false }) };
    } catch (e) {
      throw new Error(`backend 'webgpu' could not start: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (!(await start(name, probe.importer, probe.threads))) throw new Error(`backend '${name}' could not start${hint(name)}`);
  return { name, reason };
}

/** tensorflow → webgpu (hardware adapters only) → wasm → cpu. */
async function automatic(probe: Probe): Promise<BackendInfo> {
  const importer = probe.importer;
  if (await start('tensorflow', importer)) return { name: 'tensorflow', reason: 'tfjs-node is installed' };
  let noGpu: string;
  try {
    return { name: 'webgpu', reason: 'a hardware WebGPU adapter', adapter: await startWebGpu({ ...probe, hardwareOnly: true }) };
  } catch (e) {
    if (!(e instanceof WebGpuUnavailable && e.skip)) throw e;
    noGpu = e.message;
  }
  if (await start('wasm', importer, probe.threads)) return { name: 'wasm', reason: `default (no tfjs-node; no webgpu: ${noGpu})` };
  if (await start('cpu', importer)) return { name: 'cpu', reason: 'wasm failed to start' };
  throw new Error('no tfjs backend could start');
}

async function start(name: Exclude<BackendName, 'webgpu'>, importer: Importer, threads = 1): Promise<boolean> {
  if (name === 'wasm' && threads > 1) return startThreadedWasm(threads);
  try {
    if (name === 'tensorflow') {
      if (!(await importFirst(['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'], importer))) return false;
    } else if (name === 'wasm') {
      await import('@tensorflow/tfjs-backend-wasm');
    }
    return await tf.setBackend(name);
  } catch {
    return false;
  }
}

/**
 * tfjs' threaded wasm build, or an error saying why it did not start: going on with one thread,
 * or on to the cpu backend, would hide a slowdown the caller did not choose.
 */
async function startThreadedWasm(threads: number): Promise<boolean> {
  let finish: (() => void) | null = null;
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    finish = await prepareWasmThreads(threads);
    if (!(await tf.setBackend('wasm'))) throw new Error('tfjs could not set it up');
    return true;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(`wasm on ${threads} threads could not start (${why}); MOLORA_THREADS=1 runs the single-threaded build`);
  } finally {
    finish?.();
  }
}

/**
 * Say how many threads wasm got and why; where 'auto' gave it several, watch for other
 * processes taking the cores (thread-guard.ts) and drop to one thread if they do.
 */
function announceThreads(info: BackendInfo, threads: ThreadChoice, warn: (m: string) => void): void {
  info.threads = threads;
  const { count, reason, measured } = threads;
  const choose = measured ? '; MOLORA_THREADS=n to choose' : '';
  if (count > 1 || measured) warn(`wasm on ${count} thread${count > 1 ? 's' : ''} (${reason}${choose})`);
  if (!measured || count < 2) return;
  guardThreads({
    onContention: (others) => {
      dropToOneThread();
      const busy = others.toFixed(1);
      info.threads = { count: 1, reason: `auto: dropped from ${count} threads to 1 when other processes kept ${busy} cores busy`, measured };
      warn(`wasm drops from ${count} threads to 1 for the rest of the run: other processes keep ${busy} cores busy, and a ` +
        `pool thread waiting for a core stalls every product (MOLORA_THREADS=1 starts on one; MOLORA_THREADS=${count} keeps ${count})`);
    },
  });
}

/** MOLORA_THREADS for scripts (the CLI reads it as --threads' default): 'auto' when unset. */
function threadsFromEnv(): ThreadSetting {
  const raw = process.env.MOLORA_THREADS;
  if (raw === undefined || raw === '') return 'auto';
  try {
    return parseThreadSetting(raw);
  } catch (e) {
    throw new Error(`MOLORA_THREADS: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * The wasm pool's size, decided before any backend starts (the threaded build is a different
 * module). Only a run that may end on wasm samples the cores.
 */
async function wasmThreads(requested: string, opts: BackendOptions): Promise<ThreadChoice> {
  const setting = opts.threads ?? threadsFromEnv();
  if (setting !== 'auto' && !isThreadCount(setting)) throw new Error(`threads must be an integer ≥ 1 or 'auto', got ${setting}`);
  if (requested && requested !== 'wasm') return { count: 1, reason: `backend ${requested}`, measured: false };
  return chooseThreads(setting, { hiddenSize: opts.hiddenSize });
}

async function importFirst(modules: string[], importer: Importer): Promise<boolean> {
  for (const m of modules) {
    try {
      await importer(m);
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
