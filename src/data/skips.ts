/**
 * What --skip-bad-rows may lose. A reader skips a bad row only while the rows it skipped span at
 * most a small share of the file's lines; past that it is a stray quote swallowing the file, or a
 * file that is not this kind of data, and skipping would train on a fraction of it unannounced.
 */
import { TooManyBadRowsError, type BadRowError } from './errors.js';

/**
 * Most lines that skipped bad rows may span in a file of `lines` lines: 1 %, and at least 10 so
 * that a small file can lose a few.
 */
export function maxSkippedLines(lines: number): number {
  return Math.max(10, Math.floor(lines / 100));
}

/** Where a row starts and how many physical lines it spans. */
export interface RowSpan {
  line: number;
  lines: number;
}

/**
 * The bad rows of one file: each is thrown, or under skipBadRows counted, reported to onBadRow
 * and skipped; check() refuses, at the end, skips that lost too much.
 */
export class SkipTally {
  private lost = 0;
  private worst: { err: BadRowError; span: RowSpan } | null = null;

  constructor(
    private readonly file: string,
    private readonly skipBadRows: boolean,
    private readonly onBadRow?: (err: BadRowError, lines: number) => void,
  ) {}

  /** Throws `err`, or skips the row when bad rows may be skipped. */
  reject(err: BadRowError, span: RowSpan): void {
    if (!this.skipBadRows) throw err;
    this.lost += span.lines;
    if (this.worst === null || span.lines > this.worst.span.lines) this.worst = { err, span };
    this.onBadRow?.(err, span.lines);
  }

  /** Throws when the skipped rows span more than the file of `total` lines may lose. */
  check(total: number): void {
    const allowed = maxSkippedLines(total);
    if (this.lost <= allowed || this.worst === null) return;
    const { err, span } = this.worst;
    const where = span.lines > 1 ? `lines ${span.line}–${span.line + span.lines - 1}` : `line ${span.line}`;
    throw new TooManyBadRowsError(
      this.file,
      span.line,
      `skipping bad rows would drop ${this.lost} of the file's ${total} lines, more than the ${allowed} allowed ` +
        `(1% of the lines, at least 10); the largest bad row, ${where}: ${err.reason}`,
    );
  }
}
