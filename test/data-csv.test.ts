import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { maxSkippedLines, openCsv, type CsvOptions, type CsvRow } from '../src/data/csv.js';
import { DataError, QuoteError, RaggedRowError, RowTooLongError, TooManyBadRowsError, Utf8Error, type BadRowError } from '../src/data/errors.js';
import { parseString } from '@fast-csv/parse';
import { Rng } from '../src/base/rng.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-csv-');
afterAll(tmp.cleanup);
let n = 0;

function file(content: string | Uint8Array): string {
  const path = join(tmp.dir, `f${n++}.csv`);
  writeFileSync(path, content);
  return path;
}

async function readAll(path: string, opts: CsvOptions = {}): Promise<{ header: string[]; rows: CsvRow[] }> {
  const table = await openCsv(path, opts);
  const rows: CsvRow[] = [];
  for await (const row of table.rows) rows.push(row);
  return { header: table.header, rows };
}

// Small reads put chunk edges inside quotes, CRLFs and multi-byte characters.
const CHUNKS = [1, 2, 3, 5, 7, 64, undefined];

describe('csv reader', () => {
  it('handles BOM, CRLF, multi-byte UTF-8 and quoted commas, newlines and quotes', async () => {
    const text =
      '\ufeffid,text\r\n' +
      '1,héllo wörld 日本語 🎉\r\n' +
      '2,"a, b"\r\n' +
      '3,"two\r\nlines, ""quoted"""\r\n' +
      '4,  "spaced quote"  \r\n' +
      '5,5" screen\r\n' +
      '6,last';
    const path = file(text);
    for (const chunkBytes of CHUNKS) {
      const { header, rows } = await readAll(path, { chunkBytes });
      expect(header).toEqual(['id', 'text']);
      expect(rows).toEqual([
        { line: 2, lines: 1, fields: ['1', 'héllo wörld 日本語 🎉'] },
        { line: 3, lines: 1, fields: ['2', 'a, b'] },
        { line: 4, lines: 2, fields: ['3', 'two\r\nlines, "quoted"'] },
        { line: 6, lines: 1, fields: ['4', 'spaced quote'] },
        { line: 7, lines: 1, fields: ['5', '5" screen'] },
        { line: 8, lines: 1, fields: ['6', 'last'] },
      ]);
    }
  });

  it('accepts LF and lone-CR line ends and reports blank lines as empty rows', async () => {
    for (const eol of ['\n', '\r']) {
      const path = file(['text', 'a', '', 'b', '   ', '"c' + eol + 'd"', 'e', ''].join(eol));
      for (const chunkBytes of CHUNKS) {
        const { rows } = await readAll(path, { chunkBytes });
        expect(rows).toEqual([
          { line: 2, lines: 1, fields: ['a'] },
          { line: 3, lines: 1, fields: [] },
          { line: 4, lines: 1, fields: ['b'] },
          { line: 5, lines: 1, fields: [] },
          { line: 6, lines: 2, fields: ['c' + eol + 'd'] },
          { line: 8, lines: 1, fields: ['e'] },
        ]);
      }
    }
  });

  it('names the file and line of a ragged row', async () => {
    const path = file('a,b\n1,"x\ny"\n2,3,4\n');
    const err = await readAll(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RaggedRowError);
    expect(err).toMatchObject({ name: 'RaggedRowError', file: path, line: 4 });
    expect((err as Error).message).toContain(`${path}:4: row has 3 fields, the header has 2`);
  });

  it('names the line of a broken or unterminated quote', async () => {
    const broken = file('a,b\n1,2\n3,"x"y\n5,6\n');
    const unterminated = file('a,b\n1,2\n3,4\n5,"never closed\n6,7\n');
    for (const chunkBytes of CHUNKS) {
      await expect(readAll(broken, { chunkBytes })).rejects.toMatchObject({ name: 'QuoteError', file: broken, line: 3 });
      await expect(readAll(unterminated, { chunkBytes })).rejects.toMatchObject({ name: 'QuoteError', line: 4 });
    }
    await expect(readAll(broken)).rejects.toBeInstanceOf(QuoteError);
    // A no-break space before the quote: the one case the framer and fast-csv disagree on.
    await expect(readAll(file('a,b\n1,\u00a0"x\ny"\n'))).rejects.toMatchObject({ name: 'QuoteError', line: 2 });
  });

  it('keeps a broken quote message short and names the line the quote opened on', async () => {
    const rest = 'filler,row\n'.repeat(20_000);
    const unclosed = file(`a,b\n1,2\n3,"x\ny"\n5,"never closed\n${rest}`);
    const trailing = file(`a,b\n1,2\n3,"x"${'y'.repeat(200_000)}\n`);
    for (const path of [unclosed, trailing]) {
      const err = (await readAll(path).catch((e: unknown) => e)) as QuoteError;
      expect(err).toBeInstanceOf(QuoteError);
      expect(err.message.length).toBeLessThan(300);
    }
    await expect(readAll(unclosed)).rejects.toThrow(`${unclosed}:5: malformed quoted field: a quote opened on this line is never closed, so lines 5–20005 (the end of the file) read as one field`);
    // A record whose second line opens the quote that never closes.
    const second = file('a,b\n1,"x\ny", "z\n3,4\n');
    await expect(readAll(second, { chunkBytes: 3 })).rejects.toMatchObject({ name: 'QuoteError', line: 3 });
  });

  it('reports how many lines each skipped row spans', async () => {
    const path = file('a,b\n1,2\n3,"x\ny\nz"q\n4,"p\nq",r\n5,6\n');
    for (const chunkBytes of CHUNKS) {
      const bad: [string, number, number][] = [];
      const { rows } = await readAll(path, { chunkBytes, skipBadRows: true, onBadRow: (e, lines) => bad.push([e.name, e.line!, lines]) });
      expect(rows.map((r) => r.line)).toEqual([2, 8]);
      expect(bad).toEqual([
        ['QuoteError', 3, 3],
        ['RaggedRowError', 6, 2],
      ]);
    }
    await expect(readAll(path)).rejects.toThrow(/:3: malformed quoted field/);
  });

  it('refuses to skip bad rows that span more than 1% of the lines (at least 10)', async () => {
    // One stray quote on line 6 of 395 swallows the 390 lines after it.
    const rows = Array.from({ length: 394 }, (_, i) => `${i},${i === 4 ? '"stray' : 'ok'}`);
    const stray = file(['a,b', ...rows].join('\n') + '\n');
    const err = await readAll(stray, { skipBadRows: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TooManyBadRowsError);
    expect(err).toMatchObject({ file: stray, line: 6 });
    expect((err as Error).message).toMatch(/skipping bad rows would drop 390 of the file's 395 lines, more than the 10 allowed .*lines 6–395: malformed quoted field: a quote opened on this line is never closed/);
    // 2000 lines allow 20: a 15-line row passes, two of them do not.
    const bigRow = (at: number): string => `${at},"${'x\n'.repeat(14)}"bad`;
    const lines = (bad: number[]): string[] => Array.from({ length: 2000 - 1 - 14 * bad.length }, (_, i) => (bad.includes(i) ? bigRow(i) : `${i},ok`));
    const one = file(['a,b', ...lines([100])].join('\n'));
    const lost: number[] = [];
    await readAll(one, { skipBadRows: true, onBadRow: (_, n) => lost.push(n) });
    expect(lost).toEqual([15]);
    const two = file(['a,b', ...lines([100, 900])].join('\n'));
    await expect(readAll(two, { skipBadRows: true })).rejects.toThrow(/drop 30 of the file's 2000 lines, more than the 20 allowed/);
    expect(maxSkippedLines(395)).toBe(10);
    expect(maxSkippedLines(100_000)).toBe(1000);
  });

  it('names the exact line of invalid UTF-8, even inside a multi-line field', async () => {
    const bytes = Buffer.concat([
      Buffer.from('a,b\n1,"ok\nstill ok\nbad '),
      Buffer.from([0xc3, 0x28]),
      Buffer.from('"\n2,3\n'),
    ]);
    const path = file(bytes);
    for (const chunkBytes of CHUNKS) {
      const err = await readAll(path, { chunkBytes }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Utf8Error);
      expect(err).toMatchObject({ file: path, line: 4 });
    }
  });

  it('skips bad rows when asked, reporting each with its line', async () => {
    const bytes = Buffer.concat([
      Buffer.from('a,b\n1,2\n3,4,5\n6,"x"y\n7,'),
      Buffer.from([0xff]),
      Buffer.from('\n8,"multi\nline"\n9,"never closed\n10,11\n'),
    ]);
    const path = file(bytes);
    for (const chunkBytes of CHUNKS) {
      const bad: BadRowError[] = [];
      const { rows } = await readAll(path, { chunkBytes, skipBadRows: true, onBadRow: (e) => bad.push(e) });
      expect(rows).toEqual([
        { line: 2, lines: 1, fields: ['1', '2'] },
        { line: 6, lines: 2, fields: ['8', 'multi\nline'] },
      ]);
      expect(bad.map((e) => [e.name, e.line])).toEqual([
        ['RaggedRowError', 3],
        ['QuoteError', 4],
        ['Utf8Error', 5],
        ['QuoteError', 8],
      ]);
    }
  });

  it('refuses a row longer than maxRowBytes, or skips it and reads on', async () => {
    const path = file(`a,b\n1,2\n3,"${'x'.repeat(300)}\nstill quoted"\n4,5\n`);
    await expect(readAll(path, { chunkBytes: 16, maxRowBytes: 100 })).rejects.toMatchObject({ name: 'RowTooLongError', line: 3 });
    const bad: BadRowError[] = [];
    const { rows } = await readAll(path, { chunkBytes: 16, maxRowBytes: 100, skipBadRows: true, onBadRow: (e) => bad.push(e) });
    expect(rows).toEqual([
      { line: 2, lines: 1, fields: ['1', '2'] },
      { line: 5, lines: 1, fields: ['4', '5'] },
    ]);
    expect(bad).toHaveLength(1);
    expect(bad[0]).toBeInstanceOf(RowTooLongError);
    expect(bad[0]!.message).toContain('is the quote opened on line 3 never closed?');
  });

  it('never skips a bad header, and rejects a file without one', async () => {
    await expect(readAll(file('a,"b\n'), { skipBadRows: true })).rejects.toBeInstanceOf(QuoteError);
    await expect(readAll(file('\n\n'))).rejects.toBeInstanceOf(DataError);
    expect((await readAll(file('\n\nx,y\n1,2\n'))).rows).toEqual([{ line: 4, lines: 1, fields: ['1', '2'] }]);
  });

  it('reports progress and can stop early', async () => {
    const path = file('a\n' + '1\n'.repeat(1000));
    const seen: number[] = [];
    const table = await openCsv(path, { chunkBytes: 100, onProgress: (b) => seen.push(b) });
    for await (const row of table.rows) if (row.line === 10) break;
    await table.close();
    expect(seen).toEqual([100]);
  });
});

describe('csv reader against fast-csv on random input', () => {
  const parseWhole = (text: string): Promise<string[][]> =>
    new Promise((resolve, reject) => {
      const rows: string[][] = [];
      parseString<string[], string[]>(text, { headers: false })
        .on('error', reject)
        .on('data', (r: string[]) => rows.push(r))
        .on('end', () => resolve(rows));
    });
  // Mostly well-formed rows with the awkward parts of CSV, and now and then a defect.
  const randomCsv = (rng: Rng): string => {
    const pick = <T>(xs: T[]): T => xs[rng.int(xs.length)]!;
    const field = (): string => {
      if (rng.next() < 0.5) return Array.from({ length: rng.int(4) }, () => pick(['a', 'é', '日', ' ', '5"'])).join('');
      const inner = Array.from({ length: rng.int(5) }, () => pick(['a', ',', '""', '\n', '\r\n', '\r', ' ', '🎉'])).join('');
      return pick(['', ' ']) + '"' + inner + '"' + pick(['', ' ', '', '', '', '', '', '', 'x']);
    };
    let text = 'h1,h2' + pick(['\n', '\r\n', '\r']);
    for (let i = 0; i < 6; i++) {
      const fields = rng.next() < 0.05 ? [field()] : [field(), field()];
      if (rng.next() < 0.05) fields.push('"open');
      text += (rng.next() < 0.1 ? '' : fields.join(',')) + pick(['\n', '\r\n', '\r']);
    }
    return text;
  };

  it('splits records exactly as fast-csv does, at every chunk size', async () => {
    const rng = new Rng(11);
    let compared = 0;
    for (let trial = 0; trial < 100; trial++) {
      const text = randomCsv(rng);
      const whole = await parseWhole(text).catch(() => null);
      const path = file(text);
      const results = await Promise.all(
        CHUNKS.map((chunkBytes) => readAll(path, { chunkBytes }).then(({ rows }) => rows, (e: unknown) => e as Error)),
      );
      // Every chunk size gives the same rows, lines and errors.
      for (const r of results) expect(r).toEqual(results[0]);
      const rows = results[0]!;
      const nonBlank = whole?.slice(1).filter((r) => r.length > 0);
      if (whole === null) {
        // fast-csv stops at the broken quote; we stop there too, or at a ragged row before it.
        expect(rows).toBeInstanceOf(DataError);
        const bad: BadRowError[] = [];
        await readAll(path, { skipBadRows: true, onBadRow: (e) => bad.push(e) });
        expect(bad.some((e) => e instanceof QuoteError)).toBe(true);
      } else if (nonBlank!.some((r) => r.length !== 2)) expect(rows).toBeInstanceOf(RaggedRowError);
      else {
        expect((rows as CsvRow[]).filter((r) => r.fields.length > 0).map((r) => r.fields)).toEqual(nonBlank);
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(30);
  });
});
