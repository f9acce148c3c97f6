/**
 * Streaming CSV reader on @fast-csv/parse. The file is read in chunks and cut into whole
 * records (see framer.ts); each run of records is decoded and parsed as one batch, so memory
 * stays at a few chunks however large the file is. When a batch fails (invalid UTF-8, a broken
 * quote) it is bisected down to the failing records, which are reported with their line.
 */
import { createReadStream } from 'node:fs';
import { parseString } from '@fast-csv/parse';
import { RecordFramer } from './framer.js';
import { DataError, QuoteError, RaggedRowError, RowTooLongError, Utf8Error, type BadRowError } from './errors.js';
import { SkipTally, type RowSpan } from './skips.js';

export { maxSkippedLines } from './skips.js';

/** One data row: the line it starts on, the physical lines it spans; `fields` is empty for a blank line. */
export interface CsvRow extends RowSpan {
  fields: string[];
}

export interface CsvOptions {
  /**
   * Skip ragged, badly quoted, oversized and non-UTF-8 rows (reported to onBadRow) instead of
   * throwing; but throw TooManyBadRowsError at the end if the skipped rows span more than
   * maxSkippedLines(lines of the file).
   */
  skipBadRows?: boolean;
  /** `lines`: the physical lines the skipped row spans, all of them lost. */
  onBadRow?: (err: BadRowError, lines: number) => void;
  /** Bytes of this file read so far. */
  onProgress?: (bytesRead: number) => void;
  /** Read size; also the usual batch size. */
  chunkBytes?: number;
  /** Longest row accepted; a longer one is almost always an unclosed quote eating the file. */
  maxRowBytes?: number;
}

export interface CsvTable {
  file: string;
  header: string[];
  headerLine: number;
  /** The data rows, checked against the header; iterate once. */
  rows: AsyncGenerator<CsvRow>;
  /**
   * A row the caller cannot use (e.g. a value a template refuses): thrown, or under skipBadRows
   * counted with the reader's own bad rows, toward the same limit.
   */
  reject(err: BadRowError, row: RowSpan): void;
  /** Stops reading early and releases the file. */
  close(): Promise<void>;
}

/** A record as framed: the line it starts on, the physical lines it spans, its fields or why it is bad. */
type Parsed = { line: number; lines: number } & ({ fields: string[] } | { error: BadRowError });

const DEFAULT_CHUNK = 1 << 20;
const DEFAULT_MAX_ROW = 64 << 20;

/** Opens a CSV file and reads its header (the first non-blank row). */
export async function openCsv(file: string, opts: CsvOptions = {}): Promise<CsvTable> {
  const framer = new RecordFramer();
  const source = readRecords(file, opts, framer);
  let header: CsvRow | undefined;
  while (header === undefined) {
    const next = await source.next();
    if (next.done) throw new DataError('the file has no header row', file, null);
    const rec = next.value;
    if ('error' in rec) {
      await source.return(undefined);
      throw rec.error;
    }
    if (rec.fields.length > 0) header = rec;
  }
  const width = header.fields.length;
  const skipped = new SkipTally(file, opts.skipBadRows ?? false, opts.onBadRow);
  async function* rows(): AsyncGenerator<CsvRow> {
    for await (const rec of source) {
      if ('error' in rec) skipped.reject(rec.error, rec);
      else if (rec.fields.length > 0 && rec.fields.length !== width) {
        skipped.reject(new RaggedRowError(file, rec.line, rec.fields.length, width, rec.lines), rec);
      } else yield { line: rec.line, lines: rec.lines, fields: rec.fields };
    }
    skipped.check(framer.lines);
  }
  const it = rows();
  return {
    file,
    header: header.fields,
    headerLine: header.line,
    rows: it,
    reject: (err, row) => skipped.reject(err, row),
    close: async () => {
      await it.return(undefined);
      await source.return(undefined);
    },
  };
}

const BOM = [0xef, 0xbb, 0xbf];

async function* readRecords(file: string, opts: CsvOptions, framer: RecordFramer): AsyncGenerator<Parsed> {
  const maxRow = opts.maxRowBytes ?? DEFAULT_MAX_ROW;
  const ends: number[] = [];
  const lines: number[] = [];
  // Bytes of the record still open at the end of the last chunk.
  let carry: Uint8Array[] = [];
  let carryBytes = 0;
  // An oversized record being skipped: its bytes are dropped until it ends, then it is reported.
  let discarding: RowTooLongError | null = null;
  let bytesRead = 0;
  const stream = createReadStream(file, { highWaterMark: opts.chunkBytes ?? DEFAULT_CHUNK });
  try {
    for await (const buf of stream as AsyncIterable<Buffer>) {
      let chunk: Uint8Array = buf;
      if (bytesRead === 0 && BOM.every((b, i) => chunk[i] === b)) chunk = chunk.subarray(3);
      bytesRead += buf.length;
      opts.onProgress?.(bytesRead);
      ends.length = 0;
      lines.length = 0;
      framer.scan(chunk, ends, lines);
      // The start of the record after the last one that ends here, so every record's span is known.
      lines.push(framer.recordLine);
      // Where this chunk's kept records begin, as a byte offset and an index into ends/lines.
      let from = 0;
      let k0 = 0;
      if (discarding !== null) {
        if (ends.length === 0) continue;
        yield { line: lines[0]!, lines: lines[1]! - lines[0]!, error: discarding };
        discarding = null;
        from = ends[0]!;
        k0 = 1;
      }
      if (ends.length === k0) {
        carry.push(chunk.subarray(from));
        carryBytes += chunk.length - from;
        if (carryBytes > maxRow) {
          discarding = new RowTooLongError(file, framer.recordLine, maxRow, framer.inQuotes ? framer.quoteLine : null);
          if (!opts.skipBadRows) throw discarding;
          carry = [];
          carryBytes = 0;
        }
        continue;
      }
      const last = ends[ends.length - 1]!;
      const tail = chunk.subarray(from, last);
      const batch = carry.length === 0 ? tail : Buffer.concat([...carry, tail]);
      const shift = carryBytes - from;
      const batchEnds = ends.slice(k0).map((e) => e + shift);
      yield* parseBatch(file, batch, batchEnds, lines.slice(k0));
      carry = last < chunk.length ? [chunk.subarray(last)] : [];
      carryBytes = chunk.length - last;
    }
  } finally {
    stream.destroy();
  }
  yield* lastRecord(file, framer, discarding, carryBytes > 0 ? Buffer.concat(carry) : null);
}

/** The record the file ends inside: still being skipped, in an unclosed quote, or just without a line break. */
async function* lastRecord(file: string, framer: RecordFramer, discarding: RowTooLongError | null, bytes: Uint8Array | null): AsyncGenerator<Parsed> {
  const start = framer.recordLine;
  const span = framer.lines + 1 - start;
  if (discarding !== null) yield { line: start, lines: span, error: discarding };
  else if (bytes === null) return;
  else if (framer.inQuotes) {
    // Not handed to fast-csv, whose message would quote the whole rest of the file.
    const detail = `a quote opened on this line is never closed, so lines ${framer.quoteLine}–${framer.lines} (the end of the file) read as one field`;
    yield { line: start, lines: span, error: new QuoteError(file, framer.quoteLine, detail) };
  } else yield* parseBatch(file, bytes, [bytes.length], [start, start + span]);
}

/**
 * Parses whole records `batch[ends[k-1]..ends[k])`, which start on `lines[k]`; `lines` has one
 * more entry, the line the next record starts on.
 */
async function* parseBatch(file: string, batch: Uint8Array, ends: number[], lines: number[]): AsyncGenerator<Parsed> {
  const out: Parsed[] = [];
  const startOf = (k: number): number => (k === 0 ? 0 : ends[k - 1]!);
  const at = (k: number): { line: number; lines: number } => ({ line: lines[k]!, lines: lines[k + 1]! - lines[k]! });
  const settle = async (lo: number, hi: number): Promise<void> => {
    const bytes = batch.subarray(startOf(lo), ends[hi - 1]);
    const text = decodeUtf8(bytes);
    if (text === null && hi - lo === 1) {
      out.push({ ...at(lo), error: new Utf8Error(file, invalidUtf8Line(bytes, lines[lo]!)) });
      return;
    }
    if (text !== null) {
      try {
        const rows = await parseText(text);
        if (rows.length === hi - lo) {
          rows.forEach((fields, k) => out.push({ ...at(lo + k), fields }));
          return;
        }
        // fast-csv yields no row for a last record of only spaces.
        if (hi - lo === 1) {
          out.push({ ...at(lo), fields: [] });
          return;
        }
      } catch (err) {
        if (hi - lo === 1) {
          out.push({ ...at(lo), error: new QuoteError(file, lines[lo]!, (err as Error).message) });
          return;
        }
      }
    }
    const mid = (lo + hi) >> 1;
    await settle(lo, mid);
    await settle(mid, hi);
  };
  await settle(0, ends.length);
  yield* out;
}

function parseText(text: string): Promise<string[][]> {
  return new Promise((resolve, reject) => {
    const rows: string[][] = [];
    parseString<string[], string[]>(text, { headers: false })
      .on('error', reject)
      .on('data', (row: string[]) => rows.push(row))
      .on('end', () => resolve(rows));
  });
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** The line of the first invalid byte; UTF-8 never puts CR or LF inside a character. */
function invalidUtf8Line(bytes: Uint8Array, firstLine: number): number {
  let line = firstLine;
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    const b = bytes[i];
    if (i < bytes.length && b !== 0x0a && b !== 0x0d) continue;
    if (decodeUtf8(bytes.subarray(start, i)) === null) return line;
    if (b === 0x0d && bytes[i + 1] === 0x0a) i++;
    line++;
    start = i + 1;
  }
  return firstLine;
}
