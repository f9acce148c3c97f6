import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FolderBusyError, LOCK_FILE, holding, lockFolder } from '../src/base/lock.js';
import { runRecipe } from '../src/recipes/run.js';
import { tempDir } from './helpers.js';

const DIST_LOCK = join(import.meta.dirname, '..', 'dist', 'base', 'lock.js');
const tmp = tempDir();
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill();
  tmp.cleanup();
});

let n = 0;
const folder = (): string => join(tmp.dir, `f${n++}`);

/** A lock file as another process would have left it. */
function planted(dir: string, o: { pid: number; host?: string; token?: string }): string {
  mkdirSync(dir, { recursive: true });
  const holder = { pid: o.pid, host: o.host ?? hostname(), since: '2025-01-01T00:00:00.000Z', command: 'molora train-adapter', token: o.token ?? 'feedfacecafebeef' };
  writeFileSync(join(dir, LOCK_FILE), JSON.stringify(holder) + '\n');
  return join(dir, LOCK_FILE);
}

function livePid(): number {
  const c = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
  children.push(c);
  return c.pid!;
}

function deadPid(): number {
  return Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
}

const holderPid = (dir: string): number => JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid;

describe('folder lock', () => {
  it('refuses a folder a live process holds, naming the folder and its pid', () => {
    const dir = folder();
    const pid = livePid();
    planted(dir, { pid });
    const err = (() => {
      try {
        lockFolder(dir);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(FolderBusyError);
    expect((err as Error).message).toContain(`${dir} is in use by another molora process (pid ${pid} on ${hostname()}, since 2025-01-01T00:00:00.000Z: molora train-adapter)`);
    expect(holderPid(dir)).toBe(pid);
    // A holder on another host cannot be checked from here: it counts as running.
    const remote = folder();
    planted(remote, { pid: deadPid(), host: 'elsewhere' });
    expect(() => lockFolder(remote)).toThrow(/in use by another molora process \(pid \d+ on elsewhere/);
  });

  it('takes over the lock of a dead process (kill -9), and says so', () => {
    const dir = folder();
    const pid = deadPid();
    planted(dir, { pid });
    const said: string[] = [];
    const lock = lockFolder(dir, (m) => said.push(m));
    expect(said).toEqual([`${dir}: took over the lock of pid ${pid}, which is no longer running`]);
    expect(holderPid(dir)).toBe(process.pid);
    lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    // A lock naming this very pid, but not taken by this process, is an earlier process's (pid reuse).
    planted(dir, { pid: process.pid });
    lockFolder(dir, () => {}).release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it('molora run holds its run folder: a second run of it is refused before any step', async () => {
    const run = folder();
    const pid = livePid();
    planted(run, { pid });
    const file = join(tmp.dir, 'recipe.json');
    writeFileSync(file, JSON.stringify({ name: 'r', steps: [{ type: 'report' }] }));
    await expect(runRecipe(file, { out: run, progress: 'off', log: () => {}, print: () => {} })).rejects.toThrow(`${run} is in use by another molora process (pid ${pid} `);
    expect(existsSync(join(run, 'report.html'))).toBe(false);
  });

  it('counts nested takes in one process, and releases at the last', () => {
    const dir = folder();
    const outer = lockFolder(dir);
    const inner = lockFolder(dir);
    inner.release();
    inner.release();
    expect(holderPid(dir)).toBe(process.pid);
    outer.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it('refuses a damaged lock file, naming it', () => {
    const dir = folder();
    mkdirSync(dir);
    writeFileSync(join(dir, LOCK_FILE), '{"pid": 12');
    expect(() => lockFolder(dir)).toThrow(`${join(dir, LOCK_FILE)} is not a molora lock file (or it was damaged); if no molora process is writing to ${dir}, delete it`);
  });

  it('holding: releases after sync and async work; a failure removes the folders it created (all of them when discarding)', async () => {
    const parent = folder();
    const dir = join(parent, 'a', 'b');
    expect(holding(lockFolder(dir), () => 7)).toBe(7);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    await expect(holding(lockFolder(join(parent, 'c')), async () => 8)).resolves.toBe(8);
    expect(existsSync(join(parent, 'c', LOCK_FILE))).toBe(false);

    const fresh = join(folder(), 'x');
    expect(() => holding(lockFolder(fresh), () => { throw new Error('no'); })).toThrow('no');
    expect(existsSync(fresh)).toBe(false);
    // A failed run keeps what it wrote; a one-shot writer's partial output goes.
    const kept = folder();
    await expect(holding(lockFolder(kept), async () => {
      writeFileSync(join(kept, 'checkpoint'), '');
      throw new Error('late');
    })).rejects.toThrow('late');
    expect(existsSync(join(kept, 'checkpoint'))).toBe(true);
    expect(existsSync(join(kept, LOCK_FILE))).toBe(false);
    const discarded = folder();
    expect(() => holding(lockFolder(discarded), () => {
      writeFileSync(join(discarded, 'config.json'), '{}');
      throw new Error('half');
    }, { discard: true })).toThrow('half');
    expect(existsSync(discarded)).toBe(false);
  });

  // Needs dist/ (npx tsc -p tsconfig.json): each taker is its own process.
  it('of several processes racing for a stale lock, exactly one wins', async () => {
    const dir = folder();
    planted(dir, { pid: deadPid() });
    const script = `
      import { lockFolder } from ${JSON.stringify(DIST_LOCK)};
      try {
        const lock = lockFolder(${JSON.stringify(dir)}, () => {});
        process.stdout.write('won');
        setTimeout(() => lock.release(), 2500);
      } catch (e) {
        process.stdout.write(e.name);
      }`;
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, () => {
        const c = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        c.stdout.on('data', (d: Buffer) => (out += d.toString()));
        return new Promise<string>((resolve) => c.on('exit', () => resolve(out)));
      }),
    );
    expect(outcomes.sort()).toEqual([...Array(5).fill('FolderBusyError'), 'won']);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });
});
