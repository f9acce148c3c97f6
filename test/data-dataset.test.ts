import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadDataset, type LoadDatasetOptions } from '../src/data/dataset.js';
import type { Encoder } from '../src/data/encoder.js';
import { MissingColumnError, RaggedRowError } from '../src/data/errors.js';
import { fitPrompts } from '../src/data/layout.js';
import { evalBatches } from '../src/data/sampler.js';
import { Rng } from '../src/base/rng.js';
import { byteEncoder, bytesOf } from './fixtures/csv/byte-encoder.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-dataset-');
afterAll(tmp.cleanup);
let n = 0;

function csv(content: string): string {
  const path = join(tmp.dir, `d${n++}.csv`);
  writeFileSync(path, content);
  return path;
}

function load(path: string, opts: Partial<LoadDatasetOptions> = {}) {
  return loadDataset({ path, encoder: byteEncoder, tokenizerId: 'bytes', seqLen: 64, seed: 1, ...opts });
}

const BOS = 256;
const EOS = 257;
const PAD = 258;

describe('text mode', () => {
  it('packs documents into one stream, each bos … eos, with loss on every target', async () => {
    const path = csv('text\nab\n"c,d"\né\nz\n');
    const { train, val, stats } = await load(path, { seqLen: 4 });
    const docs = ['ab', 'c,d', 'é', 'z'].map((d) => [BOS, ...bytesOf(d), EOS]);
    const stream = docs.flat();
    expect(stream).toHaveLength(16);
    expect(Array.from(train.tokens)).toEqual(stream);
    expect(val).toBeNull();
    expect(stats).toMatchObject({ mode: 'text', rowsRead: 4, examples: 4, tokens: 16, trainSequences: 4, truncated: 0 });

    // Windows of seqLen + 1 tokens overlapping by one; the last is shorter and padded.
    const batches = [...evalBatches(train, { batchSize: 8, seqLen: 4 })];
    expect(batches).toHaveLength(1);
    const b = batches[0]!;
    expect([b.batch, b.seq]).toEqual([4, 4]);
    const rows = (a: ArrayLike<number>) => [0, 1, 2, 3].map((r) => Array.from(a).slice(r * 4, r * 4 + 4));
    expect(rows(b.ids)).toEqual([stream.slice(0, 4), stream.slice(4, 8), stream.slice(8, 12), [...stream.slice(12, 15), PAD]]);
    expect(rows(b.targets)).toEqual([stream.slice(1, 5), stream.slice(5, 9), stream.slice(9, 13), [...stream.slice(13, 16), PAD]]);
    expect(rows(b.lossMask)).toEqual([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]);
    expect(rows(b.attentionMask)).toEqual(rows(b.lossMask));
  });

  it('keeps each task in its own stream so no sequence mixes tasks', async () => {
    const path = csv('task,text\nA,aaaa\nB,bbbb\nA,aaaa\nB,bb\n');
    const { train, taskNames, stats } = await load(path, { taskColumn: 'task', seqLen: 4 });
    expect(taskNames).toEqual(['A', 'B']);
    expect(Array.from(train.taskIds)).toEqual([0, 1, 0, 1]);
    expect(stats.perTask).toEqual({ A: { train: 2, val: 0 }, B: { train: 2, val: 0 } });
    const b = [...evalBatches(train, { batchSize: 16, seqLen: 4 })][0]!;
    const a = bytesOf('a')[0]!;
    for (let r = 0; r < b.batch; r++) {
      const ids = Array.from(b.ids.subarray(r * 4, r * 4 + 4)).filter((t) => t < 256);
      const want = b.taskIds[r] === 0 ? a : bytesOf('b')[0]!;
      expect(ids.every((t) => t === want)).toBe(true);
    }
    // Task A: 12 tokens → 3 windows; task B: 6 + 4 tokens → 3 windows.
    expect(Array.from(b.taskIds)).toEqual([0, 0, 0, 1, 1, 1]);
  });

  it('counts blank lines and empty texts as empty rows', async () => {
    const { stats, train } = await load(csv('id,text\n1,x\n\n2,\n3,"  "\n4,y\n'));
    expect(stats).toMatchObject({ rowsRead: 5, examples: 2, emptySkipped: 3 });
    expect(train.size).toBe(2);
  });
});

describe('prompt/completion mode', () => {
  it('puts loss on completion tokens and eos only, padding per batch', async () => {
    const path = csv('prompt,completion\nQ1?,yes\n,solo\nlonger question?,ok\n');
    const { train, stats } = await load(path, { promptColumn: 'prompt', completionColumn: 'completion' });
    expect(stats).toMatchObject({ mode: 'completion', examples: 3, truncate: 'left', truncated: 0, dropped: 0 });
    const b = [...evalBatches(train, { batchSize: 3, seqLen: 64 })][0]!;
    const examples = [
      [BOS, ...bytesOf('Q1?'), ...bytesOf('yes'), EOS],
      [BOS, ...bytesOf('solo'), EOS],
      [BOS, ...bytesOf('longer question?'), ...bytesOf('ok'), EOS],
    ];
    const promptLens = [4, 1, 17];
    const T = Math.max(...examples.map((e) => e.length - 1));
    expect([b.batch, b.seq]).toEqual([3, T]);
    examples.forEach((ex, r) => {
      const row = (a: ArrayLike<number>) => Array.from(a).slice(r * T, (r + 1) * T);
      const n = ex.length - 1;
      const pad = (xs: number[], v: number) => [...xs, ...new Array<number>(T - n).fill(v)];
      expect(row(b.ids)).toEqual(pad(ex.slice(0, n), PAD));
      expect(row(b.targets)).toEqual(pad(ex.slice(1), PAD));
      // Target t is token t + 1: loss from the first completion token through eos.
      const mask = ex.slice(1).map((_, t) => (t + 1 >= promptLens[r]! ? 1 : 0));
      expect(row(b.lossMask)).toEqual(pad(mask, 0));
      expect(row(b.attentionMask)).toEqual(pad(new Array<number>(n).fill(1), 0));
    });
    expect(Array.from(train.promptLens)).toEqual(promptLens);
  });

  it('with truncate right, counts truncated examples and leaves out those whose prompt fills seqLen', async () => {
    const rows = [
      ['ab', 'cd'], // 6 tokens: fits seqLen 5 (5 pairs)
      ['abc', 'def'], // 8 tokens: truncated, loss on d, e
      ['abcdefgh', 'x'], // prompt of 9 > 5: truncated, nothing to learn
      ['abcd', 'xyz'], // prompt of 5: truncated, loss on x only
    ];
    const path = csv('p,c\n' + rows.map((r) => r.join(',')).join('\n') + '\n');
    const { train, stats } = await load(path, { promptColumn: 'p', completionColumn: 'c', seqLen: 5, truncate: 'right' });
    expect(stats).toMatchObject({ examples: 4, truncate: 'right', truncated: 3, dropped: 1, trainSequences: 3 });
    const b = [...evalBatches(train, { batchSize: 8, seqLen: 5 })][0]!;
    expect([b.batch, b.seq]).toEqual([3, 5]);
    expect(Array.from(b.lossMask)).toEqual([0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1]);
    expect(Array.from(b.targets.subarray(10, 15))).toEqual([...bytesOf('abcd'), ...bytesOf('x')]);
  });

  it('counts empty completions as empty rows but allows an empty prompt', async () => {
    const { stats } = await load(csv('p,c\na,\n,b\nc," "\n'), { promptColumn: 'p', completionColumn: 'c' });
    expect(stats).toMatchObject({ rowsRead: 3, examples: 1, emptySkipped: 2 });
  });
});

describe('fitting completion rows to a scoring window', () => {
  it('cuts long prompts from the left after their bos, keeps every completion whole, and leaves out what cannot fit', async () => {
    const rows = [
      ['ab', 'cd', 't1'], // 6 tokens: fits 8 as is
      ['abcdefgh', 'xy', 't2'], // 12 tokens: bos + "efgh" + "xy" + eos
      ['a', 'uvwxyz', 't1'], // 9 tokens: the completion and eos leave room for the bos only
    ];
    const path = csv('p,c,task\n' + rows.map((r) => r.join(',')).join('\n') + '\n');
    const { train } = await load(path, { promptColumn: 'p', completionColumn: 'c', taskColumn: 'task' });
    const fit = fitPrompts(train, 8, BOS);
    expect([fit.cut, fit.skipped]).toEqual([1, 1]);
    const examples = Array.from({ length: fit.store.size }, (_, i) => Array.from(fit.store.example(i)));
    expect(examples).toEqual([
      [BOS, ...bytesOf('abcd'), EOS],
      [BOS, ...bytesOf('efghxy'), EOS],
    ]);
    expect(Array.from(fit.store.promptLens)).toEqual([3, 5]);
    expect(fit.store.taskNames).toEqual(['t1', 't2']);
    expect(Array.from(fit.store.taskIds)).toEqual([0, 1]);
    // Without a bos to keep, the cut keeps only the prompt's end, and the third row fits one prompt token.
    const plain = fitPrompts(train, 8, null);
    expect([plain.cut, plain.skipped]).toEqual([2, 0]);
    expect(Array.from(plain.store.example(1))).toEqual([...bytesOf('defghxy'), EOS]);
    expect(Array.from(plain.store.example(2))).toEqual([...bytesOf('auvwxyz'), EOS]);
  });
});

describe('bad input', () => {
  it('names the missing column, the file and the columns there are', async () => {
    const path = csv('prompt,answer\na,b\n');
    const err = await load(path, { promptColumn: 'prompt', completionColumn: 'completion' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MissingColumnError);
    expect((err as Error).message).toBe(`${path}:1: no column "completion" (named by --completion-column); available columns: "prompt", "answer"`);
    await expect(load(path)).rejects.toThrow(/no column "text"/);
  });

  it('stops at a bad row, or skips and reports it with skipBadRows', async () => {
    const path = csv('text,id\nok,1\nragged\nfine,2\nalso,"x\n"y\nlast,3\n');
    await expect(load(path)).rejects.toBeInstanceOf(RaggedRowError);
    const { stats } = await load(path, { skipBadRows: true });
    // The badly quoted row spans lines 5 and 6.
    expect(stats).toMatchObject({ rowsRead: 5, examples: 3, badRowsSkipped: 2, badLinesSkipped: 3 });
    expect(stats.badRows).toEqual([
      { file: path, line: 3, reason: 'row has 1 fields, the header has 2' },
      { file: path, line: 5, reason: expect.stringContaining('malformed quoted field') },
    ]);
  });

  it('rejects contradictory options', async () => {
    const path = csv('text\na\n');
    await expect(load(path, { valSplit: 0.1, valData: path })).rejects.toThrow(/not both/);
    await expect(load(path, { promptColumn: 'text' })).rejects.toThrow(/a prompt needs a completion/);
    await expect(load(path, { valSplit: 1 })).rejects.toThrow(/valSplit/);
    await expect(load(path, { encoder: { ...byteEncoder, eosId: null } })).rejects.toThrow(/eos/);
  });
});

describe('validation split', () => {
  const rows = Array.from({ length: 400 }, (_, i) => `doc number ${i}`);
  const valTexts = async (order: string[], seed: number) => {
    const { val, stats } = await load(csv('text\n' + order.join('\n') + '\n'), { valSplit: 0.1, seed });
    const texts = new Set<string>();
    for (let i = 0; i < val!.size; i++) texts.add(Buffer.from(Array.from(val!.example(i)).slice(1, -1)).toString());
    expect(stats.trainExamples + stats.valExamples).toBe(400);
    return texts;
  };

  it('is the same for the same seed whatever the row order, and differs by seed', async () => {
    const a = await valTexts(rows, 7);
    const shuffled = new Rng(3).shuffle([...rows]) as string[];
    expect(await valTexts(shuffled, 7)).toEqual(a);
    expect(a.size).toBeGreaterThan(20);
    expect(a.size).toBeLessThan(60);
    expect(await valTexts(rows, 8)).not.toEqual(a);
  });

  it('keeps the train store intact after moving the validation examples out', async () => {
    const { train, val } = await load(csv('text\n' + rows.join('\n') + '\n'), { valSplit: 0.1, seed: 7 });
    const seen = new Set<string>();
    for (const s of [train, val!]) {
      for (let i = 0; i < s.size; i++) {
        const ex = Array.from(s.example(i));
        expect([ex[0], ex.at(-1)]).toEqual([BOS, EOS]);
        seen.add(Buffer.from(ex.slice(1, -1)).toString());
      }
    }
    expect(seen).toEqual(new Set(rows));
  });

  it('reads a separate validation file onto the same task table', async () => {
    const path = csv('task,text\nA,a\nB,b\n');
    const valData = csv('task,text\nC,c\nA,a\n');
    const { val, taskNames, stats } = await load(path, { taskColumn: 'task', valData });
    expect(taskNames).toEqual(['A', 'B', 'C']);
    expect(Array.from(val!.taskIds)).toEqual([2, 0]);
    expect(val!.taskNames).toBe(taskNames);
    expect(stats.perTask).toEqual({ A: { train: 1, val: 1 }, B: { train: 1, val: 0 }, C: { train: 0, val: 1 } });
  });
});

it('widens the token array when a tokenizer id passes 65535', async () => {
  const big: Encoder = { ...byteEncoder, encode: (t) => byteEncoder.encode(t).map((id) => id + 70000) };
  const { train } = await load(csv('text\nab\ncd\n'), { encoder: big });
  expect(train.tokens).toBeInstanceOf(Int32Array);
  expect(Array.from(train.tokens)).toEqual([...bytesOf('ab').map((x) => x + 70000), EOS, ...bytesOf('cd').map((x) => x + 70000), EOS]);
});

it('reports progress over all files', async () => {
  const path = csv('text\n' + 'x\n'.repeat(100));
  const seen: [number, number][] = [];
  await load(path, { valData: path, onProgress: (a, b) => seen.push([a, b]) });
  const total = 2 * statSync(path).size;
  expect(seen.at(-1)).toEqual([total, total]);
  expect(seen.every(([a], i) => i === 0 || a >= seen[i - 1]![0])).toBe(true);
});
