import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // tfjs keeps global backend state; one fork per file keeps files isolated.
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
  },
});
