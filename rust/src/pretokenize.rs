//! Splitting text into words ("pieces") before BPE, so that merges never cross
//! word boundaries. The default is the GPT-4 (cl100k) pattern.
//!
//! INTERFACE (shared by corpus.rs, train.rs, encode.rs; keep it stable):
//!   `Pretokenizer::new(pattern)`, `Pretokenizer::gpt4()`, `.pattern()`,
//!   `.for_each_piece(text, |piece: &str| ...)`, `.pieces(text) -> Vec<&str>`.

use crate::{Error, Result};

/// The GPT-4 (cl100k_base) split pattern, as used by tiktoken, minbpe and rustbpe.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

#[derive(Clone)]
pub struct Pretokenizer {
    pattern: String,
    regex: fancy_regex::Regex,
}

impl Pretokenizer {
    pub fn new(pattern: &str) -> Result<Self> {
        let regex = fancy_regex::Regex::new(pattern)
            .map_err(|e| Error::Invalid(format!("invalid pre-tokenization pattern: {e}")))?;
        Ok(Self { pattern: pattern.to_string(), regex })
    }

    pub fn gpt4() -> Self {
        Self::new(GPT4_PATTERN).expect("the built-in GPT-4 pattern compiles")
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Calls `f` on each piece of `text`, in order. Pieces cover the text exactly
    /// where the pattern matches everywhere (the GPT-4 pattern does).
    pub fn for_each_piece<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        for m in self.regex.find_iter(text).flatten() {
            f(m.as_str());
        }
    }

    pub fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        self.for_each_piece(text, |p| out.push(p));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_numbers_and_spaces() {
        let p = Pretokenizer::gpt4();
        assert_eq!(
            p.pieces("Hello world's 12345  !!\n"),
            vec!["Hello", " world", "'s", " ", "123", "45", " ", " !!\n"]
        );
    }
}
