//! The byte-level BPE engine: pretokenizing text into words, counting them over a corpus,
//! training merges, the vocab and its JSON form, and encoding text into token ids.

pub mod corpus;
pub mod encode;
pub mod flat_map;
pub mod pretokenize;
pub mod train;
pub mod vocab;
