/**
 * One way to read a data file's rows whatever its format: a CSV (header row, then rows) or a
 * JSONL file (one object per line, its keys the columns), streamed, every row with its line.
 */
import { extname } from 'node:path';
import { openCsv, type CsvOptions } from './csv.js';
import { DataError, MissingColumnError, type BadRowError } from './errors.js';
import { openJsonl } from './jsonl.js';
import type { RowSpan } from './skips.js';

export const DATA_FILE_FORMATS = ['csv', 'jsonl'] as const;
export type DataFileFormat = (typeof DATA_FILE_FORMATS)[number];

/** The given format, else `.jsonl` / `.ndjson` files are JSONL and anything else is CSV. */
export function dataFileFormat(file: string, given?: DataFileFormat): DataFileFormat {
  if (given !== undefined) {
    if (!DATA_FILE_FORMATS.includes(given)) throw new Error(`unknown data format '${given}' (formats: ${DATA_FILE_FORMATS.join(', ')})`);
    return given;
  }
  return ['.jsonl', '.ndjson'].includes(extname(file).toLowerCase()) ? 'jsonl' : 'csv';
}

/** A column a caller needs, and who asks for it (named when it is missing). */
export interface ColumnRequest {
  name: string;
  usedBy?: string;
}

/** A row's values for the requested columns, in their order; null for a blank line. */
export interface SourceRow extends RowSpan {
  /** CSV: strings; JSONL: any JSON value, undefined where the object lacks the key. */
  values: unknown[] | null;
}

export interface RowSource {
  file: string;
  format: DataFileFormat;
  /** A CSV's header; a JSONL file's first object's keys. */
  columns: string[];
  /** Where those are (the header line, the first object's line), for errors. */
  columnsLine: number;
  /** Iterate once: the rows, with the values of `wanted`; throws MissingColumnError for an absent column. */
  select(wanted: ColumnRequest[]): AsyncGenerator<SourceRow>;
  /** A row the caller cannot use: thrown, or skipped and counted under skipBadRows. */
  reject(err: BadRowError, row: RowSpan): void;
  close(): Promise<void>;
}

export interface RowSourceOptions extends CsvOptions {
  /** Overrides the format the file's extension implies. */
  format?: DataFileFormat;
}

export async function openRows(file: string, opts: RowSourceOptions = {}): Promise<RowSource> {
  const format = dataFileFormat(file, opts.format);
  return format === 'csv' ? openCsvRows(file, opts) : openJsonlRows(file, opts);
}

async function openCsvRows(file: string, opts: RowSourceOptions): Promise<RowSource> {
  const t = await openCsv(file, opts);
  const index = (c: ColumnRequest): number => {
    const at = t.header.indexOf(c.name);
    if (at < 0) throw new MissingColumnError(file, t.headerLine, c.name, t.header, c.usedBy);
    if (t.header.lastIndexOf(c.name) !== at) {
      throw new DataError(`column ${JSON.stringify(c.name)} appears more than once in the header`, file, t.headerLine);
    }
    return at;
  };
  return {
    file,
    format: 'csv',
    columns: t.header,
    columnsLine: t.headerLine,
    async *select(wanted) {
      const at = wanted.map(index);
      for await (const row of t.rows) yield { line: row.line, lines: row.lines, values: row.fields.length === 0 ? null : at.map((k) => row.fields[k]) };
    },
    reject: t.reject,
    close: t.close,
  };
}

async function openJsonlRows(file: string, opts: RowSourceOptions): Promise<RowSource> {
  const t = await openJsonl(file, opts);
  return {
    file,
    format: 'jsonl',
    columns: t.keys,
    columnsLine: t.keysLine,
    async *select(wanted) {
      for (const c of wanted) if (!t.keys.includes(c.name)) throw new MissingColumnError(file, t.keysLine, c.name, t.keys, c.usedBy);
      for await (const row of t.rows) yield { line: row.line, lines: row.lines, values: row.value === null ? null : wanted.map((c) => row.value![c.name]) };
    },
    reject: t.reject,
    close: t.close,
  };
}
