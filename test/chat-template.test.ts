import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadTokenizer } from '../src/base/tokenizer.js';
import { chatPieces, renderChat, strftime, type ChatMessage, type ChatTemplate } from '../src/data/chat.js';
import { loadDataset } from '../src/data/dataset.js';
import type { Encoder } from '../src/data/encoder.js';
import { evalBatches } from '../src/data/sampler.js';
import type { TokenStore } from '../src/data/store.js';
import { FIXTURES, tempDir } from './helpers.js';

/**
 * Real chat templates (test/fixtures/chat/templates.json, copied from public tokenizer_config.json
 * files) against python3-jinja2's renderings of them (scripts/make_chat_fixtures.py), and the loss
 * spans they give, checked on token ids.
 */
interface Case {
  template: string;
  conversation: string;
  upto: number;
  add_generation_prompt: boolean;
  text?: string;
  error?: string;
}
const DIR = join(FIXTURES, 'chat');
const templates = JSON.parse(readFileSync(join(DIR, 'templates.json'), 'utf8')) as { name: string; chat_template: string; special_tokens: Record<string, string> }[];
const ref = JSON.parse(readFileSync(join(DIR, 'renderings.json'), 'utf8')) as { now: string; conversations: Record<string, ChatMessage[]>; cases: Case[] };
const now = (): Date => new Date(ref.now);
const chat = (name: string): ChatTemplate => {
  const t = templates.find((x) => x.name === name)!;
  return { template: t.chat_template, specialTokens: t.special_tokens, source: `fixture ${name}` };
};
/** python3-jinja2's rendering of the conversation's first `upto` messages. */
const reference = (template: string, conversation: string, upto: number, agp: boolean): string => {
  const c = ref.cases.find((x) => x.template === template && x.conversation === conversation && x.upto === upto && x.add_generation_prompt === agp)!;
  if (c.text === undefined) throw new Error(`reference raised: ${c.error}`);
  return c.text;
};

const tmp = tempDir('molora-chat-');
afterAll(tmp.cleanup);
let files = 0;

describe('chat templates render as transformers renders them', () => {
  it('has every fixture template over every conversation prefix, with and without add_generation_prompt', () => {
    expect(templates.map((t) => t.name)).toEqual(['smollm2', 'qwen2.5', 'llama-3.1', 'llama-3.2', 'mistral-v0.3']);
    expect(ref.cases).toHaveLength(160);
    expect(new Set(ref.cases.map((c) => c.add_generation_prompt))).toEqual(new Set([false, true]));
  });

  it.each(templates.map((t) => t.name))('%s: byte for byte', (name) => {
    const cases = ref.cases.filter((c) => c.template === name);
    for (const c of cases) {
      const messages = ref.conversations[c.conversation]!.slice(0, c.upto);
      const got = renderChat(chat(name), messages, c.add_generation_prompt, { now });
      expect({ case: `${c.conversation}[:${c.upto}] agp=${c.add_generation_prompt}`, text: got }).toEqual({
        case: `${c.conversation}[:${c.upto}] agp=${c.add_generation_prompt}`,
        text: c.text,
      });
    }
  });

  it("writes strftime_now's date as Python's C-locale strftime does", () => {
    expect(strftime(new Date(2025, 2, 4, 7, 5, 9), '%d %b %Y, %B %A %a %H:%M:%S %m %y %%')).toBe('04 Mar 2025, March Tuesday Tue 07:05:09 03 25 %');
    expect(() => strftime(new Date(), '%Z')).toThrow(/%Z is not supported/);
    expect(reference('llama-3.2', 'single', 2, false)).toContain('Today Date: 14 Mar 2025');
  });

  it('reports raise_exception with the template message', () => {
    const bad = [
      { role: 'user', content: 'a' },
      { role: 'user', content: 'b' },
    ];
    expect(() => renderChat(chat('mistral-v0.3'), bad, false)).toThrow(/refused the conversation: After the optional system message, conversation roles must alternate/);
  });
});

/** The conversations whose assistant turns every fixture template renders as continuations. */
const SPANNED = ['single', 'system', 'multi', 'multi-system', 'spaces-unicode'];
const located = (template: string, conversation: string): boolean => !(template === 'mistral-v0.3' && conversation.includes('system'));

/** Writes the conversations as a JSONL file with a messages column. */
function jsonl(conversations: string[]): string {
  const path = join(tmp.dir, `c${files++}.jsonl`);
  writeFileSync(path, conversations.map((c) => JSON.stringify({ id: c, messages: ref.conversations[c] })).join('\n') + '\n');
  return path;
}

/** Tokens whose position is a target with loss, per example (target t is token t + 1). */
function lossPositions(store: TokenStore): number[][] {
  const out: number[][] = [];
  for (const b of evalBatches(store, { batchSize: 1, seqLen: 4096 })) {
    const at: number[] = [];
    for (let t = 0; t < b.seq; t++) if (b.lossMask[t]) at.push(t + 1);
    out.push(at);
  }
  return out;
}

const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, k) => a + k);
const utf8Len = (s: string): number => Buffer.byteLength(s, 'utf8');

describe('loss masks cover exactly the assistant turns', () => {
  // The shipped base's byte-level tokenizer knows none of these templates' markers (<|im_start|>,
  // <|eot_id|>, [INST]): they encode as their bytes. So spans are checked as the renderer locates
  // them, by rendering offsets: token k is UTF-8 byte k of the whole rendering, and assistant turn
  // i covers the bytes from the end of python3-jinja2's rendering of the turns before it with the
  // generation prompt to the end of its rendering of the turns through it.
  const bytes = loadTokenizer(join(import.meta.dirname, '..', 'models', 'tiny-llama'))!;

  it.each(templates.map((t) => t.name))('%s, on byte-level token ids', async (name) => {
    const convs = SPANNED.filter((c) => located(name, c));
    const { train, stats } = await loadDataset({ path: jsonl(convs), encoder: bytes, tokenizerId: 'tiny', seqLen: 4096, seed: 0, messagesColumn: 'messages', chatTemplate: () => chat(name), render: { now } });
    expect(stats).toMatchObject({ mode: 'chat', examples: convs.length, unlocatedTurns: 0, truncated: 0, dropped: 0 });
    const loss = lossPositions(train);
    convs.forEach((c, e) => {
      const messages = ref.conversations[c]!;
      const full = reference(name, c, messages.length, false);
      expect(Array.from(train.example(e))).toEqual(Array.from(Buffer.from(full, 'utf8')));
      const want = messages.flatMap((m, i) => (m.role === 'assistant' ? range(utf8Len(reference(name, c, i, true)), utf8Len(reference(name, c, i + 1, false))) : []));
      expect({ conversation: c, loss: loss[e] }).toEqual({ conversation: c, loss: want });
      expect(train.promptLens[e]).toBe(want[0]);
    });
  });

  it('mistral-v0.3 with real special tokens: bos once, each answer ends in eos, and only answers have loss', async () => {
    // The SentencePiece fixture has <s> and </s> as special tokens (ids 1 and 2), as Mistral's has.
    const spm = loadTokenizer(join(FIXTURES, 'tokenizers', 'llama-spm'))!;
    const convs = ['single', 'multi'];
    const { train } = await loadDataset({ path: jsonl(convs), encoder: spm, tokenizerId: 'spm', seqLen: 4096, seed: 0, messagesColumn: 'messages', chatTemplate: () => chat('mistral-v0.3') });
    const loss = lossPositions(train);
    convs.forEach((c, e) => {
      const messages = ref.conversations[c]!;
      const ids = Array.from(train.example(e));
      const answers = messages.flatMap((m, i) => (m.role === 'assistant' ? [reference('mistral-v0.3', c, i + 1, false).slice(reference('mistral-v0.3', c, i, true).length)] : []));
      expect(answers.every((a) => a.endsWith('</s>'))).toBe(true);
      expect(loss[e]!.map((p) => ids[p])).toEqual(answers.flatMap((a) => spm.encode(a)));
      expect(ids.filter((id) => id === 1)).toEqual([1]);
      expect(ids[0]).toBe(1);
      expect(loss[e]!.filter((p) => ids[p] === 2)).toHaveLength(answers.length);
      expect(ids.filter((id) => id === 2)).toHaveLength(answers.length);
    });
  });

  it('scores the last turn: its prompt is the turns before it with the generation prompt', () => {
    for (const t of templates) {
      for (const c of SPANNED.filter((x) => located(t.name, x))) {
        const messages = ref.conversations[c]!;
        const p = chatPieces(chat(t.name), messages, 'last', { now })!;
        const prompt = reference(t.name, c, messages.length - 1, true);
        expect(p.pieces.join('')).toBe(reference(t.name, c, messages.length, false));
        expect(p.loss.indexOf(true)).toBeGreaterThan(-1);
        expect(p.pieces.slice(0, p.loss.indexOf(true)).join('')).toBe(prompt);
        expect(p.loss.filter(Boolean)).toHaveLength(1);
      }
    }
  });

  it("refuses a row whose last answer the template renders apart from its prompt (Mistral drops a system message once an answer ends the chat)", async () => {
    const path = jsonl(['single', 'system', 'multi']);
    const load = (skipBadRows: boolean) =>
      loadDataset({ path, encoder: bytes as Encoder, tokenizerId: 'tiny', seqLen: 4096, seed: 0, messagesColumn: 'messages', chatTemplate: () => chat('mistral-v0.3'), skipBadRows });
    await expect(load(false)).rejects.toThrow(`${path}:2: the chat template does not render the last assistant turn (message 3) as a continuation`);
    const { stats } = await load(true);
    expect(stats).toMatchObject({ examples: 2, badRowsSkipped: 1, badRows: [{ file: path, line: 2, reason: expect.stringContaining('continuation') }] });
  });
});
