import { readdirSync, renameSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadDataset, type Dataset, type LoadDatasetOptions } from '../src/data/dataset.js';
import type { Encoder } from '../src/data/encoder.js';
import { byteEncoder } from './fixtures/csv/byte-encoder.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-cache-');
afterAll(tmp.cleanup);
let n = 0;

/** A fresh CSV and cache folder, and a loader that counts tokenizer calls. */
function setup(content: string) {
  const id = n++;
  const path = join(tmp.dir, `c${id}.csv`);
  const cacheDir = join(tmp.dir, `cache${id}`);
  writeFileSync(path, content);
  let encodes = 0;
  const encoder: Encoder = { ...byteEncoder, encode: (t, o) => (encodes++, byteEncoder.encode(t, o)) };
  const load = async (opts: Partial<LoadDatasetOptions> = {}): Promise<Dataset & { encodes: number }> => {
    const before = encodes;
    const ds = await loadDataset({ path, encoder, tokenizerId: 'bytes-v1', seqLen: 16, seed: 1, cacheDir, ...opts });
    return { ...ds, encodes: encodes - before };
  };
  return { path, cacheDir, load };
}

const ROWS = 'task,text\n' + Array.from({ length: 50 }, (_, i) => `t${i % 2},row ${i}`).join('\n') + '\n';

function contents(ds: Dataset) {
  const arrays = (s: Dataset['train'] | null) =>
    s === null ? null : [s.tokens, s.offsets, s.promptLens, s.taskIds, s.hashes, s.taskNames, s.mode, s.padId].map((a) => (ArrayBuffer.isView(a) ? Array.from(a as Uint32Array) : a));
  return { train: arrays(ds.train), val: arrays(ds.val), taskNames: ds.taskNames, stats: { ...ds.stats, cache: null } };
}

describe('token cache', () => {
  it('misses, then hits without tokenizing, with identical data and stats', async () => {
    const { load, cacheDir } = setup(ROWS);
    const first = await load({ taskColumn: 'task', valSplit: 0.2 });
    expect(first.stats.cache).toBe('miss');
    expect(first.encodes).toBe(50);
    expect(readdirSync(cacheDir).map((f) => f.replace(/^[0-9a-f]{32}/, 'ID')).sort()).toEqual(['ID.index', 'ID.json', 'ID.tokens']);
    const second = await load({ taskColumn: 'task', valSplit: 0.2 });
    expect(second.stats.cache).toBe('hit');
    expect(second.encodes).toBe(0);
    expect(contents(second)).toEqual(contents(first));
  });

  it('is seed- and split-free: another seed or valSplit still hits', async () => {
    const { load } = setup(ROWS);
    await load({ valSplit: 0.2 });
    const other = await load({ valSplit: 0.5, seed: 9 });
    expect(other.stats.cache).toBe('hit');
    expect(other.stats.valExamples).toBeGreaterThan(10);
    expect(other.stats.trainExamples + other.stats.valExamples).toBe(50);
  });

  it('misses when the CSV changes, even at the same size and mtime', async () => {
    const { load, path } = setup(ROWS);
    const stamp = 1_700_000_000; // whole seconds, so utimes restores it exactly
    utimesSync(path, stamp, stamp);
    const before = statSync(path, { bigint: true });
    await load();
    writeFileSync(path, ROWS.replace('row 7', 'row X'));
    utimesSync(path, stamp, stamp);
    const after = statSync(path, { bigint: true });
    expect([after.size, after.mtimeNs]).toEqual([before.size, before.mtimeNs]);
    const edited = await load();
    expect(edited.stats.cache).toBe('miss');
    expect(Buffer.from(Array.from(edited.train.example(7)).slice(1, -1)).toString()).toBe('row X');

    // A file replaced by rename, as editors and rsync do.
    const next = path + '.new';
    writeFileSync(next, ROWS);
    utimesSync(next, stamp, stamp);
    renameSync(next, path);
    expect((await load()).stats.cache).toBe('miss');
    expect((await load()).stats.cache).toBe('hit');
  });

  it('misses for another tokenizer, other columns or another skipBadRows', async () => {
    const { load } = setup(ROWS);
    await load();
    expect((await load({ tokenizerId: 'bytes-v2' })).stats.cache).toBe('miss');
    expect((await load({ textColumn: 'task' })).stats.cache).toBe('miss');
    expect((await load({ taskColumn: 'task' })).stats.cache).toBe('miss');
    expect((await load({ skipBadRows: true })).stats.cache).toBe('miss');
    expect((await load()).stats.cache).toBe('hit');
  });

  it('treats a damaged entry as a miss and rewrites it', async () => {
    const { load, cacheDir } = setup(ROWS);
    const first = await load();
    const tokens = readdirSync(cacheDir).find((f) => f.endsWith('.tokens'))!;
    truncateSync(join(cacheDir, tokens), 10);
    const again = await load();
    expect(again.stats.cache).toBe('miss');
    expect(contents(again)).toEqual(contents(first));
    expect((await load()).stats.cache).toBe('hit');
  });

  it('writes nothing when reading fails', async () => {
    const { load, cacheDir, path } = setup('text\nok\n"broken\n');
    await expect(load()).rejects.toThrow(`${path}:3`);
    expect(() => readdirSync(cacheDir)).toThrow(/ENOENT/);
    const withSkip = await load({ skipBadRows: true });
    expect(withSkip.stats).toMatchObject({ cache: 'miss', badRowsSkipped: 1, badRows: [{ file: path, line: 3 }] });
    const hit = await load({ skipBadRows: true });
    expect(hit.stats).toMatchObject({ cache: 'hit', badRowsSkipped: 1, badRows: [{ file: path, line: 3 }] });
    expect(readdirSync(cacheDir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});
