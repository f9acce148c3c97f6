import * as tf from '@tensorflow/tfjs';

/**
 * tfjs 4.22's backward pass keeps the gradient of every intermediate tensor until the whole
 * pass ends, and every partial gradient it has summed into another: a LoRA step on SmolLM2-135M
 * shapes held about as many bytes of gradients as of activations. This is the same walk over
 * the tape (tfjs-core's engine.gradients and tape.backpropagateGradients, same checks, same
 * order, same sums, so the same numbers), except that a gradient is freed as soon as nothing can
 * read it again: a node's output gradients once the node is done, a partial gradient once it is
 * summed. Only tensors created during the backward pass are freed, and never one still held for
 * another tensor (a gradient function may pass dy through as its input's gradient) or returned.
 *
 * Installed on the engine instance (all backends); idempotent.
 */
export function installLeanBackprop(): void {
  const engine = tf.engine() as unknown as EngineInternals;
  if (engine.gradients === leanGradients) return;
  engine.gradients = leanGradients;
}

// The parts of tfjs-core's Engine and tape this walk uses (4.22; not in its public typings).
interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  gradients: typeof leanGradients;
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(name: string | (() => T), f?: () => T): T;
  nextTensorId(): number;
}

function leanGradients(this: EngineInternals, f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients = false):
  { value: tf.Tensor; grads: tf.Tensor[] } {
  if (xs.length === 0) throw new Error('gradients() received an empty list of xs.');
  if (dy != null && dy.dtype !== 'float32') throw new Error(`dy must have 'float32' dtype, but has '${dy.dtype}'`);
  const y = this.scopedRun(() => this.startTape(), () => this.endTape(), () => this.tidy('forward', f));
  if (!(y instanceof tf.Tensor)) throw new Error('The result y returned by f() must be a tensor.');
  const tape = filterTape(this.state.activeTape!, xs, y);
  if (!allowNoGradients && tape.length === 0) {
    throw new Error('Cannot compute gradient of y=f(x) with respect to x. Make sure that the f you passed encloses all ' +
      'operations that lead from x to y.');
  }
  return this.tidy('backward', () => {
    // Tensors numbered from here on were made by this backward pass, and only they may be freed.
    const firstId = this.nextTensorId() + 1;
    const grads = new GradientMap(firstId, new Set(xs.map((x) => x.id)));
    grads.set(y, dy ?? tf.ones(y.shape));
    for (let i = tape.length - 1; i >= 0; i--) backpropNode(tape[i]!, grads, (g) => this.tidy(g));
    const out = xs.map((x) => grads.get(x)!);
    if (this.state.gradientDepth === 0) {
      // Not inside another gradient: the tape is done (as tfjs does it).
      for (const node of this.state.activeTape!) for (const t of node.saved ?? []) t.dispose();
      this.state.activeTape = null;
    }
    return { value: y, grads: out };
  }) as { value: tf.Tensor; grads: tf.Tensor[] };
}

/** One node: its input gradients from its output gradients, summed in, then the latter freed. */
function backpropNode(node: TapeNode, grads: GradientMap, tidy: (f: () => tf.Tensor) => tf.Tensor): void {
  const dys = node.outputs.map((o) => grads.get(o) ?? null);
  if (node.gradient == null) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
  const inputGradients = node.gradient(dys);
  for (const name in node.inputs) {
    if (!(name in inputGradients)) {
      throw new Error(`Cannot backprop through input ${name}. Available gradients found: ${Object.keys(inputGradients)}.`);
    }
    const dx = tidy(() => inputGradients[name]!());
    if (dx.dtype !== 'float32') {
      throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`);
    }
    const x = node.inputs[name]!;
    if (!tf.util.arraysEqual(dx.shape, x.shape)) {
      throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', ` +
        `which does not match the shape of the input '${x.shape}'`);
    }
    grads.accumulate(x, dx);
  }
  for (const o of node.outputs) grads.release(o);
}

/**
 * Gradients by tensor id, counting how many ids hold each gradient tensor, so that one is freed
 * when the last id lets go of it.
 */
class GradientMap {
  private readonly byId = new Map<number, tf.Tensor>();
  private readonly holders = new Map<tf.Tensor, number>();

  constructor(
    private readonly firstId: number,
    private readonly keep: Set<number>,
  ) {}

  get(t: tf.Tensor): tf.Tensor | undefined {
    return this.byId.get(t.id);
  }

  set(t: tf.Tensor, g: tf.Tensor): void {
    this.byId.set(t.id, g);
    this.holders.set(g, (this.holders.get(g) ?? 0) + 1);
  }

  /** Add dx into t's gradient; the partial sums summed away are freed. */
  accumulate(t: tf.Tensor, dx: tf.Tensor): void {
    const current = this.byId.get(t.id);
    if (current === undefined) {
      this.set(t, dx);
      return;
    }
    this.set(t, tf.add(current, dx));
    this.drop(current);
    this.freeIfUnheld(dx);
  }

  /** t's gradient will not be read again (its node is done): let go of it, unless it is returned. */
  release(t: tf.Tensor): void {
    if (this.keep.has(t.id)) return;
    const g = this.byId.get(t.id);
    if (g === undefined) return;
    this.byId.delete(t.id);
    this.drop(g);
  }

  private drop(g: tf.Tensor): void {
    const n = (this.holders.get(g) ?? 1) - 1;
    if (n > 0) this.holders.set(g, n);
    else {
      this.holders.delete(g);
      this.freeIfUnheld(g);
    }
  }

  private freeIfUnheld(g: tf.Tensor): void {
    if (g.id >= this.firstId && !this.holders.has(g)) g.dispose();
  }
}

/** The nodes on a path from xs to y, with inputs not computed from xs pruned (tfjs' getFilteredNodesXToY). */
function filterTape(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((input) => fromX.has(input.id))) {
      for (const o of node.outputs) fromX.add(o.id);
      nodesFromX.add(node.id);
    }
  }
  const toY = new Set([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (node.outputs.some((o) => toY.has(o.id))) {
      for (const input of Object.values(node.inputs)) toY.add(input.id);
      nodesToY.add(node.id);
    }
  }
  return tape
    .filter((node) => nodesFromX.has(node.id) && nodesToY.has(node.id))
    .map((node) => ({
      ...node,
      inputs: Object.fromEntries(Object.entries(node.inputs).filter(([, input]) => fromX.has(input.id))),
    }));
}
