//! TODO: corpus
