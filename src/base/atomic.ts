import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/** What a file-system error code means, for messages that name the path. */
const CAUSES: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is used up',
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTDIR: 'a folder on the way is a file',
};

/** A failed write or mkdir, with the path that failed and what the error code means. */
export class DiskError extends Error {
  override name = 'DiskError';

  constructor(
    readonly path: string,
    readonly code: string,
    action: string,
    options: ErrorOptions,
  ) {
    super(`cannot ${action} ${path}: ${CAUSES[code]} (${code})`, options);
  }
}

/**
 * `e` as a DiskError naming `path` when it is a disk-full, read-only or permission error; any
 * other error unchanged. Node's own message for a failed write() names no file at all.
 */
export function diskError(e: unknown, path: string, action = 'write'): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (e instanceof DiskError || !code || !(code in CAUSES)) return e;
  return new DiskError(path, code, action, { cause: e });
}

/**
 * mkdir -p that says what went wrong: Node's recursive mkdir reports a parent it cannot create
 * (on a read-only mount, say) as ENOENT. Returns the topmost folder it created, if any, so a
 * failed command can remove what it made.
 */
export function makeDir(dir: string): string | undefined {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) missing.unshift(d);
  if (missing.length === 0 && !statSync(dir).isDirectory()) throw new Error(`${dir} is a file, not a folder`);
  for (const d of missing) {
    try {
      mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw diskError(e, d, 'create the folder');
    }
  }
  return missing[0];
}

/**
 * Write a file so that readers see either the old content or the new, never half of it:
 * write a temp file beside the target, fsync it, then rename over the target.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array): void {
  makeDir(dirname(path));
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  try {
    writeFileSync(tmp, data);
    const fd = openSync(tmp, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw diskError(err, path);
  }
}

/** Write a JSON file atomically, pretty-printed. */
export function writeJsonAtomic(path: string, value: unknown): void {
  writeFileAtomic(path, JSON.stringify(value, null, 2) + '\n');
}
