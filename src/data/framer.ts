/**
 * Finds CSV record boundaries in raw bytes, with the line each record starts on.
 *
 * fast-csv parses fields but reports neither line numbers nor where a bad row ends, and one
 * bad row aborts its whole stream. Cutting the bytes into whole records first lets the reader
 * hand fast-csv record-aligned batches, name the line of any failure, and re-parse only the
 * failing batch. The rules mirror fast-csv's: a quote opens a quoted field only at the start
 * of a field (after spaces), `""` inside quotes is a literal quote, and a record ends at LF,
 * CRLF or a lone CR outside quotes. Line numbers count LF, CRLF and lone CR alike.
 */
const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const COMMA = 0x2c;

const enum S {
  FieldStart,
  Unquoted,
  Quoted,
  /** A quote inside a quoted field: either the closing quote or the first of `""`. */
  QuoteInQuoted,
}

export class RecordFramer {
  /** Line on which the record being scanned starts. */
  recordLine = 1;
  /** Line on which the quoted field being scanned opened (meaningful while inQuotes). */
  quoteLine = 0;
  private line = 1;
  /** The last byte scanned was a line break (true before any byte: an empty file has no lines). */
  private endsInBreak = true;
  private state = S.FieldStart;
  /** The previous byte was a CR, so an LF now is the second half of CRLF. */
  private afterCR = false;
  /** A CR ended a record; it ends after the CR, or after an LF that directly follows. */
  private endAtCR = false;

  /** Whether the scan stopped inside a quoted field. */
  get inQuotes(): boolean {
    return this.state === S.Quoted || this.state === S.QuoteInQuoted;
  }

  /** Physical lines scanned so far, a last line without a line break included. */
  get lines(): number {
    return this.endsInBreak ? this.line - 1 : this.line;
  }

  /**
   * Scans the next chunk of the file. For each record that ends in it, appends the offset just
   * past the record's terminator (relative to this chunk; 0 when a CR at the end of the
   * previous chunk ended it) and the line the record started on.
   */
  scan(chunk: Uint8Array, ends: number[], lines: number[]): void {
    let { line, state, afterCR, endAtCR, recordLine, quoteLine } = this;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (endAtCR) {
        endAtCR = false;
        ends.push(b === LF ? i + 1 : i);
        lines.push(recordLine);
        recordLine = line;
        if (b === LF) {
          afterCR = false;
          continue;
        }
      }
      if (b === LF) {
        if (!afterCR) line++;
        afterCR = false;
      } else {
        afterCR = b === CR;
        if (afterCR) line++;
      }
      if (state === S.Quoted) {
        if (b === QUOTE) state = S.QuoteInQuoted;
        continue;
      }
      if (state === S.QuoteInQuoted) {
        if (b === QUOTE) {
          state = S.Quoted;
          continue;
        }
        // The quote closed the field; this byte is outside it.
        state = S.Unquoted;
      }
      if (b === COMMA) state = S.FieldStart;
      else if (b === LF) {
        state = S.FieldStart;
        ends.push(i + 1);
        lines.push(recordLine);
        recordLine = line;
      } else if (b === CR) {
        state = S.FieldStart;
        endAtCR = true;
      } else if (state === S.FieldStart && b === QUOTE) {
        state = S.Quoted;
        quoteLine = line;
      } else if (!isSpace(b)) state = S.Unquoted;
    }
    this.line = line;
    this.state = state;
    this.afterCR = afterCR;
    this.endAtCR = endAtCR;
    this.recordLine = recordLine;
    this.quoteLine = quoteLine;
    if (chunk.length > 0) this.endsInBreak = chunk[chunk.length - 1] === LF || chunk[chunk.length - 1] === CR;
  }
}

/**
 * Spaces allowed before an opening quote. fast-csv skips any `\s` there; a field that opens
 * with a non-ASCII space, a quote and then a line break inside the quotes is therefore cut
 * differently here, and reported as a bad row rather than misread.
 */
function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0b || b === 0x0c;
}
