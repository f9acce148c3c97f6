import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

// The npm package as a user gets it: `npm pack`, installed into an empty folder, run with npx.
// Needs dist/ (`npm test` builds it first). The dependencies come from the npm cache when
// `npm ci` has filled it, else from the registry.

const ROOT = join(import.meta.dirname, '..');
const tmp = tempDir('molora-pack-');
afterAll(tmp.cleanup);
const app = join(tmp.dir, 'app');
const pkg = join(app, 'node_modules', 'molora');
const MODEL_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];
let packed: { filename: string; size: number; files: { path: string }[] };

function sh(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}

beforeAll(() => {
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error(`${join(ROOT, 'dist')} is missing: run \`npm run build\` first (\`npm test\` does)`);
  packed = JSON.parse(sh('npm', ['pack', '--json', '--pack-destination', tmp.dir], ROOT))[0];
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), '{ "name": "molora-pack-check", "private": true }\n');
  sh('npm', ['install', join(tmp.dir, packed.filename), '--prefer-offline', '--no-audit', '--no-fund'], app);
}, 180_000);

describe('npm package', () => {
  it('ships dist, the recipes and their data, and the shipped base; no sources or test fixtures', () => {
    const paths = packed.files.map((f) => f.path);
    for (const f of MODEL_FILES) expect(paths, f).toContain(`models/tiny-llama/${f}`);
    for (const f of ['dist/cli/main.js', 'dist/index.js', 'dist/index.d.ts', 'recipes/quickstart.json', 'recipes/moe-upcycle.json']) expect(paths).toContain(f);
    expect(paths.filter((p) => /^(src|test|scripts|runs)\//.test(p) || p.includes('fixtures'))).toEqual([]);
    // The base is about 2 MB; anything much larger means something unintended went in.
    expect(packed.size).toBeLessThan(4 * 2 ** 20);
  });

  it('installs into an empty folder with the quickstart\'s base, tokenizer and recipe', () => {
    for (const f of MODEL_FILES) expect(existsSync(join(pkg, 'models', 'tiny-llama', f)), f).toBe(true);
    expect(existsSync(join(pkg, 'recipes', 'quickstart.json'))).toBe(true);
    expect(readFileSync(join(pkg, 'models', 'tiny-llama', 'model.safetensors'))).toEqual(readFileSync(join(ROOT, 'models', 'tiny-llama', 'model.safetensors')));
  });

  it('`npx molora --help` runs from the empty folder and lists quickstart and run; --version is the package\'s', () => {
    const help = sh('npx', ['--no', '--', 'molora', '--help'], app);
    expect(help).toMatch(/^Usage: molora /);
    expect(help).toMatch(/\n\s+quickstart /);
    expect(help).toMatch(/\n\s+run /);
    const { version } = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8'));
    expect(sh('npx', ['--no', '--', 'molora', '--version'], app)).toBe(`${version}\n`);
  });

  it('every installed recipe\'s inputs resolve inside the installed package (quickstart: models/tiny-llama)', () => {
    const recipes = readdirSync(join(pkg, 'recipes')).filter((f) => f.endsWith('.json'));
    expect(recipes).toContain('quickstart.json');
    for (const r of recipes) {
      const inputs = recipeInputs(join(pkg, 'recipes', r));
      expect(inputs.length, r).toBeGreaterThan(0);
      for (const p of inputs) {
        expect(existsSync(p), `${r}: ${p}`).toBe(true);
        expect(realpathSync(p).startsWith(realpathSync(pkg) + sep), `${r}: ${p}`).toBe(true);
      }
    }
    expect(recipeInputs(join(pkg, 'recipes', 'quickstart.json')).map((p) => realpathSync(p))).toContain(realpathSync(join(pkg, 'models', 'tiny-llama')));
  });

  it('`npx molora run` scores the installed base from the empty folder', () => {
    writeFileSync(join(app, 'test.csv'), 'prompt,completion,task\ncopy: ab =, ab,copy\nfirst: cat =, c,first\n');
    const steps = [{ type: 'eval', out: 'summary.json', model: 'node_modules/molora/models/tiny-llama', data: 'test.csv', settings: ['base'], promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task', seqLen: 32 }];
    writeFileSync(join(app, 'base.json'), JSON.stringify({ name: 'base', steps }));
    sh('npx', ['--no', '--', 'molora', 'run', 'base.json', '--out', 'run', '--progress', 'off'], app);
    const summary = JSON.parse(readFileSync(join(app, 'run', 'summary.json'), 'utf8'));
    expect(Object.keys(summary.settings)).toEqual(['base']);
    expect(summary.settings.base.overall.n).toBe(2);
    expect(summary.settings.base.overall.loss).toBeGreaterThan(0);
  });
});

/** The input paths (outside the run folder) of a recipe, as the installed package's own loadRecipe resolves them. */
function recipeInputs(file: string): string[] {
  const script = `import { isAbsolute } from 'node:path';
import { loadRecipe } from 'molora';
const r = loadRecipe(${JSON.stringify(file)}, ${JSON.stringify(join(tmp.dir, 'run'))});
const paths = r.steps.flatMap((s) => Object.values(s.fields).flat(2)).filter((v) => typeof v === 'string' && isAbsolute(v) && !v.startsWith(r.run));
console.log(JSON.stringify([...new Set(paths)]));`;
  return JSON.parse(sh('node', ['--input-type=module', '-e', script], app));
}
