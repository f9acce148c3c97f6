/**
 * Hooks a caller adds and later removes (Linear.addHook, CausalLM.addInputHook): the list stays
 * private to its owner, and each add returns the function that removes that hook again.
 */
export class HookList<H> {
  private readonly list: H[] = [];

  constructor(
    /** Names the owner in errors. */
    private readonly owner: string,
  ) {}

  /** Adds h; the same hook twice would run twice, so it is refused. The remover is safe to call again. */
  add(h: H): () => void {
    if (this.list.includes(h)) throw new Error(`${this.owner}: this hook is already added`);
    this.list.push(h);
    return () => {
      const at = this.list.indexOf(h);
      if (at >= 0) this.list.splice(at, 1);
    };
  }

  /** The hooks in the order added: a frozen copy. */
  snapshot(): readonly H[] {
    return Object.freeze([...this.list]);
  }

  /** The live list, for the owner's pass to iterate (no copy per pass). */
  get items(): readonly H[] {
    return this.list;
  }
}
