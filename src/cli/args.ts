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

/** "0-3,6" → [0, 1, 2, 3, 6]. */
export function rangeList(v: string): number[] {
  const out: number[] = [];
  for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new InvalidArgumentError(`expected layer indices like 0-3,6, got '${v}'`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw new InvalidArgumentError(`empty range '${part}'`);
    for (let i = lo; i <= hi; i++) out.push(i);
  }
  if (out.length === 0) throw new InvalidArgumentError(`expected layer indices like 0-3,6, got '${v}'`);
  return out;
}

/** "a,b" → ['a', 'b']. */
export function nameList(v: string): string[] {
  const out = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (out.length === 0) throw new InvalidArgumentError(`expected a comma-separated list, got '${v}'`);
  return out;
}

/** Repeatable "name=dir". */
export function namedPaths(v: string, prev: [string, string][]): [string, string][] {
  const i = v.indexOf('=');
  if (i <= 0 || i === v.length - 1) throw new InvalidArgumentError(`expected NAME=DIR, got '${v}'`);
  return [...prev, [v.slice(0, i), v.slice(i + 1)]];
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
