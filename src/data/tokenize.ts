/**
 * Rows → token store: reads the file's rows (CSV or JSONL), formats each into an example
 * (row-format.ts), encodes its pieces one by one, and counts what happened to every row.
 */
import type { RenderOptions } from './chat.js';
import type { Encoder } from './encoder.js';
import { DataError, RowValueError } from './errors.js';
import { cellText, rowFormatter, type Example, type RowFormat } from './row-format.js';
import { openRows, type DataFileFormat } from './rows.js';
import { contentHash } from './split.js';
import { TokenStoreBuilder, type TokenStore } from './store.js';

/** What happened to the rows of one file. */
export interface ReadStats {
  /** Data rows after the header, blank and bad ones included. */
  rowsRead: number;
  /** Rows turned into examples: rowsRead − emptySkipped − badRowsSkipped. */
  examples: number;
  /** Blank lines, and rows with nothing to learn: an empty text or completion, no assistant turn. */
  emptySkipped: number;
  /** Of those, the rows that are not blank lines: data with nothing to learn or score, worth naming. */
  emptyRows: number;
  /** The first few of their lines, for the report. */
  emptyLines: number[];
  badRowsSkipped: number;
  /** Physical lines those rows spanned: a row with a stray quote can swallow many. */
  badLinesSkipped: number;
  /** The first few skipped bad rows, for the report. */
  badRows: { line: number; reason: string }[];
  /** Chat: earlier assistant turns the template renders differently once more turns follow, left without loss. */
  unlocatedTurns: number;
}

export interface TokenizeOptions {
  skipBadRows?: boolean;
  onProgress?: (bytesRead: number) => void;
  /** The file's format when its extension does not say (see dataFileFormat). */
  dataFormat?: DataFileFormat;
  /** Chat rendering context (a fixed clock in tests). */
  render?: RenderOptions;
}

/** Lines kept per kind of skipped row, for the report. */
const SAMPLES = 10;

export async function tokenizeRows(file: string, format: RowFormat, encoder: Encoder, opts: TokenizeOptions = {}): Promise<{ store: TokenStore; stats: ReadStats }> {
  const eos = encoder.eosId;
  if (eos === null) throw new Error('the tokenizer has no eos token, which training data needs to end each example');
  const stats: ReadStats = { rowsRead: 0, examples: 0, emptySkipped: 0, emptyRows: 0, emptyLines: [], badRowsSkipped: 0, badLinesSkipped: 0, badRows: [], unlocatedTurns: 0 };
  const source = await openRows(file, {
    format: opts.dataFormat,
    skipBadRows: opts.skipBadRows,
    onProgress: opts.onProgress,
    onBadRow: (err, lines) => {
      stats.rowsRead++;
      stats.badRowsSkipped++;
      stats.badLinesSkipped += lines;
      if (stats.badRows.length < SAMPLES) stats.badRows.push({ line: err.line!, reason: err.reason });
    },
  });
  try {
    const formatter = rowFormatter(format, opts.render);
    const task = format.task;
    const wanted = task === null ? formatter.columns : [...formatter.columns, { name: task, usedBy: '--task-column' }];
    const builder = new TokenStoreBuilder(format.mode === 'text' ? 'text' : 'completion', encoder.padId ?? eos);
    const taskIds = new Map<string, number>();
    for await (const row of source.select(wanted)) {
      let example: Example | null = null;
      let taskName = '';
      if (row.values !== null) {
        try {
          example = formatter.format(row.values);
          if (task !== null) taskName = cellText(row.values[wanted.length - 1], task);
        } catch (e) {
          source.reject(new RowValueError(file, row.line, (e as Error).message), row);
          continue;
        }
      }
      stats.rowsRead++;
      if (example === null) {
        stats.emptySkipped++;
        if (row.values !== null) {
          stats.emptyRows++;
          if (stats.emptyLines.length < SAMPLES) stats.emptyLines.push(row.line);
        }
        continue;
      }
      let taskId = 0;
      if (task !== null) {
        taskId = taskIds.get(taskName) ?? taskIds.size;
        if (taskId === taskIds.size) {
          if (taskId >= 0x10000) throw new DataError(`more than 65536 distinct tasks in column ${JSON.stringify(task)}; is it the right column?`, file, row.line);
          taskIds.set(taskName, taskId);
        }
      }
      const { parts, promptLen, gaps } = encodeExample(example, encoder, eos);
      builder.add(parts, promptLen, taskId, contentHash(example.pieces), gaps);
      stats.unlocatedTurns += example.unlocated;
      stats.examples++;
    }
    return { store: builder.finish([...taskIds.keys()]), stats };
  } finally {
    await source.close();
  }
}

/**
 * Each piece encoded on its own, as generation sees a prompt (encoded alone, then continued);
 * a plain example gets bos first (when the tokenizer has one) and eos last, with loss. The
 * prompt is everything before the first loss piece; later pieces without loss are gaps.
 */
function encodeExample(ex: Example, encoder: Encoder, eos: number): { parts: number[][]; promptLen: number; gaps: number[] } {
  const parts: number[][] = [];
  const gaps: number[] = [];
  let promptLen = -1;
  let at = 0;
  ex.pieces.forEach((text, k) => {
    const ids = encoder.encode(text, { addBos: ex.plain && k === 0 });
    if (ex.loss[k]) {
      if (promptLen < 0) promptLen = at;
    } else if (promptLen >= 0 && ids.length > 0) gaps.push(at, at + ids.length);
    parts.push(ids);
    at += ids.length;
  });
  if (ex.plain) parts.push([eos]);
  return { parts, promptLen: Math.max(promptLen, 0), gaps };
}
