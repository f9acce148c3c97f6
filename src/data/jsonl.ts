/**
 * Streaming JSONL reader: one JSON object per line, read in chunks so memory stays at a few
 * chunks however large the file is. Every row carries its line; a line that is not valid UTF-8,
 * not JSON or not an object is a bad row (thrown, or skipped and counted under skipBadRows, with
 * the same 1 % limit as CSV). The columns are the keys of the first object.
 */
import { createReadStream } from 'node:fs';
import type { CsvOptions } from './csv.js';
import { DataError, JsonLineError, RowTooLongError, Utf8Error, type BadRowError } from './errors.js';
import { SkipTally, type RowSpan } from './skips.js';

export type JsonlOptions = CsvOptions;

/** One line: its object, or null for a blank line. */
export interface JsonlRow extends RowSpan {
  value: Record<string, unknown> | null;
}

export interface JsonlTable {
  file: string;
  /** The first object's keys: what templates and column flags may name. */
  keys: string[];
  /** The line of that first object. */
  keysLine: number;
  /** Every line after the leading blank and bad ones, the first object included; iterate once. */
  rows: AsyncGenerator<JsonlRow>;
  /** A row the caller cannot use: thrown, or skipped and counted under skipBadRows. */
  reject(err: BadRowError, row: RowSpan): void;
  close(): Promise<void>;
}

const DEFAULT_CHUNK = 1 << 20;
const DEFAULT_MAX_ROW = 64 << 20;
const LF = 0x0a;
const CR = 0x0d;

/** A physical line's bytes, or the error that stands for it. */
type RawLine = { line: number; bytes: Uint8Array } | { line: number; error: RowTooLongError };

export async function openJsonl(file: string, opts: JsonlOptions = {}): Promise<JsonlTable> {
  const skipped = new SkipTally(file, opts.skipBadRows ?? false, opts.onBadRow);
  const counter = { lines: 0 };
  const parsed = parseLines(file, readLines(file, opts, counter), skipped);
  // The first object names the columns; it is handed out again as the first row.
  let first: JsonlRow | undefined;
  for (;;) {
    const next = await parsed.next();
    if (next.done) throw new DataError('the file has no JSON object (JSONL: one object per line)', file, null);
    if (next.value.value !== null) {
      first = next.value;
      break;
    }
  }
  async function* rows(): AsyncGenerator<JsonlRow> {
    yield first!;
    yield* parsed;
    skipped.check(counter.lines);
  }
  const it = rows();
  return {
    file,
    keys: Object.keys(first.value!),
    keysLine: first.line,
    rows: it,
    reject: (err, row) => skipped.reject(err, row),
    close: async () => {
      await it.return(undefined);
      await parsed.return(undefined);
    },
  };
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Lines as rows: objects, blanks (null) and bad lines, which go to the tally. */
async function* parseLines(file: string, lines: AsyncGenerator<RawLine>, skipped: SkipTally): AsyncGenerator<JsonlRow> {
  for await (const raw of lines) {
    const span = { line: raw.line, lines: 1 };
    if ('error' in raw) {
      skipped.reject(raw.error, span);
      continue;
    }
    let text: string;
    try {
      text = utf8.decode(raw.bytes);
    } catch {
      skipped.reject(new Utf8Error(file, raw.line), span);
      continue;
    }
    if (text.trim() === '') {
      yield { ...span, value: null };
      continue;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      skipped.reject(new JsonLineError(file, raw.line, (e as Error).message), span);
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      skipped.reject(new JsonLineError(file, raw.line, `the line holds ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}, not an object`), span);
      continue;
    }
    yield { ...span, value: value as Record<string, unknown> };
  }
}

/** The file's lines (LF or CRLF), without their ends; counter.lines: lines read so far. */
async function* readLines(file: string, opts: JsonlOptions, counter: { lines: number }): AsyncGenerator<RawLine> {
  const maxRow = opts.maxRowBytes ?? DEFAULT_MAX_ROW;
  let carry: Uint8Array[] = [];
  let carryBytes = 0;
  // A line over maxRow being skipped: its bytes are dropped until it ends.
  let discarding: RowTooLongError | null = null;
  let bytesRead = 0;
  const stream = createReadStream(file, { highWaterMark: opts.chunkBytes ?? DEFAULT_CHUNK });
  const line = (bytes: Uint8Array): RawLine => {
    counter.lines++;
    if (discarding !== null) {
      const error = discarding;
      discarding = null;
      return { line: counter.lines, error };
    }
    const end = bytes.length > 0 && bytes[bytes.length - 1] === CR ? bytes.length - 1 : bytes.length;
    return { line: counter.lines, bytes: bytes.subarray(0, end) };
  };
  try {
    for await (const buf of stream as AsyncIterable<Buffer>) {
      let chunk: Uint8Array = buf;
      if (bytesRead === 0 && chunk[0] === 0xef && chunk[1] === 0xbb && chunk[2] === 0xbf) chunk = chunk.subarray(3);
      bytesRead += buf.length;
      opts.onProgress?.(bytesRead);
      let from = 0;
      for (let at = chunk.indexOf(LF); at >= 0; at = chunk.indexOf(LF, from)) {
        const tail = chunk.subarray(from, at);
        yield line(carry.length === 0 ? tail : Buffer.concat([...carry, tail]));
        carry = [];
        carryBytes = 0;
        from = at + 1;
      }
      if (discarding !== null) continue;
      carry.push(chunk.subarray(from));
      carryBytes += chunk.length - from;
      if (carryBytes > maxRow) {
        discarding = new RowTooLongError(file, counter.lines + 1, maxRow, null);
        if (!opts.skipBadRows) throw discarding;
        carry = [];
        carryBytes = 0;
      }
    }
  } finally {
    stream.destroy();
  }
  if (carryBytes > 0 || discarding !== null) yield line(Buffer.concat(carry));
}
