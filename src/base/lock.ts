import { randomBytes } from 'node:crypto';
import { linkSync, readFileSync, realpathSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { diskError, makeDir } from './atomic.js';

/**
 * One writer per output folder. A writer holds `<dir>/.molora.lock`, a JSON file naming its
 * process, created atomically: a complete temp file is hard-linked into place, which fails if a
 * lock is there, so a lock appears whole or not at all. A lock whose process is gone (same host,
 * pid not running: a kill -9, a second Ctrl-C) is stale and is taken over; of several takers,
 * only the one that creates the eviction marker named after the stale lock's token (O_EXCL)
 * removes it, so a lock that has already replaced it is never removed and two takers never both
 * win.
 */
export const LOCK_FILE = '.molora.lock';

interface Holder {
  pid: number;
  host: string;
  since: string;
  command: string;
  token: string;
}

/** Another process holds the folder. */
export class FolderBusyError extends Error {
  override name = 'FolderBusyError';

  constructor(
    readonly dir: string,
    readonly holder: Holder,
    lockFile: string,
  ) {
    super(
      `${dir} is in use by another molora process (pid ${holder.pid} on ${holder.host}, since ${holder.since}: ${holder.command}); ` +
        `only one command may write to a folder at a time. Wait for it to finish or stop it; if no such process is running, delete ${lockFile}`,
    );
  }
}

export interface FolderLock {
  readonly dir: string;
  /** The topmost folder that taking the lock created, if any: a failed command removes it again. */
  readonly created?: string;
  /** Idempotent. */
  release(): void;
}

/** Locks this process holds, by real path: taking one again (a trainer inside a command that holds it) only counts. */
const held = new Map<string, { count: number; path: string; token: string }>();

/**
 * Take `dir` (created if missing) for this process, or throw FolderBusyError naming the holder.
 * Creating the lock file is also the check that the folder is writable.
 */
export function lockFolder(dir: string, log: (m: string) => void = (m) => process.stderr.write(`molora: ${m}\n`)): FolderLock {
  const created = makeDir(dir);
  const key = realpathSync(dir);
  let entry = held.get(key);
  if (!entry) {
    const holder: Holder = {
      pid: process.pid,
      host: hostname(),
      since: new Date().toISOString(),
      command: ['molora', ...process.argv.slice(2)].join(' '),
      token: randomBytes(8).toString('hex'),
    };
    entry = { count: 0, path: join(key, LOCK_FILE), token: holder.token };
    take(dir, entry.path, JSON.stringify(holder) + '\n', log);
    if (held.size === 0) process.once('exit', releaseAll);
    held.set(key, entry);
  }
  entry.count += 1;
  let released = false;
  return {
    dir,
    created,
    release: () => {
      if (released) return;
      released = true;
      if (--entry.count > 0) return;
      held.delete(key);
      if (held.size === 0) process.off('exit', releaseAll);
      removeIfOurs(entry.path, entry.token);
    },
  };
}

/**
 * Run `work` holding `lock`, then release it, whether work returns, throws or rejects. On failure
 * the folders the lock created go again: wholesale with `discard` (a one-shot writer's partial
 * output), else only if nothing was left in them (a failed run keeps its checkpoints).
 */
export function holding<T>(lock: FolderLock, work: () => T, o: { discard?: boolean } = {}): T {
  const fail = (e: unknown): never => {
    lock.release();
    if (lock.created) removeCreated(lock, o.discard ?? false);
    throw e;
  };
  let result: T;
  try {
    result = work();
  } catch (e) {
    return fail(e);
  }
  if (result instanceof Promise) {
    return result.then((v: unknown) => {
      lock.release();
      return v;
    }, fail) as T;
  }
  lock.release();
  return result;
}

function removeCreated(lock: FolderLock, discard: boolean): void {
  if (discard) return rmSync(lock.created!, { recursive: true, force: true });
  for (let d = resolve(lock.dir); ; d = dirname(d)) {
    try {
      rmdirSync(d);
    } catch {
      return; // not empty: keep it and its parents
    }
    if (d === lock.created) return;
  }
}

function take(dir: string, path: string, text: string, log: (m: string) => void): void {
  // Each pass either takes the lock, finds a live holder, or sees the lock go; a marker left by
  // a taker that died mid-eviction would loop forever, hence the bound.
  for (let pass = 0; pass < 100; pass++) {
    if (create(path, text)) return;
    const holder = readHolder(path, dir);
    if (!holder) continue;
    if (alive(holder)) throw new FolderBusyError(dir, holder, path);
    if (evict(path, holder.token)) log(`${dir}: took over the lock of pid ${holder.pid}, which is no longer running`);
    else sleep(20);
  }
  throw new Error(`${dir}: cannot take the lock ${path}: a stale lock is being evicted and it does not finish; if no molora process is using ${dir}, delete ${path} and ${path}.evict-*`);
}

/** Create the lock file if there is none; false if there is one. */
function create(path: string, text: string): boolean {
  // No pid in the name: removeStaleTemps must not take it for a killed writer's temp.
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    writeFileSync(tmp, text);
    try {
      linkSync(tmp, path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // File systems without hard links (FAT, some network mounts): an exclusive create instead.
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw e;
      writeFileSync(path, text, { flag: 'wx' });
    }
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw diskError(e, dirname(path), 'write in');
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** The lock's holder; null if the lock went meanwhile. */
function readHolder(path: string, dir: string): Holder | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    const h = JSON.parse(text) as Holder;
    if (Number.isInteger(h.pid) && h.pid > 0 && typeof h.host === 'string' && typeof h.token === 'string') return h;
  } catch {
    // reported below
  }
  throw new Error(`${path} is not a molora lock file (or it was damaged); if no molora process is writing to ${dir}, delete it`);
}

function alive(h: Holder): boolean {
  // Processes on other hosts (a shared network folder) cannot be seen from here: count them as running.
  if (h.host !== hostname()) return true;
  // Our pid, yet not one of this process's locks (those are in `held`): an earlier process that
  // had the same pid, as low pids come round again in containers.
  if (h.pid === process.pid) return false;
  try {
    process.kill(h.pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Remove the stale lock holding `token`, unless another taker is at it (false). Only the creator
 * of the marker removes a lock, and the stale lock's own process is gone, so the lock cannot change
 * between the check and the unlink.
 */
function evict(path: string, token: string): boolean {
  const marker = `${path}.evict-${token}`;
  try {
    writeFileSync(marker, String(process.pid), { flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw diskError(e, marker);
  }
  try {
    const now = readHolder(path, dirname(path));
    if (now?.token !== token) return false;
    unlinkSync(path);
    return true;
  } finally {
    rmSync(marker, { force: true });
  }
}

function removeIfOurs(path: string, token: string): void {
  try {
    if ((JSON.parse(readFileSync(path, 'utf8')) as Holder).token === token) unlinkSync(path);
  } catch {
    // gone already, or not ours: nothing to release
  }
}

/** process.exit() skips `finally` blocks: locks still held go here. */
function releaseAll(): void {
  for (const { path, token } of held.values()) removeIfOurs(path, token);
  held.clear();
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
