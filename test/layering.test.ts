import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

// The layering ARCHITECTURE.md describes, read from the import graph of src/. A folder may import
// its own files and the folders before it, never one after it; src/index.ts (the package entry)
// sits just below src/cli, and nothing but src/cli imports src/cli.
const ORDER = ['base', 'data', 'train', 'moe', 'adapters', 'gating', 'report', 'recipes', 'bench', 'index.ts', 'cli'];
// MoLE gates and routers hook adapted linears; the sparse MoE FFN (router, dispatch, losses,
// upcycling, checkpoint layouts) is src/moe's, and src/gating neither holds nor needs it.
const APART: [string, string, string][] = [['gating', 'moe', 'src/gating routes over LoRA experts; the sparse MoE FFN lives in src/moe']];

const ROOT = resolve(import.meta.dirname, '..');

type Graph = Map<string, string[]>;

/** Every .ts file under src/ → the src files it imports (import, import type, export … from, import()). */
function importGraph(): Graph {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts')) files.push(relative(ROOT, p));
    }
  };
  walk(join(ROOT, 'src'));
  const graph: Graph = new Map();
  for (const file of files.sort()) {
    const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
    const deps = info.importedFiles.filter((f) => f.fileName.startsWith('.')).map((f) => {
      const target = relative(ROOT, resolve(ROOT, dirname(file), f.fileName)).replace(/\.js$/, '.ts');
      if (!existsSync(join(ROOT, target))) throw new Error(`${file} imports ${f.fileName}, which is no file under src/`);
      return target;
    });
    graph.set(file, [...new Set(deps)]);
  }
  return graph;
}

/** src/base/x.ts → 'base'; src/index.ts → 'index.ts'. */
function layerOf(file: string): string {
  return file.split('/')[1]!;
}

/** One line per import that breaks the order or an APART rule, naming the importing file and the import. */
function layeringViolations(graph: Graph, order = ORDER, apart = APART): string[] {
  const out: string[] = [];
  for (const file of graph.keys()) {
    if (!order.includes(layerOf(file))) out.push(`${file}: src/${layerOf(file)} has no place in the layer order (${order.join(' < ')}); add it there and to ARCHITECTURE.md`);
  }
  for (const [file, deps] of graph) {
    const from = layerOf(file);
    for (const dep of deps) {
      const to = layerOf(dep);
      if (to === 'cli' && from !== 'cli') out.push(`${file} imports ${dep}: only src/cli imports src/cli`);
      else if (order.indexOf(to) > order.indexOf(from)) out.push(`${file} imports ${dep}: src/${from} is below src/${to} (${order.join(' < ')})`);
      for (const [a, b, why] of apart) if (from === a && to === b) out.push(`${file} imports ${dep}: ${why}`);
    }
  }
  return out;
}

/** Each import cycle among files, as `a → b → … → a` (Tarjan's strongly connected components). */
function importCycles(graph: Graph): string[] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[] = [];
  const visit = (v: string): void => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || graph.get(v)?.includes(v)) cycles.push(cyclePath(graph, new Set(scc), v));
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

/** One concrete cycle through `start` inside its component, for the failure message. */
function cyclePath(graph: Graph, scc: Set<string>, start: string): string {
  const path = [start];
  const seen = new Set([start]);
  const step = (v: string): boolean => {
    for (const w of graph.get(v) ?? []) {
      if (w === start) return true;
      if (!scc.has(w) || seen.has(w)) continue;
      seen.add(w);
      path.push(w);
      if (step(w)) return true;
      path.pop();
    }
    return false;
  };
  step(start);
  return [...path, start].join(' → ');
}

describe('layering of src/', () => {
  const graph = importGraph();

  it('reads the whole tree: every folder of src/ and the files that import across folders', () => {
    const layers = new Set([...graph.keys()].map(layerOf));
    expect([...layers].sort()).toEqual([...ORDER].sort());
    expect(graph.get('src/base/llama.ts')).toContain('src/base/sparse-ffn.ts');
    expect(graph.get('src/index.ts')).toContain('src/moe/register.ts');
  });

  it('has no upward import, nothing below src/cli imports it, and src/gating does not import src/moe', () => {
    expect(layeringViolations(graph)).toEqual([]);
  });

  it('has no import cycle between files (import type included)', () => {
    expect(importCycles(graph)).toEqual([]);
  });

  it('keeps the sparse MoE FFN out of src/gating: no file there implements a block FFN', () => {
    const ffns = [...graph.keys()].filter((f) => layerOf(f) === 'gating' && /\bimplements\s+FFN\b/.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(ffns).toEqual([]);
  });

  it('its checks name the offending import (on a made-up graph)', () => {
    const bad: Graph = new Map([
      ['src/base/a.ts', ['src/moe/b.ts']],
      ['src/moe/b.ts', ['src/base/a.ts']],
      ['src/recipes/c.ts', ['src/cli/d.ts']],
      ['src/cli/d.ts', []],
      ['src/gating/e.ts', ['src/moe/b.ts']],
      ['src/serve/f.ts', []],
      ['src/train/g.ts', ['src/train/h.ts']],
      ['src/train/h.ts', ['src/train/g.ts']],
    ]);
    expect(layeringViolations(bad)).toEqual([
      'src/serve/f.ts: src/serve has no place in the layer order (base < data < train < moe < adapters < gating < report < recipes < bench < index.ts < cli); add it there and to ARCHITECTURE.md',
      'src/base/a.ts imports src/moe/b.ts: src/base is below src/moe (base < data < train < moe < adapters < gating < report < recipes < bench < index.ts < cli)',
      'src/recipes/c.ts imports src/cli/d.ts: only src/cli imports src/cli',
      'src/gating/e.ts imports src/moe/b.ts: src/gating routes over LoRA experts; the sparse MoE FFN lives in src/moe',
    ]);
    expect(importCycles(bad).sort()).toEqual(['src/base/a.ts → src/moe/b.ts → src/base/a.ts', 'src/train/g.ts → src/train/h.ts → src/train/g.ts']);
  });
});
