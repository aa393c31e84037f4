//! TODO: train
