/**
 * molora_data.json: the row format an adapter was trained with, written beside its PEFT files
 * (PEFT ignores files it does not know). eval, generate and the library read it back so that an
 * adapter sees prompts shaped as in training without the flags being given again.
 *
 * Keys are the format flags in snake_case: text_column, prompt_column, completion_column,
 * prompt_template, completion_template, messages_column, user_column, assistant_column, system,
 * and chat_template when training was given one instead of the base's.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../base/atomic.js';
import { givenFormat, isChat, ROW_FORMAT_KEYS, type RowFormatOptions } from './row-format.js';
import { columnTemplate, parseTemplate } from './template.js';

export const DATA_RECORD = 'molora_data.json';

/** A row format as recorded and compared: the format flags, and a chat template given as text. */
export interface DataFormat extends RowFormatOptions {
  chatTemplate?: string;
}

const KEYS = [...ROW_FORMAT_KEYS, 'chatTemplate'] as const;
const snake = (k: string): string => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Only the format's keys that are set, from any options object that carries them. */
export function dataFormatOf(o: DataFormat): DataFormat {
  return { ...givenFormat(o), ...(o.chatTemplate === undefined ? {} : { chatTemplate: o.chatTemplate }) };
}

export function writeDataRecord(dir: string, format: DataFormat): void {
  writeJsonAtomic(join(dir, DATA_RECORD), Object.fromEntries(Object.entries(dataFormatOf(format)).map(([k, v]) => [snake(k), v])));
}

/** The folder's recorded format; null when it has none (an adapter trained elsewhere, or before molora recorded it). */
export function readDataRecord(dir: string): DataFormat | null {
  const path = join(dir, DATA_RECORD);
  if (!existsSync(path)) return null;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`${path}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error(`${path}: expected a JSON object`);
  const out: DataFormat = {};
  for (const [key, value] of Object.entries(json)) {
    const k = KEYS.find((c) => snake(c) === key);
    if (k === undefined) throw new Error(`${path}: unknown key '${key}' (keys: ${KEYS.map(snake).join(', ')})`);
    if (typeof value !== 'string') throw new Error(`${path}: '${key}' must be a string`);
    out[k] = value;
  }
  return out;
}

/**
 * The format as one comparable string: a prompt column equals the template that is just that
 * column, so `--prompt-column text` and `--prompt-template '{text}'` agree.
 */
export function formatKey(f: DataFormat): string {
  const side = (column: string | undefined, template: string | undefined, what: string) =>
    column !== undefined ? columnTemplate(column) : template !== undefined ? parseTemplate(template, what) : null;
  return JSON.stringify({
    text: f.textColumn ?? null,
    prompt: side(f.promptColumn, f.promptTemplate, 'prompt_template'),
    completion: side(f.completionColumn, f.completionTemplate, 'completion_template'),
    messages: f.messagesColumn ?? null,
    user: f.userColumn ?? null,
    assistant: f.assistantColumn ?? null,
    system: f.system ?? null,
    chatTemplate: f.chatTemplate ?? null,
  });
}

/** The format in flag form, for messages: --prompt-template 'SMS: {masseges}…' --completion-template ' {label}'. */
export function describeFormat(f: DataFormat): string {
  const flag = (k: string): string => `--${snake(k).replace(/_/g, '-')}`;
  const parts = Object.entries(f).map(([k, v]) => (k === 'chatTemplate' ? `${flag(k)} (${(v as string).length} characters)` : `${flag(k)} ${JSON.stringify(v)}`));
  return parts.length === 0 ? 'no format flags (the prompt as it is)' : parts.join(' ');
}

/**
 * What a free-text prompt sees of a format (generate): chat (with its system message and
 * template), or the prompt template; a template that is just the prompt, or none, is the text as
 * it is.
 */
export function promptKey(f: DataFormat): string {
  if (isChat(f)) return JSON.stringify({ chat: true, system: f.system ?? null, chatTemplate: f.chatTemplate ?? null });
  const t = f.promptColumn !== undefined ? columnTemplate(f.promptColumn) : f.promptTemplate !== undefined ? parseTemplate(f.promptTemplate, 'prompt_template') : null;
  const plain = t === null || (t.parts.length === 1 && typeof t.parts[0] !== 'string');
  return JSON.stringify(plain ? { raw: true } : { prompt: t });
}

/**
 * The row format to score or prompt with, given the format flags (null: none given) and the
 * adapter folders in use. Flags win, with a warning for each folder that recorded another format.
 * Without flags, the format the folders' records agree on (folders without a record have no
 * say), announced through `warn`; records that differ are an error naming two of them. Null when
 * there are neither flags nor records: the caller's default. `key` says which differences matter,
 * `describe` how the flags given read in the warning.
 */
export function servedFormat(
  given: DataFormat | null,
  dirs: string[],
  warn: (msg: string) => void,
  { key = formatKey, describe = describeFormat }: { key?: (f: DataFormat) => string; describe?: (f: DataFormat) => string } = {},
): DataFormat | null {
  const recorded = dirs.flatMap((dir) => {
    const format = readDataRecord(dir);
    return format === null ? [] : [{ dir, format }];
  });
  if (given !== null) {
    for (const r of recorded) {
      if (key(r.format) !== key(given)) warn(`${r.dir} was trained with ${describeFormat(r.format)}; using the flags given: ${describe(given)}`);
    }
    return given;
  }
  if (recorded.length === 0) return null;
  const first = recorded[0]!;
  const other = recorded.find((r) => key(r.format) !== key(first.format));
  if (other !== undefined) {
    throw new Error(
      `the adapters were trained on different row formats (${first.dir}: ${describeFormat(first.format)}; ${other.dir}: ${describeFormat(other.format)}); give the format flags to say which to use`,
    );
  }
  warn(`using the row format recorded in ${recorded.map((r) => join(r.dir, DATA_RECORD)).join(', ')}: ${describeFormat(first.format)}`);
  return first.format;
}
