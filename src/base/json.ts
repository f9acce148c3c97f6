import { readFileSync } from 'node:fs';

/**
 * Read a JSON file that must hold an object (a config), with errors that name the file. `fail`
 * builds the error, so each caller keeps its own error class.
 */
export function readJsonObject(path: string, fail: (message: string) => Error = (m) => new Error(m)): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw fail(`${path}: invalid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw fail(`${path}: expected a JSON object`);
  return raw as Record<string, unknown>;
}
