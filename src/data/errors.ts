/**
 * Errors for bad training data. Each names the file and, where one exists, the physical line
 * (1-based, as an editor shows it) so the user can open the CSV and fix it.
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

function excerpt(detail: string): string {
  if (detail.length <= MAX_DETAIL) return detail;
  return `${detail.slice(0, MAX_DETAIL)}… (${detail.length - MAX_DETAIL} more characters)`;
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

/** A requested column absent from the header. */
export class MissingColumnError extends DataError {
  constructor(
    file: string,
    headerLine: number,
    readonly column: string,
    readonly available: string[],
  ) {
    const names = available.map((c) => JSON.stringify(c)).join(', ');
    super(`no column ${JSON.stringify(column)}; available columns: ${names}`, file, headerLine);
    this.name = 'MissingColumnError';
  }
}

/** Rows that the reader skips under skipBadRows; anything else is thrown. */
export type BadRowError = RaggedRowError | QuoteError | Utf8Error | RowTooLongError;
