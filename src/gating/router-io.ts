import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../base/atomic.js';
import { readJsonObject } from '../base/json.js';
import { openSafetensors, writeSafetensors } from '../base/safetensors.js';
import type { MoleComposition } from './composition.js';
import { checkExperts, expertRecords, GATE_CONFIG, GATE_WEIGHTS, GateFolderError, loadGate, readTensor, saveGate, type ExpertRecord } from './gate-io.js';
import { FEATURE_PARTS, featureWidth, PromptRouter, validateRouterOptions } from './prompt-router.js';

/**
 * A router folder has a gate folder's two files, so every `--gate DIR` takes either:
 * gate_config.json (format molora.prompt_router: experts with fingerprints, top_k, the feature)
 * and gate.safetensors with `router.weight` [N, F] and `router.bias` [N] (F = featureWidth), in PyTorch's Linear
 * layout (out × in), so the router is one nn.Linear over the feature for anyone reading it.
 */
const FORMAT = 'molora.prompt_router';
const VERSION = 1;
/** What the router reads, recorded so that a later molora with other features refuses old files. */
const FEATURE = FEATURE_PARTS.join('+');

interface RouterConfigJson {
  format: string;
  version: number;
  experts: ExpertRecord[];
  top_k: number;
  feature: string;
  hidden_size: number;
}

/** Write the composition's gate or router to `dir`, each file atomically. */
export async function saveRouting(composition: MoleComposition, dir: string): Promise<void> {
  const router = composition.router;
  if (!router) return saveGate(composition, dir);
  const D = composition.model.config.hidden;
  const config: RouterConfigJson = { format: FORMAT, version: VERSION, experts: await expertRecords(composition), top_k: router.options.topK, feature: FEATURE, hidden_size: D };
  const N = router.experts.length;
  const folded = await router.folded();
  const F = featureWidth(D);
  // [F, N] → PyTorch's [N, F].
  const weight = new Float32Array(N * F);
  for (let f = 0; f < F; f++) for (let i = 0; i < N; i++) weight[i * F + f] = folded.weight[f * N + i]!;
  mkdirSync(dir, { recursive: true });
  writeSafetensors(
    join(dir, GATE_WEIGHTS),
    {
      'router.weight': { dtype: 'F32', shape: [N, F], data: weight },
      'router.bias': { dtype: 'F32', shape: [N], data: folded.bias },
    },
    { format: 'pt' },
  );
  writeJsonAtomic(join(dir, GATE_CONFIG), config);
}

/** Load the gate or router in `dir` and put it in use (a router's experts are checked as a gate's). */
export async function loadRouting(composition: MoleComposition, dir: string): Promise<void> {
  const path = join(dir, GATE_CONFIG);
  if (!existsSync(path)) throw new GateFolderError(`${path}: not found (is this a gate folder?)`);
  const raw = readJsonObject(path, (m) => new GateFolderError(m));
  if (raw.format !== FORMAT) {
    await loadGate(composition, dir);
    return;
  }
  composition.useRouter(await readRouter(composition, dir, raw as unknown as RouterConfigJson));
}

async function readRouter(composition: MoleComposition, dir: string, cfg: RouterConfigJson): Promise<PromptRouter> {
  const fail = (msg: string): never => {
    throw new GateFolderError(`router ${dir}: ${msg}`);
  };
  if (cfg.version !== VERSION) fail(`version ${JSON.stringify(cfg.version)} is not supported (this molora reads ${VERSION})`);
  if (cfg.feature !== FEATURE) fail(`it reads feature ${JSON.stringify(cfg.feature)}; this molora computes ${JSON.stringify(FEATURE)}`);
  if (!Array.isArray(cfg.experts) || cfg.experts.length < 2) fail('experts must list at least 2 experts');
  const D = composition.model.config.hidden;
  if (cfg.hidden_size !== D) fail(`it was trained on a base with hidden_size ${cfg.hidden_size}, this base has ${D}`);
  await checkExperts(composition, cfg.experts, fail);
  try {
    validateRouterOptions({ topK: cfg.top_k }, cfg.experts.length);
  } catch (e) {
    fail((e as Error).message);
  }
  const weightsPath = join(dir, GATE_WEIGHTS);
  if (!existsSync(weightsPath)) fail(`${GATE_WEIGHTS} not found`);
  const file = openSafetensors(weightsPath);
  const N = cfg.experts.length;
  for (const key of file.tensors.keys()) if (key !== 'router.weight' && key !== 'router.bias') fail(`${GATE_WEIGHTS} holds unexpected tensor '${key}'`);
  const F = featureWidth(D);
  const w = readTensor(file, 'router.weight', [N, F], fail);
  const b = readTensor(file, 'router.bias', [N], fail);
  // File row i is expert cfg.experts[i]; the composition may list them in another order.
  const order = composition.experts.map((name) => cfg.experts.findIndex((e) => e.name === name));
  const wT = new Float32Array(F * N);
  order.forEach((src, i) => {
    for (let f = 0; f < F; f++) wT[f * N + i] = w[src * F + f]!;
  });
  const weight = tf.variable(tf.tensor2d(wT, [F, N]), true);
  const bias = tf.variable(tf.tensor1d(order.map((src) => b[src]!)), true);
  return new PromptRouter(composition.experts, { topK: cfg.top_k }, weight, bias);
}
