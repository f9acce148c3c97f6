import type { CausalLM } from './model.js';

/**
 * Token ids for a prompt given as ids or text. Text needs the folder's tokenizer.json; Llama-family
 * prompts get the bos token, as their Hugging Face tokenizers add it by default, except text a chat
 * template wrote (`templated`), which carries its own.
 */
export function promptIds(model: CausalLM, input: { ids?: number[]; text?: string; templated?: boolean }): number[] {
  const V = model.config.vocabSize;
  if (input.ids) {
    const bad = input.ids.find((id) => id >= V);
    if (bad !== undefined) throw new Error(`token id ${bad} is outside the vocabulary (size ${V})`);
    return input.ids;
  }
  if (input.text === undefined) throw new Error('give the input as token ids or as text');
  if (!model.tokenizer) throw new Error(`${model.dir ?? 'this model'} has no tokenizer.json: pass token ids instead of text`);
  const addBos = model.config.arch === 'llama' && model.tokenizer.bosId !== null && !input.templated;
  const ids = model.tokenizer.encode(input.text, { addBos });
  if (ids.length === 0) throw new Error('the text encodes to no tokens');
  return ids;
}
