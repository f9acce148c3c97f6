import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM } from '../src/base/model.js';
import { evaluateCsv, type EvaluateCsvOptions } from '../src/train/evaluate.js';
import { loadLmData } from '../src/train/lm.js';
import { tempDir } from './helpers.js';

// A tiny byte-level base with 16 positions, so a few dozen characters overflow it.
const tmp = tempDir('molora-eval-');
let model: CausalLM;
let n = 0;

beforeAll(async () => {
  await initBackend();
  const dir = join(tmp.dir, 'base');
  await initBase({ arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, maxPositions: 16, out: dir, seed: 1 });
  model = loadBase(dir);
});
afterAll(() => {
  model.dispose();
  tmp.cleanup();
});

function csv(rows: string[][], header = 'prompt,completion'): string {
  const path = join(tmp.dir, `e${n++}.csv`);
  writeFileSync(path, [header, ...rows.map((r) => r.join(','))].join('\n') + '\n');
  return path;
}

async function evalOn(data: string, over: Partial<EvaluateCsvOptions> = {}) {
  const logs: string[] = [];
  const report = await evaluateCsv(model, { data, promptColumn: 'prompt', completionColumn: 'completion', batchSize: 8, seqLen: 256, log: (m) => logs.push(m), ...over });
  return { report, logs };
}

describe('eval of rows longer than the window', () => {
  it('cuts a long prompt from the left, keeping bos and the whole completion, and scores it as that cut prompt', async () => {
    const long = 'a long preamble, then the question: 2+2=';
    // Window 16 = bos + the prompt's last 12 bytes + " 4" + eos.
    const { report, logs } = await evalOn(csv([['x=', ' 1'], [`"${long}"`, ' 4']]));
    const { report: precut } = await evalOn(csv([['x=', ' 1'], [long.slice(-12), ' 4']]));
    expect(report).toMatchObject({ truncated: 1, skipped: 0, overall: { n: 2, exact_match: precut.overall.exact_match } });
    expect(precut).toMatchObject({ truncated: 0, skipped: 0 });
    expect(report.overall.loss).toBeCloseTo(precut.overall.loss, 5);
    expect(logs).toContain('eval: rows longer than 16 tokens: 1 scored with the prompt cut from the left, 0 left out (the completion alone fills them)');
  });

  it('leaves out and counts a row whose completion alone fills the window, and never pads one batch past the positions', async () => {
    // Each row fits alone; together the longest prompt (12) and longest completion (13) would need 25 positions.
    const rows = [['12345678901', 'x'], ['a', '123456789012'], ['b', '12345678901234567890']];
    const { report, logs } = await evalOn(csv(rows));
    expect(report).toMatchObject({ truncated: 0, skipped: 1, overall: { n: 2 } });
    expect(logs[1]).toMatch(/0 scored with the prompt cut from the left, 1 left out \(the completion alone fills them\)/);
    const alone = await Promise.all(rows.slice(0, 2).map((r) => evalOn(csv([r]))));
    expect(report.overall.exact_match).toBe((alone[0]!.report.overall.exact_match! + alone[1]!.report.overall.exact_match!) / 2);
  });

  it('caps the window at the model positions in text mode too', async () => {
    const { report } = await evalOn(csv([['a text much longer than sixteen positions']], 'text'), { promptColumn: undefined, completionColumn: undefined, textColumn: 'text' });
    expect(report.overall.n).toBe(1);
    expect(report.overall.loss).toBeGreaterThan(0);
  });
});

describe('what eval and training say about the rows they leave out', () => {
  it('eval names the rows with an empty completion', async () => {
    const path = csv([['a', ' 1'], ['b', ''], ['c', ' 3'], ['d', '  ']]);
    const { report, logs } = await evalOn(path);
    expect(report.overall.n).toBe(2);
    expect(logs[0]).toBe(`eval data: 4 rows, 2 examples, skipped: 2 with an empty completion (the first ${path}:3)`);
  });

  it('a header-only file names itself and its role: training, validation or evaluation', async () => {
    const empty = csv([]);
    const good = csv([['a', ' 1']]);
    const lm = { promptColumn: 'prompt', completionColumn: 'completion', seqLen: 16, batchSize: 2, seed: 0 };
    await expect(loadLmData(model, { ...lm, data: empty }, () => {})).rejects.toThrow(`${empty}: the training data has a header but no rows`);
    await expect(loadLmData(model, { ...lm, data: good, valData: empty }, () => {})).rejects.toThrow(`${empty}: the validation data has a header but no rows`);
    await expect(evalOn(empty)).rejects.toThrow(`${empty}: the evaluation data has a header but no rows`);
    const blank = csv([['a', ''], [], ['b', ' ']]);
    await expect(evalOn(blank)).rejects.toThrow(`${blank}: the evaluation data has no usable rows: of its 3, 1 are blank, 2 have an empty "completion" and 0 are bad`);
  });

  it('training names the file when no row leaves room for a completion, and counts the lines of skipped rows', async () => {
    const long = csv([['a prompt longer than sixteen tokens', ' 1']]);
    const lm = { promptColumn: 'prompt', completionColumn: 'completion', seqLen: 16, batchSize: 2, seed: 0 };
    await expect(loadLmData(model, { ...lm, data: long, truncate: 'right' }, () => {})).rejects.toThrow(
      `${long}: no training example fits --seq-len 16: each prompt fills it, leaving no completion token (--truncate left keeps completions)`,
    );
    // Cut from the left (the default), the same row trains on its whole completion.
    const logs0: string[] = [];
    await loadLmData(model, { ...lm, data: long }, (m) => logs0.push(m));
    expect(logs0[0]).toContain(', 1 truncated (prompt cut from the left to fit --seq-len 16)');
    const answer = csv([['q', ' an answer longer than sixteen tokens']]);
    await expect(loadLmData(model, { ...lm, data: answer }, () => {})).rejects.toThrow(`${answer}: no training example fits --seq-len 16: each completion alone is longer`);
    const bad = csv([['a', ' 1'], ['"b\nc"d', ' 2'], ['e', ' 3']]);
    const logs: string[] = [];
    await loadLmData(model, { ...lm, data: bad, skipBadRows: true }, (m) => logs.push(m));
    expect(logs[0]).toContain(`, skipped: 1 bad over 2 lines (the first ${bad}:3: malformed quoted field`);
  });
});
