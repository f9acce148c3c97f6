/**
 * The data entry point: CSV or JSONL file(s) → tokenized train and validation stores plus a
 * report of what was read, kept, cut and dropped. Tokenization goes through the cache when there
 * is one.
 */
import { statSync } from 'node:fs';
import { cacheKey, readCache, writeCache } from './cache.js';
import type { ChatTemplate, RenderOptions } from './chat.js';
import type { Encoder } from './encoder.js';
import { DataError } from './errors.js';
import { fitPrompts, layoutOf, truncation } from './layout.js';
import { rowFormat, type RowFormat, type RowFormatOptions } from './row-format.js';
import { dataFileFormat, type DataFileFormat } from './rows.js';
import { splitStore } from './split.js';
import { TokenStore } from './store.js';
import { templateColumns } from './template.js';
import { tokenizeRows, type ReadStats } from './tokenize.js';

/** What a data file is for, named in errors about it. */
export type DataRole = 'training' | 'validation' | 'evaluation';

/** Which end of an over-long completion example goes: left keeps the completion whole. */
export const TRUNCATE_SIDES = ['left', 'right'] as const;
export type TruncateSide = (typeof TRUNCATE_SIDES)[number];

/**
 * The columns (text mode: `textColumn`, default 'text'), or a prompt and a completion (columns
 * or templates; loss on the completion and eos), or chat rows (loss on the assistant turns).
 */
export interface LoadDatasetOptions extends RowFormatOptions {
  path: string;
  encoder: Encoder;
  /** Fingerprint of the tokenizer (e.g. a hash of its files); part of the cache key. */
  tokenizerId: string;
  /** Optional column naming each example's task. */
  taskColumn?: string;
  /** The base's chat template, for chat rows (asked for only then). */
  chatTemplate?: () => ChatTemplate;
  /** Chat rendering context (a fixed clock in tests). */
  render?: RenderOptions;
  /** csv or jsonl when the file's extension does not say. */
  dataFormat?: DataFileFormat;
  /**
   * Prompt/completion and chat rows longer than seqLen + 1 tokens: 'left' (default) cuts the
   * prompt from the left, after its bos, keeping the whole completion, and leaves out only a row
   * whose completion alone does not fit; 'right' cuts the end, and leaves out a row whose prompt
   * fills seqLen. Evaluation data is left whole: scoring fits it to the model (evaluate).
   */
  truncate?: TruncateSide;
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
  /** Bytes of data read so far, over all files (cached files count as read at once). */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
}

export interface DatasetStats {
  mode: RowFormat['mode'];
  /** Data rows in the file(s), header excluded, blank and bad rows included. */
  rowsRead: number;
  /** Examples kept (documents in text mode): rowsRead − emptySkipped − badRowsSkipped. */
  examples: number;
  trainExamples: number;
  valExamples: number;
  /** Blank lines and rows with nothing to learn: an empty text or completion, no assistant answer. */
  emptySkipped: number;
  /** Of those, the rows that are not blank lines. */
  emptyRows: number;
  /** The first few of their places. */
  emptyLines: { file: string; line: number }[];
  /** Bad rows skipped under skipBadRows: ragged, badly quoted, oversized, non-UTF-8, not JSON, or values the format refuses. */
  badRowsSkipped: number;
  /** Physical lines those rows spanned. */
  badLinesSkipped: number;
  /** The first few of those, for the report. */
  badRows: { file: string; line: number; reason: string }[];
  /** How over-long examples were cut (completion and chat rows; null for text and evaluation data). */
  truncate: TruncateSide | null;
  /** Examples longer than seqLen + 1 tokens, cut: their prompt from the left, or their end from the right. */
  truncated: number;
  /** Examples left out for want of room: left, the completion alone does not fit; right, the prompt fills seqLen. */
  dropped: number;
  /** Chat: earlier assistant turns left without loss (their template renders them differently once more turns follow). */
  unlocatedTurns: number;
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
  const role = opts.role ?? 'training';
  const spec = rowFormat(opts, { chat: opts.chatTemplate, turns: role === 'evaluation' ? 'last' : 'all' });
  const valSplit = checkOptions(opts, spec);
  const files = opts.valData === undefined ? [opts.path] : [opts.path, opts.valData];
  const loaded = await readFiles(files, spec, opts, role);
  let train = loaded[0]!.store;
  let val: TokenStore | null = null;
  if (loaded[1] !== undefined) [train, val] = sharedTasks(train, loaded[1].store);
  else if (valSplit > 0) ({ train, val } = splitStore(train, valSplit, opts.seed));
  const truncate = spec.mode === 'text' || role === 'evaluation' ? null : (opts.truncate ?? 'left');
  const fitted = fitToLength(train, val, truncate, opts);
  return { train: fitted.train, val: fitted.val, stats: datasetStats(spec, files, loaded, fitted, truncate, opts), taskNames: fitted.train.taskNames };
}

/** Refuses settings that contradict each other; returns the validation fraction. */
function checkOptions(opts: LoadDatasetOptions, spec: RowFormat): number {
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 1) throw new Error(`seqLen must be a positive integer, got ${opts.seqLen}`);
  if (opts.truncate !== undefined && !TRUNCATE_SIDES.includes(opts.truncate)) throw new Error(`truncate must be ${TRUNCATE_SIDES.join(' or ')}, got '${opts.truncate}'`);
  if (spec.mode === 'text' && opts.truncate !== undefined) throw new Error('truncate applies to prompt/completion and chat rows; text rows are packed into windows');
  const valSplit = opts.valSplit ?? 0;
  if (!(valSplit >= 0 && valSplit < 1)) throw new Error(`valSplit must be in [0, 1), got ${valSplit}`);
  if (valSplit > 0 && opts.valData !== undefined) throw new Error('give either valSplit or valData, not both');
  return valSplit;
}

type Loaded = { store: TokenStore; stats: ReadStats; hit: boolean };

/** Each file tokenized (or from the cache), with progress over their bytes together. */
async function readFiles(files: string[], spec: RowFormat, opts: LoadDatasetOptions, role: DataRole): Promise<Loaded[]> {
  const sizes = files.map((f) => statSync(f).size);
  const total = sizes.reduce((a, b) => a + b, 0);
  const loaded: Loaded[] = [];
  let done = 0;
  for (const [i, file] of files.entries()) {
    const one = await loadFile(file, spec, opts, (n) => opts.onProgress?.(done + n, total));
    assertExamples(file, i === 0 ? role : 'validation', spec, one.stats);
    loaded.push(one);
    done += sizes[i]!;
    opts.onProgress?.(done, total);
  }
  return loaded;
}

type Fitted = { train: TokenStore; val: TokenStore | null; truncated: number; dropped: number };

/** Left truncation fits the stores now (so the layout's own right cut never applies); right truncation only counts. */
function fitToLength(train: TokenStore, val: TokenStore | null, truncate: TruncateSide | null, opts: LoadDatasetOptions): Fitted {
  const out: Fitted = { train, val, truncated: 0, dropped: 0 };
  if (truncate === 'left') {
    const fit = (s: TokenStore): TokenStore => {
      const f = fitPrompts(s, opts.seqLen + 1, opts.encoder.bosId);
      out.truncated += f.cut;
      out.dropped += f.skipped;
      return f.store;
    };
    out.train = fit(train);
    if (val !== null) out.val = fit(val);
  }
  if (truncate === 'right') {
    for (const s of val === null ? [train] : [train, val]) {
      const t = truncation(s, opts.seqLen);
      out.truncated += t.truncated;
      out.dropped += t.dropped;
    }
  }
  return out;
}

function datasetStats(spec: RowFormat, files: string[], loaded: Loaded[], f: Fitted, truncate: TruncateSide | null, opts: LoadDatasetOptions): DatasetStats {
  const { train, val } = f;
  const sum = (g: (s: ReadStats) => number): number => loaded.reduce((a, l) => a + g(l.stats), 0);
  return {
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
    truncate,
    truncated: f.truncated,
    dropped: f.dropped,
    unlocatedTurns: sum((s) => s.unlocatedTurns),
    tokens: train.tokenCount + (val?.tokenCount ?? 0),
    trainTokens: train.tokenCount,
    valTokens: val?.tokenCount ?? 0,
    trainSequences: layoutOf(train, opts.seqLen).count,
    valSequences: val === null ? 0 : layoutOf(val, opts.seqLen).count,
    perTask: perTask(train, val),
    cache: opts.cacheDir === undefined ? 'off' : loaded.every((l) => l.hit) ? 'hit' : 'miss',
  };
}

/** A file with no example left is an error, not an empty run: say which file, what it was for and why. */
function assertExamples(file: string, role: DataRole, spec: RowFormat, s: ReadStats): void {
  if (s.examples > 0) return;
  if (s.rowsRead === 0) throw new DataError(`the ${role} data has a header but no rows`, file, null);
  const blank = s.emptySkipped - s.emptyRows;
  throw new DataError(
    `the ${role} data has no usable rows: of its ${s.rowsRead}, ${blank} are blank, ${s.emptyRows} have ${emptyWhat(spec)} and ${s.badRowsSkipped} are bad`,
    file,
    null,
  );
}

/** What an empty row lacks: an empty "column", or no assistant answer. */
function emptyWhat(spec: RowFormat): string {
  if (spec.mode === 'chat') return 'no assistant answer';
  const cols = spec.mode === 'text' ? [spec.text] : templateColumns(spec.completion);
  return `an empty ${cols.map((c) => JSON.stringify(c)).join(' and ') || 'completion'}`;
}

async function loadFile(
  file: string,
  spec: RowFormat,
  opts: LoadDatasetOptions,
  onProgress: (bytesRead: number) => void,
): Promise<{ store: TokenStore; stats: ReadStats; hit: boolean }> {
  const skipBadRows = opts.skipBadRows ?? false;
  const keyNow = (): ReturnType<typeof cacheKey> => cacheKey(file, dataFileFormat(file, opts.dataFormat), spec, opts.tokenizerId, skipBadRows);
  const key = opts.cacheDir === undefined ? null : keyNow();
  const cached = key === null ? null : readCache(opts.cacheDir!, key);
  if (cached !== null) return { ...cached, hit: true };
  const { store, stats } = await tokenizeRows(file, spec, opts.encoder, { skipBadRows, onProgress, dataFormat: opts.dataFormat, render: opts.render });
  // A file edited while it was read gets no cache entry under its old key.
  if (key !== null && JSON.stringify(keyNow()) === JSON.stringify(key)) {
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
