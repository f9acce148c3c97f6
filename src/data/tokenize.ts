/**
 * CSV rows → token store: picks the columns, drops empty rows, encodes each example and
 * counts what happened to every row.
 */
import { openCsv } from './csv.js';
import type { Encoder } from './encoder.js';
import { DataError, MissingColumnError } from './errors.js';
import { contentHash } from './split.js';
import { TokenStoreBuilder, type TokenStore } from './store.js';

/** Which columns hold the training text; `task` optional in both modes. */
export type ColumnSpec =
  | { mode: 'text'; text: string; task: string | null }
  | { mode: 'completion'; prompt: string; completion: string; task: string | null };

/** What happened to the rows of one file. */
export interface ReadStats {
  /** Data rows after the header, blank and bad ones included. */
  rowsRead: number;
  /** Rows turned into examples: rowsRead − emptySkipped − badRowsSkipped. */
  examples: number;
  /** Blank lines, and rows whose text (or completion) is empty or only whitespace. */
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
}

export interface TokenizeOptions {
  skipBadRows?: boolean;
  onProgress?: (bytesRead: number) => void;
}

/** Lines kept per kind of skipped row, for the report. */
const SAMPLES = 10;

export async function tokenizeCsv(
  file: string,
  spec: ColumnSpec,
  encoder: Encoder,
  opts: TokenizeOptions = {},
): Promise<{ store: TokenStore; stats: ReadStats }> {
  const eos = encoder.eosId;
  if (eos === null) throw new Error('the tokenizer has no eos token, which training data needs to end each example');
  const stats: ReadStats = { rowsRead: 0, examples: 0, emptySkipped: 0, emptyRows: 0, emptyLines: [], badRowsSkipped: 0, badLinesSkipped: 0, badRows: [] };
  const table = await openCsv(file, {
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
    const column = (name: string): number => {
      const at = table.header.indexOf(name);
      if (at < 0) throw new MissingColumnError(file, table.headerLine, name, table.header);
      if (table.header.lastIndexOf(name) !== at) {
        throw new DataError(`column ${JSON.stringify(name)} appears more than once in the header`, file, table.headerLine);
      }
      return at;
    };
    // In both modes the last of these columns carries the loss, so an empty one skips the row.
    const cols = spec.mode === 'text' ? [column(spec.text)] : [column(spec.prompt), column(spec.completion)];
    const lossCol = cols[cols.length - 1]!;
    const taskCol = spec.task === null ? -1 : column(spec.task);
    const builder = new TokenStoreBuilder(spec.mode, encoder.padId ?? eos);
    const taskIds = new Map<string, number>();
    const eosPart = [eos];
    for await (const row of table.rows) {
      stats.rowsRead++;
      const f = row.fields;
      if (f.length === 0 || f[lossCol]!.trim() === '') {
        stats.emptySkipped++;
        if (f.length > 0) {
          stats.emptyRows++;
          if (stats.emptyLines.length < SAMPLES) stats.emptyLines.push(row.line);
        }
        continue;
      }
      let taskId = 0;
      if (taskCol >= 0) {
        const name = f[taskCol]!;
        taskId = taskIds.get(name) ?? taskIds.size;
        if (taskId === taskIds.size) {
          if (taskId >= 0x10000) {
            throw new DataError(`more than 65536 distinct tasks in column ${JSON.stringify(spec.task)}; is it the right column?`, file, row.line);
          }
          taskIds.set(name, taskId);
        }
      }
      if (spec.mode === 'text') {
        const text = f[cols[0]!]!;
        // bos (when the tokenizer uses one) starts each document as it starts a prompt at generation.
        builder.add([encoder.encode(text, { addBos: true }), eosPart], 0, taskId, contentHash([text]));
      } else {
        const prompt = f[cols[0]!]!;
        const completion = f[lossCol]!;
        const p = encoder.encode(prompt, { addBos: true });
        const c = encoder.encode(completion, { addBos: false });
        builder.add([p, c, eosPart], p.length, taskId, contentHash([prompt, completion]));
      }
      stats.examples++;
    }
    return { store: builder.finish([...taskIds.keys()]), stats };
  } finally {
    await table.close();
  }
}
