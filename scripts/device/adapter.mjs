// The Dawn adapter Node would get, as one JSON line: which GPU (vendor, architecture,
// description), whether it is a software fallback, and the buffer limits that bound tensor
// sizes. Bundled into .device by build.sh; run.sh prints it before the checks so a run on the
// wrong adapter (SwiftShader, llvmpipe) shows at once. Independent of molora's webgpu backend:
// it asks Dawn directly, with the Vulkan backend molora's device runs use.
//   node adapter.js              exit 0 with an adapter, 2 with none
//   node adapter.js --load-only  only load dawn.node (build.sh's smoke test; needs no Vulkan)
import { create, globals } from 'webgpu';

const LIMITS = ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup'];

async function probe() {
  Object.assign(globalThis, globals);
  const gpu = create(['backend=vulkan']);
  if (process.argv.includes('--load-only')) return { dawn: 'loaded' };
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  const env = Object.fromEntries(['VK_ICD_FILENAMES', 'VK_DRIVER_FILES'].filter((k) => process.env[k]).map((k) => [k, process.env[k]]));
  if (!adapter) return { adapter: null, env, error: 'Dawn found no Vulkan adapter' };
  const { vendor, architecture, device, description, isFallbackAdapter } = adapter.info;
  return {
    adapter: { vendor, architecture, device, description, software: Boolean(isFallbackAdapter) },
    limits: Object.fromEntries(LIMITS.map((k) => [k, adapter.limits[k]])),
    env,
  };
}

const r = await probe().catch((err) => ({ adapter: null, error: String(err?.message ?? err) }));
process.stdout.write(JSON.stringify(r) + '\n');
// Dawn keeps the event loop alive while an instance exists.
process.exit(r.adapter === null ? 2 : 0);
