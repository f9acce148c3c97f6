import type { LoraAdapter } from '../adapters/adapter.js';
import { loadAdapter } from '../adapters/peft.js';
import { initBackend } from '../base/backend.js';
import { readConfig } from '../base/config.js';
import { generate, type GenerateOptions } from '../base/generate.js';
import { loadBase } from '../base/load.js';
import type { CausalLM } from '../base/model.js';
import { promptIds } from '../base/prompt.js';
import { promptKey, servedFormat } from '../data/record.js';
import { servePrompt, type ServedPrompt } from '../data/serve-prompt.js';
import { modelChatTemplate } from '../data/chat.js';
import { Rng } from '../base/rng.js';
import { MoleComposition, type RowSpec } from './composition.js';
import { loadRouting, saveRouting } from './router-io.js';
import type { GateInit, GateOptions, MoleGates } from './mole.js';

export interface LoadModelOptions {
  /** tfjs backend (see initBackend); the best available by default. */
  backend?: string;
  warn?: (msg: string) => void;
}

/** A prompt as text (needs the model's tokenizer.json) or as token ids. */
export type Prompt = string | number[];

export interface Generation {
  /** New token ids, stop token included when one was produced. */
  tokens: number[];
  /** Their text, special tokens skipped; null without a tokenizer. */
  text: string | null;
}

/**
 * Start the backend and load a base model folder, ready for experts:
 *   const m = await loadModel(dir);
 *   m.addExpert('math', mathDir).addExpert('code', codeDir);
 *   (await m.useGate(gateDir)).mask(['code']);
 *   await m.generate('2 + 2 =');
 * What reads tensors back (generation, loading or saving a gate, whose experts are checked by
 * fingerprint) is async: a GPU backend cannot read synchronously.
 */
export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<MoleModel> {
  // The hidden size decides whether wasm's products are worth threads (base/threads.ts).
  await initBackend({ backend: opts.backend, warn: opts.warn, hiddenSize: readConfig(dir).hidden });
  return new MoleModel(loadBase(dir, { warn: opts.warn }), opts.warn);
}

/**
 * A frozen base with a MoLE composition of PEFT adapter folders; chainable. Text prompts are
 * shaped as the experts were trained (the row format their folders record, when they agree: a
 * prompt template's placeholder filled with the text, or the chat template's user turn); pass
 * `raw: true` to send a prompt as it is.
 */
export class MoleModel {
  readonly composition: MoleComposition;
  /** The folder each expert was loaded from, whose molora_data.json says how its prompts look. */
  private readonly folders = new Map<string, string>();

  constructor(
    readonly base: CausalLM,
    private readonly warn?: (msg: string) => void,
  ) {
    this.composition = new MoleComposition(base);
  }

  get experts(): string[] {
    return this.composition.experts;
  }

  /** Add an expert from a PEFT adapter folder (or an adapter, which the model then owns). */
  addExpert(name: string, source: string | LoraAdapter): this {
    const adapter = this.adapter(name, source);
    try {
      this.composition.addExpert(name, adapter);
    } catch (e) {
      if (typeof source === 'string') adapter.dispose();
      throw e;
    }
    if (typeof source === 'string') this.folders.set(name, source);
    return this;
  }

  removeExpert(name: string): this {
    this.composition.removeExpert(name).dispose();
    this.folders.delete(name);
    return this;
  }

  /** Hot-swap an expert's tensors from a folder (or an adapter, left to the caller). */
  swapExpert(name: string, source: string | LoraAdapter): this {
    const adapter = this.adapter(name, source);
    try {
      this.composition.swapExpert(name, adapter);
    } finally {
      if (typeof source === 'string') adapter.dispose();
    }
    if (typeof source === 'string') this.folders.set(name, source);
    else this.folders.delete(name);
    return this;
  }

  /** A fresh gate over the experts added so far, for training (its params are in composition.params()). */
  initGate(options: Partial<GateOptions> = {}, seed = 0, init: Partial<GateInit> = {}): MoleGates {
    return this.composition.initGate(options, new Rng(seed), init);
  }

  /** Load a gate (or router) folder trained with exactly these experts. */
  async useGate(dir: string): Promise<this> {
    await loadRouting(this.composition, dir);
    return this;
  }

  async saveGate(dir: string): Promise<this> {
    await saveRouting(this.composition, dir);
    return this;
  }

  /** Mix with fixed shares (≥ 0, summing to 1) instead of a gate; null: the plain sum, every expert at full strength. */
  useWeights(weights: number[] | Record<string, number> | null): this {
    this.composition.useWeights(weights);
    return this;
  }

  /**
   * Drop these experts (as `--mask` does); the remaining gate weights or static shares renormalise.
   * Dropping all of them is refused. null clears the mask.
   */
  mask(dropped: string[] | null): this {
    if (dropped) for (const n of dropped) this.composition.expert(n);
    this.composition.mask(dropped ? this.experts.filter((n) => !dropped.includes(n)) : null);
    return this;
  }

  /** Keep only these experts, renormalised (the complement of `mask`). */
  keepExperts(names: string[]): this {
    this.composition.mask(names);
    return this;
  }

  /** One expert alone at full strength (as `--only` does): no gate, no mixing. */
  soloExpert(name: string): this {
    this.composition.solo(name);
    return this;
  }

  /** @deprecated the old name of keepExperts, kept for scripts. */
  keep(names: string[]): this {
    return this.keepExperts(names);
  }

  /** @deprecated the old name of soloExpert, kept for scripts. */
  only(name: string): this {
    return this.soloExpert(name);
  }

  /** Per-row expert masks (or weights, task labels) for the next generateBatch. */
  rows(spec: RowSpec | null): this {
    this.composition.setRows(spec);
    return this;
  }

  async generate(prompt: Prompt, opts: GenerateOptions & { raw?: boolean } = {}): Promise<Generation> {
    return (await this.generateBatch([prompt], opts))[0]!;
  }

  /**
   * One batch, one base pass per step. A per-sequence gate pools over every token of a row, so it
   * runs without the KV cache (a cached step would see only its new token).
   */
  async generateBatch(prompts: Prompt[], opts: GenerateOptions & { raw?: boolean } = {}): Promise<Generation[]> {
    const shape = opts.raw ? null : this.promptFormat();
    const ids = prompts.map((p) => promptIds(this.base, typeof p !== 'string' ? { ids: p } : shape ? shape(p) : { text: p }));
    const { tokens } = await generate(this.base, ids, { ...opts, useCache: this.kvCacheUsable ? opts.useCache : false });
    const tok = this.base.tokenizer;
    return tokens.map((t) => ({ tokens: t, text: tok ? tok.decode(t, { skipSpecial: true }) : null }));
  }

  /** How the experts' recorded row format shapes a text prompt; null when none recorded one. */
  private promptFormat(): ((text: string) => ServedPrompt) | null {
    const format = servedFormat(null, [...this.folders.values()], () => {}, { key: promptKey });
    return format && ((text) => servePrompt(format, text, () => modelChatTemplate(this.base.dir, format.chatTemplate)));
  }

  /** Whether decoding may use the KV cache: not under per-sequence and prefix gates, which pool a row's tokens while a cached step sees only its new one. */
  get kvCacheUsable(): boolean {
    const g = this.composition.gate;
    return !g || g.options.granularity === 'token';
  }

  /** @deprecated the old name of kvCacheUsable, kept for scripts. */
  get cacheSafe(): boolean {
    return this.kvCacheUsable;
  }

  dispose(): void {
    this.composition.dispose();
    this.base.dispose();
  }

  private adapter(name: string, source: string | LoraAdapter): LoraAdapter {
    return typeof source === 'string' ? loadAdapter(this.base, source, { name, warn: this.warn }) : source;
  }
}
