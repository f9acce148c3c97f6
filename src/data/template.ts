/**
 * Prompt and completion templates: text with `{column}` placeholders, filled from each row.
 * Everything else is used verbatim, newlines included; `{{` and `}}` stand for literal braces.
 * A template is parsed once into parts (plain JSON, so it can key the token cache).
 */
import { readFileSync } from 'node:fs';

export type TemplatePart = string | { column: string };

export interface Template {
  parts: TemplatePart[];
}

/** Parses `text`; `what` names the template in errors (e.g. "--prompt-template"). */
export function parseTemplate(text: string, what: string): Template {
  const parts: TemplatePart[] = [];
  let lit = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if ((c === '{' || c === '}') && text[i + 1] === c) {
      lit += c;
      i++;
    } else if (c === '{') {
      const end = text.indexOf('}', i + 1);
      if (end < 0) throw new Error(`${what}: the { at character ${i + 1} is never closed (write {{ for a literal brace)`);
      const column = text.slice(i + 1, end);
      if (column === '') throw new Error(`${what}: empty placeholder {} at character ${i + 1}; name a column, e.g. {text}`);
      if (lit) parts.push(lit);
      parts.push({ column });
      lit = '';
      i = end;
    } else if (c === '}') {
      throw new Error(`${what}: a lone } at character ${i + 1} (write }} for a literal brace)`);
    } else lit += c;
  }
  if (lit) parts.push(lit);
  return { parts };
}

/** The template that is just one column's value (what --prompt-column means). */
export function columnTemplate(column: string): Template {
  return { parts: [{ column }] };
}

/** The columns a template names, each once, in order. */
export function templateColumns(t: Template): string[] {
  return [...new Set(t.parts.flatMap((p) => (typeof p === 'string' ? [] : [p.column])))];
}

export function renderTemplate(t: Template, value: (column: string) => string): string {
  return t.parts.map((p) => (typeof p === 'string' ? p : value(p.column))).join('');
}

/**
 * A template flag's value: `@path` reads the template from that file (its final line break, which
 * editors add, is not part of it); anything else is the template itself, verbatim.
 */
export function readTemplateArg(value: string): string {
  if (!value.startsWith('@')) return value;
  const path = value.slice(1);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read the template file ${path}: ${(e as Error).message}`);
  }
  return text.replace(/\r?\n$/, '');
}

/**
 * A note for a template holding a backslash followed by n or t: used as written (two characters),
 * which is rarely what a shell user meant by '…\n…'. Null when there is none.
 */
export function escapeNote(text: string, what: string): string | null {
  if (!/\\[nt]/.test(text)) return null;
  return `${what} contains a backslash sequence (\\n or \\t), used as written; for a real line break write the template in a file (@file.txt) or use the shell's $'…\\n…' quoting`;
}
