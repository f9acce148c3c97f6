/** The report's only stylesheet, inlined so the page works offline from a single file. */
export const STYLE = `
:root { --ink: #1d232b; --muted: #5b6572; --line: #d9dee4; --panel: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; word-break: break-all; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace; font-size: 13px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; }
a { color: var(--accent); }
.meta, .source, .legend-note { color: var(--muted); font-size: 13px; }
figcaption { font-weight: 600; font-size: 14px; }
.found { list-style: none; padding: 0; margin: 12px 0; display: grid; gap: 4px; }
.found li::before { content: "● "; color: #2a9d4b; }
.found li.absent::before { color: #c0c4ca; }
.missing { color: var(--muted); font-style: italic; background: var(--panel); border-left: 3px solid var(--line); padding: 8px 12px; margin: 8px 0; }
.problems { background: #fff6e5; border: 1px solid #f0c36d; border-radius: 6px; padding: 8px 16px; margin: 16px 0; }
.problems li { font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; background: #fff; min-width: 0; }
.panels { display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: flex-start; }
figure { margin: 0; }
svg.chart { display: block; max-width: 100%; height: auto; font-family: inherit; }
svg.chart text { fill: var(--ink); }
svg.chart text.muted { fill: var(--muted); }
svg.chart .grid { stroke: #eceff2; }
svg.chart .frame { stroke: #b8c0c8; }
svg.chart rect.cell:hover { stroke: #000; stroke-width: 1.5; }
.facts { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 8px 0 0; font-size: 13px; }
.facts div { display: flex; gap: 6px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); font-size: 13px; padding-bottom: 6px; }
th, td { border: 1px solid var(--line); padding: 6px 10px; vertical-align: top; }
thead th { background: var(--panel); text-align: center; }
tbody th { text-align: left; font-weight: 600; white-space: nowrap; background: var(--panel); }
table.mask td { text-align: center; min-width: 78px; }
table.mask td small { display: block; font-size: 11px; opacity: 0.85; }
table.mask td.masked { outline: 3px solid #111; outline-offset: -3px; }
table.mask td.verdict { text-align: left; white-space: nowrap; font-size: 13px; }
.ok { color: #1b7f3b; font-weight: 700; }
.bad { color: #b3261e; font-weight: 700; }
table.samples td { max-width: 420px; }
table.samples td.right { background: #eef8f0; }
table.samples td.wrong { background: #fcefee; }
table.samples .mark { float: right; font-weight: 700; margin-left: 8px; }
table.samples td.right .mark { color: #1b7f3b; }
table.samples td.wrong .mark { color: #b3261e; }
@media print { .cards { grid-template-columns: 1fr; } h2 { break-after: avoid; } .card, figure { break-inside: avoid; } }
`;
