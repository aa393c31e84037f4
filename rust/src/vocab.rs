//! TODO: vocab
