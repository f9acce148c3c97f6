import type { Command } from 'commander';
import type { CausalLM } from '../base/model.js';
import { promptKey, servedFormat, type DataFormat } from '../data/record.js';
import { servePrompt, type ServedPrompt } from '../data/serve-prompt.js';
import { readTemplateArg } from '../data/template.js';
import { modelChatTemplate } from '../data/chat.js';
import { adapterDirs, type ComposeFlags } from './compose.js';

/** How generate shapes --prompt: as the adapters were trained (the default), or as these flags say. */
export interface PromptFormatFlags {
  chat?: boolean;
  system?: string;
  chatTemplate?: string;
  promptTemplate?: string;
  raw?: boolean;
}

export function addPromptFormatFlags(c: Command): Command {
  return c
    .option('--chat', "send --prompt as the user turn of the base's chat template, with the generation prompt")
    .option('--system <text>', 'with --chat: a system message first; @file.txt reads it')
    .option('--chat-template <text>', "with --chat: this Jinja template (@file.jinja reads it) instead of the base's")
    .option('--prompt-template <text>', "fill this template's one {placeholder} with --prompt, e.g. $'SMS: {text}\\nLabel:'; @file.txt reads it")
    .option('--raw', 'send --prompt as it is, even when the adapters recorded a template')
    .addHelpText(
      'after',
      '\nWithout --chat, --prompt-template or --raw, a prompt is shaped as the adapters in use were trained: the row format an adapter records in molora_data.json (a prompt template, or chat), when the adapters agree. A differing flag wins, with a warning.',
    );
}

/** The flags as a format (null: none given), @files read. */
function givenPrompt(o: PromptFormatFlags): DataFormat | null {
  if (o.raw && (o.chat || o.promptTemplate !== undefined)) throw new Error('--raw sends the prompt as it is: give it without --chat or --prompt-template');
  if (!o.chat && (o.system !== undefined || o.chatTemplate !== undefined)) throw new Error('--system and --chat-template go with --chat');
  if (o.chat && o.promptTemplate !== undefined) throw new Error('give --chat or --prompt-template, not both');
  if (o.raw) return {};
  if (o.promptTemplate !== undefined) return { promptTemplate: readTemplateArg(o.promptTemplate) };
  if (!o.chat) return null;
  const f: DataFormat = { messagesColumn: 'messages' };
  if (o.system !== undefined) f.system = readTemplateArg(o.system);
  if (o.chatTemplate !== undefined) f.chatTemplate = readTemplateArg(o.chatTemplate);
  return f;
}

/** The flags that say how a prompt is shaped, as generate takes them. */
function describePrompt(f: DataFormat): string {
  if (f.messagesColumn !== undefined) return ['--chat', f.system === undefined ? '' : `--system ${JSON.stringify(f.system)}`, f.chatTemplate === undefined ? '' : '--chat-template …'].filter(Boolean).join(' ');
  return f.promptTemplate === undefined ? '--raw' : `--prompt-template ${JSON.stringify(f.promptTemplate)}`;
}

/** --prompt shaped by the flags, or by the format the adapters in use recorded. */
export function servePromptFlags(o: ComposeFlags & PromptFormatFlags & { prompt: string }, model: CausalLM, warn = (m: string) => void process.stderr.write(`molora: ${m}\n`)): ServedPrompt {
  const format = servedFormat(givenPrompt(o), adapterDirs(o), warn, { key: promptKey, describe: describePrompt }) ?? {};
  return servePrompt(format, o.prompt, () => modelChatTemplate(model.dir, format.chatTemplate));
}
