import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { trainAdapter } from '../src/adapters/train-adapter.js';
import { writeFileAtomic } from '../src/base/atomic.js';
import { initBackend } from '../src/base/backend.js';
import { initBase } from '../src/base/init.js';
import { MetricsLog } from '../src/train/metrics.js';
import { tempDir } from './helpers.js';

/**
 * A disk that fails as real ones do, without mounting anything: under `readOnly`, writes fail with
 * EROFS, and a recursive mkdir with ENOENT (what Node reports when a missing parent cannot be
 * created on a read-only mount); paths `full` picks fail with ENOSPC, from write(), which names
 * no path.
 */
const disk = vi.hoisted(() => ({ readOnly: '', full: (_path: string): boolean => false }));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const fail = (code: string, syscall: string, path?: string): Error =>
    Object.assign(new Error(`${code}: simulated, ${syscall}${path ? ` '${path}'` : ''}`), { code, syscall, path });
  const readOnly = (p: unknown): boolean => disk.readOnly !== '' && String(p).startsWith(disk.readOnly + '/');
  return {
    ...fs,
    mkdirSync: (p: string, o?: { recursive?: boolean }) => {
      if (readOnly(p)) throw o?.recursive ? fail('ENOENT', 'mkdir', p) : fail('EROFS', 'mkdir', p);
      return fs.mkdirSync(p, o);
    },
    writeFileSync: (p: string, ...rest: unknown[]) => {
      if (readOnly(p)) throw fail('EROFS', 'open', p);
      if (disk.full(String(p))) throw fail('ENOSPC', 'write');
      return (fs.writeFileSync as (...a: unknown[]) => void)(p, ...rest);
    },
    appendFileSync: (p: string, ...rest: unknown[]) => {
      if (disk.full(String(p))) throw fail('ENOSPC', 'write');
      return (fs.appendFileSync as (...a: unknown[]) => void)(p, ...rest);
    },
  };
});

const tmp = tempDir();
const ro = join(tmp.dir, 'ro');
beforeAll(async () => {
  await initBackend();
  mkdirSync(ro);
});
afterEach(() => {
  disk.readOnly = '';
  disk.full = () => false;
});
afterAll(tmp.cleanup);

const SHAPE = { arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, seed: 0 } as const;

describe('disk errors name the path', () => {
  it('a full disk: the file being written, and the metrics log', () => {
    const path = join(tmp.dir, 'w', 'model.safetensors');
    disk.full = (p) => p.includes('model.safetensors');
    expect(() => writeFileAtomic(path, 'x')).toThrow(`cannot write ${path}: no space left on the device (ENOSPC)`);
    const log = new MetricsLog(join(tmp.dir, 'run'), null);
    disk.full = (p) => p === log.path;
    expect(() => log.write({ step: 1 })).toThrow(`cannot write ${log.path}: no space left on the device (ENOSPC)`);
  });

  it('init-base that fails leaves no folder behind, and says why', async () => {
    const out = join(tmp.dir, 'new', 'base');
    disk.full = (p) => p.includes('model.safetensors');
    await expect(initBase({ ...SHAPE, out })).rejects.toThrow(`cannot write ${join(out, 'model.safetensors')}: no space left on the device (ENOSPC)`);
    expect(existsSync(join(tmp.dir, 'new'))).toBe(false);
  });

  it('a missing folder on a read-only mount: the folder that cannot be made, not ENOENT', async () => {
    disk.readOnly = ro;
    const out = join(ro, 'a', 'b');
    await expect(initBase({ ...SHAPE, out })).rejects.toThrow(`cannot create the folder ${join(ro, 'a')}: the file system is read-only (EROFS)`);
  });

  it('train-adapter checks that its output folder is writable before reading the data', async () => {
    const model = join(tmp.dir, 'model');
    await initBase({ ...SHAPE, out: model });
    disk.readOnly = ro;
    const o = { model, data: join(tmp.dir, 'missing.csv'), seqLen: 16, batchSize: 2, lr: 1e-3, seed: 0, steps: 1, progress: 'off' as const, log: () => {} };
    await expect(trainAdapter({ ...o, out: ro })).rejects.toThrow(`cannot write in ${ro}: the file system is read-only (EROFS)`);
    await expect(trainAdapter({ ...o, out: join(ro, 'x') })).rejects.toThrow(`cannot create the folder ${join(ro, 'x')}: the file system is read-only (EROFS)`);
    expect(readdirSync(ro)).toEqual([]);
  });
});
