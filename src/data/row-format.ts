/**
 * How a row becomes an example: text pieces, each with or without loss.
 *
 * - text: one column of documents, loss everywhere (packed by the layout).
 * - completion: a prompt and a completion, each a template over the row's columns
 *   (`--prompt-column c` is the template `{c}`); loss on the completion and the eos after it.
 * - chat: a conversation (a messages column, or user and assistant columns with an optional
 *   system message) rendered by the base's chat template; loss on the assistant turns.
 *
 * A RowFormat is plain JSON: it keys the token cache and is what an adapter records.
 */
import { chatPieces, type ChatMessage, type ChatTemplate, type RenderOptions } from './chat.js';
import type { ColumnRequest } from './rows.js';
import { columnTemplate, parseTemplate, renderTemplate, templateColumns, type Template } from './template.js';

/** The format as the flags (and recipe fields) give it; templates as text, already read from @files. */
export interface RowFormatOptions {
  textColumn?: string;
  promptColumn?: string;
  completionColumn?: string;
  promptTemplate?: string;
  completionTemplate?: string;
  messagesColumn?: string;
  userColumn?: string;
  assistantColumn?: string;
  /** The system message put before each user/assistant pair. */
  system?: string;
}

export const ROW_FORMAT_KEYS = [
  'textColumn',
  'promptColumn',
  'completionColumn',
  'promptTemplate',
  'completionTemplate',
  'messagesColumn',
  'userColumn',
  'assistantColumn',
  'system',
] as const satisfies readonly (keyof RowFormatOptions)[];

/** Training puts loss on every assistant turn; scoring on the last, the rest being its prompt. */
export type ChatTurns = 'all' | 'last';

export type RowFormat =
  | { mode: 'text'; text: string; task: string | null }
  | {
      mode: 'completion';
      prompt: Template;
      completion: Template;
      /** The flags they came from (--prompt-column or --prompt-template, …), named in errors. */
      from: { prompt: string; completion: string };
      task: string | null;
    }
  | {
      mode: 'chat';
      /** A column holding [{role, content}, …], or user and assistant columns. */
      source: { messages: string } | { user: string; assistant: string; system: string | null };
      template: ChatTemplate;
      turns: ChatTurns;
      task: string | null;
    };

/** The format options with only the keys that are set (what --json, records and comparisons show). */
export function givenFormat(o: RowFormatOptions): RowFormatOptions {
  return Object.fromEntries(ROW_FORMAT_KEYS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]])) as RowFormatOptions;
}

export function isChat(o: RowFormatOptions): boolean {
  return o.messagesColumn !== undefined || o.userColumn !== undefined || o.assistantColumn !== undefined;
}

/**
 * Checks the options go together and builds the format. `chat` supplies the base's chat template,
 * asked for only when the rows are conversations.
 */
export function rowFormat(o: RowFormatOptions & { taskColumn?: string }, ctx: { chat?: () => ChatTemplate; turns?: ChatTurns } = {}): RowFormat {
  const task = o.taskColumn ?? null;
  const plain = o.promptColumn ?? o.completionColumn ?? o.promptTemplate ?? o.completionTemplate;
  if (isChat(o)) {
    if (plain !== undefined || o.textColumn !== undefined) throw new Error('chat rows (--messages-column, --user-column/--assistant-column) take no text, prompt or completion flags');
    if (!ctx.chat) throw new Error('chat rows need the base model\'s chat template');
    const template = ctx.chat();
    const turns = ctx.turns ?? 'all';
    if (o.messagesColumn !== undefined) {
      if (o.userColumn !== undefined || o.assistantColumn !== undefined || o.system !== undefined) {
        throw new Error('give --messages-column, or --user-column and --assistant-column (with an optional --system), not both');
      }
      return { mode: 'chat', source: { messages: o.messagesColumn }, template, turns, task };
    }
    if (o.userColumn === undefined || o.assistantColumn === undefined) throw new Error('--user-column and --assistant-column go together');
    return { mode: 'chat', source: { user: o.userColumn, assistant: o.assistantColumn, system: o.system ?? null }, template, turns, task };
  }
  if (o.system !== undefined) throw new Error('--system goes with --user-column and --assistant-column');
  if (plain === undefined) return { mode: 'text', text: o.textColumn ?? 'text', task };
  if (o.textColumn !== undefined) throw new Error('give --text-column, or a prompt and a completion, not both');
  const prompt = side(o.promptColumn, o.promptTemplate, 'prompt');
  const completion = side(o.completionColumn, o.completionTemplate, 'completion');
  return { mode: 'completion', prompt: prompt.template, completion: completion.template, from: { prompt: prompt.flag, completion: completion.flag }, task };
}

function side(column: string | undefined, template: string | undefined, name: 'prompt' | 'completion'): { template: Template; flag: string } {
  if (column !== undefined && template !== undefined) throw new Error(`give --${name}-column or --${name}-template, not both`);
  if (column !== undefined) return { template: columnTemplate(column), flag: `--${name}-column` };
  if (template !== undefined) return { template: parseTemplate(template, `--${name}-template`), flag: `--${name}-template` };
  const other = name === 'prompt' ? 'completion' : 'prompt';
  throw new Error(`a ${other} needs a ${name}: give --${name}-column or --${name}-template`);
}

/** An example as text: pieces encoded one by one, in order. */
export interface Example {
  pieces: string[];
  loss: boolean[];
  /** bos before the first piece and eos after the last (a chat template writes its own markers). */
  plain: boolean;
  /** Chat: earlier assistant turns left without loss (see chatPieces). */
  unlocated: number;
}

export interface RowFormatter {
  /** The columns to read, in the order format() receives their values. */
  columns: ColumnRequest[];
  /** The example, or null when the row has nothing to learn or score (an empty completion, no assistant turn). Throws the reason a row is bad. */
  format(values: unknown[]): Example | null;
}

export function rowFormatter(f: RowFormat, opts: RenderOptions = {}): RowFormatter {
  switch (f.mode) {
    case 'text':
      return {
        columns: [{ name: f.text, usedBy: '--text-column' }],
        format: ([v]) => {
          const text = cellText(v, f.text);
          return text.trim() === '' ? null : { pieces: [text], loss: [true], plain: true, unlocated: 0 };
        },
      };
    case 'completion':
      return completionFormatter(f);
    case 'chat':
      return 'messages' in f.source ? messagesFormatter(f, f.source.messages, opts) : pairFormatter(f, f.source, opts);
  }
}

function completionFormatter({ prompt, completion, from }: Extract<RowFormat, { mode: 'completion' }>): RowFormatter {
  const promptCols = templateColumns(prompt);
  const completionCols = templateColumns(completion);
  const names = [...new Set([...promptCols, ...completionCols])];
  const usedBy = (c: string): string => {
    const flag = promptCols.includes(c) ? from.prompt : from.completion;
    return flag.endsWith('-template') ? `${flag}'s {${c}}` : flag;
  };
  return {
    columns: names.map((name) => ({ name, usedBy: usedBy(name) })),
    format: (values) => {
      const text = new Map(names.map((n, i) => [n, cellText(values[i], n)]));
      const c = renderTemplate(completion, (n) => text.get(n)!);
      const blank = completionCols.length > 0 ? completionCols.every((n) => text.get(n)!.trim() === '') : c.trim() === '';
      if (blank) return null;
      return { pieces: [renderTemplate(prompt, (n) => text.get(n)!), c], loss: [false, true], plain: true, unlocated: 0 };
    },
  };
}

function messagesFormatter(f: Extract<RowFormat, { mode: 'chat' }>, column: string, opts: RenderOptions): RowFormatter {
  return {
    columns: [{ name: column, usedBy: '--messages-column' }],
    format: ([v]) => chatExample(f, parseMessages(v, column), opts),
  };
}

function pairFormatter(f: Extract<RowFormat, { mode: 'chat' }>, s: { user: string; assistant: string; system: string | null }, opts: RenderOptions): RowFormatter {
  return {
    columns: [
      { name: s.user, usedBy: '--user-column' },
      { name: s.assistant, usedBy: '--assistant-column' },
    ],
    format: ([u, a]) => {
      const answer = cellText(a, s.assistant);
      if (answer.trim() === '') return null;
      const messages: ChatMessage[] = [{ role: 'user', content: cellText(u, s.user) }, { role: 'assistant', content: answer }];
      return chatExample(f, s.system === null ? messages : [{ role: 'system', content: s.system }, ...messages], opts);
    },
  };
}

function chatExample(f: Extract<RowFormat, { mode: 'chat' }>, messages: ChatMessage[], opts: RenderOptions): Example | null {
  if (!messages.some((m) => m.role === 'assistant' && m.content.trim() !== '')) return null;
  const p = chatPieces(f.template, messages, f.turns, opts);
  return p === null ? null : { pieces: p.pieces, loss: p.loss, plain: false, unlocated: p.unlocated };
}

/** A cell as text: strings as they are, JSON numbers and booleans as written; anything else is a bad row. */
export function cellText(v: unknown, column: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === undefined) throw new Error(`the row has no ${JSON.stringify(column)}`);
  if (v === null) throw new Error(`${JSON.stringify(column)} is null`);
  throw new Error(`${JSON.stringify(column)} holds ${Array.isArray(v) ? 'an array' : 'an object'}, not text`);
}

/** A messages cell: a JSON array of {role, content} (a string holding one in a CSV). */
export function parseMessages(v: unknown, column: string): ChatMessage[] {
  let list = v;
  if (typeof v === 'string') {
    try {
      list = JSON.parse(v);
    } catch (e) {
      throw new Error(`${JSON.stringify(column)} is not JSON: ${(e as Error).message}`);
    }
  }
  if (!Array.isArray(list)) throw new Error(`${JSON.stringify(column)} must be a JSON array of {"role", "content"} messages`);
  return list.map((m: unknown, i) => {
    const ok = typeof m === 'object' && m !== null && typeof (m as ChatMessage).role === 'string' && typeof (m as ChatMessage).content === 'string';
    if (!ok) throw new Error(`${JSON.stringify(column)}: message ${i + 1} is not {"role": string, "content": string}: ${JSON.stringify(m)?.slice(0, 80)}`);
    return m as ChatMessage;
  });
}
