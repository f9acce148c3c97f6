/**
 * The data entry point: CSV file(s) → tokenized train and validation stores plus a report of
 * what was read, kept and dropped. Tokenization goes through the cache when there is one.
 */
import { statSync } from 'node:fs';
import { cacheKey, readCache, writeCache } from './cache.js';
import type { Encoder } from './encoder.js';
import { DataError } from './errors.js';
import { layoutOf, truncation } from './layout.js';
import { splitStore } from './split.js';
import { TokenStore } from './store.js';
import { tokenizeCsv, type ColumnSpec, type ReadStats } from './tokenize.js';

/** What a data file is for, named in errors about it. */
export type DataRole = 'training' | 'validation' | 'evaluation';

export interface LoadDatasetOptions {
  path: string;
  encoder: Encoder;
  /** Fingerprint of the tokenizer (e.g. a hash of its files); part of the cache key. */
  tokenizerId: string;
  /** Text mode: the column of documents to pack (default 'text'). */
  textColumn?: string;
  /** Prompt/completion mode: both columns; only completion tokens (and eos) get loss. */
  promptColumn?: string;
  completionColumn?: string;
  /** Optional column naming each example's task. */
  taskColumn?: string;
  seqLen: number;
  /** Fraction of examples held out for validation, drawn by content hash and seed. */
  valSplit?: number;
  /** A separate validation CSV with the same columns (instead of valSplit). */
  valData?: string;
  seed: number;
  /** What `path` is for, named in errors about it (valData is always validation data). Default training. */
  role?: Exclude<DataRole, 'validation'>;
  /** Skip and count malformed rows instead of stopping at the first. */
  skipBadRows?: boolean;
  /** Where tokenized files are cached; no caching without it. */
  cacheDir?: string;
  /** Bytes of CSV read so far, over all files (cached files count as read at once). */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
}

export interface DatasetStats {
  mode: 'text' | 'completion';
  /** Data rows in the file(s), header excluded, blank and bad rows included. */
  rowsRead: number;
  /** Examples kept (documents in text mode): rowsRead − emptySkipped − badRowsSkipped. */
  examples: number;
  trainExamples: number;
  valExamples: number;
  /** Blank lines and rows with an empty text (or completion). */
  emptySkipped: number;
  /** Of those, the rows that are not blank lines. */
  emptyRows: number;
  /** The first few of their places. */
  emptyLines: { file: string; line: number }[];
  /** Ragged, badly quoted, oversized or non-UTF-8 rows skipped under skipBadRows. */
  badRowsSkipped: number;
  /** Physical lines those rows spanned. */
  badLinesSkipped: number;
  /** The first few of those, for the report. */
  badRows: { file: string; line: number; reason: string }[];
  /** Completion mode: examples longer than seqLen + 1 tokens, cut from the right. */
  truncated: number;
  /** Of those, examples whose prompt alone fills seqLen; they have nothing to learn and are left out. */
  promptTooLong: number;
  /** Tokens kept (eos and bos included). */
  tokens: number;
  trainTokens: number;
  valTokens: number;
  /** Sequences the sampler draws from: packed windows in text mode, usable examples otherwise. */
  trainSequences: number;
  valSequences: number;
  /** Examples per task name (empty without a task column). */
  perTask: Record<string, { train: number; val: number }>;
  /** 'hit' when every file came from the cache. */
  cache: 'off' | 'hit' | 'miss';
}

export interface Dataset {
  train: TokenStore;
  val: TokenStore | null;
  stats: DatasetStats;
  /** Batch and store task ids index this; empty without a task column. */
  taskNames: string[];
}

export async function loadDataset(opts: LoadDatasetOptions): Promise<Dataset> {
  const spec = columnSpec(opts);
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 1) throw new Error(`seqLen must be a positive integer, got ${opts.seqLen}`);
  const valSplit = opts.valSplit ?? 0;
  if (!(valSplit >= 0 && valSplit < 1)) throw new Error(`valSplit must be in [0, 1), got ${valSplit}`);
  if (valSplit > 0 && opts.valData !== undefined) throw new Error('give either valSplit or valData, not both');

  const files = opts.valData === undefined ? [opts.path] : [opts.path, opts.valData];
  const sizes = files.map((f) => statSync(f).size);
  const total = sizes.reduce((a, b) => a + b, 0);
  const loaded: { store: TokenStore; stats: ReadStats; hit: boolean }[] = [];
  let done = 0;
  for (const [i, file] of files.entries()) {
    const one = await loadFile(file, spec, opts, (n) => opts.onProgress?.(done + n, total));
    assertExamples(file, i === 0 ? (opts.role ?? 'training') : 'validation', spec, one.stats);
    loaded.push(one);
    done += sizes[i]!;
    opts.onProgress?.(done, total);
  }

  let train = loaded[0]!.store;
  let val: TokenStore | null = null;
  if (loaded[1] !== undefined) [train, val] = sharedTasks(train, loaded[1].store);
  else if (valSplit > 0) ({ train, val } = splitStore(train, valSplit, opts.seed));

  const stores = val === null ? [train] : [train, val];
  const sum = (f: (s: ReadStats) => number): number => loaded.reduce((a, l) => a + f(l.stats), 0);
  const cut = stores.map((s) => truncation(s, opts.seqLen));
  const stats: DatasetStats = {
    mode: spec.mode,
    rowsRead: sum((s) => s.rowsRead),
    examples: sum((s) => s.examples),
    trainExamples: train.size,
    valExamples: val?.size ?? 0,
    emptySkipped: sum((s) => s.emptySkipped),
    emptyRows: sum((s) => s.emptyRows),
    emptyLines: loaded.flatMap((l, i) => l.stats.emptyLines.map((line) => ({ file: files[i]!, line }))),
    badRowsSkipped: sum((s) => s.badRowsSkipped),
    badLinesSkipped: sum((s) => s.badLinesSkipped),
    badRows: loaded.flatMap((l, i) => l.stats.badRows.map((b) => ({ file: files[i]!, ...b }))),
    truncated: cut.reduce((a, c) => a + c.truncated, 0),
    promptTooLong: cut.reduce((a, c) => a + c.promptTooLong, 0),
    tokens: stores.reduce((a, s) => a + s.tokenCount, 0),
    trainTokens: train.tokenCount,
    valTokens: val?.tokenCount ?? 0,
    trainSequences: layoutOf(train, opts.seqLen).count,
    valSequences: val === null ? 0 : layoutOf(val, opts.seqLen).count,
    perTask: perTask(train, val),
    cache: opts.cacheDir === undefined ? 'off' : loaded.every((l) => l.hit) ? 'hit' : 'miss',
  };
  return { train, val, stats, taskNames: train.taskNames };
}

function columnSpec(opts: LoadDatasetOptions): ColumnSpec {
  const task = opts.taskColumn ?? null;
  const { promptColumn: prompt, completionColumn: completion } = opts;
  if (prompt === undefined && completion === undefined) return { mode: 'text', text: opts.textColumn ?? 'text', task };
  if (prompt === undefined || completion === undefined) throw new Error('promptColumn and completionColumn go together');
  if (opts.textColumn !== undefined) throw new Error('give textColumn, or promptColumn with completionColumn, not both');
  return { mode: 'completion', prompt, completion, task };
}

/** A file with no example left is an error, not an empty run: say which file, what it was for and why. */
function assertExamples(file: string, role: DataRole, spec: ColumnSpec, s: ReadStats): void {
  if (s.examples > 0) return;
  if (s.rowsRead === 0) throw new DataError(`the ${role} data has a header but no rows`, file, null);
  const column = JSON.stringify(spec.mode === 'text' ? spec.text : spec.completion);
  const blank = s.emptySkipped - s.emptyRows;
  throw new DataError(
    `the ${role} data has no usable rows: of its ${s.rowsRead}, ${blank} are blank, ${s.emptyRows} have an empty ${column} and ${s.badRowsSkipped} are bad`,
    file,
    null,
  );
}

async function loadFile(
  file: string,
  spec: ColumnSpec,
  opts: LoadDatasetOptions,
  onProgress: (bytesRead: number) => void,
): Promise<{ store: TokenStore; stats: ReadStats; hit: boolean }> {
  const skipBadRows = opts.skipBadRows ?? false;
  const key = opts.cacheDir === undefined ? null : cacheKey(file, spec, opts.tokenizerId, skipBadRows);
  const cached = key === null ? null : readCache(opts.cacheDir!, key);
  if (cached !== null) return { ...cached, hit: true };
  const { store, stats } = await tokenizeCsv(file, spec, opts.encoder, { skipBadRows, onProgress });
  // A file edited while it was read gets no cache entry under its old key.
  if (key !== null && JSON.stringify(cacheKey(file, spec, opts.tokenizerId, skipBadRows)) === JSON.stringify(key)) {
    writeCache(opts.cacheDir!, key, store, stats);
  }
  return { store, stats, hit: false };
}

/** Puts both stores on one task-name table (train's order first). */
function sharedTasks(train: TokenStore, val: TokenStore): [TokenStore, TokenStore] {
  if (val.taskNames.length === 0) return [train, val];
  const names = [...train.taskNames];
  const index = new Map(names.map((n, i) => [n, i]));
  const remap = val.taskNames.map((n) => {
    if (!index.has(n)) index.set(n, names.push(n) - 1);
    return index.get(n)!;
  });
  if (names.length > 0x10000) throw new Error('more than 65536 distinct tasks across the train and validation files');
  for (let i = 0; i < val.size; i++) val.taskIds[i] = remap[val.taskIds[i]!]!;
  return [new TokenStore({ ...train, taskNames: names }), new TokenStore({ ...val, taskNames: names })];
}

function perTask(train: TokenStore, val: TokenStore | null): Record<string, { train: number; val: number }> {
  const counts = (s: TokenStore | null): number[] => {
    const c = new Array<number>(train.taskNames.length).fill(0);
    if (s !== null) for (let i = 0; i < s.size; i++) c[s.taskIds[i]!]!++;
    return c;
  };
  const [t, v] = [counts(train), counts(val)];
  return Object.fromEntries(train.taskNames.map((name, i) => [name, { train: t[i]!, val: v[i]! }]));
}
