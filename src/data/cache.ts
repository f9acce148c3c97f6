/**
 * On-disk cache of tokenized CSV files, so a second run skips tokenization.
 *
 * An entry is named by a hash of everything its content depends on: the data file's path, size,
 * change times and inode, the row format (columns, templates, chat template), skipBadRows and the
 * tokenizer fingerprint. The entry's
 * JSON header keeps that key in full and is compared on load, so an edited CSV or another
 * tokenizer is a miss, never a stale hit. Each file is written atomically and the header goes
 * last: a crash leaves at most unreferenced token files, never an entry that loads.
 *
 * Files: <id>.tokens (the token array), <id>.index (offsets, prompt lengths, hashes, gap offsets
 * and gaps as u32, then task ids as u16), <id>.json (key, shapes, task names and the read stats).
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { endianness } from 'node:os';
import { join, resolve } from 'node:path';
import { writeFileAtomic, writeJsonAtomic } from '../base/atomic.js';
import { TokenStore, type StoreMode } from './store.js';
import type { RowFormat } from './row-format.js';
import type { DataFileFormat } from './rows.js';
import type { ReadStats } from './tokenize.js';

// 3: row formats (templates, chat), JSONL files, and gaps in the loss.
const FORMAT = 3;

export interface CacheKey {
  format: number;
  file: string;
  size: string;
  mtimeNs: string;
  ctimeNs: string;
  ino: string;
  fileFormat: DataFileFormat;
  rows: RowFormat;
  /** A chat template that writes today's date (strftime_now) renders differently tomorrow. */
  day: string | null;
  skipBadRows: boolean;
  tokenizerId: string;
  endianness: string;
}

interface Header {
  key: CacheKey;
  mode: StoreMode;
  dtype: 'uint16' | 'int32';
  examples: number;
  tokens: number;
  /** [start, end) gap pairs over all examples. */
  gaps: number;
  padId: number;
  taskNames: string[];
  stats: ReadStats;
}

/** The key for `file` as it is now on disk. */
export function cacheKey(file: string, fileFormat: DataFileFormat, format: RowFormat, tokenizerId: string, skipBadRows: boolean): CacheKey {
  const st = statSync(file, { bigint: true });
  return {
    format: FORMAT,
    file: resolve(file),
    size: String(st.size),
    mtimeNs: String(st.mtimeNs),
    ctimeNs: String(st.ctimeNs),
    ino: String(st.ino),
    fileFormat,
    rows: format,
    day: format.mode === 'chat' && format.template.template.includes('strftime_now') ? new Date().toDateString() : null,
    skipBadRows,
    tokenizerId,
    endianness: endianness(),
  };
}

function paths(dir: string, key: CacheKey): { json: string; tokens: string; index: string } {
  const id = createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 32);
  const base = join(dir, id);
  return { json: `${base}.json`, tokens: `${base}.tokens`, index: `${base}.index` };
}

/** The cached store and read stats for `key`, or null when there is no valid entry. */
export function readCache(dir: string, key: CacheKey): { store: TokenStore; stats: ReadStats } | null {
  const p = paths(dir, key);
  let h: Header;
  try {
    h = JSON.parse(readFileSync(p.json, 'utf8')) as Header;
  } catch {
    return null;
  }
  if (JSON.stringify(h.key) !== JSON.stringify(key)) return null;
  const n = h.examples;
  const tokens = h.dtype === 'int32' ? new Int32Array(h.tokens) : new Uint16Array(h.tokens);
  const offsets = new Uint32Array(n + 1);
  const promptLens = new Uint32Array(n);
  const hashes = new Uint32Array(n);
  const gapOffsets = new Uint32Array(n + 1);
  const gaps = new Uint32Array(2 * h.gaps);
  const taskIds = new Uint16Array(n);
  if (!readExactly(p.tokens, [tokens]) || !readExactly(p.index, [offsets, promptLens, hashes, gapOffsets, gaps, taskIds])) return null;
  const store = new TokenStore({ mode: h.mode, tokens, offsets, promptLens, gapOffsets, gaps, taskIds, hashes, taskNames: h.taskNames, padId: h.padId });
  return wellFormed(store) ? { store, stats: h.stats } : null;
}

export function writeCache(dir: string, key: CacheKey, store: TokenStore, stats: ReadStats): void {
  const p = paths(dir, key);
  const header: Header = {
    key,
    mode: store.mode,
    dtype: store.tokens instanceof Int32Array ? 'int32' : 'uint16',
    examples: store.size,
    tokens: store.tokenCount,
    gaps: store.gaps.length / 2,
    padId: store.padId,
    taskNames: store.taskNames,
    stats,
  };
  try {
    writeFileAtomic(p.tokens, bytes(store.tokens));
    writeFileAtomic(p.index, Buffer.concat([store.offsets, store.promptLens, store.hashes, store.gapOffsets, store.gaps, store.taskIds].map(bytes)));
    writeJsonAtomic(p.json, header);
  } catch (err) {
    for (const f of [p.tokens, p.index]) rmSync(f, { force: true });
    throw err;
  }
}

function bytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Fills `arrays` from the file, which must hold exactly their bytes. */
function readExactly(path: string, arrays: ArrayBufferView[]): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const views = arrays.map(bytes);
    if (fstatSync(fd).size !== views.reduce((s, v) => s + v.length, 0)) return false;
    let pos = 0;
    for (const v of views) {
      for (let done = 0; done < v.length; ) {
        const got = readSync(fd, v, done, v.length - done, pos + done);
        if (got === 0) return false;
        done += got;
      }
      pos += v.length;
    }
    return true;
  } finally {
    closeSync(fd);
  }
}

/** Offsets that could not index out of bounds; a damaged entry is a miss, not garbage batches. */
function wellFormed(s: TokenStore): boolean {
  if (s.offsets[0] !== 0 || s.tokenCount !== s.tokens.length) return false;
  if (s.gapOffsets[0] !== 0 || 2 * s.gapOffsets[s.size]! !== s.gaps.length) return false;
  for (let i = 0; i < s.size; i++) {
    if (s.offsets[i + 1]! < s.offsets[i]! || s.promptLens[i]! > s.length(i)) return false;
    if (s.gapOffsets[i + 1]! < s.gapOffsets[i]! || s.gapsOf(i).some((g) => g > s.length(i))) return false;
    if (s.taskIds[i]! >= Math.max(1, s.taskNames.length)) return false;
  }
  return true;
}
