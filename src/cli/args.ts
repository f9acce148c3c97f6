import { InvalidArgumentError } from 'commander';

/** Commander parsers that reject bad values with a message naming the flag's expectation. */
export function int(min = 0): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer ≥ ${min}, got '${v}'`);
    return n;
  };
}

export function float(min = -Infinity, max = Infinity): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected a number in [${min}, ${max}], got '${v}'`);
    }
    return n;
  };
}

/** "1,2,3" → [1, 2, 3]. */
export function idList(v: string): number[] {
  const ids = v.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new InvalidArgumentError(`expected comma-separated token ids like 1,2,3, got '${v}'`);
  }
  return ids;
}

export function choice<T extends string>(options: readonly T[]): (v: string) => T {
  return (v: string) => {
    if (!(options as readonly string[]).includes(v)) throw new InvalidArgumentError(`expected one of ${options.join(', ')}, got '${v}'`);
    return v as T;
  };
}

/** Repeatable option: each use appends. */
export function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}
