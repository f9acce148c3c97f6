import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { defineConfig } from 'vitest/config';

/**
 * Two projects. 'wasm': every test on the default backend. 'webgpu': the checkpoint-parity suites
 * and test/webgpu/ again on WebGPU through SwiftShader, the software Vulkan driver Debian's
 * chromium ships (CI installs it with libvulkan1; README, "GPU (WebGPU)"). webgpu and its tfjs
 * backend are optional dependencies: without them the webgpu project is left out with a note,
 * except under CI, where it runs and fails saying what is missing.
 */
const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

function webgpuInstalled(): boolean {
  const require = createRequire(import.meta.url);
  try {
    require.resolve('webgpu');
    require.resolve('@tensorflow/tfjs-backend-webgpu');
    return true;
  } catch {
    return false;
  }
}

const withWebgpu = webgpuInstalled() || !!process.env.CI;
if (!withWebgpu) process.stderr.write('vitest: the webgpu tests are left out: the optional webgpu package is not installed (outside CI)\n');

export default defineConfig({
  test: {
    testTimeout: 120_000,
    // Two files run at once on CI's two cores: wasm's threaded build would oversubscribe them
    // (base/threads.ts), so every test, and every CLI it spawns, runs one thread unless it asks
    // (or the suite is run with MOLORA_THREADS set, to try the threaded build on everything).
    env: { MOLORA_THREADS: process.env.MOLORA_THREADS ?? '1' },
    hookTimeout: 120_000,
    // tfjs keeps global backend state; one fork per file keeps files isolated.
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: 'wasm', include: ['test/**/*.test.ts'], exclude: ['test/webgpu/**'] },
      },
      ...(withWebgpu
        ? [{
            extends: true,
            test: {
              name: 'webgpu',
              include: ['test/parity.test.ts', 'test/moe-parity.test.ts', 'test/webgpu/**/*.test.ts'],
              env: {
                MOLORA_BACKEND: 'webgpu',
                VK_ICD_FILENAMES: SWIFTSHADER_ICD,
                // Unset, it makes Dawn's Wayland probe print an error line per process.
                XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? tmpdir(),
              },
            },
          }]
        : []),
    ],
  },
});
