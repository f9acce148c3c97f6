import { MultiBar, type SingleBar } from 'cli-progress';

/** auto: a bar on a TTY, plain lines elsewhere; off: no progress output (messages still print). */
export const PROGRESS_MODES = ['auto', 'bar', 'lines', 'off'] as const;
export type ProgressMode = (typeof PROGRESS_MODES)[number];

export interface ProgressOptions {
  /** Last step of the run. */
  total: number;
  /** Step the run starts from (non-zero on resume). */
  start: number;
  mode?: ProgressMode;
  stream?: NodeJS.WriteStream;
  /** Lines mode: print every this many steps… */
  everySteps?: number;
  /** …or once this many seconds have passed since the last line, whichever comes first. */
  everySeconds?: number;
}

export interface StepReport {
  step: number;
  loss: number;
  lr: number;
  /** Tokens this step trained on, and the seconds it took: shown as a smoothed rate. */
  tokens: number;
  seconds: number;
}

/** Weight of the newest step in the smoothed tokens/s: single steps jitter (GC, other processes). */
const RATE_SMOOTHING = 0.1;

/** Step progress on stderr: a cli-progress bar on a TTY, periodic plain lines otherwise. */
export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly mode: 'bar' | 'lines' | 'off';
  private readonly multi: MultiBar | null = null;
  private readonly bar: SingleBar | null = null;
  private readonly everySteps: number;
  private readonly everySeconds: number;
  private readonly t0 = performance.now();
  private lastStep: number;
  private lastTime = performance.now();
  private avgTokens = 0;
  private avgSeconds = 0;

  constructor(private readonly o: ProgressOptions) {
    this.stream = o.stream ?? process.stderr;
    const mode = o.mode ?? 'auto';
    this.mode = mode === 'auto' ? (this.stream.isTTY ? 'bar' : 'lines') : mode;
    this.everySteps = o.everySteps ?? Math.max(1, Math.ceil(o.total / 50));
    this.everySeconds = o.everySeconds ?? 30;
    this.lastStep = o.start;
    if (this.mode === 'bar') {
      // A MultiBar with one bar, for its log(): messages print above the bar instead of through it.
      this.multi = new MultiBar({
        stream: this.stream,
        format: '{bar} {value}/{total} | loss {loss} | lr {lr} | {tps} tok/s | ETA {eta_formatted}',
        hideCursor: true,
        noTTYOutput: true,
        etaBuffer: 50,
      });
      this.bar = this.multi.create(o.total, o.start, { loss: '-', lr: '-', tps: '-' });
    }
  }

  update(r: StepReport): void {
    if (this.mode === 'off') return;
    const a = this.avgSeconds === 0 ? 1 : RATE_SMOOTHING;
    this.avgTokens += a * (r.tokens - this.avgTokens);
    this.avgSeconds += a * (r.seconds - this.avgSeconds);
    const tps = Math.round(this.avgTokens / this.avgSeconds);
    if (this.mode === 'bar') {
      this.bar!.update(r.step, { loss: fmtLoss(r.loss), lr: r.lr.toExponential(2), tps });
      return;
    }
    const now = performance.now();
    const due = r.step - this.lastStep >= this.everySteps || (now - this.lastTime) / 1000 >= this.everySeconds;
    if (!due && r.step !== this.o.total) return;
    this.lastStep = r.step;
    this.lastTime = now;
    const perStep = (now - this.t0) / 1000 / (r.step - this.o.start);
    const eta = fmtDuration(perStep * (this.o.total - r.step));
    this.stream.write(
      `step ${r.step}/${this.o.total} | loss ${fmtLoss(r.loss)} | lr ${r.lr.toExponential(2)} | ` +
        `${tps} tok/s | ETA ${eta}\n`,
    );
  }

  /** A message line (eval results, interruption); drawn above the bar on a TTY. */
  log(msg: string): void {
    if (this.multi) {
      this.multi.log(msg + '\n');
      this.multi.update();
    } else {
      this.stream.write(msg + '\n');
    }
  }

  stop(): void {
    this.multi?.stop();
  }
}

function fmtLoss(x: number): string {
  return Number.isFinite(x) ? x.toFixed(4) : String(x);
}

export function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '-';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
