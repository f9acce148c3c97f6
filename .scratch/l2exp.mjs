import * as tf from '@tensorflow/tfjs';
import { initBackend } from '/work/main/dist/base/backend.js';
import { loadBase } from '/work/main/dist/base/load.js';
import { loadLmData, toLmBatch } from '/work/main/dist/train/lm.js';
import { evalBatches } from '/work/main/dist/data/index.js';
import { promptFeatures } from '/work/main/dist/gating/prompt-router.js';
await initBackend();
const fam = process.argv[2];
const dir = `/tmp/bcF/${fam}`;
const model = loadBase('/work/main/models/tiny-llama');
const load = async (f) => {
  const d = await loadLmData(model, { data: `${dir}/data/${f}`, promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task', seqLen: 32, batchSize: 16, seed: 0 }, () => {});
  const X = [], y = [];
  for (const b of evalBatches(d.dataset.train, { batchSize: 16, seqLen: 32 })) {
    const f = tf.tidy(() => promptFeatures(model, toLmBatch(b)).arraySync());
    X.push(...f); y.push(...b.taskIds);
  }
  return { X, y, names: d.dataset.taskNames };
};
const tr = await load('gate.csv'), te = await load('test.csv');
const Xt = tf.tensor2d(tr.X); const { mean, variance } = tf.moments(Xt, 0); const z = (x) => x.sub(mean).div(variance.sqrt().add(1e-3));
const Xz = z(Xt), Xe = z(tf.tensor2d(te.X));
const Y = tf.oneHot(tf.tensor1d(tr.y, 'int32'), 3);
for (const [steps, lam, sched] of [[400, 0, 'cos'], [400, 1e-3, 'cos'], [400, 1e-2, 'cos'], [400, 1e-1, 'cos'], [100, 0, 'cos'], [50, 0, 'cos']]) {
  const W = tf.variable(tf.zeros([Xz.shape[1], 3])), b = tf.variable(tf.zeros([3]));
  const opt = tf.train.adam(0.01);
  for (let i = 0; i < steps; i++) {
    opt.learningRate = sched === 'cos' ? 0.01 * 0.5 * (1 + Math.cos(Math.PI * i / steps)) : 0.01;
    opt.minimize(() => tf.losses.softmaxCrossEntropy(Y, Xz.matMul(W).add(b)).add(W.square().sum().mul(lam / 2)));
  }
  const acc = (X, y) => { const p = X.matMul(W).add(b).argMax(1).dataSync(); return y.filter((t, i) => p[i] === t).length / y.length; };
  const pe = Xe.matMul(W).add(b).argMax(1).dataSync();
  const per = [0,1,2].map(c => { const idx = te.y.map((t,i)=>t===c?i:-1).filter(i=>i>=0); return (idx.filter(i=>pe[i]===c).length/idx.length).toFixed(2); });
  console.log(fam, steps, lam, 'train', acc(Xz, tr.y).toFixed(3), 'test', acc(Xe, te.y).toFixed(3), per.join(' '));
}
