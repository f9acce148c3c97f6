// The data pipeline's public API: CSV or JSONL → row format → token stores → batches.
export { loadDataset, TRUNCATE_SIDES, type DataRole, type Dataset, type DatasetStats, type LoadDatasetOptions, type TruncateSide } from './dataset.js';
export { rowFormat, givenFormat, isChat, ROW_FORMAT_KEYS, type RowFormat, type RowFormatOptions } from './row-format.js';
export { loadChatTemplate, chatTemplateFrom, modelChatTemplate, renderChat, type ChatMessage, type ChatTemplate } from './chat.js';
export { parseTemplate, readTemplateArg, escapeNote, type Template } from './template.js';
export { openRows, dataFileFormat, DATA_FILE_FORMATS, type DataFileFormat, type RowSource } from './rows.js';
export { openJsonl, type JsonlRow, type JsonlTable } from './jsonl.js';
export { BatchSampler, evalBatches, type SamplerOptions, type SamplerState } from './sampler.js';
export { fitPrompts, type Batch } from './layout.js';
export { TokenStore, type StoreMode, type TokenArray } from './store.js';
export type { Encoder } from './encoder.js';
export { openCsv, type CsvOptions, type CsvRow, type CsvTable } from './csv.js';
export {
  DataError,
  JsonLineError,
  MissingColumnError,
  RowValueError,
  QuoteError,
  RaggedRowError,
  RowTooLongError,
  TooManyBadRowsError,
  Utf8Error,
  type BadRowError,
} from './errors.js';
