//! The vocabulary: a pre-tokenization pattern, the BPE merges in creation order and the
//! special tokens, plus its JSON file form.
//!
//! Internally every vocab is "lmrs order": token `0..256` is the raw byte, `256 + i` the
//! token made by merge `i` (its rank), and the special tokens have their own ids. A vocab
//! lmrs trains uses these as its ids, with the special tokens after all merges
//! (`<|endoftext|>` first): that is file version 1. An imported vocabulary (tiktoken's
//! ranks, a Hugging Face `tokenizer.json`) numbers the same tokens differently (GPT-2's
//! byte-to-unicode order, gaps before the special tokens), so it also carries `ids`, the
//! external id of every internal token: file version 2. The encoder works in lmrs order
//! and maps its output through `ids` only when there is one.
//!
//! Version 1 (contract in DESIGN.md), written whenever the vocab fits it:
//! `{"format": "lmrs-tokenizer", "version": 1, "pattern": .., "special_tokens": {..},
//!   "merges": [[a, b], ..], "hash": ".."}`
//! Version 2, written only when it does not:
//! `{"format": "lmrs-tokenizer", "version": 2, "pattern": .., "merge_rule": "tiktoken" |
//!   "hf" | "hf-ignore-merges", "eot": "<|endoftext|>", "byte_ids": [256 ids],
//!   "special_tokens": {..}, "merges": [[a, b, id], ..], "hash": ".."}`
//! where merge `i` (rank `i`) joins the tokens with external ids `a` and `b` into `id`.
//! `hash` is the sha256 (hex) of the canonical content: the compact JSON of the fields in
//! that order without `hash`, the special tokens sorted by name. It identifies the
//! tokenizer (token files record it) and catches edits on load.

use std::collections::BTreeMap;
use std::path::Path;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const FORMAT: &str = "lmrs-tokenizer";
/// The version of a vocab in lmrs order (every vocab lmrs trains).
pub const VERSION: u64 = 1;
/// The version of a vocab with explicit ids (imported ones).
pub const VERSION_IDS: u64 = 2;
pub const EOT: &str = "<|endoftext|>";

/// Which adjacent pairs of a piece may merge; the lowest rank merges first (leftmost on
/// ties) in every rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeRule {
    /// tiktoken's: any adjacent pair whose concatenation is a token, with that token's
    /// rank; a piece that is a token is that token. lmrs's own rule.
    Tiktoken,
    /// Hugging Face BPE's: only the listed merge pairs, with their rank.
    Hf,
    /// Hugging Face BPE with `ignore_merges`: a piece that is a token is that token,
    /// otherwise the listed merges.
    HfIgnoreMerges,
}

impl MergeRule {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiktoken => "tiktoken",
            Self::Hf => "hf",
            Self::HfIgnoreMerges => "hf-ignore-merges",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Tiktoken, Self::Hf, Self::HfIgnoreMerges]
            .into_iter()
            .find(|rule| rule.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    pattern: String,
    /// In lmrs order: merge `i` makes internal token `256 + i`.
    merges: Vec<(u32, u32)>,
    /// (token, id), sorted by id. In version 1 the ids are `256 + merges.len() ..`
    /// without gaps; with `ids` they are any ids no ordinary token has.
    special_tokens: Vec<(String, u32)>,
    /// The external id of each internal token (`256 + merges.len()` entries); None when
    /// they are equal (version 1).
    ids: Option<Vec<u32>>,
    rule: MergeRule,
    /// The special token that ends a document.
    eot: String,
}

/// What the version 1 hash covers, in its canonical field order.
#[derive(Serialize)]
struct Canonical<'a> {
    format: &'a str,
    version: u64,
    pattern: &'a str,
    merges: &'a [(u32, u32)],
    special_tokens: BTreeMap<&'a str, u32>,
}

/// What the version 2 hash covers, in its canonical field order.
#[derive(Serialize)]
struct CanonicalIds<'a> {
    format: &'a str,
    version: u64,
    pattern: &'a str,
    merge_rule: &'a str,
    eot: &'a str,
    byte_ids: &'a [u32],
    merges: &'a [(u32, u32, u32)],
    special_tokens: BTreeMap<&'a str, u32>,
}

/// The first two fields, to pick the reader.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<serde_json::Value>,
}

/// A version 1 file as read; every field optional so that a missing one gets a clear
/// message.
#[derive(Deserialize)]
struct VocabFile {
    pattern: Option<String>,
    merges: Option<Vec<(u32, u32)>>,
    special_tokens: Option<BTreeMap<String, u32>>,
    hash: Option<String>,
}

/// A version 2 file as read.
#[derive(Deserialize)]
struct VocabFileIds {
    pattern: Option<String>,
    merge_rule: Option<String>,
    eot: Option<String>,
    byte_ids: Option<Vec<u32>>,
    merges: Option<Vec<(u32, u32, u32)>>,
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
        crate::bpe::pretokenize::Pretokenizer::new(pattern)?;
        Ok(Self {
            pattern: pattern.to_string(),
            merges,
            special_tokens,
            ids: None,
            rule: MergeRule::Tiktoken,
            eot: EOT.to_string(),
        })
    }

    /// A vocab with its own ids: `byte_ids[b]` is the id of byte `b`, merge `i` (rank
    /// `i`) joins the tokens with ids `a` and `b` into the token with id `id`; `eot`
    /// names the special token that ends a document. Comes out as version 1 when the
    /// ids are lmrs's anyway.
    pub fn with_ids(
        pattern: &str,
        byte_ids: &[u32],
        merges: &[(u32, u32, u32)],
        mut special_tokens: Vec<(String, u32)>,
        eot: &str,
        rule: MergeRule,
    ) -> Result<Self> {
        let invalid = |m: String| Error::Invalid(m);
        if byte_ids.len() != 256 {
            return Err(invalid(format!(
                "byte_ids has {} entries, expected 256",
                byte_ids.len()
            )));
        }
        let total = 256 + merges.len();
        let mut internal: AHashMap<u32, u32> = AHashMap::with_capacity(total);
        let mut ids = Vec::with_capacity(total);
        for (byte, &id) in byte_ids.iter().enumerate() {
            if internal.insert(id, byte as u32).is_some() {
                return Err(invalid(format!("id {id} is given to two bytes")));
            }
            ids.push(id);
        }
        // Results first, operands second: a Hugging Face file converted from tiktoken
        // lists every split of a token, some through tokens made by later merges.
        let mut again = Vec::new();
        for (i, &(a, b, id)) in merges.iter().enumerate() {
            match internal.get(&id) {
                None => {
                    internal.insert(id, 256 + i as u32);
                }
                // several merges may make one token; operands name the first
                Some(&earlier) if earlier >= 256 => again.push((i, earlier)),
                Some(_) => {
                    return Err(invalid(format!(
                        "merge {i} [{a}, {b}, {id}] makes id {id}, which is a byte's"
                    )))
                }
            }
            ids.push(id);
        }
        let mut lmrs_merges = Vec::with_capacity(merges.len());
        for (i, &(a, b, id)) in merges.iter().enumerate() {
            let operand = |x: u32| {
                internal.get(&x).copied().ok_or_else(|| {
                    invalid(format!(
                        "merge {i} [{a}, {b}, {id}] uses token {x}, which no byte or merge makes"
                    ))
                })
            };
            lmrs_merges.push((operand(a)?, operand(b)?));
        }
        let table = resolve_token_bytes(&lmrs_merges).map_err(invalid)?;
        for (i, earlier) in again {
            if table[256 + i] != table[earlier as usize] {
                let (a, b, id) = merges[i];
                return Err(invalid(format!(
                    "merge {i} [{a}, {b}, {id}] makes id {id} with other bytes than an \
                     earlier merge"
                )));
            }
        }
        if rule != MergeRule::Tiktoken {
            let mut seen = AHashMap::with_capacity(lmrs_merges.len());
            for (i, pair) in lmrs_merges.iter().enumerate() {
                if let Some(first) = seen.insert(*pair, i) {
                    return Err(invalid(format!(
                        "merges {first} and {i} join the same pair"
                    )));
                }
            }
        }
        special_tokens.sort_by_key(|&(_, id)| id);
        for (name, id) in &special_tokens {
            if name.is_empty() {
                return Err(invalid("special tokens must not be empty".into()));
            }
            if internal.contains_key(id) {
                return Err(invalid(format!(
                    "special token {name:?} has id {id}, which an ordinary token has"
                )));
            }
        }
        if special_tokens.windows(2).any(|w| w[0].1 == w[1].1) {
            return Err(invalid("two special tokens have the same id".into()));
        }
        let mut names: Vec<&str> = special_tokens.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("duplicate special token".into()));
        }
        if !names.contains(&eot) {
            return Err(invalid(format!(
                "the end-of-text token {eot:?} is not a special token"
            )));
        }
        crate::bpe::pretokenize::Pretokenizer::new(pattern)?;
        let identity = ids.iter().enumerate().all(|(i, &id)| id == i as u32);
        let vocab = Self {
            pattern: pattern.to_string(),
            merges: lmrs_merges,
            special_tokens,
            ids: (!identity).then_some(ids),
            rule,
            eot: eot.to_string(),
        };
        Ok(vocab)
    }

    /// A vocab from tiktoken's ranks (token bytes → rank, which is also the id). Every
    /// byte must be a token; every longer token must be the merge of two tokens of lower
    /// rank, found as tiktoken's educational code and Hugging Face's converter find it:
    /// the token's own bytes encoded with the lower ranks give exactly two parts.
    pub fn from_ranks(
        pattern: &str,
        ranks: &[(Vec<u8>, u32)],
        special_tokens: Vec<(String, u32)>,
        eot: &str,
    ) -> Result<Self> {
        let invalid = |m: String| Error::Invalid(m);
        let mut byte_ids = [u32::MAX; 256];
        let mut longer: Vec<(&[u8], u32)> = Vec::with_capacity(ranks.len());
        let mut seen_ranks = AHashMap::with_capacity(ranks.len());
        for (bytes, rank) in ranks {
            if let Some(other) = seen_ranks.insert(*rank, bytes.as_slice()) {
                return Err(invalid(format!(
                    "rank {rank} is given to two tokens ({} and {})",
                    show_bytes(other),
                    show_bytes(bytes)
                )));
            }
            match bytes.len() {
                0 => return Err(invalid(format!("rank {rank} is an empty token"))),
                1 if byte_ids[bytes[0] as usize] != u32::MAX => {
                    return Err(invalid(format!(
                        "token {} appears twice",
                        show_bytes(bytes)
                    )))
                }
                1 => byte_ids[bytes[0] as usize] = *rank,
                _ => longer.push((bytes, *rank)),
            }
        }
        if let Some(byte) = byte_ids.iter().position(|&id| id == u32::MAX) {
            return Err(invalid(format!(
                "no token for byte 0x{byte:02x}: a byte-level BPE has all 256"
            )));
        }
        longer.sort_unstable_by_key(|&(_, rank)| rank);
        // bytes → (internal id, rank) of the tokens of lower rank than the current one
        let mut known: AHashMap<&[u8], (u32, u32)> = AHashMap::with_capacity(ranks.len());
        let mut byte_strings = Vec::with_capacity(256);
        for b in 0..=255u8 {
            byte_strings.push([b]);
        }
        for (b, bytes) in byte_strings.iter().enumerate() {
            known.insert(bytes.as_slice(), (b as u32, byte_ids[b]));
        }
        let mut merges = Vec::with_capacity(longer.len());
        for (i, &(token, rank)) in longer.iter().enumerate() {
            let parts = lower_rank_parts(token, &known);
            if parts.len() != 2 {
                return Err(invalid(format!(
                    "token {} (rank {rank}) is not the merge of two tokens of lower rank; \
                     not a BPE vocabulary",
                    show_bytes(token)
                )));
            }
            let (a, b) = (&token[..parts[1]], &token[parts[1]..]);
            merges.push((known[a].1, known[b].1, rank));
            if known.insert(token, (256 + i as u32, rank)).is_some() {
                return Err(invalid(format!(
                    "token {} appears twice",
                    show_bytes(token)
                )));
            }
        }
        Self::with_ids(
            pattern,
            &byte_ids,
            &merges,
            special_tokens,
            eot,
            MergeRule::Tiktoken,
        )
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The merges in lmrs order (internal ids; external ones: [`Vocab::merges_with_ids`]).
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The merges as (a, b, id) in external ids, in rank order.
    pub fn merges_with_ids(&self) -> Vec<(u32, u32, u32)> {
        self.merges
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                (
                    self.external_id(a),
                    self.external_id(b),
                    self.external_id(256 + i as u32),
                )
            })
            .collect()
    }

    /// The external id of each byte.
    pub fn byte_ids(&self) -> Vec<u32> {
        (0..256).map(|b| self.external_id(b)).collect()
    }

    /// The external id of every internal token; None when they are the same.
    pub fn ids(&self) -> Option<&[u32]> {
        self.ids.as_deref()
    }

    #[inline]
    pub fn external_id(&self, internal: u32) -> u32 {
        match &self.ids {
            Some(ids) => ids[internal as usize],
            None => internal,
        }
    }

    pub fn merge_rule(&self) -> MergeRule {
        self.rule
    }

    /// The name of the special token that ends a document.
    pub fn eot(&self) -> &str {
        &self.eot
    }

    /// (token, id) sorted by id.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.special_tokens
    }

    /// One more than the highest id (imported vocabularies may leave ids unused).
    pub fn vocab_size(&self) -> usize {
        let ordinary = match &self.ids {
            Some(ids) => ids.iter().max().map_or(0, |&m| m as usize + 1),
            None => 256 + self.merges.len(),
        };
        let special = self
            .special_tokens
            .last()
            .map_or(0, |&(_, id)| id as usize + 1);
        ordinary.max(special)
    }

    pub fn eot_id(&self) -> u32 {
        self.special_id(&self.eot)
            .expect("the end-of-text token is always a special token")
    }

    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.special_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    /// The bytes of every non-special token in lmrs order (`256 + merges.len()` entries;
    /// the id of entry `i` is [`Vocab::external_id`]`(i)`).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        resolve_token_bytes(&self.merges).expect("merges are checked when the vocab is made")
    }

    /// True when the vocab is written as version 1 (lmrs's own ids and rule).
    pub fn is_version_1(&self) -> bool {
        let first = 256 + self.merges.len() as u32;
        self.ids.is_none()
            && self.rule == MergeRule::Tiktoken
            && self.eot == EOT
            && self
                .special_tokens
                .iter()
                .enumerate()
                .all(|(i, &(_, id))| id == first + i as u32)
    }

    fn version(&self) -> u64 {
        if self.is_version_1() {
            VERSION
        } else {
            VERSION_IDS
        }
    }

    /// sha256 hex of the canonical content (see the module docs).
    pub fn hash(&self) -> String {
        let special_tokens = self
            .special_tokens
            .iter()
            .map(|(n, id)| (n.as_str(), *id))
            .collect();
        let json = if self.is_version_1() {
            serde_json::to_vec(&Canonical {
                format: FORMAT,
                version: VERSION,
                pattern: &self.pattern,
                merges: &self.merges,
                special_tokens,
            })
        } else {
            serde_json::to_vec(&CanonicalIds {
                format: FORMAT,
                version: VERSION_IDS,
                pattern: &self.pattern,
                merge_rule: self.rule.name(),
                eot: &self.eot,
                byte_ids: &self.byte_ids(),
                merges: &self.merges_with_ids(),
                special_tokens,
            })
        };
        let json = json.expect("serializing plain data cannot fail");
        hex(&Sha256::digest(&json))
    }

    /// The file content: one merge per line so that diffs and eyes can follow it.
    pub fn to_json(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let version = self.version();
        let mut out = String::with_capacity(32 + self.merges.len() * 22 + self.pattern.len());
        out.push_str(&format!(
            "{{\n  \"format\": {},\n  \"version\": {version},\n",
            q(FORMAT)
        ));
        out.push_str(&format!("  \"pattern\": {},\n", q(&self.pattern)));
        if version == VERSION_IDS {
            out.push_str(&format!(
                "  \"merge_rule\": {},\n  \"eot\": {},\n  \"byte_ids\": {:?},\n",
                q(self.rule.name()),
                q(&self.eot),
                self.byte_ids()
            ));
        }
        out.push_str("  \"special_tokens\": {");
        for (i, (name, id)) in self.special_tokens.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            out.push_str(&format!("{sep}\n    {}: {id}", q(name)));
        }
        out.push_str("\n  },\n  \"merges\": [");
        if version == VERSION_IDS {
            for (i, (a, b, id)) in self.merges_with_ids().iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                out.push_str(&format!("{sep}\n    [{a}, {b}, {id}]"));
            }
        } else {
            for (i, (a, b)) in self.merges.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                out.push_str(&format!("{sep}\n    [{a}, {b}]"));
            }
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
        let json_err = |e: serde_json::Error| {
            if e.is_eof() {
                format_err(format!("truncated JSON ({e})"))
            } else {
                format_err(format!("not a valid lmrs tokenizer file ({e})"))
            }
        };
        let header: Header = serde_json::from_slice(content).map_err(json_err)?;
        match header.format.as_deref() {
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
        let version = match &header.version {
            Some(v) if v.as_u64() == Some(VERSION) || v.as_u64() == Some(VERSION_IDS) => {
                v.as_u64().unwrap_or(VERSION)
            }
            Some(v) => {
                return Err(format_err(format!(
                    "unsupported version {v} (this lmrs reads versions {VERSION} and {VERSION_IDS})"
                )))
            }
            None => return Err(format_err("no \"version\" field".into())),
        };
        let missing = |field: &str| format_err(format!("missing field {field:?}"));
        let (vocab, stored_hash) = if version == VERSION {
            let file: VocabFile = serde_json::from_slice(content).map_err(json_err)?;
            let pattern = file.pattern.ok_or_else(|| missing("pattern"))?;
            let merges = file.merges.ok_or_else(|| missing("merges"))?;
            let special_tokens = file
                .special_tokens
                .ok_or_else(|| missing("special_tokens"))?;
            let stored_hash = file.hash.ok_or_else(|| missing("hash"))?;
            let vocab = Self::from_parts(&pattern, merges, special_tokens.into_iter().collect())
                .map_err(|e| format_err(e.to_string()))?;
            (vocab, stored_hash)
        } else {
            let file: VocabFileIds = serde_json::from_slice(content).map_err(json_err)?;
            let pattern = file.pattern.ok_or_else(|| missing("pattern"))?;
            let rule_name = file.merge_rule.ok_or_else(|| missing("merge_rule"))?;
            let rule = MergeRule::from_name(&rule_name).ok_or_else(|| {
                format_err(format!(
                    "merge_rule {rule_name:?} is not one of \"tiktoken\", \"hf\", \"hf-ignore-merges\""
                ))
            })?;
            let eot = file.eot.ok_or_else(|| missing("eot"))?;
            let byte_ids = file.byte_ids.ok_or_else(|| missing("byte_ids"))?;
            let merges = file.merges.ok_or_else(|| missing("merges"))?;
            let special_tokens = file
                .special_tokens
                .ok_or_else(|| missing("special_tokens"))?;
            let stored_hash = file.hash.ok_or_else(|| missing("hash"))?;
            let vocab = Self::with_ids(
                &pattern,
                &byte_ids,
                &merges,
                special_tokens.into_iter().collect(),
                &eot,
                rule,
            )
            .map_err(|e| format_err(e.to_string()))?;
            (vocab, stored_hash)
        };
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

/// The bytes of every token of lmrs-order merges. An operand may be a later merge's
/// token (see [`Vocab::with_ids`]), so tokens are built in dependency order; a cycle, an
/// unknown id or more than [`MAX_TOTAL_TOKEN_BYTES`] is an error.
fn resolve_token_bytes(merges: &[(u32, u32)]) -> std::result::Result<Vec<Vec<u8>>, String> {
    const TODO: u8 = 0;
    const BUSY: u8 = 1;
    const DONE: u8 = 2;
    let n = 256 + merges.len();
    let mut table: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    table.resize(n, Vec::new());
    let mut state = vec![DONE; 256];
    state.resize(n, TODO);
    let mut total: u64 = 256;
    // depth-first, with an explicit stack: (token, its operands are done)
    let mut stack: Vec<(usize, bool)> = Vec::new();
    for start in 256..n {
        stack.push((start, false));
        while let Some((token, ready)) = stack.pop() {
            let (a, b) = merges[token - 256];
            if ready {
                let mut bytes = table[a as usize].clone();
                bytes.extend_from_slice(&table[b as usize]);
                total += bytes.len() as u64;
                if total > MAX_TOTAL_TOKEN_BYTES {
                    return Err(format!(
                        "merge {} [{a}, {b}] makes a token of {} bytes and the tokens more \
                         than {MAX_TOTAL_TOKEN_BYTES} bytes in all; not a real vocabulary",
                        token - 256,
                        bytes.len()
                    ));
                }
                table[token] = bytes;
                state[token] = DONE;
                continue;
            }
            if state[token] == DONE {
                continue;
            }
            state[token] = BUSY;
            stack.push((token, true));
            for operand in [a, b] {
                match state.get(operand as usize) {
                    None => {
                        return Err(format!(
                            "merge {} [{a}, {b}] refers to token {operand}, which does not exist",
                            token - 256
                        ))
                    }
                    Some(&TODO) => stack.push((operand as usize, false)),
                    // an operand still being built is the token itself, or needs it
                    Some(&BUSY) => {
                        return Err(format!(
                            "merge {} [{a}, {b}] needs itself to be built (a cycle)",
                            token - 256
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(table)
}

/// Where `token` splits when encoded with the tokens in `known` (bytes → (internal id,
/// rank)) by tiktoken's rule: the start of each part.
fn lower_rank_parts(token: &[u8], known: &AHashMap<&[u8], (u32, u32)>) -> Vec<usize> {
    let mut starts: Vec<usize> = (0..token.len()).collect();
    let end_of = |starts: &[usize], i: usize| starts.get(i + 1).copied().unwrap_or(token.len());
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..starts.len().saturating_sub(1) {
            let joined = &token[starts[i]..end_of(&starts, i + 1)];
            if let Some(&(_, rank)) = known.get(joined) {
                if best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, i));
                }
            }
        }
        match best {
            Some((_, i)) => {
                starts.remove(i + 1);
            }
            None => return starts,
        }
    }
}

/// A token for an error message: its text when it is UTF-8, else its bytes.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("{bytes:?}"),
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
    use crate::bpe::pretokenize::GPT4_PATTERN;

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
        assert!(load_err(&good.replace("\"version\": 1", "\"version\": 3")).contains("version 3"));
        assert!(
            load_err(&good.replace("\"version\": 1", "\"version\": 2")).starts_with("bad.json: ")
        );
        assert!(load_err(&good.replace("[256, 33]", "[256, 34]")).contains("hash mismatch"));
        assert!(load_err(&good.replace("lmrs-tokenizer", "other")).contains("format"));
        assert!(load_err("{\"format\": \"lmrs-tokenizer\", \"version\": 1}").contains("pattern"));
        assert!(load_err(&good[..10]).starts_with("bad.json: "));
    }

    /// Bytes numbered in reverse, two merges ("ab", "abc") with ids after a gap.
    fn with_ids() -> Vocab {
        let byte_ids: Vec<u32> = (0..256).rev().collect();
        let (a, b, c) = (255 - 97, 255 - 98, 255 - 99);
        Vocab::with_ids(
            GPT4_PATTERN,
            &byte_ids,
            &[(a, b, 300), (300, c, 301)],
            vec![("<|end|>".into(), 400), (EOT.into(), 302)],
            "<|end|>",
            MergeRule::Hf,
        )
        .unwrap()
    }

    #[test]
    fn explicit_ids_are_kept_and_written_as_version_2() {
        let v = with_ids();
        assert_eq!(v.vocab_size(), 401);
        assert_eq!(v.eot_id(), 400);
        assert_eq!(v.merges(), &[(97, 98), (256, 99)]);
        assert_eq!(v.merges_with_ids(), vec![(158, 157, 300), (300, 156, 301)]);
        assert!(!v.is_version_1());
        let json = v.to_json();
        assert!(json.contains("\"version\": 2") && json.contains("\"merge_rule\": \"hf\""));
        let back = Vocab::from_json(json.as_bytes(), "t.json").unwrap();
        assert_eq!(back, v);
        assert!(load_err(&json.replace("[300, 156, 301]", "[300, 156, 303]")).contains("hash"));
        assert!(load_err(&json.replace("\"hf\"", "\"bpe\"")).contains("merge_rule"));
    }

    #[test]
    fn lmrs_order_ids_come_out_as_version_1() {
        let v = sample();
        let same = Vocab::with_ids(
            GPT4_PATTERN,
            &(0..256).collect::<Vec<u32>>(),
            &v.merges_with_ids(),
            v.special_tokens().to_vec(),
            EOT,
            MergeRule::Tiktoken,
        )
        .unwrap();
        assert_eq!(same, v);
        assert_eq!(same.hash(), v.hash());
    }

    #[test]
    fn bad_ids_are_refused() {
        let bytes: Vec<u32> = (0..256).collect();
        let err = |merges: &[(u32, u32, u32)], specials: Vec<(String, u32)>, eot: &str| {
            Vocab::with_ids(GPT4_PATTERN, &bytes, merges, specials, eot, MergeRule::Hf)
                .unwrap_err()
                .to_string()
        };
        let eot = || vec![(EOT.to_string(), 500)];
        assert!(err(&[(97, 999, 300)], eot(), EOT).contains("uses token 999"));
        assert!(err(&[(97, 98, 97)], eot(), EOT).contains("a byte's"));
        assert!(err(&[(97, 98, 300), (98, 97, 300)], eot(), EOT).contains("other bytes"));
        assert!(err(&[(97, 98, 300), (97, 98, 301)], eot(), EOT).contains("same pair"));
        assert!(err(&[], vec![(EOT.into(), 65)], EOT).contains("ordinary token"));
        assert!(err(&[], eot(), "<|end|>").contains("not a special token"));
        let short = Vocab::with_ids(GPT4_PATTERN, &[0; 3], &[], eot(), EOT, MergeRule::Hf);
        assert!(short.unwrap_err().to_string().contains("256"));
    }

    #[test]
    fn merges_may_use_tokens_of_later_merges_but_not_cycles() {
        let bytes: Vec<u32> = (0..256).collect();
        let eot = || vec![(EOT.to_string(), 500)];
        let make = |merges: &[(u32, u32, u32)]| {
            Vocab::with_ids(GPT4_PATTERN, &bytes, merges, eot(), EOT, MergeRule::Hf)
        };
        // "abc" = "a" + "bc" at rank 0, "bc" itself at rank 1
        let v = make(&[(97, 301, 300), (98, 99, 301)]).unwrap();
        assert_eq!(v.token_bytes()[256], b"abc".to_vec());
        let back = Vocab::from_json(v.to_json().as_bytes(), "t.json").unwrap();
        assert_eq!(back, v);
        let err = make(&[(97, 301, 300), (300, 98, 301)]).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn ranks_give_merges_of_two_lower_ranks() {
        // bytes ranked in reverse; "ab" 256, "abc" 257 (from "ab"+"c", not "a"+"bc": "bc"
        // comes later), "bc" 258, "abcbc" 259
        let mut ranks: Vec<(Vec<u8>, u32)> =
            (0..=255u8).map(|b| (vec![b], 255 - b as u32)).collect();
        for (i, t) in ["ab", "abc", "bc", "abcbc"].iter().enumerate() {
            ranks.push((t.as_bytes().to_vec(), 256 + i as u32));
        }
        let specials = vec![(EOT.to_string(), 1000)];
        let v = Vocab::from_ranks(GPT4_PATTERN, &ranks, specials.clone(), EOT).unwrap();
        let (a, b, c) = (255 - 97, 255 - 98, 255 - 99);
        assert_eq!(
            v.merges_with_ids(),
            vec![(a, b, 256), (256, c, 257), (b, c, 258), (257, 258, 259)]
        );
        assert_eq!(v.merge_rule(), MergeRule::Tiktoken);
        // "abdd" has no split into two lower-rank tokens ("dd", "bdd", "abd" are not tokens)
        ranks.push((b"abdd".to_vec(), 260));
        let err = Vocab::from_ranks(GPT4_PATTERN, &ranks, specials.clone(), EOT).unwrap_err();
        assert!(err.to_string().contains("not the merge of two"), "{err}");
        ranks.pop();
        ranks.retain(|(t, _)| t != b"z");
        let err = Vocab::from_ranks(GPT4_PATTERN, &ranks, specials, EOT).unwrap_err();
        assert!(err.to_string().contains("byte 0x7a"), "{err}");
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
