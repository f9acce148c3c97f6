import { InvalidArgumentError } from 'commander';
import { choiceArg, floatArg, intArg, OptionValueError, parseList, parseNamedPath } from '../base/options.js';
import { parseThreadSetting } from '../base/threads.js';

/**
 * A value parser of src/base/options.ts as commander wants it: a refused value becomes an
 * InvalidArgumentError, which commander reports naming the flag (any other error would escape as
 * a crash).
 */
export function commanderParser<T, P>(parse: (v: string, prev?: P) => T): (v: string, prev?: P) => T {
  return (v, prev) => {
    try {
      return parse(v, prev);
    } catch (e) {
      if (e instanceof OptionValueError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}

/** Commander parsers that reject bad values with a message naming the flag's expectation. */
export const int = (min = 0): ((v: string) => number) => commanderParser((v: string) => intArg(v, min));

export const float = (min = -Infinity, max = Infinity): ((v: string) => number) => commanderParser((v: string) => floatArg(v, min, max));

export const choice = <T extends string>(options: readonly T[]): ((v: string) => T) => commanderParser((v: string) => choiceArg(v, options));

/** --threads: 'auto' or a thread count (base/threads.ts). */
export const threadSetting = commanderParser(parseThreadSetting);

/** "a,b" → ['a', 'b']. */
export const nameList = commanderParser(parseList);

/** Repeatable "name=dir". */
export const namedPaths = commanderParser(parseNamedPath);

/** "1,2,3" → [1, 2, 3]. */
export function idList(v: string): number[] {
  const ids = v.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new InvalidArgumentError(`expected comma-separated token ids like 1,2,3, got '${v}'`);
  }
  return ids;
}

/** Repeatable option: each use appends. */
export function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** "a=0.5,b=1" → { a: 0.5, b: 1 }. */
export function namedNumbers(v: string): Record<string, number> {
  const out = new Map<string, number>();
  for (const part of nameList(v)) {
    const [name, w] = part.split('=');
    const n = Number(w);
    if (!name || w === undefined || !Number.isFinite(n)) throw new InvalidArgumentError(`expected NAME=WEIGHT pairs like a=0.5,b=0.5, got '${v}'`);
    if (out.has(name)) throw new InvalidArgumentError(`'${name}' is given twice in '${v}'`);
    out.set(name, n);
  }
  return Object.fromEntries(out);
}
