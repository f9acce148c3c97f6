import type { BackendReport } from '../base/backend.js';
import type { Tokenizer } from '../base/tokenizer.js';
import { describeAdapter } from '../base/webgpu.js';

/** "wasm", or "webgpu on <the adapter>". */
export function backendLine(r: BackendReport): string {
  return r.adapter ? `${r.backend} on ${describeAdapter(r.adapter)}` : r.backend;
}

/** A token as readable text: its decoded string when there is a tokenizer, else #id. */
export function tokenLabel(tok: Tokenizer | null, id: number): string {
  return tok ? JSON.stringify(tok.decode([id])) : `#${id}`;
}

/** The `forward` table: each position's token, the log-prob of the actual next token, the top-5 predictions. */
export function forwardTable(ids: number[], logprobs: Float32Array[], tok: Tokenizer | null): string {
  const lines = [['pos', 'token', 'logp(next)', 'top-5 next'].join('\t')];
  ids.forEach((id, t) => {
    const lp = logprobs[t]!;
    const next = t + 1 < ids.length ? lp[ids[t + 1]!]!.toFixed(4) : '-';
    const top = Array.from(lp.keys())
      .sort((a, b) => lp[b]! - lp[a]!)
      .slice(0, 5)
      .map((j) => `${tokenLabel(tok, j)} ${lp[j]!.toFixed(3)}`)
      .join(', ');
    lines.push([t, tokenLabel(tok, id), next, top].join('\t'));
  });
  return lines.join('\n');
}
