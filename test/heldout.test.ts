import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assertHeldOut, findSharedPrompt, HeldOutError, trainingFiles } from '../src/recipes/heldout.js';
import { loadRecipe, runRecipe } from '../src/recipes/run.js';
import { tempDir } from './helpers.js';

const RECIPES = join(import.meta.dirname, '..', 'recipes');
const tmp = tempDir();
afterAll(tmp.cleanup);
const cols = { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task' };
const write = (name: string, text: string): string => {
  const file = join(tmp.dir, name);
  writeFileSync(file, text);
  return file;
};
const recipe = (name: string, steps: unknown[]): string => write(`${name}.json`, JSON.stringify({ name, steps }));
const TRAIN = write('train.csv', 'prompt,completion,task\nadd: 1 2 =, 3,add\nadd: 2 2 =, 4,add\n"add: 5 1 =", 6,add\nadd: 2 2 =, 4,add\n');
const adapter = { type: 'train-adapter', out: 'a', model: 'nowhere', data: 'train.csv', ...cols };
const evalOn = (data: string, id = 'score'): unknown => ({ type: 'eval', id, out: `${id}.json`, model: 'nowhere', data, ...cols });

describe('held-out eval rows', () => {
  // Fails on recipes/quickstart.json until its data is replaced: its test.csv repeats its training prompts.
  it.each(readdirSync(RECIPES).filter((f) => f.endsWith('.json')))('shipped recipe %s scores no prompt that its training files hold', async (name) => {
    const r = loadRecipe(join(RECIPES, name), join(tmp.dir, 'runs', name));
    for (const t of trainingFiles(r)) expect(existsSync(t.file), `${name}: ${t.step.id}: ${t.file}`).toBe(true);
    for (const step of r.steps.filter((s) => s.type === 'eval')) {
      const found = await findSharedPrompt(r, step);
      expect(found && new HeldOutError(join(RECIPES, name), found).message).toBeNull();
    }
  });

  it('moe-upcycle trains on data/moe/train.csv and scores data/moe/test.csv in both eval steps', () => {
    const r = loadRecipe(join(RECIPES, 'moe-upcycle.json'), join(tmp.dir, 'runs', 'moe'));
    expect(trainingFiles(r).map((t) => [t.step.id, t.file])).toEqual([['train-moe', join(RECIPES, 'data', 'moe', 'train.csv')]]);
    expect(r.steps.filter((s) => s.type === 'eval').map((s) => s.fields.data)).toEqual([join(RECIPES, 'data', 'moe', 'test.csv'), join(RECIPES, 'data', 'moe', 'test.csv')]);
  });

  it('finds a shared prompt, with both lines and how many of the eval prompts are shared', async () => {
    write('shared.csv', 'prompt,completion,task\nadd: 9 9 =, 18,add\n add: 2 2 = , 4,add\nadd: 5 1 =, 6,add\nadd: 7 7 =, 14,add\n');
    const r = loadRecipe(recipe('shared', [adapter, evalOn('shared.csv')]), join(tmp.dir, 'run-shared'));
    const found = await findSharedPrompt(r, r.steps[1]!);
    // Prompts compare after trimming; the first shared one in training order is reported.
    expect(found).toMatchObject({ prompt: 'add: 2 2 =', shared: 2, evalPrompts: 4 });
    expect([found!.eval.line, found!.train.line, found!.train.step.id]).toEqual([3, 3, 'a']);
  });

  it('molora run refuses before running any step, naming the recipe, step, files and a shared prompt', async () => {
    write('leaky.csv', 'prompt,completion,task\nadd: 9 9 =, 18,add\nadd: 1 2 =, 3,add\n');
    const file = recipe('leaky', [adapter, evalOn('leaky.csv', 'eval-leaky')]);
    const run = join(tmp.dir, 'run-leaky');
    const err = await runRecipe(file, { out: run, progress: 'off', log: () => {}, print: () => {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeldOutError);
    const msg = (err as Error).message;
    expect(msg).toContain(`${file}: step 'eval-leaky' (eval) scores prompts the recipe trains on: 1 of the 2 distinct prompts in ${join(tmp.dir, 'leaky.csv')}`);
    expect(msg).toContain(`"add: 1 2 =" (${join(tmp.dir, 'leaky.csv')}:3; ${TRAIN}:2, read by step 'a' (train-adapter))`);
    expect(existsSync(run)).toBe(false);
  });

  it('counts valData and text columns as training, and names a missing column', async () => {
    write('val.csv', 'prompt,completion,task\nadd: 8 8 =, 16,add\n');
    write('corpus.csv', 'text\nadd: 4 4 =\nsome text\n');
    write('eval.csv', 'prompt,completion,task\nadd: 8 8 =, 16,add\nadd: 4 4 =, 8,add\n');
    const steps = [{ ...adapter, valData: 'val.csv' }, { type: 'pretrain', out: 'p', model: 'nowhere', data: 'corpus.csv' }, evalOn('eval.csv')];
    const r = loadRecipe(recipe('val', steps), join(tmp.dir, 'run-val'));
    expect(trainingFiles(r).map((t) => [t.file, t.column])).toEqual([[TRAIN, 'prompt'], [join(tmp.dir, 'val.csv'), 'prompt'], [join(tmp.dir, 'corpus.csv'), 'text']]);
    expect(await findSharedPrompt(r, r.steps[2]!)).toMatchObject({ prompt: 'add: 8 8 =', shared: 2, evalPrompts: 2, train: { file: join(tmp.dir, 'val.csv'), line: 2 } });
    const bad = loadRecipe(recipe('bad-col', [{ ...adapter, promptColumn: 'question' }, evalOn('eval.csv')]), join(tmp.dir, 'run-bad'));
    await expect(findSharedPrompt(bad, bad.steps[1]!)).rejects.toThrow(`${TRAIN}:1: no column 'question' for step 'a' (columns: prompt, completion, task)`);
  });

  it('reads prompt templates (from @files beside the recipe), JSONL and chat rows', async () => {
    write('prompt.txt', 'Q: {q}\nA:\n');
    write('t.jsonl', JSON.stringify({ q: 'two plus two', a: ' 4' }) + '\n' + JSON.stringify({ q: 'one plus one', a: ' 2' }) + '\n');
    write('e.csv', 'q,a\nthree plus three, 6\ntwo plus two, 4\n');
    const templated = { promptTemplate: '@prompt.txt', completionTemplate: '{a}' };
    const steps = [{ ...adapter, ...templated, promptColumn: undefined, completionColumn: undefined, taskColumn: undefined, data: 't.jsonl' }, { ...(evalOn('e.csv') as object), ...templated, promptColumn: undefined, completionColumn: undefined, taskColumn: undefined }];
    const r = loadRecipe(recipe('templated', steps), join(tmp.dir, 'run-templated'));
    expect((r.steps[0]!.fields as { promptTemplate?: string }).promptTemplate).toBe('Q: {q}\nA:');
    expect(await findSharedPrompt(r, r.steps[1]!)).toMatchObject({ prompt: 'Q: two plus two\nA:', shared: 1, evalPrompts: 2, eval: { line: 3 }, train: { line: 1 } });
    const chat = (id: string, data: string) => ({ type: id === 'a' ? 'train-adapter' : 'eval', id, out: `${id}.out`, model: 'nowhere', data, messagesColumn: 'messages' });
    const convo = (u: string) => JSON.stringify({ messages: [{ role: 'user', content: u }, { role: 'assistant', content: 'ok' }] });
    write('c-train.jsonl', [convo('hello'), convo('bye')].join('\n') + '\n');
    write('c-test.jsonl', [convo('hi'), convo('bye')].join('\n') + '\n');
    const c = loadRecipe(recipe('chat', [chat('a', 'c-train.jsonl'), chat('e', 'c-test.jsonl')]), join(tmp.dir, 'run-chat'));
    expect(await findSharedPrompt(c, c.steps[1]!)).toMatchObject({ prompt: '[["user","bye"]]', shared: 1, eval: { line: 2 }, train: { line: 2 } });
  });

  it('with skipMissing, leaves out an eval step whose files are not written yet; passes held-out rows', async () => {
    write('fresh.csv', 'prompt,completion,task\nadd: 9 9 =, 18,add\n');
    const r = loadRecipe(recipe('later', [adapter, evalOn('$run/made-later.csv', 'later'), evalOn('fresh.csv', 'fresh')]), join(tmp.dir, 'run-later'));
    expect([...(await assertHeldOut(r, 'later.json', undefined, { skipMissing: true }))]).toEqual(['fresh']);
    await expect(assertHeldOut(r, 'later.json', [r.steps[1]!])).rejects.toThrow(/made-later\.csv/);
  });
});
