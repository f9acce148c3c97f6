/**
 * Option tables: each command's settings listed once (name, kind, default, help, aliases, PEFT
 * key), in the spirit of PEFT's dataclass field metadata and litgpt's dataclass CLI. The CLI turns
 * a table into commander flags (src/cli/options.ts), recipes check their step fields against it
 * (src/recipes/format.ts), and adapters/lora-options.ts maps its LoRA entries to the PEFT config.
 * The name is the one spelling used in code, recipes and (kebab-cased) on the command line;
 * `aliases` are older spellings still accepted in recipes and the API.
 *
 * The table types carry each option's value type, so `Values<typeof TABLE>` types what a parse
 * returns and callers need no casts.
 */

/** What a recipe's path and template fields are relative to. */
export interface JsonContext {
  resolvePath(p: string): string;
  /** A template field's text ("@file" read from that file). */
  readTemplate(v: string): string;
}

/** A value refused by an option's parser: the message says what was expected. */
export class OptionValueError extends Error {}

export interface Opt<T> {
  readonly help: string;
  /** The value's placeholder in `--flag <arg>`; an option without one is a switch (true when given). */
  readonly arg?: string;
  readonly default?: T;
  /** Must be given (on the command line and in a recipe). */
  readonly required?: boolean;
  /** The flag's name when it is not the option's name kebab-cased (`--expert` for `experts`). */
  readonly flag?: string;
  /** Accepted other spellings (recipes, API): older names, or PEFT's camelCase. */
  readonly aliases?: readonly string[];
  /** The key in PEFT's adapter_config.json, where there is one. */
  readonly peft?: string;
  /** Only on the command line ('cli': resume, progress…) or only in recipes ('recipe'). */
  readonly scope?: 'cli' | 'recipe';
  /** A flag's text → the value; `prev` is the value so far for repeatable flags. Throws OptionValueError. */
  fromText(text: string, prev: T | undefined): T;
  /** A recipe's JSON value → the value (paths resolved). Throws OptionValueError('must be …'). */
  fromJson(v: unknown, ctx: JsonContext): T;
}

export type Table = Readonly<Record<string, Opt<unknown>>>;

type ValueOf<O> = O extends Opt<infer T> ? T : never;
type RequiredKeys<T extends Table> = { [K in keyof T]: T[K] extends { required: true } ? K : never }[keyof T];

/** The values a table's parse returns: required options present, the rest optional. */
export type Values<T extends Table> = { [K in RequiredKeys<T>]: ValueOf<T[K]> } & { [K in Exclude<keyof T, RequiredKeys<T>>]?: ValueOf<T[K]> };

type Extra<T> = Partial<Pick<Opt<T>, 'arg' | 'default' | 'flag' | 'aliases' | 'peft' | 'scope'>>;

const bad = (msg: string): never => {
  throw new OptionValueError(msg);
};

/** An option that must be given. */
export function required<O extends Opt<unknown>>(o: O): O & { readonly required: true } {
  return { ...o, required: true };
}

/** The same option with other help or a default (a command whose flag says more, or defaults otherwise). */
export function withHelp<T>(o: Opt<T>, help: string, extra: Extra<T> = {}): Opt<T> {
  return { ...o, help, ...extra };
}

export function intArg(text: string, min = 0): number {
  const n = Number(text);
  return Number.isInteger(n) && n >= min ? n : bad(`expected an integer ≥ ${min}, got '${text}'`);
}

export function floatArg(text: string, min = -Infinity, max = Infinity): number {
  const n = Number(text);
  return Number.isFinite(n) && n >= min && n <= max ? n : bad(`expected a number in [${min}, ${max}], got '${text}'`);
}

export function choiceArg<C extends string>(text: string, choices: readonly C[]): C {
  const c = choices.find((x) => x === text);
  return c ?? bad(`expected one of ${choices.join(', ')}, got '${text}'`);
}

/** "a,b" → ['a', 'b']. */
export function parseList(text: string): string[] {
  const out = text.split(',').map((s) => s.trim()).filter(Boolean);
  return out.length > 0 ? out : bad(`expected a comma-separated list, got '${text}'`);
}

/** "0-3,6" → [0, 1, 2, 3, 6]. */
export function parseRanges(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part) ?? bad(`expected layer indices like 0-3,6, got '${text}'`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) bad(`empty range '${part}'`);
    for (let i = lo; i <= hi; i++) out.push(i);
  }
  return out.length > 0 ? out : bad(`expected layer indices like 0-3,6, got '${text}'`);
}

/** One more "name=dir" of a repeatable flag. */
export function parseNamedPath(text: string, prev: [string, string][] = []): [string, string][] {
  const i = text.indexOf('=');
  if (i <= 0 || i === text.length - 1) bad(`expected NAME=DIR, got '${text}'`);
  return [...prev, [text.slice(0, i), text.slice(i + 1)]];
}

const range = (min: number, max: number): string =>
  min === -Infinity && max === Infinity ? '' : max === Infinity ? ` ≥ ${min}` : ` in [${min}, ${max}]`;

export function int(help: string, min = 0, extra: Extra<number> = {}): Opt<number> {
  return {
    help, arg: 'n', ...extra,
    fromText: (t) => intArg(t, min),
    fromJson: (v) => (Number.isInteger(v) && typeof v === 'number' && v >= min ? v : bad(`must be an integer${range(min, Infinity)}`)),
  };
}

export function float(help: string, min = -Infinity, max = Infinity, extra: Extra<number> = {}): Opt<number> {
  return {
    help, arg: 'x', ...extra,
    fromText: (t) => floatArg(t, min, max),
    fromJson: (v) => (typeof v === 'number' && Number.isFinite(v) && v >= min && v <= max ? v : bad(`must be a number${range(min, max)}`)),
  };
}

export function choice<C extends string>(choices: readonly C[], help: string, extra: Extra<C> = {}): Opt<C> {
  return {
    help, arg: 'kind', ...extra,
    fromText: (t) => choiceArg(t, choices),
    fromJson: (v) => (typeof v === 'string' ? choiceArg(v, choices) : bad(`must be one of ${choices.join(', ')}`)),
  };
}

export function string(help: string, extra: Extra<string> = {}): Opt<string> {
  return { help, arg: 'name', ...extra, fromText: (t) => t, fromJson: (v) => (typeof v === 'string' ? v : bad('must be a string')) };
}

/** A switch on the command line (`--rslora`), true or false in a recipe. */
export function bool(help: string, extra: Extra<boolean> = {}): Opt<boolean> {
  return { help, ...extra, fromText: () => true, fromJson: (v) => (typeof v === 'boolean' ? v : bad('must be true or false')) };
}

export function path(help: string, extra: Extra<string> = {}): Opt<string> {
  return {
    help, arg: 'dir', ...extra,
    fromText: (t) => t,
    fromJson: (v, ctx) => (typeof v === 'string' && v !== '' ? ctx.resolvePath(v) : bad('must be a path')),
  };
}

/** Text, or "@file" to read it from a file (the CLI reads its @files after parsing, noting escapes). */
export function template(help: string, extra: Extra<string> = {}): Opt<string> {
  return {
    help, arg: 'text', ...extra,
    fromText: (t) => t,
    fromJson: (v, ctx) => (typeof v === 'string' ? ctx.readTemplate(v) : bad('must be a string (or "@file")')),
  };
}

/** Comma-separated on the command line, a list of strings in a recipe. */
export function list(help: string, extra: Extra<string[]> = {}): Opt<string[]> {
  return {
    help, arg: 'list', ...extra,
    fromText: parseList,
    fromJson: (v) => (Array.isArray(v) && v.every((s) => typeof s === 'string') ? v.map(String) : bad('must be a list of strings')),
  };
}

/** Layer indices: "0-3,6" on the command line; a list of integers (or the same string) in a recipe. */
export function ranges(help: string, extra: Extra<number[]> = {}): Opt<number[]> {
  return {
    help, arg: 'list', ...extra,
    fromText: parseRanges,
    fromJson: (v) =>
      typeof v === 'string' ? parseRanges(v) : Array.isArray(v) && v.every((n) => Number.isInteger(n) && n >= 0) ? v.map(Number) : bad('must be a list of layer indices'),
  };
}

/** A list of paths (recipes only). */
export function paths(help: string, extra: Extra<string[]> = {}): Opt<string[]> {
  return {
    help, arg: 'dirs', ...extra,
    fromText: parseList,
    fromJson: (v, ctx) => (Array.isArray(v) && v.every((s) => typeof s === 'string' && s !== '') ? v.map((s) => ctx.resolvePath(String(s))) : bad('must be a list of paths')),
  };
}

/** Named folders in order: a repeatable `--flag name=dir`, or {"name": "dir", …} in a recipe. */
export function namedPaths(help: string, extra: Extra<[string, string][]> = {}): Opt<[string, string][]> {
  return {
    help, arg: 'name=dir', ...extra,
    fromText: parseNamedPath,
    fromJson: (v, ctx) => {
      if (typeof v !== 'object' || v === null || Array.isArray(v) || Object.keys(v).length === 0) return bad('must be an object {"name": "path", …}');
      return Object.entries(v).map(([n, p]): [string, string] => (typeof p === 'string' && p !== '' ? [n, ctx.resolvePath(p)] : bad(`entry '${n}' must be a path`)));
    },
  };
}

/** An option with its own parser for both forms (e.g. a temperature: 'learn' or a number). */
export function custom<T>(help: string, parse: (v: unknown) => T, extra: Extra<T> = {}): Opt<T> {
  return { help, arg: 'x', ...extra, fromText: (t) => parse(t), fromJson: (v) => parse(v) };
}

/** An option's default, for options the table gives one. */
export function defaultOf<T>(o: Opt<T>): T {
  if (o.default === undefined) throw new Error(`option '${o.help}' has no default`);
  return o.default;
}

/** Each option's name under every spelling a recipe or API caller may use. */
function spellings(table: Table): Map<string, string> {
  const m = new Map<string, string>();
  for (const [name, o] of Object.entries(table)) {
    m.set(name, name);
    for (const a of o.aliases ?? []) m.set(a, name);
  }
  return m;
}

/**
 * Aliased keys under their option's name (other keys as they are). A setting given under two
 * spellings is refused, unless `agree` says the two values are the same: an API caller may pass
 * an old and a new spelling of one value, a recipe names each setting once.
 */
export function canonicalKeys(table: Table, raw: Readonly<Record<string, unknown>>, fail: (msg: string) => never, agree?: (a: unknown, b: unknown) => boolean): Record<string, unknown> {
  const names = spellings(table);
  const out: Record<string, unknown> = {};
  const given = new Map<string, string>();
  for (const [k, v] of Object.entries(raw)) {
    const name = names.get(k) ?? k;
    const first = given.get(name);
    if (first !== undefined) {
      if (agree?.(out[name], v)) continue;
      fail(`'${first}' and '${k}' are the same setting; give one${agree ? ` (they differ: ${JSON.stringify(out[name])} and ${JSON.stringify(v)})` : ''}`);
    }
    given.set(name, k);
    out[name] = v;
  }
  return out;
}

/**
 * Check recipe fields against a table: aliases under their names, unknown fields refused with the
 * closest name, required ones present, each value through its option's parser. `fail` gets
 * messages naming the field.
 */
export function checkFields<T extends Table>(table: T, raw: Readonly<Record<string, unknown>>, ctx: JsonContext, fail: (msg: string) => never): Values<T> {
  const fields = canonicalKeys(table, raw, fail);
  const known = Object.entries(table).filter(([, o]) => o.scope !== 'cli');
  const allowed = new Set(known.map(([k]) => k));
  const names = spellings(table);
  for (const [k, o] of known) if (o.required && fields[k] === undefined) fail(`needs "${k}"`);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (!allowed.has(k)) fail(`unknown field '${k}'${suggestion(k, [...names].filter(([, n]) => allowed.has(n)).map(([s]) => s))} (fields: ${[...allowed].join(', ')})`);
    try {
      out[k] = table[k]!.fromJson(v, ctx);
    } catch (e) {
      if (!(e instanceof OptionValueError)) throw e;
      fail(`"${k}" ${e.message}`);
    }
  }
  // Each value went through its own option's parser above, which returns that option's type.
  return out as Values<T>;
}

/** ", did you mean 'x'?" for the closest known name within a few edits, else ''. */
function suggestion(word: string, names: string[]): string {
  let best: [string, number] | null = null;
  for (const n of names) {
    const d = editDistance(word.toLowerCase(), n.toLowerCase());
    if (d <= Math.max(2, Math.floor(n.length / 3)) && (!best || d < best[1])) best = [n, d];
  }
  return best ? ` (did you mean '${best[0]}'?)` : '';
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next.push(Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)));
    row = next;
  }
  return row[b.length]!;
}
