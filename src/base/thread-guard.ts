import os from 'node:os';

/** One reading of the machine's and this process's CPU time. */
export interface CpuSample {
  /** Per core: total and idle milliseconds since boot (os.cpus()). */
  cores: { total: number; idle: number }[];
  /** This process's CPU time, all its threads, in milliseconds. */
  ownMs: number;
  /** performance.now() at the reading. */
  atMs: number;
}

export function cpuSample(): CpuSample {
  const own = process.cpuUsage();
  return {
    cores: os.cpus().map((c) => ({ total: Object.values(c.times).reduce((s, t) => s + t, 0), idle: c.times.idle })),
    ownMs: (own.user + own.system) / 1000,
    atMs: performance.now(),
  };
}

/** How many cores other processes kept busy between two readings: the machine's busy time less ours, over the wall time. */
export function othersBusyCores(a: CpuSample, b: CpuSample): number {
  const wall = b.atMs - a.atMs;
  if (wall <= 0) return 0;
  let busy = 0;
  b.cores.forEach((c, i) => {
    const p = a.cores[i]!;
    busy += c.total - p.total - (c.idle - p.idle);
  });
  return Math.max(0, busy - (b.ownMs - a.ownMs)) / wall;
}

export interface ThreadGuardOptions {
  /** Milliseconds between readings (MOLORA_THREAD_WATCH_MS, default 2000). */
  everyMs?: number;
  /** Cores other processes must hold, in two readings in a row, to call it contention. */
  threshold?: number;
  /** Called once, with the figure, when contention is seen; the guard then stops. */
  onContention: (othersCores: number) => void;
  sample?: () => CpuSample;
}

/** Half a core: less is background noise (a shell, the tool that started us). */
const CONTENTION_CORES = 0.5;

/** The running watch's check, or null; polled from the wasm matMul kernel (pollThreadGuard). */
let check: (() => void) | null = null;

/**
 * Watch, while wasm runs on several threads chosen by 'auto', for other processes taking the
 * cores: the pool splits every product evenly and waits for its slowest thread, so one thread
 * without a core stalls each product (1.7–5× slower than one thread, measured). The readings are
 * taken from the matMul kernel (pollThreadGuard), not a timer: a wasm training loop awaits only
 * resolved reads, so a timer would not fire until it ends. Returns a function that stops it.
 */
export function guardThreads(o: ThreadGuardOptions): () => void {
  const sample = o.sample ?? cpuSample;
  const threshold = o.threshold ?? CONTENTION_CORES;
  const every = o.everyMs ?? watchEveryMs();
  let last = sample();
  let strikes = 0;
  const mine = (): void => {
    if (performance.now() - last.atMs < every) return;
    const now = sample();
    const others = othersBusyCores(last, now);
    last = now;
    strikes = others >= threshold ? strikes + 1 : 0;
    if (strikes < 2) return;
    check = null;
    o.onContention(others);
  };
  check = mine;
  return () => {
    if (check === mine) check = null;
  };
}

/** Take a reading if one is due; costs a clock read otherwise. Called before each wasm product. */
export function pollThreadGuard(): void {
  check?.();
}

function watchEveryMs(): number {
  const raw = process.env.MOLORA_THREAD_WATCH_MS;
  const ms = raw === undefined || raw === '' ? 2000 : Number(raw);
  if (!(Number.isInteger(ms) && ms > 0)) throw new Error(`MOLORA_THREAD_WATCH_MS must be a positive integer, got '${raw}'`);
  return ms;
}
