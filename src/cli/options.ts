import { Option, type Command } from 'commander';
import type { Opt, Table, Values } from '../base/options.js';
import { commanderParser } from './args.js';

const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const camel = (flag: string): string => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** The flag's name without dashes: the option's own, kebab-cased, unless the table says otherwise. */
const flagName = (name: string, o: Opt<unknown>): string => o.flag ?? kebab(name);

/** A table's options (those not for recipes only) as the command's flags, in table order. */
export function addOptions(c: Command, table: Table): Command {
  for (const [name, o] of Object.entries(table)) {
    if (o.scope === 'recipe') continue;
    const flag = new Option(`--${flagName(name, o)}${o.arg ? ` <${o.arg}>` : ''}`, o.help);
    if (o.arg) flag.argParser(commanderParser((text: string, prev: unknown) => o.fromText(text, prev)));
    if (o.default !== undefined) flag.default(o.default);
    if (o.required) flag.makeOptionMandatory();
    c.addOption(flag);
  }
  return c;
}

/** Commander's parsed flags under the table's names (a flag named otherwise, like --expert, under its option). */
export function optionValues<T extends Table>(table: T, opts: Readonly<Record<string, unknown>>): Values<T> {
  const out: Record<string, unknown> = {};
  for (const [name, o] of Object.entries(table)) {
    const v = opts[camel(flagName(name, o))];
    if (v !== undefined) out[name] = v;
  }
  // Commander ran each value through its option's parser (addOptions), so each has that option's type.
  return out as Values<T>;
}
