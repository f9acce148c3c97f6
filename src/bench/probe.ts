import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { loadAdapter } from '../adapters/peft.js';
import { readF32 } from '../base/host.js';
import { loadBase } from '../base/load.js';
import type { LinearHook } from '../base/linear.js';
import { evalBatches } from '../data/index.js';
import { MoleComposition } from '../gating/composition.js';
import { normalise } from '../gating/mole.js';
import { FEATURE_PARTS, featureParts, type FeaturePart } from '../gating/prompt-router.js';
import { loadLmData, toLmBatch } from '../train/lm.js';

/**
 * Can the router's input tell the tasks apart at all? A linear probe (softmax regression on
 * z-scored features) predicts each row's task from one feature, fitted on the family's router
 * file and scored on its held-out rows. The features:
 * - `mole <module> @ last−k`: what a MoLE gate reads at that linear, LN(E₀(x) ⊕ … ⊕ E_{N−1}(x)),
 *   at the k-th token before the prompt's end (k = 0 is where the answer's first token is chosen);
 * - `mole <module> prefix-mean`: the same, averaged over the prompt (MoLE 'prefix' at its end);
 * - `input <module> @ last−k`: LN(x), the linear's input (what MoLE's released code gates on);
 * - `router`: the prompt router's feature, whole and by part (prompt-router.ts).
 * Features are taken with every expert on at weight 1/N, as a fresh near-uniform gate mixes.
 */
export interface ProbeOptions {
  model: string;
  /** A family folder of `bench compose` (data/, adapters/). */
  dir: string;
  /** Modules to probe (default: the first and last adapted linear). */
  modules?: string[];
  /** Offsets before the prompt's end (default 0, 1, 2). */
  offsets?: number[];
  steps?: number;
}

export interface ProbeRow {
  feature: string;
  train: number;
  test: number;
}

export async function probeFamily(o: ProbeOptions): Promise<ProbeRow[]> {
  const model = loadBase(o.model);
  const comp = new MoleComposition(model);
  try {
    const data = (f: string) => loadLmData(model, { data: join(o.dir, 'data', f), promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task', seqLen: 32, batchSize: 16, seed: 0 }, () => {});
    const train = await data('gate.csv');
    const tasks = train.dataset.taskNames;
    for (const t of tasks) comp.addExpert(t, loadAdapter(model, join(o.dir, 'adapters', t), { name: t }));
    comp.useWeights(tasks.map(() => 1 / tasks.length));
    const modules = o.modules ?? [comp.gatedModules()[0]!, comp.gatedModules().at(-1)!];
    const offsets = o.offsets ?? [0, 1, 2];
    const collect = (store: typeof train.dataset.train) => collectFeatures(comp, store, modules, offsets);
    const test = await data('test.csv');
    if (test.dataset.taskNames.join() !== tasks.join()) throw new Error(`probe: test tasks [${test.dataset.taskNames}] differ from the router file's [${tasks}]`);
    const [fit, held] = [await collect(train.dataset.train), await collect(test.dataset.train)];
    const rows: ProbeRow[] = [];
    for (const name of fit.features.keys()) {
      const r = await probe(fit.features.get(name)!, fit.labels, held.features.get(name)!, held.labels, tasks.length, o.steps ?? 300);
      rows.push({ feature: name, ...r });
    }
    return rows;
  } finally {
    comp.dispose();
    model.dispose();
  }
}

/** Per feature name, one row per example [n][F]; and the examples' task ids. */
async function collectFeatures(comp: MoleComposition, store: Parameters<typeof evalBatches>[0], modules: string[], offsets: number[]): Promise<{ features: Map<string, number[][]>; labels: number[] }> {
  const features = new Map<string, number[][]>();
  const push = (name: string, row: number[]): void => void (features.get(name) ?? features.set(name, []).get(name)!).push(row);
  const labels: number[] = [];
  const model = comp.model;
  // What the hooks saw in a pass, kept on the device until the pass is over, then read.
  const kept = new Map<string, { gate: tf.Tensor2D; input: tf.Tensor2D }>();
  const seen = new Map<string, { gate: Float32Array; input: Float32Array; gw: number; iw: number }>();
  const unhooks = modules.map((m) => {
    const lin = model.linears().find((l) => l.name === m);
    if (!lin) throw new Error(`probe: no linear '${m}'`);
    const hook: LinearHook = {
      delta: (x, ctx) => {
        const outs = comp.experts.map((e) => comp.expert(e).layers.get(m)?.delta(x, ctx) ?? tf.zeros([x.shape[0], lin.outFeatures]));
        const g = normalise(tf.concat(outs, 1) as tf.Tensor2D);
        kept.set(m, { gate: tf.keep(g), input: tf.keep(normalise(x)) });
        return tf.zeros([x.shape[0], lin.outFeatures]);
      },
    };
    return lin.addHook(hook);
  });
  try {
    for (const b of evalBatches(store, { batchSize: 16, seqLen: 32 })) {
      const lb = toLmBatch(b);
      tf.tidy(() => void model.forward(lb));
      for (const [m, { gate, input }] of kept) {
        seen.set(m, { gate: await readF32(gate), input: await readF32(input), gw: gate.shape[1], iw: input.shape[1] });
        tf.dispose([gate, input]);
      }
      kept.clear();
      const p = tf.tidy(() => featureParts(model, lb));
      const parts = {} as Record<FeaturePart, number[][]>;
      for (const k of FEATURE_PARTS) parts[k] = (await p[k].array()) as number[][];
      tf.dispose(Object.values(p));
      for (let r = 0; r < b.batch; r++) {
        labels.push(b.taskIds[r]!);
        push(`router: ${FEATURE_PARTS.join(' ⊕ ')} (the default)`, FEATURE_PARTS.flatMap((k) => parts[k][r]!));
        for (const k of FEATURE_PARTS) push(`router part: ${k}`, parts[k][r]!);
        push('router part: final-mean ⊕ final-last', [...parts['final-mean'][r]!, ...parts['final-last'][r]!]);
        const end = r * b.seq + b.promptLens![r]! - 1;
        for (const m of modules) {
          const s = seen.get(m)!;
          const at = (a: Float32Array, w: number, i: number): number[] => Array.from(a.subarray(i * w, (i + 1) * w));
          for (const k of offsets) {
            if (end - k < r * b.seq) continue;
            push(`mole ${m} @ last-${k}`, at(s.gate, s.gw, end - k));
            push(`input ${m} @ last-${k}`, at(s.input, s.iw, end - k));
          }
          const rows = Array.from({ length: b.promptLens![r]! }, (_, i) => at(s.gate, s.gw, r * b.seq + i));
          push(`mole ${m} prefix-mean`, rows[0]!.map((_, j) => rows.reduce((a, x) => a + x[j]!, 0) / rows.length));
        }
      }
    }
  } finally {
    for (const unhook of unhooks) unhook();
  }
  return { features, labels };
}

/** Softmax regression on z-scored features (full-batch Adam); accuracy on the fit and held-out rows. */
async function probe(xTrain: number[][], yTrain: number[], xTest: number[][], yTest: number[], classes: number, steps: number): Promise<{ train: number; test: number }> {
  const [train, test] = tf.tidy(() => {
    const X = tf.tensor2d(xTrain);
    const { mean, variance } = tf.moments(X, 0);
    const z = (x: tf.Tensor2D): tf.Tensor2D => x.sub(mean).div(variance.sqrt().add(1e-6));
    const Xz = z(X);
    const Y = tf.oneHot(tf.tensor1d(yTrain, 'int32'), classes);
    const W = tf.variable(tf.zeros([Xz.shape[1], classes]));
    const b = tf.variable(tf.zeros([classes]));
    const opt = tf.train.adam(0.01);
    for (let i = 0; i < steps; i++) opt.minimize(() => tf.losses.softmaxCrossEntropy(Y, Xz.matMul(W).add(b)) as tf.Scalar);
    const predict = (x: tf.Tensor2D): tf.Tensor1D => x.matMul(W).add(b).argMax(1);
    const out = [predict(Xz), predict(z(tf.tensor2d(xTest)))];
    opt.dispose();
    W.dispose();
    b.dispose();
    return out;
  });
  const acc = async (pred: tf.Tensor1D, y: number[]): Promise<number> => {
    const p = await pred.data();
    pred.dispose();
    return y.filter((t, i) => p[i] === t).length / Math.max(y.length, 1);
  };
  return { train: await acc(train!, yTrain), test: await acc(test!, yTest) };
}
