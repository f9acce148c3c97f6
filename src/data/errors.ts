/**
 * Errors for bad training data. Each names the file and, where one exists, the physical line
 * (1-based, as an editor shows it) so the user can open the CSV or JSONL file and fix it.
 */
export class DataError extends Error {
  constructor(
    /** What is wrong, without the location. */
    readonly reason: string,
    readonly file: string,
    readonly line: number | null,
  ) {
    super(line === null ? `${file}: ${reason}` : `${file}:${line}: ${reason}`);
    this.name = 'DataError';
  }
}

/** A row whose field count differs from the header's. */
export class RaggedRowError extends DataError {
  /** `lines`: the physical lines the row spans; a stray quote can make it hundreds. */
  constructor(file: string, line: number, got: number, expected: number, lines = 1) {
    const span = lines > 1 ? ` (the row spans lines ${line}–${line + lines - 1})` : '';
    super(`row has ${got} fields, the header has ${expected}${span}`, file, line);
    this.name = 'RaggedRowError';
  }
}

/** A quoted field that never closes, or text after a closing quote. */
export class QuoteError extends DataError {
  constructor(file: string, line: number, detail: string) {
    super(`malformed quoted field: ${excerpt(detail)}`, file, line);
    this.name = 'QuoteError';
  }
}

/** Longest parser detail kept in a message: the parser echoes the rest of the field, which can be the rest of the file. */
const MAX_DETAIL = 120;

function excerpt(detail: string, max = MAX_DETAIL): string {
  if (detail.length <= max) return detail;
  return `${detail.slice(0, max)}… (${detail.length - max} more characters)`;
}

/** Bytes that are not valid UTF-8. */
export class Utf8Error extends DataError {
  constructor(file: string, line: number) {
    super('invalid UTF-8 (is the file saved in another encoding?)', file, line);
    this.name = 'Utf8Error';
  }
}

/** A record too long to hold in memory; almost always a quote that is never closed. */
export class RowTooLongError extends DataError {
  /** `quoteLine`: where the quoted field still open at the limit began; null outside quotes. */
  constructor(file: string, line: number, maxBytes: number, quoteLine: number | null) {
    const hint = quoteLine === null ? '' : ` (is the quote opened on line ${quoteLine} never closed?)`;
    super(`row is longer than ${maxBytes} bytes${hint}`, file, line);
    this.name = 'RowTooLongError';
  }
}

/** Skipped bad rows that hold too much of the file to be a few bad rows: a stray quote, or not this kind of CSV. */
export class TooManyBadRowsError extends DataError {
  constructor(file: string, line: number, reason: string) {
    super(reason, file, line);
    this.name = 'TooManyBadRowsError';
  }
}

/** A JSONL line that is not one JSON object. */
export class JsonLineError extends DataError {
  constructor(file: string, line: number, detail: string) {
    super(`not a JSON object: ${excerpt(detail)}`, file, line);
    this.name = 'JsonLineError';
  }
}

/** A row whose values do not make an example: a missing JSONL key, a bad messages list, a template the chat template refuses. */
export class RowValueError extends DataError {
  constructor(file: string, line: number, reason: string) {
    super(excerpt(reason, 400), file, line);
    this.name = 'RowValueError';
  }
}

/** A requested column absent from the header (or, in JSONL, from the first object's keys). */
export class MissingColumnError extends DataError {
  constructor(
    file: string,
    headerLine: number,
    readonly column: string,
    readonly available: string[],
    /** What asked for the column, e.g. "--prompt-template's {labl}"; the column flag's name when omitted. */
    usedBy?: string,
  ) {
    const names = available.map((c) => JSON.stringify(c)).join(', ');
    const by = usedBy === undefined ? '' : ` (named by ${usedBy})`;
    super(`no column ${JSON.stringify(column)}${by}; available columns: ${names}`, file, headerLine);
    this.name = 'MissingColumnError';
  }
}

/** Rows that the reader skips under skipBadRows; anything else is thrown. */
export type BadRowError = RaggedRowError | QuoteError | Utf8Error | RowTooLongError | JsonLineError | RowValueError;
