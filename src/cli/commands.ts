import { mergeFolder } from '../adapters/merge.js';
import { generate } from '../base/generate.js';
import { INIT_BASE_OPTIONS } from '../base/init-options.js';
import { initBase } from '../base/init.js';
import { inspectFolder } from '../base/inspect.js';
import { promptIds } from '../base/prompt.js';
import { logprobs } from '../base/scoring.js';
import { openComposed, type ComposeFlags } from './compose.js';
import { servePromptFlags, type PromptFormatFlags } from './serve-flags.js';
import { forwardTable } from './format.js';
import { optionValues } from './options.js';

export async function runForward(o: ComposeFlags & { ids?: number[]; text?: string; json?: boolean }): Promise<void> {
  if (!o.ids === (o.text === undefined)) throw new Error('give exactly one of --ids or --text');
  const composed = await openComposed(o);
  const model = composed.base;
  const ids = promptIds(model, o);
  const lp = (await logprobs(model, { ids: Int32Array.from(ids), batch: 1, seq: ids.length }))[0]!;
  if (o.json) {
    process.stdout.write(JSON.stringify({ ids, logprobs: lp.map((row) => Array.from(row)) }) + '\n');
  } else {
    process.stdout.write(forwardTable(ids, lp, model.tokenizer) + '\n');
  }
  composed.dispose();
}

export async function runGenerate(o: ComposeFlags & PromptFormatFlags & {
  prompt?: string;
  promptIds?: number[];
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
}): Promise<void> {
  if (!o.promptIds === (o.prompt === undefined)) throw new Error('give exactly one of --prompt or --prompt-ids');
  const composed = await openComposed(o);
  const model = composed.base;
  const served = o.prompt === undefined ? undefined : servePromptFlags({ ...o, prompt: o.prompt }, model);
  const ids = promptIds(model, { ids: o.promptIds, ...served });
  const decoder = model.tokenizer?.streamDecoder({ context: ids });
  if (served !== undefined) process.stdout.write(served.text);
  await generate(model, [ids], {
    ...o,
    useCache: composed.kvCacheUsable,
    onToken: (_row, id) => {
      if (model.config.eosIds.includes(id)) return;
      process.stdout.write(decoder ? decoder.push(id) : `${id} `);
    },
  });
  process.stdout.write((decoder?.flush() ?? '') + '\n');
  composed.dispose();
}

export async function runInitBase(flags: Record<string, unknown>): Promise<void> {
  const o = optionValues(INIT_BASE_OPTIONS, flags);
  await initBase({ ...o, tieWordEmbeddings: o.tie });
  process.stderr.write(`molora: wrote a random ${o.arch} base to ${o.out}\n`);
}

export async function runInspect(dir: string, o: { json?: boolean }): Promise<void> {
  const s = inspectFolder(dir);
  if (o.json) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return;
  }
  const lines = [
    `${s.kind}: ${s.dir}`,
    `type: ${s.type}`,
    `parameters: ${s.parameters.toLocaleString('en-US')}`,
    `dtypes: ${Object.entries(s.dtypes).map(([d, n]) => `${d} ${n.toLocaleString('en-US')}`).join(', ')}`,
    'architecture:',
    ...Object.entries(s.architecture).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`),
    `tensors (${s.tensors.length}):`,
    ...s.tensors.map((t) => `  ${t.name}  ${t.dtype}  [${t.shape.join(', ')}]`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

export async function runMerge(o: { model: string; adapter: string[]; out: string; overwrite?: boolean }): Promise<void> {
  await mergeFolder({ model: o.model, adapters: o.adapter, out: o.out, overwrite: o.overwrite });
  process.stderr.write(`molora: merged ${o.adapter.length} adapter(s) into ${o.out}\n`);
}
