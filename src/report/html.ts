/**
 * HTML that is safe by construction: the `html` tag escapes every interpolated value unless it
 * is already Html, so text from run folders (task names, samples, paths) can never become markup.
 */
export class Html {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

/** What an interpolation may hold; arrays are joined, null/undefined/false render nothing. */
export type Part = Html | string | number | null | undefined | false | readonly Part[];

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for element content and quoted attribute values alike. */
export function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

function render(p: Part): string {
  if (p instanceof Html) return p.value;
  if (Array.isArray(p)) return p.map(render).join('');
  if (p === null || p === undefined || p === false) return '';
  return esc(String(p));
}

export function html(strings: TemplateStringsArray, ...parts: Part[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < parts.length; i++) out += render(parts[i]!) + strings[i + 1]!;
  return new Html(out);
}

/** Markup this module wrote itself (a stylesheet); never pass data through it. */
export function trusted(markup: string): Html {
  return new Html(markup);
}
