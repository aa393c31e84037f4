//! TODO: encode
