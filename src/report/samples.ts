import { html, type Html } from './html.js';
import type { Sample } from './summary.js';

/** Generated completions as a table; with a reference, each output is marked right or wrong. */
export function samplesTable(samples: Sample[]): Html {
  const hasTask = samples.some((s) => s.task !== undefined);
  const hasRef = samples.some((s) => s.reference !== undefined);
  const rows = samples.map((s) => {
    const right = s.reference === undefined ? null : s.output === s.reference;
    return html`<tr><td>${s.setting}</td>${hasTask ? html`<td>${s.task ?? ''}</td>` : ''}<td><pre>${s.prompt}</pre></td><td${
      right === null ? '' : html` class="${right ? 'right' : 'wrong'}"`
    }><pre>${s.output}</pre>${right === null ? '' : html`<span class="mark" title="${right ? 'equals the reference' : 'differs from the reference'}">${right ? '✓' : '✗'}</span>`}</td>${
      hasRef ? html`<td><pre>${s.reference ?? ''}</pre></td>` : ''
    }</tr>`;
  });
  return html`<div class="scroll"><table class="samples"><thead><tr><th scope="col">setting</th>${hasTask ? html`<th scope="col">task</th>` : ''}<th scope="col">prompt</th><th scope="col">output</th>${
    hasRef ? html`<th scope="col">reference</th>` : ''
  }</tr></thead><tbody>${rows}</tbody></table></div>`;
}
