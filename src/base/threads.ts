import os from 'node:os';
import { OptionValueError } from './options.js';
import { cpuSample } from './thread-guard.js';

/** Threads for the wasm backend's products: a count, or 'auto' (the default). */
export type ThreadSetting = number | 'auto';

/** What the caller knows of the model before the backend starts. */
export interface ThreadHint {
  /** The model's hidden size: its linears' products are [tokens, hidden]·[hidden, out]. */
  hiddenSize?: number;
}

export interface ThreadChoice {
  count: number;
  /** Why, for the log line and `bench --json`. */
  reason: string;
  /** Whether the idle cores were sampled ('auto' on a model big enough), so the choice is worth a log line. */
  measured: boolean;
}

/**
 * Below this hidden size a product is too small to split: measured on 2 idle cores, 2 threads
 * gave 0.87–0.91× at hidden 128 (the shipped tiny-llama) and 1.21–1.27× at hidden 256
 * (docs/cpu-speed.md). Each threaded product pays a wake-up of the pool's threads.
 */
export const MIN_THREADED_HIDDEN = 256;
/** XNNPACK's products stop gaining well before this on the shapes molora trains on a CPU. */
export const MAX_AUTO_THREADS = 8;

/** How many cores sat idle over `ms` milliseconds, from the kernel's per-core time counters. */
export type IdleSampler = () => Promise<number>;

/**
 * The pool size. 'auto' takes one thread per idle core (up to MAX_AUTO_THREADS) for a model
 * whose hidden size is at least MIN_THREADED_HIDDEN, and one thread otherwise. Busy cores are
 * left alone because the pool splits every product evenly: a thread that waits for a core
 * stalls each product, and measured here that made a step 1.7–5× slower than one thread.
 */
export async function chooseThreads(setting: ThreadSetting, hint: ThreadHint = {}, idle: IdleSampler = idleCores): Promise<ThreadChoice> {
  if (setting !== 'auto') return { count: setting, reason: `asked for ${setting}`, measured: false };
  const hidden = hint.hiddenSize;
  if (hidden === undefined) return { count: 1, reason: 'auto: no model size known when the backend started', measured: false };
  if (hidden < MIN_THREADED_HIDDEN) {
    return { count: 1, reason: `auto: hidden size ${hidden} < ${MIN_THREADED_HIDDEN}, products too small to split`, measured: false };
  }
  const cores = os.availableParallelism();
  const free = Math.min(await idle(), cores);
  return { count: Math.max(1, Math.min(free, MAX_AUTO_THREADS)), reason: `auto: ${free} of ${cores} cores idle`, measured: true };
}

/** A pool size: an integer ≥ 1. */
export function isThreadCount(n: number): boolean {
  return Number.isInteger(n) && n >= 1;
}

/** A thread setting as text (MOLORA_THREADS, --threads): 'auto' or an integer ≥ 1. */
export function parseThreadSetting(raw: string): ThreadSetting {
  if (raw === 'auto') return raw;
  const n = Number(raw);
  if (isThreadCount(n)) return n;
  throw new OptionValueError(`expected 'auto' or an integer ≥ 1, got '${raw}'`);
}

/**
 * Idle cores over a short window (the per-core time counters cpuSample reads, on every platform
 * Node runs on). A core counts when at least 80 % of it was idle: a core another process keeps
 * busy half the time would still stall the pool.
 */
export async function idleCores(ms = 150): Promise<number> {
  const before = cpuSample().cores;
  await new Promise((r) => setTimeout(r, ms));
  return cpuSample().cores.filter((c, i) => {
    const total = c.total - before[i]!.total;
    return total > 0 && (c.idle - before[i]!.idle) / total >= 0.8;
  }).length;
}
