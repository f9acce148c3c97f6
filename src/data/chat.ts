/**
 * Chat templates: a base's `chat_template` (Jinja, from tokenizer_config.json or
 * chat_template.jinja) rendered with @huggingface/jinja the way transformers'
 * apply_chat_template renders it: `messages`, `tools` and `documents` as None, the tokenizer's
 * special tokens (bos_token, eos_token, unk_token, pad_token), `add_generation_prompt`,
 * `raise_exception` and `strftime_now`.
 *
 * Loss spans are found by rendering, not by searching tokens: assistant turn i is the text that
 * rendering the conversation up to and including it adds to rendering the turns before it with
 * the generation prompt, checked to be a continuation of both, inside the whole conversation's
 * rendering. That is the span TRL's prompt-completion training puts loss on (the answer and the
 * template's end of turn), and it needs no knowledge of any template's markers.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Environment, Interpreter, Template as Jinja } from '@huggingface/jinja';

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplate {
  /** The Jinja source. */
  template: string;
  /** The special tokens rendering sees, as tokenizer_config.json names them (those it has). */
  specialTokens: Record<string, string>;
  /** Where the template came from, for messages. */
  source: string;
}

/** Rendering context beyond the conversation: a clock for strftime_now (tests fix it). */
export interface RenderOptions {
  now?: () => Date;
}

const SPECIAL_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'pad_token'] as const;

/**
 * The chat template of a model folder: chat_template.jinja when present (newer transformers save
 * it there, and it wins over the config, as in transformers), else tokenizer_config.json's
 * `chat_template` (a string, or a list of named templates whose "default" is taken).
 */
export function loadChatTemplate(dir: string): ChatTemplate {
  const config = readTokenizerConfig(dir);
  const jinjaFile = join(dir, 'chat_template.jinja');
  if (existsSync(jinjaFile)) return { template: readFileSync(jinjaFile, 'utf8'), specialTokens: specialTokens(config), source: jinjaFile };
  const t = config.chat_template;
  const named = Array.isArray(t) ? (t as { name?: unknown; template?: unknown }[]).find((x) => x.name === 'default')?.template : t;
  if (typeof named !== 'string') {
    throw new Error(`${dir} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); give one with --chat-template @file.jinja`);
  }
  return { template: named, specialTokens: specialTokens(config), source: join(dir, 'tokenizer_config.json') };
}

/** A template given as text (--chat-template), with the special tokens of the model folder. */
export function chatTemplateFrom(text: string, dir: string, source: string): ChatTemplate {
  return { template: text, specialTokens: specialTokens(readTokenizerConfig(dir)), source };
}

/** A model folder's chat template, or the one given as text (--chat-template) with the folder's special tokens. */
export function modelChatTemplate(dir: string | null | undefined, text?: string): ChatTemplate {
  if (!dir) throw new Error('chat rows need the model folder, which holds the chat template');
  return text === undefined ? loadChatTemplate(dir) : chatTemplateFrom(text, dir, '--chat-template');
}

function readTokenizerConfig(dir: string): Record<string, unknown> {
  const path = join(dir, 'tokenizer_config.json');
  if (!existsSync(path)) return {};
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: not valid JSON: ${(e as Error).message}`);
  }
}

/** Special tokens as strings; tokenizer_config.json writes them as strings or as AddedToken objects. */
function specialTokens(config: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of SPECIAL_TOKENS) {
    const v = config[k];
    const text = typeof v === 'string' ? v : typeof v === 'object' && v !== null ? (v as { content?: unknown }).content : undefined;
    if (typeof text === 'string') out[k] = text;
  }
  return out;
}

const compiled = new Map<string, Jinja>();

/** The conversation as the template renders it; a template error (raise_exception included) is thrown with its message. */
export function renderChat(t: ChatTemplate, messages: ChatMessage[], addGenerationPrompt: boolean, opts: RenderOptions = {}): string {
  let jinja = compiled.get(t.template);
  if (jinja === undefined) {
    try {
      jinja = new Jinja(t.template);
    } catch (e) {
      throw new Error(`the chat template from ${t.source} does not parse: ${(e as Error).message}`);
    }
    compiled.set(t.template, jinja);
  }
  const env = globals(opts.now ?? (() => new Date()));
  try {
    const context = { messages, tools: null, documents: null, add_generation_prompt: addGenerationPrompt, ...t.specialTokens };
    for (const [k, v] of Object.entries(context)) env.set(k, v);
    return (new Interpreter(env).run(jinja.parsed) as { value: string }).value;
  } catch (e) {
    throw new Error(`the chat template refused the conversation: ${(e as Error).message}`);
  }
}

/**
 * The globals of a template's environment: those @huggingface/jinja's Template.render sets, but
 * with strftime_now on a clock of ours in the C locale (Template.render's uses the host's locale
 * and cannot be replaced: its environment refuses a second declaration).
 */
function globals(now: () => Date): Environment {
  const env = new Environment();
  const constants: [string, boolean | null][] = [['true', true], ['false', false], ['none', null], ['True', true], ['False', false], ['None', null]];
  for (const [k, v] of constants) env.set(k, v);
  env.set('raise_exception', (message: string) => {
    throw new Error(message);
  });
  env.set('range', range);
  env.set('strftime_now', (format: string) => strftime(now(), format));
  return env;
}

/** Python's range(start, stop, step), as a list. */
function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

/** A rendered conversation cut into pieces, each with or without loss. */
export interface ChatPieces {
  pieces: string[];
  loss: boolean[];
  /** Assistant turns before the last whose span could not be located, left without loss. */
  unlocated: number;
}

/**
 * The conversation rendered whole and cut at its assistant turns. `turns: 'all'` puts loss on
 * every assistant turn (training); `'last'` renders the conversation up to its last assistant
 * turn, with loss on that turn only (scoring: the rest is its prompt, with the generation prompt).
 * An earlier turn whose span is not a continuation (some templates render a turn differently once
 * more follow, e.g. Mistral's moves the system message to the last user turn) is left without
 * loss and counted; the last one must be found. Returns null when there is no assistant turn.
 */
export function chatPieces(t: ChatTemplate, messages: ChatMessage[], turns: 'all' | 'last', opts: RenderOptions = {}): ChatPieces | null {
  const assistants = messages.flatMap((m, i) => (m.role === 'assistant' ? [i] : []));
  if (assistants.length === 0) return null;
  const lastTurn = assistants[assistants.length - 1]!;
  const convo = turns === 'last' ? messages.slice(0, lastTurn + 1) : messages;
  const full = renderChat(t, convo, false, opts);
  const spans: [number, number][] = [];
  let unlocated = 0;
  for (const i of turns === 'last' ? [lastTurn] : assistants) {
    const span = locateTurn(t, convo, i, full, spans.at(-1)?.[1] ?? 0, opts);
    if (span !== null) spans.push(span);
    else if (i !== lastTurn) unlocated++;
    else {
      throw new Error(
        `the chat template does not render the last assistant turn (message ${i + 1}) as a continuation of the turns before it with add_generation_prompt, so its loss cannot be placed`,
      );
    }
  }
  const pieces: string[] = [];
  const loss: boolean[] = [];
  const push = (a: number, b: number, withLoss: boolean): void => {
    if (b <= a) return;
    pieces.push(full.slice(a, b));
    loss.push(withLoss);
  };
  let at = 0;
  for (const [a, b] of spans) {
    push(at, a, false);
    push(a, b, true);
    at = b;
  }
  push(at, full.length, false);
  return { pieces, loss, unlocated };
}

/** [start, end) of assistant turn i in `full`, or null when the renderings do not nest. */
function locateTurn(t: ChatTemplate, messages: ChatMessage[], i: number, full: string, after: number, opts: RenderOptions): [number, number] | null {
  let before: string;
  let through: string;
  try {
    before = renderChat(t, messages.slice(0, i), true, opts);
    through = renderChat(t, messages.slice(0, i + 1), false, opts);
  } catch {
    // e.g. a template that refuses a conversation that does not start with a user turn
    return null;
  }
  const nests = through.startsWith(before) && full.startsWith(through) && through.length > before.length && before.length >= after;
  return nests ? [before.length, through.length] : null;
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/**
 * Python's strftime in the C locale (English names, local time), for strftime_now: Llama 3.2's
 * template writes today's date with it. An unsupported directive is an error, not a guess.
 */
export function strftime(d: Date, format: string): string {
  const pad = (n: number, w = 2): string => String(n).padStart(w, '0');
  return format.replace(/%(.)/g, (all, c: string) => {
    switch (c) {
      case 'd': return pad(d.getDate());
      case 'm': return pad(d.getMonth() + 1);
      case 'Y': return String(d.getFullYear());
      case 'y': return pad(d.getFullYear() % 100);
      case 'b': return MONTHS[d.getMonth()]!.slice(0, 3);
      case 'B': return MONTHS[d.getMonth()]!;
      case 'a': return DAYS[d.getDay()]!.slice(0, 3);
      case 'A': return DAYS[d.getDay()]!;
      case 'H': return pad(d.getHours());
      case 'M': return pad(d.getMinutes());
      case 'S': return pad(d.getSeconds());
      case '%': return '%';
      default: throw new Error(`strftime_now: ${all} is not supported`);
    }
  });
}
