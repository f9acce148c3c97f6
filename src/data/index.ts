// The data pipeline's public API: CSV → token stores → batches.
export { loadDataset, type DataRole, type Dataset, type DatasetStats, type LoadDatasetOptions } from './dataset.js';
export { BatchSampler, evalBatches, type SamplerOptions, type SamplerState } from './sampler.js';
export { fitPrompts, type Batch } from './layout.js';
export { TokenStore, type StoreMode, type TokenArray } from './store.js';
export type { Encoder } from './encoder.js';
export { openCsv, type CsvOptions, type CsvRow, type CsvTable } from './csv.js';
export {
  DataError,
  MissingColumnError,
  QuoteError,
  RaggedRowError,
  RowTooLongError,
  TooManyBadRowsError,
  Utf8Error,
  type BadRowError,
} from './errors.js';
