import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BYTE_LEVEL_SPECIALS,
  byteLevelTokenizerConfig,
  byteLevelTokenizerJson,
  loadTokenizer,
  trainByteLevelBpe,
  type Tokenizer,
} from '../src/base/tokenizer.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'tokenizers');
/** Ids and decoded text from Hugging Face `tokenizers` 0.23.2 (make_tokenizers.py). */
const EXPECTED = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')) as Record<
  string,
  { text: string; ids: number[]; with_special: number[]; decoded: string }[]
>;

const tmp = mkdtempSync(join(tmpdir(), 'molora-tok-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;

/** A folder holding the given tokenizer files. */
function folder(files: Record<string, unknown>): string {
  const dir = join(tmp, String(dirs++));
  mkdirSync(dir);
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

function byteLevel(): Tokenizer {
  const tok = loadTokenizer(folder({ 'tokenizer.json': byteLevelTokenizerJson(), 'tokenizer_config.json': byteLevelTokenizerConfig() }));
  if (!tok) throw new Error('byte-level tokenizer did not load');
  return tok;
}

function fixture(name: string): Tokenizer {
  const tok = loadTokenizer(join(FIXTURES, name));
  if (!tok) throw new Error(`${name} did not load`);
  return tok;
}

function streamed(tok: Tokenizer, ids: number[], opts?: Parameters<Tokenizer['streamDecoder']>[0]): string[] {
  const dec = tok.streamDecoder(opts);
  const parts = ids.map((id) => dec.push(id));
  parts.push(dec.flush());
  return parts;
}

const SAMPLES = [
  'Hello, world!',
  'é è ê ñ ü ß',
  '中文 日本語 한국어',
  'emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷',
  '  leading and trailing spaces  ',
  'lines\n\nwith\r\n\ttabs\t and \u00a0nbsp',
  '',
];

describe('byte-level tokenizer', () => {
  it('lays out 256 byte tokens then <|bos|> 256, <|eos|> 257, <|pad|> 258', () => {
    const tok = byteLevel();
    expect([tok.bosId, tok.eosId, tok.padId, tok.vocabSize]).toEqual([256, 257, 258, 259]);
    expect(BYTE_LEVEL_SPECIALS).toMatchObject({ bosId: 256, eosId: 257, padId: 258, vocabSize: 259 });
    // Id b is byte b.
    expect(tok.encode('A\n\u00ff')).toEqual([0x41, 0x0a, 0xc3, 0xbf]);
  });

  it('round-trips text exactly, one token per UTF-8 byte', () => {
    const tok = byteLevel();
    for (const s of SAMPLES) {
      const ids = tok.encode(s);
      expect(ids).toEqual([...Buffer.from(s, 'utf8')]);
      expect(tok.decode(ids)).toBe(s);
    }
  });

  it('adds bos only when asked, and keeps special tokens written in the text', () => {
    const tok = byteLevel();
    expect(tok.encode('hi', { addBos: true })).toEqual([256, 104, 105]);
    expect(tok.encode('hi<|eos|>')).toEqual([104, 105, 257]);
    expect(tok.decode([256, 104, 105, 257, 258])).toBe('<|bos|>hi<|eos|><|pad|>');
    expect(tok.decode([256, 104, 105, 257, 258], { skipSpecial: true })).toBe('hi');
  });

  it('decodes ids it does not know to nothing', () => {
    expect(byteLevel().decode([104, 9999, 105])).toBe('hi');
  });

  it('streams text whose concatenation is decode(all ids), holding split characters back', () => {
    const tok = byteLevel();
    for (const s of SAMPLES) {
      const ids = tok.encode(s, { addBos: true }).concat([BYTE_LEVEL_SPECIALS.eosId]);
      const parts = streamed(tok, ids);
      expect(parts.join('')).toBe(tok.decode(ids));
      for (const p of parts) expect(p).not.toContain('\uFFFD');
    }
    // The 4 bytes of 😀 give nothing until the last one completes the character.
    expect(streamed(tok, tok.encode('a😀'))).toEqual(['a', '', '', '', '😀', '']);
  });

  it('streams without special tokens when asked', () => {
    const tok = byteLevel();
    const ids = [256, ...tok.encode('ok 👍'), 257];
    expect(streamed(tok, ids, { skipSpecial: true }).join('')).toBe('ok 👍');
  });

  it('flushes an unfinished character as U+FFFD, as decode does', () => {
    const tok = byteLevel();
    const ids = tok.encode('x😀').slice(0, 3);
    expect(streamed(tok, ids).join('')).toBe(tok.decode(ids));
    expect(tok.decode(ids)).toBe('x\uFFFD');
  });

  it('writes the fields Hugging Face tokenizers serialises', () => {
    const json = byteLevelTokenizerJson() as Record<string, unknown>;
    expect(Object.keys(json)).toEqual([
      'version', 'truncation', 'padding', 'added_tokens', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'model',
    ]);
    expect(Object.keys(json.model as object)).toEqual([
      'type', 'dropout', 'unk_token', 'continuing_subword_prefix', 'end_of_word_suffix', 'fuse_unk', 'byte_fallback',
      'ignore_merges', 'vocab', 'merges',
    ]);
    expect(byteLevelTokenizerConfig()).toMatchObject({
      tokenizer_class: 'PreTrainedTokenizerFast',
      bos_token: '<|bos|>',
      eos_token: '<|eos|>',
      pad_token: '<|pad|>',
    });
  });

  it('takes other specials and explicit merges, ids following in order', () => {
    const merges: [string, string][] = [['h', 'i'], ['Ġ', 'hi']];
    const json = byteLevelTokenizerJson({ specials: ['<|endoftext|>'], merges });
    const tok = loadTokenizer(folder({ 'tokenizer.json': json }))!;
    expect(tok.vocabSize).toBe(259);
    expect(tok.encode('hi hi<|endoftext|>')).toEqual([257, 258, 256]);
    expect(tok.decode([257, 258, 256])).toBe('hi hi<|endoftext|>');
    expect([tok.bosId, tok.eosId, tok.padId]).toEqual([null, 256, null]);
    expect(() => byteLevelTokenizerJson({ merges: [['h', 'zz']] })).toThrow(/merge h zz/);
    expect(() => byteLevelTokenizerJson({ specials: ['a'] })).toThrow(/"a" is empty or repeated/);
  });

  it('can prepend bos in the post-processor, as Llama tokenizers do', () => {
    const json = byteLevelTokenizerJson({ addBos: true }) as { post_processor: { single: unknown[] } };
    expect(json.post_processor.single[0]).toEqual({ SpecialToken: { id: '<|bos|>', type_id: 0 } });
    // Our encode adds no special tokens unless asked, whatever the post-processor says.
    const tok = loadTokenizer(folder({ 'tokenizer.json': json }))!;
    expect(tok.encode('a')).toEqual([97]);
  });
});

describe('byte-level BPE training', () => {
  it('merges the most frequent pair first', () => {
    // 'abab' once and ' abab' twice: (a,b) occurs 6 times, then (ab,ab) 3 times.
    const json = trainByteLevelBpe(['abab abab abab'], 261) as { model: { merges: string[][] } };
    expect(json.model.merges).toEqual([['a', 'b'], ['ab', 'ab']]);
    const tok = loadTokenizer(folder({ 'tokenizer.json': json }))!;
    expect(tok.encode('abab')).toEqual([260]);
    expect(tok.encode('ab')).toEqual([259]);
  });

  it('reaches the vocab size, round-trips, and keeps tokens that name Object.prototype members', () => {
    const corpus = Array.from({ length: 30 }, (_, i) => `x.toString() ${i} obj.hasOwnProperty(k) __proto__ café 中文 😀`);
    const all = trainByteLevelBpe(corpus, 1000) as { model: { vocab: Record<string, number>; merges: unknown[] } };
    // Runs out of repeated pairs before 1000, with every merge a new token.
    expect(Object.keys(all.model.vocab)).toHaveLength(259 + all.model.merges.length);
    expect(Object.hasOwn(all.model.vocab, 'toString')).toBe(true);
    const json = trainByteLevelBpe(corpus, 290) as { model: { vocab: Record<string, number> } };
    expect(Object.keys(json.model.vocab)).toHaveLength(290);
    const tok = loadTokenizer(folder({ 'tokenizer.json': all }))!;
    for (const s of [...corpus, ...SAMPLES]) expect(tok.decode(tok.encode(s))).toBe(s);
    expect(tok.encode(corpus[0]!).length).toBeLessThan(Buffer.byteLength(corpus[0]!) / 3);
  });

  it('learns nothing from special tokens and stops when no pair repeats', () => {
    const json = trainByteLevelBpe(['<|eos|><|eos|><|eos|>', 'xy'], 1000) as { model: { merges: unknown[] } };
    expect(json.model.merges).toEqual([]);
    expect(() => trainByteLevelBpe([], 258)).toThrow(/below the 259/);
  });
});

describe('Hugging Face fixtures', () => {
  for (const name of Object.keys(EXPECTED)) {
    it(`${name}: encodes and decodes as Hugging Face tokenizers does`, () => {
      const tok = fixture(name);
      for (const c of EXPECTED[name]!) {
        expect(tok.encode(c.text), c.text).toEqual(c.ids);
        expect(tok.decode(c.ids), c.text).toBe(c.decoded);
        if (c.with_special[0] !== c.ids[0]) expect(tok.encode(c.text, { addBos: true })).toEqual(c.with_special);
      }
    });

    it(`${name}: streams the same text as decode`, () => {
      const tok = fixture(name);
      for (const c of EXPECTED[name]!) {
        const parts = streamed(tok, c.ids);
        expect(parts.join(''), c.text).toBe(c.decoded);
      }
    });
  }

  it('gpt2-bpe: guesses eos from added_tokens when there is no tokenizer_config.json', () => {
    const tok = fixture('gpt2-bpe');
    expect([tok.bosId, tok.eosId, tok.padId]).toEqual([null, 0, null]);
    const json = JSON.parse(readFileSync(join(FIXTURES, 'gpt2-bpe', 'tokenizer.json'), 'utf8'));
    expect(tok.vocabSize).toBe(Object.keys(json.model.vocab).length);
  });

  it('llama-spm: takes bos/eos from tokenizer_config.json, an explicit null pad staying null', () => {
    const tok = fixture('llama-spm');
    expect([tok.bosId, tok.eosId, tok.padId]).toEqual([1, 2, null]);
  });

  it('llama-spm: a streamed continuation keeps its leading space given the prompt as context', () => {
    const tok = fixture('llama-spm');
    const prompt = tok.encode('Hello');
    const reply = tok.encode('Hello world').slice(prompt.length);
    expect(tok.decode(reply)).toBe('world');
    expect(streamed(tok, reply, { context: prompt }).join('')).toBe(' world');
  });

  it('ids from config.json win; null ones fall back to the tokenizer files', () => {
    const tok = loadTokenizer(join(FIXTURES, 'llama-spm'), { bosId: null, eosId: 7, padId: 0 })!;
    expect([tok.bosId, tok.eosId, tok.padId]).toEqual([1, 7, 0]);
  });
});

describe('loading errors', () => {
  it('returns null when there is no tokenizer.json', () => {
    expect(loadTokenizer(folder({ 'config.json': {} }))).toBeNull();
  });

  it('names the file that is not JSON', () => {
    const dir = folder({ 'tokenizer.json': '{"model": ' });
    expect(() => loadTokenizer(dir)).toThrow(join(dir, 'tokenizer.json'));
    const dir2 = folder({ 'tokenizer.json': byteLevelTokenizerJson(), 'tokenizer_config.json': 'nope' });
    expect(() => loadTokenizer(dir2)).toThrow(join(dir2, 'tokenizer_config.json'));
  });

  it('names tokenizer_config.json when its bos token is not in the vocabulary', () => {
    const dir = folder({ 'tokenizer.json': byteLevelTokenizerJson(), 'tokenizer_config.json': { bos_token: '<s>' } });
    expect(() => loadTokenizer(dir)).toThrow(/tokenizer_config\.json: bos_token "<s>" is not in/);
  });

  it('reads special_tokens_map.json when there is no tokenizer_config.json', () => {
    const dir = folder({ 'tokenizer.json': byteLevelTokenizerJson(), 'special_tokens_map.json': { eos_token: { content: '<|pad|>' } } });
    expect(loadTokenizer(dir)!.eosId).toBe(258);
  });

  it('refuses what @huggingface/tokenizers 0.2.0 would get wrong or cannot run, naming the file', () => {
    const base = byteLevelTokenizerJson() as Record<string, any>;
    const cases: [Record<string, any>, RegExp][] = [
      [{ ...base, model: { type: 'WordLevel', vocab: {}, unk_token: '[UNK]' } }, /model type is "WordLevel"/],
      [{ ...base, model: { ...base.model, continuing_subword_prefix: '##' } }, /continuing_subword_prefix/],
      [{ ...base, added_tokens: [{ ...base.added_tokens[0], single_word: true }] }, /single_word/],
      [{ ...base, pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false } }, /MergedWithPrevious/],
      [{ ...base, pre_tokenizer: { type: 'UnicodeScripts' } }, /not loadable by @huggingface\/tokenizers: Unknown PreTokenizer type: UnicodeScripts/],
      [{ ...base, normalizer: { type: 'Nmt' } }, /Unknown Normalizer type: Nmt/],
      [{ ...base, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Punctuation', behavior: 'Isolated' }] } }, /Punctuation pre-tokenizer has behavior Isolated/],
      [{ ...base, decoder: { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '▁', prepend_scheme: 'never', split: true }] } }, /Metaspace decoder never prepends/],
    ];
    for (const [json, why] of cases) {
      const dir = folder({ 'tokenizer.json': json });
      expect(() => loadTokenizer(dir)).toThrow(why);
      expect(() => loadTokenizer(dir)).toThrow(join(dir, 'tokenizer.json'));
    }
  });

  it('refuses addBos when the tokenizer has no bos token', () => {
    expect(() => fixture('gpt2-bpe').encode('hi', { addBos: true })).toThrow(/no bos token/);
  });
});
