import cliProgress from 'cli-progress';

/**
 * A progress reporter for slow jobs (reading a big CSV, decoding many completions): a bar on a
 * TTY, a line every 10% otherwise, nothing for quick jobs that finish within a second.
 */
export function byteProgress(label: string, unit: 'MiB' | 'examples' = 'MiB'): { update: (done: number, total: number) => void; stop: () => void } {
  const scale = unit === 'MiB' ? mib : (n: number) => n;
  const started = Date.now();
  let bar: cliProgress.SingleBar | null = null;
  let lastTenth = -1;
  return {
    update(done, total) {
      if (Date.now() - started < 1000) return;
      if (process.stderr.isTTY) {
        if (!bar) {
          bar = new cliProgress.SingleBar({ format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | ETA {eta}s`, stream: process.stderr }, cliProgress.Presets.shades_classic);
          bar.start(scale(total), 0);
        }
        bar.update(scale(done));
        return;
      }
      const tenth = Math.floor((10 * done) / Math.max(total, 1));
      if (tenth > lastTenth) {
        lastTenth = tenth;
        process.stderr.write(`molora: ${label}: ${(10 * tenth).toFixed(0)}% (${scale(done)}/${scale(total)} ${unit})\n`);
      }
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}

function mib(bytes: number): number {
  return Math.round(bytes / 2 ** 20);
}
