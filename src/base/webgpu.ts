import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';

/**
 * The WebGPU backend: Dawn (the `webgpu` package) under @tensorflow/tfjs-backend-webgpu, both
 * optional dependencies. WEBGPU-NOTES.md has what was measured. molora creates the device itself,
 * so that it knows the adapter (vendor, software or not) and asks for the adapter's largest
 * buffers rather than WebGPU's defaults (128 MiB bindings: a 49,152 × 576 f32 embedding is 113 MB).
 */

/** The adapter tfjs runs on, as logs and `--json` outputs report it. */
export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A CPU implementation (SwiftShader, lavapipe, llvmpipe, WARP): correct, but 0.2–2 GFLOP/s. */
  software: boolean;
  limits: {
    /** Largest buffer one kernel may bind, bytes. */
    maxStorageBufferBindingSize: number;
    /** Largest buffer the device may allocate, bytes. */
    maxBufferSize: number;
  };
  /** The memory runs must fit in, and where the figure comes from; null when nothing says (WebGPU itself does not). */
  memory: { bytes: number; source: string } | null;
}

/** Loads an optional package by name (tests inject one that fails, to play "not installed"). */
export type Importer = (specifier: string) => Promise<unknown>;

export const defaultImporter: Importer = (specifier) => import(specifier);

/** Set to the GPU's memory in bytes where molora cannot find it (WebGPU does not report it). */
export const GPU_MEMORY_ENV = 'MOLORA_GPU_MEMORY_BYTES';

// Minimal shapes of the WebGPU objects used here: the `webgpu` package's own types come from
// @webgpu/types, which an install without optional dependencies lacks.
interface GpuLimits {
  maxStorageBufferBindingSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeWorkgroupsPerDimension: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeInvocationsPerWorkgroup: number;
}
interface GpuAdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter?: boolean;
}
interface GpuDevice {
  limits: GpuLimits;
  lost: Promise<{ reason: string; message: string }>;
  destroy(): void;
  addEventListener(type: 'uncapturederror', f: (e: { error: { message: string } }) => void): void;
}
interface GpuAdapter {
  info: GpuAdapterInfo;
  limits: GpuLimits;
  features: Set<string>;
  requestDevice(desc: { requiredLimits: Partial<GpuLimits>; requiredFeatures: string[] }): Promise<GpuDevice>;
}
interface Gpu {
  requestAdapter(opts: { powerPreference: 'high-performance' }): Promise<GpuAdapter | null>;
}
interface DawnModule {
  create(flags: string[]): Gpu;
  globals: Record<string, unknown>;
}
interface TfWebGpuModule {
  WebGPUBackend: new (device: GpuDevice, info: GpuAdapterInfo) => tf.KernelBackend;
}

/** Why webgpu did not start; `skip` marks what the automatic order passes over quietly (no GPU, a software adapter). */
export class WebGpuUnavailable extends Error {
  constructor(message: string, readonly skip: boolean) {
    super(message);
  }
}

export const INSTALL_HINT = 'install webgpu and @tensorflow/tfjs-backend-webgpu (npm install webgpu @tensorflow/tfjs-backend-webgpu)';

let running: { device: GpuDevice; adapter: AdapterSummary } | null = null;
let deviceError: string | null = null;

/**
 * Start tfjs on WebGPU and return the adapter. `hardwareOnly` (the automatic order) refuses a
 * software adapter and, on Linux, does not even start Dawn without a GPU device node. Throws
 * WebGpuUnavailable saying why: package missing, no adapter (with the Vulkan setup seen), ….
 */
export interface StartOptions {
  hardwareOnly: boolean;
  warn: (m: string) => void;
  importer?: Importer;
  /** Whether the machine has a GPU device node (Linux); tests inject one. */
  gpuDevicePresent?: () => boolean;
}

export async function startWebGpu(opts: StartOptions): Promise<AdapterSummary> {
  if (running) {
    if (!(await tf.setBackend('webgpu'))) throw new WebGpuUnavailable('the webgpu backend failed to start again', false);
    return running.adapter;
  }
  const importer = opts.importer ?? defaultImporter;
  if (opts.hardwareOnly && process.platform === 'linux' && !(opts.gpuDevicePresent ?? gpuDeviceNodes)()) {
    throw new WebGpuUnavailable('no GPU device node (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg)', true);
  }
  const dawn = (await importer('webgpu').catch(() => null)) as DawnModule | null;
  if (!dawn?.create) throw new WebGpuUnavailable(`the webgpu package is not installed: ${INSTALL_HINT}`, true);
  // Vulkan on Linux (Dawn's OpenGL path is compatibility mode only); Metal / D3D12 elsewhere.
  const gpu = dawn.create(process.platform === 'linux' ? ['backend=vulkan'] : []);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new WebGpuUnavailable(`no WebGPU adapter: ${vulkanDiagnosis()}`, opts.hardwareOnly);
  const summary = summarise(adapter);
  if (opts.hardwareOnly && summary.software) {
    throw new WebGpuUnavailable(`the only adapter is a software one (${summary.description || summary.architecture})`, true);
  }
  const device = await adapter.requestDevice({ requiredLimits: maxLimits(adapter.limits), requiredFeatures: [...adapter.features].filter((f) => f === 'timestamp-query') });
  summary.limits = { maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize, maxBufferSize: device.limits.maxBufferSize };
  summary.memory = gpuMemory(summary);
  // GPU errors arrive asynchronously, outside any call: say so at once and fail the next read.
  device.addEventListener('uncapturederror', (e) => {
    deviceError ??= e.error.message;
    opts.warn(`WebGPU error: ${e.error.message}`);
  });
  void device.lost.then((l) => {
    if (running?.device === device) {
      deviceError ??= `device lost (${l.reason}): ${l.message}`;
      opts.warn(`WebGPU ${deviceError}`);
    }
  });
  await registerTfBackend(dawn, gpu, device, adapter.info, importer);
  running = { device, adapter: summary };
  process.once('beforeExit', releaseWebGpu);
  return summary;
}

/** The tfjs backend over our device; navigator.gpu must exist before the package loads (it registers only then). */
async function registerTfBackend(dawn: DawnModule, gpu: Gpu, device: GpuDevice, info: GpuAdapterInfo, importer: Importer): Promise<void> {
  for (const [k, v] of Object.entries(dawn.globals)) if (!(k in globalThis)) Object.assign(globalThis, { [k]: v });
  const nav = (globalThis as { navigator?: object }).navigator;
  Object.defineProperty(globalThis, 'navigator', { value: { ...nav, gpu }, configurable: true, writable: true });
  const mod = (await importer('@tensorflow/tfjs-backend-webgpu').catch(() => null)) as TfWebGpuModule | null;
  if (!mod?.WebGPUBackend) {
    device.destroy();
    throw new WebGpuUnavailable(`@tensorflow/tfjs-backend-webgpu is not installed: ${INSTALL_HINT}`, true);
  }
  // The package registered a factory that makes its own device with its own limits: use ours.
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new mod.WebGPUBackend(device, info));
  // Otherwise ops on tensors under 1000 elements run on the CPU, and their results are read back.
  tf.env().set('WEBGPU_CPU_FORWARD', false);
  if (!(await tf.setBackend('webgpu'))) throw new WebGpuUnavailable('tfjs could not start its webgpu backend on the device', false);
}

/** The running adapter, or null off webgpu. */
export function webGpuAdapter(): AdapterSummary | null {
  return running && tf.getBackend() === 'webgpu' ? running.adapter : null;
}

/** Throw the first asynchronous GPU error (validation, out of memory, device lost) since the device started. */
export function assertGpuHealthy(): void {
  if (deviceError) throw new Error(`the WebGPU device failed: ${deviceError}`);
}

/**
 * Free the device and drop navigator.gpu, which otherwise can keep Node from exiting. Runs on
 * beforeExit; the CLI calls it when a command ends.
 */
export function releaseWebGpu(): void {
  if (!running) return;
  const { device } = running;
  running = null;
  if (tf.findBackend('webgpu')) tf.removeBackend('webgpu');
  device.destroy();
  const nav = (globalThis as { navigator?: { gpu?: unknown } }).navigator;
  if (nav) delete nav.gpu;
}

/** The adapter's own maxima for what tfjs binds and allocates (WebGPU grants only defaults unless asked). */
function maxLimits(l: GpuLimits): Partial<GpuLimits> {
  return {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
  };
}

const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|software|microsoft basic render/i;

function summarise(a: GpuAdapter): AdapterSummary {
  const i = a.info;
  const text = [i.vendor, i.architecture, i.device, i.description].join(' ');
  return {
    vendor: i.vendor ?? '',
    architecture: i.architecture ?? '',
    device: i.device ?? '',
    description: i.description ?? '',
    software: i.isFallbackAdapter === true || SOFTWARE.test(text),
    limits: { maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize, maxBufferSize: a.limits.maxBufferSize },
    memory: null,
  };
}

/**
 * The adapter's memory: MOLORA_GPU_MEMORY_BYTES; else system memory for a software adapter (it
 * runs on the CPU); else nvidia-smi for NVIDIA, sysfs for AMD; else null (unknown). With several
 * GPUs of a vendor the smallest counts, since WebGPU does not say which one it opened.
 */
export function gpuMemory(a: Pick<AdapterSummary, 'vendor' | 'software'>): AdapterSummary['memory'] {
  const raw = process.env[GPU_MEMORY_ENV];
  if (raw !== undefined && raw !== '') {
    const v = Number(raw);
    if (!Number.isInteger(v) || v <= 0) throw new Error(`${GPU_MEMORY_ENV} must be a whole number of bytes, got '${raw}'`);
    return { bytes: v, source: GPU_MEMORY_ENV };
  }
  if (a.software) return { bytes: totalmem(), source: 'system memory (a software adapter runs on the CPU)' };
  const sizes = /nvidia/i.test(a.vendor) ? nvidiaMemory() : /amd|ati/i.test(a.vendor) ? amdMemory() : [];
  return sizes.length ? { bytes: Math.min(...sizes), source: /nvidia/i.test(a.vendor) ? 'nvidia-smi' : '/sys/class/drm' } : null;
}

function nvidiaMemory(): number[] {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split('\n').map((l) => Number(l.trim()) * 2 ** 20).filter((b) => b > 0);
  } catch {
    return [];
  }
}

function amdMemory(): number[] {
  const dir = '/sys/class/drm';
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((card) => {
    const f = join(dir, card, 'device', 'mem_info_vram_total');
    return /^card\d+$/.test(card) && existsSync(f) ? [Number(readFileSync(f, 'utf8').trim())] : [];
  }).filter((b) => b > 0);
}

/** One line for logs: "NVIDIA hopper (NVIDIA H100), hardware, bindings up to 2 GiB". */
export function describeAdapter(a: AdapterSummary): string {
  const name = [a.vendor, a.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  const GiB = 2 ** 30;
  const gib = (b: number) => (b >= GiB ? `${(b / GiB).toFixed(1)} GiB` : `${(b / 2 ** 20).toFixed(0)} MiB`);
  const memory = a.memory ? `${gib(a.memory.bytes)} of memory (${a.memory.source})` : `memory unknown (set ${GPU_MEMORY_ENV} for the fit checks)`;
  return `${name}${a.description ? ` (${a.description})` : ''}, ${a.software ? 'software' : 'hardware'} adapter, ` +
    `bindings up to ${gib(a.limits.maxStorageBufferBindingSize)}, buffers up to ${gib(a.limits.maxBufferSize)}, ${memory}`;
}

function gpuDeviceNodes(): boolean {
  const list = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);
  // WSL exposes its GPU as /dev/dxg.
  return list('/dev/dri').some((f) => f.startsWith('renderD')) || list('/dev').some((f) => /^nvidia\d|^dxg$/.test(f));
}

const LIB_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/lib/x86_64-linux-gnu', '/lib64'];
const ICD_DIRS = ['/etc/vulkan/icd.d', '/usr/share/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];

/** What the Vulkan loader had to work with, for the "no adapter" error (Dawn's own reasons go to stderr). */
export function vulkanDiagnosis(): string {
  if (process.platform !== 'linux') return 'Dawn found no Metal/D3D12 adapter (its messages above say why)';
  const parts: string[] = [];
  const dirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), ...LIB_DIRS];
  if (!dirs.some((d) => existsSync(join(d, 'libvulkan.so.1')))) parts.push('libvulkan.so.1 is missing (install libvulkan1)');
  const forced = process.env.VK_ICD_FILENAMES ?? process.env.VK_DRIVER_FILES;
  if (forced) {
    const name = process.env.VK_ICD_FILENAMES ? 'VK_ICD_FILENAMES' : 'VK_DRIVER_FILES';
    const files = forced.split(':').filter(Boolean);
    const missing = files.filter((f) => !existsSync(f));
    parts.push(`${name}=${forced}${missing.length ? ` (missing: ${missing.join(', ')})` : ''}`);
  } else {
    const icds = ICD_DIRS.flatMap((d) => (existsSync(d) ? readdirSync(d).map((f) => join(d, f)) : []));
    parts.push(icds.length ? `Vulkan drivers found: ${icds.join(', ')}` : 'no Vulkan driver manifests in ' + ICD_DIRS.join(', '));
  }
  parts.push("Dawn's messages above say which drivers it rejected; for a software adapter set " +
    'VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json (Debian\'s chromium)');
  return parts.join('; ');
}
