import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { saveAdapter } from '../src/adapters/peft.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { Rng } from '../src/base/rng.js';
import type { ChatTemplate } from '../src/data/chat.js';
import { DATA_RECORD, formatKey, promptKey, readDataRecord, servedFormat, writeDataRecord, type DataFormat } from '../src/data/record.js';
import { servePrompt } from '../src/data/serve-prompt.js';
import { MoleModel } from '../src/gating/mole-model.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-record-');
afterAll(tmp.cleanup);
let n = 0;

/** A folder holding just a data record (or none). */
function folder(format: DataFormat | null): string {
  const dir = join(tmp.dir, `a${n++}`);
  mkdirSync(dir);
  if (format) writeDataRecord(dir, format);
  return dir;
}

const SMS: DataFormat = { promptTemplate: 'SMS: {masseges}\nLabel:', completionTemplate: ' {label}' };
const chat: ChatTemplate = { template: '{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}', specialTokens: { bos_token: '<s>' }, source: 'test' };

describe('molora_data.json', () => {
  it('records the format flags given, in snake_case, and reads them back', () => {
    const dir = folder({ ...SMS, taskColumn: 'label' } as DataFormat);
    expect(JSON.parse(readFileSync(join(dir, DATA_RECORD), 'utf8'))).toEqual({ prompt_template: SMS.promptTemplate, completion_template: ' {label}' });
    expect(readDataRecord(dir)).toEqual(SMS);
    expect(readDataRecord(folder(null))).toBeNull();
  });

  it('refuses a damaged record, naming the file and key', () => {
    const dir = folder(null);
    writeFileSync(join(dir, DATA_RECORD), '{"prompt_templat": "x"}');
    expect(() => readDataRecord(dir)).toThrow(`${join(dir, DATA_RECORD)}: unknown key 'prompt_templat'`);
    writeFileSync(join(dir, DATA_RECORD), '{"system": 3}');
    expect(() => readDataRecord(dir)).toThrow(`'system' must be a string`);
  });

  it('counts a prompt column and the template of just that column as one format', () => {
    expect(formatKey({ promptColumn: 'q', completionColumn: 'a' })).toBe(formatKey({ promptTemplate: '{q}', completionTemplate: '{a}' }));
    expect(formatKey({ promptColumn: 'q', completionColumn: 'a' })).not.toBe(formatKey({ promptTemplate: 'Q: {q}', completionTemplate: '{a}' }));
    expect(promptKey({ promptColumn: 'q' })).toBe(promptKey({}));
    expect(promptKey({ messagesColumn: 'm' })).toBe(promptKey({ userColumn: 'u', assistantColumn: 'a' }));
  });
});

describe('which format serves', () => {
  it('uses the record of an adapter used alone, and says so', () => {
    const logs: string[] = [];
    const dir = folder(SMS);
    expect(servedFormat(null, [dir], (m) => logs.push(m))).toEqual(SMS);
    expect(logs).toEqual([`using the row format recorded in ${join(dir, DATA_RECORD)}: --prompt-template "SMS: {masseges}\\nLabel:" --completion-template " {label}"`]);
  });

  it('lets flags win, warning for each adapter that recorded another format', () => {
    const logs: string[] = [];
    const [a, b] = [folder(SMS), folder({ promptColumn: 'masseges', completionColumn: 'label' })];
    const given = { promptColumn: 'masseges', completionColumn: 'label' };
    expect(servedFormat(given, [a, b], (m) => logs.push(m))).toEqual(given);
    expect(logs).toEqual([`${a} was trained with --prompt-template "SMS: {masseges}\\nLabel:" --completion-template " {label}"; using the flags given: --prompt-column "masseges" --completion-column "label"`]);
  });

  it('in a composition, uses the format the experts agree on; adapters without a record have no say', () => {
    expect(servedFormat(null, [folder(SMS), folder(null), folder(SMS)], () => {})).toEqual(SMS);
    expect(servedFormat(null, [folder(null)], () => {})).toBeNull();
  });

  it('refuses experts that recorded different formats, naming them, unless flags say which', () => {
    const [a, b] = [folder(SMS), folder({ messagesColumn: 'messages' })];
    expect(() => servedFormat(null, [a, b], () => {})).toThrow(
      `the adapters were trained on different row formats (${a}: --prompt-template "SMS: {masseges}\\nLabel:" --completion-template " {label}"; ${b}: --messages-column "messages"); give the format flags to say which to use`,
    );
    expect(servedFormat({ textColumn: 'text' }, [a, b], () => {})).toEqual({ textColumn: 'text' });
  });
});

describe('a free prompt, shaped by a format', () => {
  it("fills a prompt template's one placeholder, and refuses a template it cannot fill", () => {
    expect(servePrompt(SMS, 'Free entry!', () => chat)).toEqual({ text: 'SMS: Free entry!\nLabel:', templated: false });
    expect(servePrompt({ promptColumn: 'q' }, 'as is', () => chat)).toEqual({ text: 'as is', templated: false });
    expect(() => servePrompt({ promptTemplate: '{a} vs {b}' }, 'x', () => chat)).toThrow('the prompt template names 2 columns (a, b), so one prompt cannot fill it');
  });

  it('sends chat formats as the user turn after the recorded system message, with the generation prompt', () => {
    expect(servePrompt({ userColumn: 'u', assistantColumn: 'a', system: 'Be brief.' }, 'hi', () => chat)).toEqual({ text: '<s>[system]Be brief.[user]hi[assistant]', templated: true });
  });
});

describe('MoleModel.generate shapes text prompts as its experts were trained', () => {
  let m: MoleModel;
  let dir: string;
  beforeAll(async () => {
    await initBackend();
    const model = join(import.meta.dirname, '..', 'models', 'tiny-llama');
    m = new MoleModel(loadBase(model));
    dir = join(tmp.dir, 'expert');
    const lora = createLora(m.base, { ...DEFAULT_LORA, targets: ['q_proj', 'v_proj'] }, 'sms', new Rng(1));
    await saveAdapter(lora, dir);
    lora.dispose();
    writeDataRecord(dir, SMS);
    m.addExpert('sms', dir);
  });
  afterAll(() => m.dispose());

  it('fills the recorded template, unless raw', async () => {
    const ids = (text: string) => m.base.tokenizer!.encode(text, { addBos: true });
    const tokens = async (p: string | number[], raw?: boolean) => (await m.generate(p, { maxNewTokens: 3, raw })).tokens;
    const shaped = await tokens('Free entry!');
    const raw = await tokens('Free entry!', true);
    expect(shaped).toEqual(await tokens(ids('SMS: Free entry!\nLabel:')));
    expect(raw).toEqual(await tokens(ids('Free entry!')));
    // The two prompts continue differently, so the checks above tell them apart.
    expect(shaped).not.toEqual(raw);
    m.removeExpert('sms');
    expect(await tokens('Free entry!')).toEqual(await tokens(ids('Free entry!')));
  });
});
