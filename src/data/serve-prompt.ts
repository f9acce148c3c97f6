/**
 * A free-text prompt (generate, the library's generate) shaped by a row format, as training
 * shaped its prompts: a prompt template's one placeholder is filled with the text; chat formats
 * send it as the user turn, after the recorded system message, with the generation prompt.
 */
import { renderChat, type ChatMessage, type ChatTemplate } from './chat.js';
import type { DataFormat } from './record.js';
import { isChat } from './row-format.js';
import { columnTemplate, parseTemplate, renderTemplate, templateColumns } from './template.js';

/** `templated`: the text came from a chat template, which writes its own bos where the model wants one. */
export interface ServedPrompt {
  text: string;
  templated: boolean;
}

export function servePrompt(format: DataFormat, text: string, chat: () => ChatTemplate): ServedPrompt {
  if (isChat(format)) {
    const messages: ChatMessage[] = [{ role: 'user', content: text }];
    if (format.system !== undefined) messages.unshift({ role: 'system', content: format.system });
    return { text: renderChat(chat(), messages, true), templated: true };
  }
  const template =
    format.promptTemplate !== undefined ? parseTemplate(format.promptTemplate, '--prompt-template') : format.promptColumn !== undefined ? columnTemplate(format.promptColumn) : null;
  if (template === null) return { text, templated: false };
  const columns = templateColumns(template);
  if (columns.length !== 1) {
    throw new Error(
      `the prompt template names ${columns.length === 0 ? 'no column' : `${columns.length} columns (${columns.join(', ')})`}, so one prompt cannot fill it; give a --prompt-template with one placeholder, or --raw to send the prompt as it is`,
    );
  }
  return { text: renderTemplate(template, () => text), templated: false };
}
