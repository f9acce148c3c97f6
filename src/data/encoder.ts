/**
 * What the data pipeline needs from a tokenizer. Kept this small so data code and tests do not
 * depend on how tokenizers are loaded; any tokenizer with these members fits.
 */
export interface Encoder {
  /** Token ids for `text`; with `addBos`, prefixed by bos when the tokenizer has one. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  bosId: number | null;
  eosId: number | null;
  padId: number | null;
}
