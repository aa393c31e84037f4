//! The vocabulary: a pre-tokenization pattern, the BPE merges in creation order and the
//! special tokens, plus its JSON file form.
//!
//! Ids: `0..256` are the raw bytes, `256 + i` is the token made by merge `i`, and the
//! special tokens come after all merges (`<|endoftext|>` always exists and is the first).
//!
//! File (contract in DESIGN.md):
//! `{"format": "lmrs-tokenizer", "version": 1, "pattern": .., "special_tokens": {..},
//!   "merges": [[a, b], ..], "hash": ".."}`
//! `hash` is the sha256 (hex) of the canonical content: the compact JSON
//! `{"format":..,"version":..,"pattern":..,"merges":[[a,b],..],"special_tokens":{..}}`
//! with the special tokens sorted by name. It identifies the tokenizer (token files
//! record it) and catches edits on load.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const FORMAT: &str = "lmrs-tokenizer";
pub const VERSION: u64 = 1;
pub const EOT: &str = "<|endoftext|>";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    pattern: String,
    merges: Vec<(u32, u32)>,
    /// (token, id), sorted by id; ids are `256 + merges.len() ..` without gaps.
    special_tokens: Vec<(String, u32)>,
}

/// What the hash covers, in its canonical field order.
#[derive(Serialize)]
struct Canonical<'a> {
    format: &'a str,
    version: u64,
    pattern: &'a str,
    merges: &'a [(u32, u32)],
    special_tokens: BTreeMap<&'a str, u32>,
}

/// The file as read; every field optional so that a missing one gets a clear message.
#[derive(Deserialize)]
struct VocabFile {
    format: Option<String>,
    version: Option<serde_json::Value>,
    pattern: Option<String>,
    merges: Option<Vec<(u32, u32)>>,
    special_tokens: Option<BTreeMap<String, u32>>,
    hash: Option<String>,
}

impl Vocab {
    /// A vocab from merges and special token names. `<|endoftext|>` is added first if
    /// absent; the others keep their order (duplicates dropped); ids follow the merges.
    pub fn new(pattern: &str, merges: Vec<(u32, u32)>, special_tokens: &[String]) -> Result<Self> {
        let mut names: Vec<&str> = vec![EOT];
        for name in special_tokens {
            if name.is_empty() {
                return Err(Error::Invalid("special tokens must not be empty".into()));
            }
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let first = 256 + merges.len() as u32;
        let special_tokens = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), first + i as u32))
            .collect();
        Self::from_parts(pattern, merges, special_tokens)
    }

    /// A vocab with explicit special token ids, validated (used when loading a file).
    pub fn from_parts(
        pattern: &str,
        merges: Vec<(u32, u32)>,
        mut special_tokens: Vec<(String, u32)>,
    ) -> Result<Self> {
        check_merges(&merges).map_err(Error::Invalid)?;
        special_tokens.sort_by_key(|&(_, id)| id);
        check_special_tokens(merges.len(), &special_tokens).map_err(Error::Invalid)?;
        crate::pretokenize::Pretokenizer::new(pattern)?;
        Ok(Self {
            pattern: pattern.to_string(),
            merges,
            special_tokens,
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// (token, id) sorted by id.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.special_tokens
    }

    pub fn vocab_size(&self) -> usize {
        256 + self.merges.len() + self.special_tokens.len()
    }

    pub fn eot_id(&self) -> u32 {
        self.special_id(EOT)
            .expect("<|endoftext|> is always present")
    }

    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.special_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    /// The bytes of every non-special token, indexed by id (`256 + merges.len()` entries).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let mut table: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(a, b) in &self.merges {
            let mut bytes = table[a as usize].clone();
            bytes.extend_from_slice(&table[b as usize]);
            table.push(bytes);
        }
        table
    }

    /// sha256 hex of the canonical content (see the module docs).
    pub fn hash(&self) -> String {
        let canonical = Canonical {
            format: FORMAT,
            version: VERSION,
            pattern: &self.pattern,
            merges: &self.merges,
            special_tokens: self
                .special_tokens
                .iter()
                .map(|(n, id)| (n.as_str(), *id))
                .collect(),
        };
        let json = serde_json::to_vec(&canonical).expect("serializing plain data cannot fail");
        hex(&Sha256::digest(&json))
    }

    /// The file content: one merge per line so that diffs and eyes can follow it.
    pub fn to_json(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let mut out = String::with_capacity(32 + self.merges.len() * 14 + self.pattern.len());
        out.push_str(&format!(
            "{{\n  \"format\": {},\n  \"version\": {VERSION},\n",
            q(FORMAT)
        ));
        out.push_str(&format!(
            "  \"pattern\": {},\n  \"special_tokens\": {{",
            q(&self.pattern)
        ));
        for (i, (name, id)) in self.special_tokens.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            out.push_str(&format!("{sep}\n    {}: {id}", q(name)));
        }
        out.push_str("\n  },\n  \"merges\": [");
        for (i, (a, b)) in self.merges.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            out.push_str(&format!("{sep}\n    [{a}, {b}]"));
        }
        out.push_str(&format!("\n  ],\n  \"hash\": {}\n}}\n", q(&self.hash())));
        out
    }

    /// Parses a file's content; `path` only names the file in errors.
    pub fn from_json(content: &[u8], path: &str) -> Result<Self> {
        let format_err = |message: String| Error::Format {
            path: path.to_string(),
            message,
        };
        if content.iter().all(u8::is_ascii_whitespace) {
            return Err(format_err("empty file, not an lmrs tokenizer".into()));
        }
        let file: VocabFile = serde_json::from_slice(content).map_err(|e| {
            if e.is_eof() {
                format_err(format!("truncated JSON ({e})"))
            } else {
                format_err(format!("not a valid lmrs tokenizer file ({e})"))
            }
        })?;
        match file.format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format_err(format!(
                    "format is {other:?}, expected {FORMAT:?}"
                )))
            }
            None => {
                return Err(format_err(format!(
                    "no \"format\" field, not an {FORMAT} file"
                )))
            }
        }
        match &file.version {
            Some(v) if v.as_u64() == Some(VERSION) => {}
            Some(v) => {
                return Err(format_err(format!(
                    "unsupported version {v} (this lmrs reads version {VERSION})"
                )))
            }
            None => return Err(format_err("no \"version\" field".into())),
        }
        let missing = |field: &str| format_err(format!("missing field {field:?}"));
        let pattern = file.pattern.ok_or_else(|| missing("pattern"))?;
        let merges = file.merges.ok_or_else(|| missing("merges"))?;
        let special_tokens = file
            .special_tokens
            .ok_or_else(|| missing("special_tokens"))?;
        let stored_hash = file.hash.ok_or_else(|| missing("hash"))?;
        let vocab = Self::from_parts(&pattern, merges, special_tokens.into_iter().collect())
            .map_err(|e| format_err(e.to_string()))?;
        let hash = vocab.hash();
        if hash != stored_hash {
            return Err(format_err(format!(
                "hash mismatch: the content was modified (stored {stored_hash:?}, computed {hash})"
            )));
        }
        Ok(vocab)
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let content = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&content, &path.display().to_string())
    }

    /// Writes the file by the atomic-write policy ([`crate::atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::atomic::write_file(path.as_ref(), self.to_json().as_bytes(), "tokenizer")
    }
}

/// The most bytes all tokens together may hold. Each merge can double a token's length,
/// so 40 merges in a file of a few hundred bytes could otherwise ask for a terabyte; a
/// real vocabulary holds well under 1% of this (cl100k: under 1 MB).
pub const MAX_TOTAL_TOKEN_BYTES: u64 = 1 << 26;

fn check_merges(merges: &[(u32, u32)]) -> std::result::Result<(), String> {
    let mut lengths: Vec<u64> = vec![1; 256];
    lengths.reserve(merges.len());
    let mut total: u64 = 256;
    for (i, &(a, b)) in merges.iter().enumerate() {
        let defined = 256 + i as u32;
        if a >= defined || b >= defined {
            return Err(format!(
                "invalid merge {i} [{a}, {b}]: refers to a token not yet defined (ids < {defined} exist)"
            ));
        }
        let length = lengths[a as usize] + lengths[b as usize];
        total += length;
        if total > MAX_TOTAL_TOKEN_BYTES {
            return Err(format!(
                "merge {i} [{a}, {b}] makes a token of {length} bytes and the tokens more than \
                 {MAX_TOTAL_TOKEN_BYTES} bytes in all; not a real vocabulary"
            ));
        }
        lengths.push(length);
    }
    Ok(())
}

fn check_special_tokens(
    num_merges: usize,
    special_tokens: &[(String, u32)],
) -> std::result::Result<(), String> {
    if !special_tokens.iter().any(|(n, _)| n == EOT) {
        return Err(format!("special tokens must include {EOT}"));
    }
    let first = 256 + num_merges as u32;
    for (i, (name, id)) in special_tokens.iter().enumerate() {
        if name.is_empty() {
            return Err("special tokens must not be empty".into());
        }
        if *id != first + i as u32 {
            return Err(format!(
                "special token {name:?} has id {id}; special ids must be {first}..{} without gaps",
                first + special_tokens.len() as u32
            ));
        }
    }
    let mut names: Vec<&str> = special_tokens.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("duplicate special token".into());
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::GPT4_PATTERN;

    fn sample() -> Vocab {
        Vocab::new(
            GPT4_PATTERN,
            vec![(104, 105), (256, 33)],
            &["<|pad|>".to_string()],
        )
        .unwrap()
    }

    #[test]
    fn ids_follow_merges_and_eot_comes_first() {
        let v = sample();
        assert_eq!(v.vocab_size(), 256 + 2 + 2);
        assert_eq!(v.eot_id(), 258);
        assert_eq!(v.special_id("<|pad|>"), Some(259));
        assert_eq!(v.token_bytes()[257], b"hi!".to_vec());
    }

    #[test]
    fn json_round_trip_keeps_content_and_hash() {
        let v = sample();
        let back = Vocab::from_json(v.to_json().as_bytes(), "t.json").unwrap();
        assert_eq!(back, v);
        assert_eq!(back.hash(), v.hash());
        assert_eq!(v.hash().len(), 64);
    }

    #[test]
    fn hash_depends_on_content() {
        let other = Vocab::new(GPT4_PATTERN, vec![(104, 105)], &[]).unwrap();
        assert_ne!(other.hash(), sample().hash());
    }

    #[test]
    fn rejects_merges_that_blow_up_exponentially() {
        // each merge doubles the last token: 2^40 bytes if it were built
        let merges: Vec<(u32, u32)> = std::iter::once((97, 97))
            .chain((256..295).map(|id| (id, id)))
            .collect();
        let err = Vocab::new(GPT4_PATTERN, merges, &[]).unwrap_err();
        assert!(err.to_string().contains("not a real vocabulary"), "{err}");
    }

    #[test]
    fn rejects_merge_referencing_future_token() {
        let err = Vocab::new(GPT4_PATTERN, vec![(256, 1)], &[]).unwrap_err();
        assert!(err.to_string().contains("not yet defined"), "{err}");
    }

    fn load_err(content: &str) -> String {
        Vocab::from_json(content.as_bytes(), "bad.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn load_errors_name_the_file_and_problem() {
        let good = sample().to_json();
        assert!(load_err(&good[..good.len() / 2]).contains("truncated"));
        assert!(load_err("").contains("empty"));
        assert!(load_err(&good.replace("\"version\": 1", "\"version\": 2")).contains("version 2"));
        assert!(load_err(&good.replace("[256, 33]", "[256, 34]")).contains("hash mismatch"));
        assert!(load_err(&good.replace("lmrs-tokenizer", "other")).contains("format"));
        assert!(load_err("{\"format\": \"lmrs-tokenizer\", \"version\": 1}").contains("pattern"));
        assert!(load_err(&good[..10]).starts_with("bad.json: "));
    }

    #[test]
    fn save_is_atomic_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("lmrs-vocab-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tok.json");
        sample().save(&path).unwrap();
        assert_eq!(Vocab::load(&path).unwrap(), sample());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
