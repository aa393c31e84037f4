//! Token files: flat token files and shards with their document index and sidecar, written
//! from files, texts or batches of documents (record files, Arrow rows).

pub mod arrow_texts;
pub mod token_file;
pub mod token_index;
pub mod token_stream;
