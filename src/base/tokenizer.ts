import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

/** A Hugging Face tokenizer.json, run by @huggingface/tokenizers. */
export interface Tokenizer {
  /** One past the largest id, counting added tokens: the smallest embedding table that fits. */
  vocabSize: number;
  bosId: number | null;
  eosId: number | null;
  padId: number | null;
  /** Special tokens written in the text are still recognised; none are added unless addBos. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Ids the tokenizer does not know decode to nothing, as in Hugging Face `tokenizers`. */
  decode(ids: number[], opts?: { skipSpecial?: boolean }): string;
  /**
   * Incremental decoder for streaming generation: push one id, get the newly completed text ('' while
   * a multi-byte UTF-8 character is incomplete). `context` (e.g. the prompt ids) is not emitted; it
   * only lets the first generated token decode as it would mid-text (a SentencePiece '▁word' keeps
   * its space).
   */
  streamDecoder(opts?: { skipSpecial?: boolean; context?: number[] }): StreamDecoder;
}

export interface StreamDecoder {
  push(id: number): string;
  /** The text still held back (an unfinished UTF-8 sequence), after which the decoder starts afresh. */
  flush(): string;
}

export interface SpecialIds {
  bosId?: number | null;
  eosId?: number | null;
  padId?: number | null;
}

/** The byte-level tokenizer's fixed layout: id b is byte b, then these special tokens. */
export const BYTE_LEVEL_SPECIALS = {
  bos: '<|bos|>',
  eos: '<|eos|>',
  pad: '<|pad|>',
  bosId: 256,
  eosId: 257,
  padId: 258,
  vocabSize: 259,
} as const;

type Json = Record<string, unknown>;

/**
 * Load dir/tokenizer.json (with tokenizer_config.json or special_tokens_map.json for the names of the
 * bos/eos/pad tokens). Null when there is no tokenizer.json. Ids in `special` (from config.json) win;
 * a null or missing one falls back to the tokenizer files.
 */
export function loadTokenizer(dir: string, special: SpecialIds = {}): Tokenizer | null {
  const path = join(dir, 'tokenizer.json');
  if (!existsSync(path)) return null;
  const json = readJsonObject(path);
  checkSupported(json, path);
  const cfgPath = [join(dir, 'tokenizer_config.json'), join(dir, 'special_tokens_map.json')].find((p) => existsSync(p));
  const cfg = cfgPath ? readJsonObject(cfgPath) : {};
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(json, libConfig(cfg));
  } catch (e) {
    throw new Error(`${path}: not loadable by @huggingface/tokenizers: ${(e as Error).message}`);
  }
  const resolve = (key: 'bos_token' | 'eos_token' | 'pad_token', given: number | null | undefined, guesses: string[]) =>
    given ?? specialFromFiles(hf, cfg, cfgPath, key, json, guesses);
  return new HfBackedTokenizer(
    hf,
    path,
    cleanUpSpaces(cfg, cfgPath),
    resolve('bos_token', special.bosId, ['<|bos|>', '<s>', '<|begin_of_text|>', '<bos>', '<|startoftext|>']),
    resolve('eos_token', special.eosId, ['<|eos|>', '</s>', '<|end_of_text|>', '<eos>', '<|endoftext|>']),
    resolve('pad_token', special.padId, ['<|pad|>', '<pad>', '[PAD]']),
  );
}

class HfBackedTokenizer implements Tokenizer {
  readonly vocabSize: number;

  constructor(
    private readonly hf: HfTokenizer,
    private readonly path: string,
    private readonly cleanUp: boolean,
    readonly bosId: number | null,
    readonly eosId: number | null,
    readonly padId: number | null,
  ) {
    let max = -1;
    for (const id of hf.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids as (number | undefined)[];
    // The library yields undefined where the model has no unk token; never pass that on as an id.
    if (ids.includes(undefined)) {
      throw new Error(`${this.path}: part of ${JSON.stringify(text.slice(0, 80))} has no token and the model has no unk_token`);
    }
    if (!opts.addBos) return ids as number[];
    if (this.bosId === null) throw new Error(`${this.path}: addBos was asked for but this tokenizer has no bos token`);
    return [this.bosId, ...(ids as number[])];
  }

  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    // Unknown ids would become the unk token here; Hugging Face drops them, and so do we.
    const known = ids.filter((id) => this.hf.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    return this.hf.decode(known, { skip_special_tokens: opts.skipSpecial ?? false, clean_up_tokenization_spaces: this.cleanUp });
  }

  /**
   * Keeps a short window of ids: the tokens emitted last (their left context: a SentencePiece '▁word'
   * decodes to ' word' only after another token) and those not yet emitted. Each push decodes the
   * window and emits what it adds over the context, unless it ends in U+FFFD (bytes still to come).
   */
  streamDecoder(opts: { skipSpecial?: boolean; context?: number[] } = {}): StreamDecoder {
    const dec = (ids: number[]) => this.decode(ids, { skipSpecial: opts.skipSpecial });
    // A few ids of context are plenty; more only makes every push decode more.
    let window = (opts.context ?? []).slice(-4);
    let emitted = window.length;
    const emit = (final: boolean): string => {
      const before = dec(window.slice(0, emitted));
      const all = dec(window);
      if (all.length <= before.length || (!final && all.endsWith('\uFFFD'))) return '';
      window = window.slice(emitted);
      emitted = window.length;
      return all.slice(before.length);
    };
    return {
      push: (id) => {
        window.push(id);
        return emit(false);
      },
      flush: () => {
        const out = emit(true);
        window = [];
        emitted = 0;
        return out;
      },
    };
  }
}

/**
 * A Hugging Face tokenizer.json for a byte-level BPE: id b (0–255) is byte b, spelled with GPT-2's
 * byte-to-unicode map, and the specials follow at 256, 257, … — by default <|bos|> 256, <|eos|> 257,
 * <|pad|> 258 (BYTE_LEVEL_SPECIALS). With `merges` (pairs of tokens in that spelling, highest
 * priority first), each new merged token takes the next id after the specials. `addBos` makes the
 * post-processor prepend the first special, as Llama tokenizers do.
 */
export function byteLevelTokenizerJson(
  opts: { specials?: string[]; merges?: [string, string][]; addBos?: boolean } = {},
): Json {
  const specials = opts.specials ?? [BYTE_LEVEL_SPECIALS.bos, BYTE_LEVEL_SPECIALS.eos, BYTE_LEVEL_SPECIALS.pad];
  const merges = opts.merges ?? [];
  // A Map, not an object: tokens such as 'toString' or '__proto__' must not meet Object.prototype.
  const vocab = new Map<string, number>();
  const add = (token: string, what: string) => {
    if (token.length === 0 || vocab.has(token)) throw new Error(`byte-level tokenizer: ${what} ${JSON.stringify(token)} is empty or repeated`);
    vocab.set(token, vocab.size);
  };
  for (let b = 0; b < 256; b++) add(BYTE_TO_UNICODE[b]!, 'byte token');
  specials.forEach((s) => add(s, 'special token'));
  for (const [a, b] of merges) {
    if (!vocab.has(a) || !vocab.has(b)) throw new Error(`byte-level tokenizer: merge ${a} ${b} uses a token not yet in the vocab`);
    // Two merges may spell the same token ('ab'+'c', 'a'+'bc'); it keeps its first id.
    if (!vocab.has(a + b)) add(a + b, 'merged token');
  }
  const bos = specials[0];
  if (opts.addBos && bos === undefined) throw new Error('byte-level tokenizer: addBos needs at least one special token');
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content) => ({
      id: vocab.get(content),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: opts.addBos ? bosTemplate(bos!, vocab.get(bos!)!) : { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
}

/**
 * Learn a byte-level BPE from `texts` and return its tokenizer.json (see byteLevelTokenizerJson for the
 * layout): merges of the most frequent adjacent pair within GPT-2 pre-tokenized words, ties going to
 * the pair that sorts first, until `vocabSize` tokens (bytes and specials included) or until no pair
 * occurs `minFrequency` times. Special tokens in the texts are left out of the counts.
 */
export function trainByteLevelBpe(
  texts: Iterable<string>,
  vocabSize: number,
  opts: { specials?: string[]; addBos?: boolean; minFrequency?: number } = {},
): Json {
  const specials = opts.specials ?? [BYTE_LEVEL_SPECIALS.bos, BYTE_LEVEL_SPECIALS.eos, BYTE_LEVEL_SPECIALS.pad];
  const minFrequency = opts.minFrequency ?? 2;
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new Error(`BPE training: minFrequency ${minFrequency} must be a whole number ≥ 1`);
  if (vocabSize < 256 + specials.length) throw new Error(`BPE training: vocabSize ${vocabSize} is below the ${256 + specials.length} byte and special tokens`);
  const counts = wordCounts(texts, specials);
  const words = [...counts.keys()].map((w) => Array.from(w));
  const freq = [...counts.values()];
  // Pair counts and the words each pair occurs in, updated only for the words a merge touches.
  const pairCount = new Map<string, number>();
  const pairWords = new Map<string, Set<number>>();
  const tally = (i: number, sign: 1 | -1) => {
    const w = words[i]!;
    for (let j = 0; j + 1 < w.length; j++) {
      const key = w[j] + ' ' + w[j + 1];
      const c = (pairCount.get(key) ?? 0) + sign * freq[i]!;
      if (c === 0) {
        // Gone from every word: drop it so the search for the best pair stays short.
        pairCount.delete(key);
        pairWords.delete(key);
      } else pairCount.set(key, c);
      if (sign > 0) {
        let set = pairWords.get(key);
        if (!set) pairWords.set(key, (set = new Set()));
        set.add(i);
      }
    }
  };
  words.forEach((_, i) => tally(i, 1));
  const known = new Set([...BYTE_TO_UNICODE, ...specials]);
  const merges: [string, string][] = [];
  while (known.size < vocabSize) {
    let best: string | null = null;
    let bestCount = minFrequency - 1;
    for (const [key, c] of pairCount) {
      if (c > bestCount || (c === bestCount && best !== null && key < best)) [best, bestCount] = [key, c];
    }
    if (best === null) break;
    const [a, b] = best.split(' ') as [string, string];
    merges.push([a, b]);
    known.add(a + b);
    for (const i of pairWords.get(best)!) {
      tally(i, -1);
      words[i] = mergePair(words[i]!, a, b);
      tally(i, 1);
    }
  }
  return byteLevelTokenizerJson({ specials, merges, addBos: opts.addBos });
}

/** How often each pre-tokenized word occurs, spelled in GPT-2's byte alphabet; special tokens left out. */
function wordCounts(texts: Iterable<string>, specials: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  const encoder = new TextEncoder();
  for (const text of texts) {
    for (const part of splitOn(text, specials)) {
      for (const w of part.match(GPT2_SPLIT) ?? []) {
        const spelled = Array.from(encoder.encode(w), (b) => BYTE_TO_UNICODE[b]!).join('');
        counts.set(spelled, (counts.get(spelled) ?? 0) + 1);
      }
    }
  }
  return counts;
}

/** The regex GPT-2's (and Hugging Face's ByteLevel) pre-tokenizer splits words with. */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function splitOn(text: string, specials: string[]): string[] {
  let parts = [text];
  for (const s of specials) parts = parts.flatMap((p) => p.split(s));
  return parts;
}

function mergePair(word: string[], a: string, b: string): string[] {
  const out: string[] = [];
  for (let j = 0; j < word.length; j++) {
    if (word[j] === a && word[j + 1] === b) {
      out.push(a + b);
      j++;
    } else out.push(word[j]!);
  }
  return out;
}

/** The tokenizer_config.json that goes with byteLevelTokenizerJson's default specials. */
export function byteLevelTokenizerConfig(opts: { modelMaxLength?: number } = {}): Json {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: BYTE_LEVEL_SPECIALS.bos,
    eos_token: BYTE_LEVEL_SPECIALS.eos,
    pad_token: BYTE_LEVEL_SPECIALS.pad,
    model_max_length: opts.modelMaxLength ?? 2048,
    clean_up_tokenization_spaces: false,
  };
}

function bosTemplate(bos: string, id: number): Json {
  const special = { SpecialToken: { id: bos, type_id: 0 } };
  return {
    type: 'TemplateProcessing',
    single: [special, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [special, { Sequence: { id: 'A', type_id: 0 } }, special, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { [bos]: { id: bos, ids: [id], tokens: [bos] } },
  };
}

/** GPT-2's reversible byte → printable character map, indexed by byte. */
const BYTE_TO_UNICODE: string[] = (() => {
  const map: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return map;
})();

function readJsonObject(path: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`${path}: cannot read as JSON: ${(e as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`${path}: expected a JSON object`);
  return value as Json;
}

/**
 * Reject what @huggingface/tokenizers 0.2.0 would silently get wrong. (Unknown component types it
 * rejects itself; loadTokenizer adds the path to that error.)
 */
function checkSupported(json: Json, path: string): void {
  const fail: (why: string) => never = (why) => {
    throw new Error(`${path}: ${why}, which @huggingface/tokenizers 0.2.0 does not support`);
  };
  const model = json.model as Json | undefined;
  if (!model || typeof model !== 'object') fail('there is no "model" object');
  if (!['BPE', 'WordPiece', 'Unigram'].includes(model.type as string)) fail(`the model type is ${JSON.stringify(model.type)}`);
  if (model.type === 'BPE' && model.continuing_subword_prefix) fail('the BPE model has a continuing_subword_prefix');
  if (!Array.isArray(json.added_tokens)) fail('"added_tokens" is not a list');
  for (const t of json.added_tokens as Json[]) {
    if (t.single_word) fail(`added token ${JSON.stringify(t.content)} is single_word`);
  }
  for (const key of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) {
    if (!(key in json)) fail(`"${key}" is missing`);
  }
  // Components the library implements differently from Hugging Face for these settings.
  const walk = (node: unknown, role: 'pre_tokenizer' | 'decoder') => {
    if (!node || typeof node !== 'object') return;
    const n = node as Json;
    const legacyNoPrefix = n.prepend_scheme === undefined && n.add_prefix_space === false;
    if (role === 'pre_tokenizer') {
      if (n.type === 'Split' && !['Isolated', 'Removed', undefined].includes(n.behavior as string)) fail(`a Split pre-tokenizer has behavior ${n.behavior}`);
      // The library always groups runs of punctuation, which is Hugging Face's Contiguous.
      if (n.type === 'Punctuation' && n.behavior !== 'Contiguous') fail(`a Punctuation pre-tokenizer has behavior ${n.behavior ?? 'Isolated'}`);
      if (n.type === 'Metaspace' && legacyNoPrefix) fail('a Metaspace pre-tokenizer has add_prefix_space false and no prepend_scheme');
    }
    // The library's Metaspace decoder always drops the first leading space.
    if (role === 'decoder' && n.type === 'Metaspace' && (n.prepend_scheme === 'never' || legacyNoPrefix)) {
      fail('a Metaspace decoder never prepends a space');
    }
    for (const list of [n.pretokenizers, n.decoders]) if (Array.isArray(list)) list.forEach((c) => walk(c, role));
  };
  walk(json.pre_tokenizer, 'pre_tokenizer');
  walk(json.decoder, 'decoder');
}

/** The library reads token names from the config as strings; tokenizer_config may spell them as objects. */
function libConfig(cfg: Json): Json {
  const out: Json = { ...cfg };
  for (const [k, v] of Object.entries(cfg)) {
    if (k.endsWith('_token')) out[k] = tokenName(v);
  }
  if (Array.isArray(cfg.additional_special_tokens)) out.additional_special_tokens = cfg.additional_special_tokens.map(tokenName);
  return out;
}

function tokenName(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

/** Hugging Face now defaults clean_up_tokenization_spaces to false; the library defaults it to true. */
function cleanUpSpaces(cfg: Json, cfgPath: string | undefined): boolean {
  const v = cfg.clean_up_tokenization_spaces;
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new Error(`${cfgPath}: clean_up_tokenization_spaces must be true or false`);
  return v;
}

/**
 * A special token's id from the token files: the name in tokenizer_config.json (an explicit null
 * means none), else, when the config does not mention it, a well-known name among added_tokens.
 */
function specialFromFiles(
  hf: HfTokenizer,
  cfg: Json,
  cfgPath: string | undefined,
  key: string,
  json: Json,
  guesses: string[],
): number | null {
  if (key in cfg) {
    const name = tokenName(cfg[key]);
    if (name === null) return null;
    const id = hf.token_to_id(name);
    if (id === undefined) throw new Error(`${cfgPath}: ${key} ${JSON.stringify(name)} is not in the tokenizer's vocabulary`);
    return id;
  }
  const added = new Map((json.added_tokens as Json[]).map((t) => [t.content as string, t.id as number]));
  for (const g of guesses) {
    const id = added.get(g);
    if (id !== undefined) return id;
  }
  return null;
}
