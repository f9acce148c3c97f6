import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, tempDir } from './helpers.js';

/**
 * A messy real-shaped CSV used as downloaded (test/fixtures/sms: the SMS Spam Collection's shape,
 * made by scripts/make_sms_fixture.mjs): templates alone train and score it, through the CLI as
 * users run it (the built dist/).
 */
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const MODEL = join(import.meta.dirname, '..', 'models', 'tiny-llama');
const SMS = join(FIXTURES, 'sms', 'sms.csv');
const SMS_TEST = join(FIXTURES, 'sms', 'sms-test.csv');
const PROMPT = 'SMS: {masseges}\nLabel:';

const tmp = tempDir('molora-data-cli-');
afterAll(tmp.cleanup);

/** stdout and stderr of a CLI run that must succeed. */
function run(...args: string[]): { stdout: string; stderr: string } {
  const r = spawnSync('node', [CLI, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`molora ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr };
}
const fail = (...args: string[]): string => {
  const r = spawnSync('node', [CLI, ...args], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  return r.stderr;
};

describe('SMS-shaped CSV as downloaded: header label,masseges,,, with ragged quoting, mojibake, 900-byte messages', () => {
  const adapter = join(tmp.dir, 'sms');
  let trainLog = '';
  beforeAll(() => {
    trainLog = run(
      'train-adapter', '--model', MODEL, '--data', SMS, '--prompt-template', PROMPT, '--completion-template', ' {label}', '--seq-len', '128',
      '--steps', '160', '--lr', '5e-3', '--batch-size', '16', '--targets', 'q_proj,v_proj,o_proj,up_proj,down_proj', '--out', adapter, '--progress', 'off',
    ).stderr;
  }, 600_000);

  it('trains from templates alone, no row losing its completion at --seq-len 128', () => {
    const line = trainLog.split('\n').find((l) => l.startsWith('molora: data:'))!;
    // 80 messages are longer than the window: cut from the left, none dropped.
    expect(line).toBe('molora: data: 340 rows, 340 train / 0 val examples, 31770 tokens, 83 truncated (prompt cut from the left to fit --seq-len 128)');
    expect(JSON.parse(readFileSync(join(adapter, 'molora_data.json'), 'utf8'))).toEqual({ prompt_template: PROMPT, completion_template: ' {label}' });
  });

  it('eval scores held-out rows through the recorded template, every row whole', () => {
    const { stdout, stderr } = run('eval', '--model', MODEL, '--adapter', adapter, '--data', SMS_TEST, '--seq-len', '128', '--task-column', 'label', '--json');
    expect(stderr).toContain(`using the row format recorded in ${join(adapter, 'molora_data.json')}: --prompt-template ${JSON.stringify(PROMPT)} --completion-template " {label}"`);
    const r = JSON.parse(stdout);
    expect(r).toMatchObject({ truncated: 16, skipped: 0, overall: { n: 60 } });
    expect(r.tasks.spam.n + r.tasks.ham.n).toBe(60);
    // The majority class alone gets 53/60 = 88.3 %; the adapter must beat it on both classes.
    expect(r.overall.exact_match).toBeGreaterThan(53 / 60);
    expect(r.tasks.spam.exact_match).toBeGreaterThan(0.5);
  });

  it('eval warns when the flags given differ from the recorded format, and uses the flags', () => {
    const { stdout, stderr } = run('eval', '--model', MODEL, '--adapter', adapter, '--data', SMS_TEST, '--seq-len', '128', '--prompt-column', 'masseges', '--completion-column', 'label', '--json', '--no-exact-match');
    expect(stderr).toContain(`${adapter} was trained with --prompt-template ${JSON.stringify(PROMPT)} --completion-template " {label}"; using the flags given: --prompt-column "masseges" --completion-column "label"`);
    expect(JSON.parse(stdout).overall.n).toBe(60);
  });

  it('generate fills the recorded template with --prompt', () => {
    const message = 'FREE entry: Txt WIN to 80086 to receive Â£1000 cash. T&C apply';
    const out = execFileSync('node', [CLI, 'generate', '--model', MODEL, '--adapter', adapter, '--prompt', message, '--max-new-tokens', '6'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out.startsWith(`SMS: ${message}\nLabel:`)).toBe(true);
    const raw = execFileSync('node', [CLI, 'generate', '--model', MODEL, '--adapter', adapter, '--prompt', message, '--max-new-tokens', '2', '--raw'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(raw.startsWith(`${message}`)).toBe(true);
    expect(raw).not.toContain('Label:');
  });
});

describe('format flags give named errors', () => {
  it('names an unknown placeholder and lists the columns', () => {
    expect(fail('train-adapter', '--model', MODEL, '--data', SMS, '--prompt-template', 'SMS: {message}', '--completion-template', ' {label}', '--out', join(tmp.dir, 'x'))).toContain(
      `${SMS}:1: no column "message" (named by --prompt-template's {message}); available columns: "label", "masseges", "", "", ""`,
    );
  });

  it('names a malformed template, a missing template file and flags that do not go together', () => {
    const out = join(tmp.dir, 'y');
    expect(fail('train-adapter', '--model', MODEL, '--data', SMS, '--prompt-template', 'SMS: {masseges', '--completion-template', ' {label}', '--out', out)).toContain('--prompt-template: the { at character 6 is never closed');
    expect(fail('train-adapter', '--model', MODEL, '--data', SMS, '--prompt-template', '@/no/such.txt', '--completion-template', ' {label}', '--out', out)).toContain('cannot read the template file /no/such.txt');
    expect(fail('train-adapter', '--model', MODEL, '--data', SMS, '--prompt-template', '{masseges}', '--out', out)).toContain('a prompt needs a completion: give --completion-column or --completion-template');
    expect(fail('train-adapter', '--model', MODEL, '--data', SMS, '--prompt-column', 'masseges', '--completion-column', 'label', '--truncate', 'middle', '--out', out)).toContain("option '--truncate <side>' argument 'middle' is invalid");
  });

  it('names the line of a malformed JSONL row, or skips and counts it', () => {
    const path = join(tmp.dir, 'bad.jsonl');
    const rows = Array.from({ length: 30 }, (_, i) => JSON.stringify({ q: `question ${i}`, a: ` answer ${i % 3}` }));
    rows[6] = '{"q": "broken", "a": ';
    writeFileSync(path, rows.join('\n') + '\n');
    const out = join(tmp.dir, 'jsonl-adapter');
    expect(fail('train-adapter', '--model', MODEL, '--data', path, '--prompt-column', 'q', '--completion-column', 'a', '--steps', '1', '--out', out)).toContain(`${path}:7: not a JSON object: `);
    const log = run('train-adapter', '--model', MODEL, '--data', path, '--prompt-column', 'q', '--completion-column', 'a', '--steps', '1', '--skip-bad-rows', '--out', out, '--progress', 'off').stderr;
    expect(log).toContain(`molora: data: 30 rows, 29 train / 0 val examples`);
    expect(log).toContain(`skipped: 1 bad over 1 lines (the first ${path}:7: not a JSON object:`);
  });

  it('trains chat rows with a given chat template when the base has none', () => {
    const path = join(tmp.dir, 'chat.jsonl');
    writeFileSync(path, Array.from({ length: 12 }, (_, i) => JSON.stringify({ user: `hi ${i}`, assistant: `hello ${i}` })).join('\n') + '\n');
    const template = join(tmp.dir, 'chatml.jinja');
    writeFileSync(template, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
    const base = ['train-adapter', '--model', MODEL, '--data', path, '--user-column', 'user', '--assistant-column', 'assistant', '--steps', '1', '--progress', 'off'];
    expect(fail(...base, '--out', join(tmp.dir, 'c0'))).toContain(`${MODEL} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); give one with --chat-template @file.jinja`);
    const out = join(tmp.dir, 'c1');
    expect(run(...base, '--system', 'Be brief.', '--chat-template', `@${template}`, '--out', out).stderr).toContain('molora: data: 12 rows, 12 train / 0 val examples');
    const record = JSON.parse(readFileSync(join(out, 'molora_data.json'), 'utf8'));
    expect(record).toEqual({ user_column: 'user', assistant_column: 'assistant', system: 'Be brief.', chat_template: readFileSync(template, 'utf8') });
    // generate applies the recorded chat format: system, then the prompt as the user turn, then the generation prompt.
    const said = execFileSync('node', [CLI, 'generate', '--model', MODEL, '--adapter', out, '--prompt', 'hi 3', '--max-new-tokens', '1'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(said.startsWith('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi 3<|im_end|>\n<|im_start|>assistant\n')).toBe(true);
  });
});
