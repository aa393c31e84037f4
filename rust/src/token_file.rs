//! TODO: token_file
