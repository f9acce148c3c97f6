import cliProgress from 'cli-progress';

/**
 * A byte-count progress reporter for slow reads (tokenizing a big CSV): a bar on a TTY, a line
 * every 10% otherwise, nothing for quick jobs that finish within a second.
 */
export function byteProgress(label: string): { update: (done: number, total: number) => void; stop: () => void } {
  const started = Date.now();
  let bar: cliProgress.SingleBar | null = null;
  let lastTenth = -1;
  return {
    update(done, total) {
      if (Date.now() - started < 1000) return;
      if (process.stderr.isTTY) {
        if (!bar) {
          bar = new cliProgress.SingleBar({ format: `${label} [{bar}] {percentage}% | {value}/{total} MiB | ETA {eta}s`, stream: process.stderr }, cliProgress.Presets.shades_classic);
          bar.start(mib(total), 0);
        }
        bar.update(mib(done));
        return;
      }
      const tenth = Math.floor((10 * done) / Math.max(total, 1));
      if (tenth > lastTenth) {
        lastTenth = tenth;
        process.stderr.write(`molora: ${label}: ${(10 * tenth).toFixed(0)}% (${mib(done)}/${mib(total)} MiB)\n`);
      }
    },
    stop() {
      bar?.stop();
    },
  };
}

function mib(bytes: number): number {
  return Math.round(bytes / 2 ** 20);
}
