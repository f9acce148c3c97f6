import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadDataset, type LoadDatasetOptions } from '../src/data/dataset.js';
import { MissingColumnError } from '../src/data/errors.js';
import { openJsonl } from '../src/data/jsonl.js';
import { evalBatches } from '../src/data/sampler.js';
import type { TokenStore } from '../src/data/store.js';
import { escapeNote, parseTemplate, readTemplateArg } from '../src/data/template.js';
import { byteEncoder, bytesOf } from './fixtures/csv/byte-encoder.js';
import { openCsv } from '../src/data/csv.js';
import { FIXTURES, tempDir } from './helpers.js';

const tmp = tempDir('molora-formats-');
afterAll(tmp.cleanup);
let n = 0;

function file(ext: string, content: string | Buffer): string {
  const path = join(tmp.dir, `f${n++}.${ext}`);
  writeFileSync(path, content);
  return path;
}

function load(path: string, opts: Partial<LoadDatasetOptions> = {}) {
  return loadDataset({ path, encoder: byteEncoder, tokenizerId: 'bytes', seqLen: 256, seed: 1, ...opts });
}

const BOS = 256;
const EOS = 257;

/** Every array of a store, as plain values. */
function contents(s: TokenStore) {
  return [s.tokens, s.offsets, s.promptLens, s.gapOffsets, s.gaps, s.taskIds, s.hashes].map((a) => Array.from(a)).concat([s.taskNames as never, s.mode as never]);
}

async function readJsonl(path: string, opts = {}) {
  const t = await openJsonl(path, opts);
  const rows = [];
  for await (const r of t.rows) rows.push(r);
  return { keys: t.keys, rows };
}

describe('JSONL rows', () => {
  it('reads one object per line with its line, blank lines as blanks, BOM and CRLF included', async () => {
    const path = file('jsonl', '\ufeff{"a": 1, "b": "x"}\r\n\n{"a": 2, "b": "y\\nz"}\n{"b": "only b"}');
    const { keys, rows } = await readJsonl(path, { chunkBytes: 7 });
    expect(keys).toEqual(['a', 'b']);
    expect(rows).toEqual([
      { line: 1, lines: 1, value: { a: 1, b: 'x' } },
      { line: 2, lines: 1, value: null },
      { line: 3, lines: 1, value: { a: 2, b: 'y\nz' } },
      { line: 4, lines: 1, value: { b: 'only b' } },
    ]);
  });

  it('names the line of malformed JSON, a non-object and invalid UTF-8, or skips and counts them', async () => {
    const bytes = Buffer.concat([Buffer.from('{"t": "ok"}\n{"t": "cut\n[1, 2]\n{"t": "'), Buffer.from([0xc3, 0x28]), Buffer.from('"}\n{"t": "fine"}\n')]);
    const path = file('jsonl', bytes);
    await expect(load(path, { textColumn: 't' })).rejects.toThrow(`${path}:2: not a JSON object: `);
    const seen: string[] = [];
    const { keys, rows } = await readJsonl(path, { skipBadRows: true, onBadRow: (e: Error & { line: number }) => seen.push(`${e.name}:${e.line}`) });
    expect(keys).toEqual(['t']);
    expect(rows.map((r) => r.line)).toEqual([1, 5]);
    expect(seen).toEqual(['JsonLineError:2', 'JsonLineError:3', 'Utf8Error:4']);
    const { stats } = await load(path, { textColumn: 't', skipBadRows: true });
    expect(stats).toMatchObject({ rowsRead: 5, examples: 2, badRowsSkipped: 3, badRows: [{ line: 2 }, { line: 3, reason: expect.stringContaining('holds an array') }, { line: 4 }] });
  });

  it('refuses a line longer than maxRowBytes, naming it', async () => {
    const path = file('jsonl', `{"t": "a"}\n{"t": "${'x'.repeat(200)}"}\n{"t": "b"}\n`);
    await expect(readJsonl(path, { chunkBytes: 16, maxRowBytes: 100 })).rejects.toMatchObject({ name: 'RowTooLongError', line: 2 });
    const { rows } = await readJsonl(path, { chunkBytes: 16, maxRowBytes: 100, skipBadRows: true });
    expect(rows.map((r) => [r.line, r.value])).toEqual([
      [1, { t: 'a' }],
      [3, { t: 'b' }],
    ]);
  });

  it('names a row that lacks a key, or whose value is not text', async () => {
    const path = file('jsonl', '{"p": "a", "c": "b"}\n{"p": "q"}\n{"p": null, "c": "d"}\n{"p": [1], "c": "e"}\n{"p": 7, "c": true}\n');
    await expect(load(path, { promptColumn: 'p', completionColumn: 'c' })).rejects.toThrow(`${path}:2: the row has no "c"`);
    const { train, stats } = await load(path, { promptColumn: 'p', completionColumn: 'c', skipBadRows: true });
    expect(stats.badRows.map((b) => [b.line, b.reason])).toEqual([
      [2, 'the row has no "c"'],
      [3, '"p" is null'],
      [4, '"p" holds an array, not text'],
    ]);
    // JSON numbers and booleans fill a template as JSON writes them.
    expect(Array.from(train.example(1))).toEqual([BOS, ...bytesOf('7true'), EOS]);
  });

  it('gives the same token store as the same rows in a CSV', async () => {
    const rows = [
      { task: 'a', q: 'What is "1,2"?', a: 'two numbers', messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] },
      { task: 'b', q: 'multi\nline, quoted', a: ' spaced ', messages: [{ role: 'system', content: 'be kind' }, { role: 'user', content: 'é?' }, { role: 'assistant', content: 'ü!' }] },
      { task: 'a', q: '', a: 'empty prompt', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y' }] },
      { task: 'b', q: 'no answer', a: '', messages: [{ role: 'user', content: 'z' }] },
    ];
    const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;
    const csvPath = file('csv', 'task,q,a,messages\n' + rows.map((r) => [r.task, r.q, r.a, JSON.stringify(r.messages)].map(quote).join(',')).join('\n') + '\n');
    const jsonlPath = file('jsonl', rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const chatTemplate = () => ({ template: "{% for m in messages %}<{{ m.role }}>{{ m.content }}</>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}", specialTokens: {}, source: 'test' });
    const formats: Partial<LoadDatasetOptions>[] = [
      { textColumn: 'q' },
      { promptTemplate: 'Q: {q}\nA:', completionTemplate: ' {a}', taskColumn: 'task' },
      { messagesColumn: 'messages', chatTemplate, taskColumn: 'task' },
      { userColumn: 'q', assistantColumn: 'a', system: 'sys', chatTemplate },
    ];
    for (const f of formats) {
      const [fromCsv, fromJsonl] = [await load(csvPath, f), await load(jsonlPath, f)];
      expect(fromJsonl.stats.examples).toBeGreaterThan(0);
      expect(contents(fromJsonl.train)).toEqual(contents(fromCsv.train));
      expect({ ...fromJsonl.stats, emptyLines: [] }).toEqual({ ...fromCsv.stats, emptyLines: [] });
    }
  });

  it('reads a file as JSONL or CSV as told, whatever its extension', async () => {
    const path = file('txt', '{"text": "hello"}\n');
    const { train } = await load(path, { dataFormat: 'jsonl' });
    expect(Array.from(train.tokens)).toEqual([BOS, ...bytesOf('hello'), EOS]);
    await expect(load(path)).rejects.toThrow(/no column "text"/);
  });
});

describe('prompt and completion templates', () => {
  const sms = () => file('csv', 'label,masseges,,,\nham,"Go until jurong point, crazy..",,,\nspam,Free entry NOW,,,\n');

  it('fills placeholders verbatim, newlines and braces included', async () => {
    const { train } = await load(sms(), { promptTemplate: 'SMS: {masseges}\n{{Label}}:', completionTemplate: ' {label}' });
    const prompt = 'SMS: Go until jurong point, crazy..\n{Label}:';
    expect(Array.from(train.example(0))).toEqual([BOS, ...bytesOf(prompt), ...bytesOf(' ham'), EOS]);
    expect(train.promptLens[0]).toBe(1 + bytesOf(prompt).length);
  });

  it('names an unknown placeholder and lists the columns', async () => {
    const path = sms();
    const err = await load(path, { promptTemplate: 'SMS: {messages}', completionTemplate: ' {label}' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MissingColumnError);
    expect((err as Error).message).toBe(`${path}:1: no column "messages" (named by --prompt-template's {messages}); available columns: "label", "masseges", "", "", ""`);
    const jsonl = file('jsonl', '{"label": "ham", "text": "x"}\n');
    await expect(load(jsonl, { promptTemplate: '{text}', completionTemplate: '{labels}' })).rejects.toThrow(`${jsonl}:1: no column "labels" (named by --completion-template's {labels}); available columns: "label", "text"`);
  });

  it('refuses malformed templates, naming the flag and the character', () => {
    expect(() => parseTemplate('SMS: {masseges', '--prompt-template')).toThrow('--prompt-template: the { at character 6 is never closed (write {{ for a literal brace)');
    expect(() => parseTemplate('a } b', '--prompt-template')).toThrow('--prompt-template: a lone } at character 3');
    expect(() => parseTemplate('x {} y', '--completion-template')).toThrow('--completion-template: empty placeholder {} at character 3');
    expect(parseTemplate('{{a}} {b}', 't')).toEqual({ parts: ['{a} ', { column: 'b' }] });
  });

  it('reads @file templates without the final line break an editor adds, and notes literal \\n', () => {
    const path = file('txt', 'SMS: {masseges}\nLabel:\n');
    expect(readTemplateArg(`@${path}`)).toBe('SMS: {masseges}\nLabel:');
    expect(readTemplateArg('as is\n')).toBe('as is\n');
    expect(() => readTemplateArg('@/no/such/file.txt')).toThrow('cannot read the template file /no/such/file.txt');
    expect(escapeNote('SMS: {m}\\nLabel:', '--prompt-template')).toMatch(/--prompt-template contains a backslash sequence/);
    expect(escapeNote('SMS: {m}\nLabel:', '--prompt-template')).toBeNull();
  });

  it('skips rows whose completion columns are empty, whatever text the template adds', async () => {
    const path = file('csv', 'p,c\na,x\nb,\nc,"  "\n');
    const { stats } = await load(path, { promptTemplate: '{p}', completionTemplate: ' Answer: {c}' });
    expect(stats).toMatchObject({ rowsRead: 3, examples: 1, emptyRows: 2 });
  });
});

describe('templates alone give what hand-preprocessing gives', () => {
  it('the SMS-shaped CSV as downloaded, through templates, tokenizes as a CSV preprocessed by hand into prompt and completion columns', async () => {
    const sms = join(FIXTURES, 'sms', 'sms.csv');
    const table = await openCsv(sms);
    const quote = (s: string) => `"${s.replace(/"/g, '""')}"`;
    const lines = ['prompt,completion'];
    for await (const row of table.rows) lines.push([quote(`SMS: ${row.fields[1]}\nLabel:`), quote(` ${row.fields[0]}`)].join(','));
    const byHand = file('csv', lines.join('\n') + '\n');
    const opts = { seqLen: 128 };
    const templated = await load(sms, { ...opts, promptTemplate: 'SMS: {masseges}\nLabel:', completionTemplate: ' {label}' });
    const preprocessed = await load(byHand, { ...opts, promptColumn: 'prompt', completionColumn: 'completion' });
    expect(templated.stats).toMatchObject({ rowsRead: 340, examples: 340, truncated: 83, dropped: 0 });
    expect(contents(templated.train)).toEqual(contents(preprocessed.train));
  });
});

describe('left truncation keeps every completion', () => {
  // Prompts far longer than seqLen, as SMS messages are at 900 bytes.
  const rows = [
    ['x'.repeat(300), 'ham'],
    ['short', 'spam'],
    ['y'.repeat(40), 'z'.repeat(29)], // completion of 31 tokens (eos included): fits 33 with bos and one prompt token
    ['w'.repeat(10), 'q'.repeat(32)], // completion of 34 tokens: cannot fit
  ];
  const path = () => file('csv', 'm,l\n' + rows.map((r) => r.join(',')).join('\n') + '\n');

  it('cuts the prompt from the left after bos, and drops only a row whose completion alone does not fit', async () => {
    const { train, stats } = await load(path(), { promptTemplate: 'SMS: {m}\nLabel:', completionTemplate: ' {l}', seqLen: 32 });
    expect(stats).toMatchObject({ truncate: 'left', examples: 4, truncated: 2, dropped: 1, trainSequences: 3 });
    const tail = 'x'.repeat(20) + '\nLabel:';
    expect(Array.from(train.example(0))).toEqual([BOS, ...bytesOf(tail), ...bytesOf(' ham'), EOS]);
    expect(train.length(0)).toBe(33);
    expect(Array.from(train.example(2))).toEqual([BOS, bytesOf(':')[0], ...bytesOf(' ' + 'z'.repeat(29)), EOS]);
    // Every kept row's completion is whole and carries the loss.
    const b = [...evalBatches(train, { batchSize: 8, seqLen: 32 })][0]!;
    const lossTargets = (r: number) => Array.from(b.targets.subarray(r * b.seq, (r + 1) * b.seq)).filter((_, t) => b.lossMask[r * b.seq + t]);
    expect(lossTargets(0)).toEqual([...bytesOf(' ham'), EOS]);
    expect(lossTargets(1)).toEqual([...bytesOf(' spam'), EOS]);
    expect(lossTargets(2)).toEqual([...bytesOf(' ' + 'z'.repeat(29)), EOS]);
  });

  it('with truncate right, loses the rows whose prompt fills seqLen, as before', async () => {
    const { stats } = await load(path(), { promptTemplate: 'SMS: {m}\nLabel:', completionTemplate: ' {l}', seqLen: 32, truncate: 'right' });
    expect(stats).toMatchObject({ truncate: 'right', truncated: 3, dropped: 2, trainSequences: 2 });
  });

  it('applies to prompt/completion and chat rows only', async () => {
    await expect(load(path(), { textColumn: 'm', truncate: 'left' })).rejects.toThrow(/text rows are packed/);
  });
});
