//! The encoder: text → pieces (pre-tokenizer) → token ids (BPE merges), and back.
//!
//! Merging follows tiktoken exactly: within a piece, repeatedly merge the adjacent pair
//! whose concatenation is the token with the lowest id (the leftmost on ties), until no
//! adjacent pair forms a token. With merges in creation order (ids == ranks) this is the
//! same as applying the merge list in order, and it makes our ids identical to tiktoken's
//! when it is given our ranks (`Tokenizer.to_tiktoken`).
//!
//! The pair table therefore maps every (left, right) whose concatenation is a token, not
//! only the trained merge pairs; building it costs one lookup per byte of the vocab.
//! A vocab imported from Hugging Face keeps that library's rule instead
//! ([`MergeRule::Hf`]): only the listed merge pairs are in the table.
//!
//! Merging runs on lmrs-order ids (bytes by value, merge `i` is `256 + i`, so an id is
//! its rank); a vocab with its own ids (imported) maps each text's output through one
//! table at the end, so a vocab lmrs trained pays nothing for it.
//!
//! Decoding of invalid UTF-8 (a sequence cut inside a character) follows tiktoken's
//! `errors="replace"`: each invalid sequence becomes U+FFFD.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ahash::AHashMap;
use aho_corasick::{AhoCorasick, MatchKind};
use rayon::prelude::*;

use crate::bpe::flat_map::FlatMap;
use crate::bpe::pretokenize::Pretokenizer;
use crate::bpe::vocab::{MergeRule, Vocab};
use crate::{Error, Result};

/// Pieces at least this long are merged with a heap and a linked list (O(n log n));
/// shorter ones with a linear scan, which is faster for the short pieces of real text.
const LONG_PIECE: usize = 128;

const NO_RANK: u32 = u32::MAX;

/// Ordinary text longer than twice this is cut into chunks of about this size at piece
/// boundaries and encoded in parallel (one big file or string still uses every core).
const PARALLEL_CHUNK_BYTES: usize = 1 << 20;
/// The unit of parallel work in [`Encoder::encode_documents`] (longer documents are
/// cut): 64 KB units balanced better but lost more than that, measured when the piece
/// cache was per call and started cold on each unit.
const DOCUMENT_UNIT_BYTES: usize = PARALLEL_CHUNK_BYTES;

/// Which special tokens `encode` recognises in the text; the others are plain text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedSpecial {
    All,
    None,
    /// These special token ids only.
    Some(Vec<u32>),
}

/// How one call uses the thread's piece cache (whole pieces → ids, kept between calls).
/// A parameter, not a setting: benchmarks run the same encoder each way
/// (`examples/encode_speed.rs` prints a column per mode) and every mode gives the same
/// ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PieceCacheMode {
    /// No cache: every piece is a vocabulary lookup, and merged if it is not a token.
    Off,
    /// Every piece of up to 32 bytes probes the cache before the vocabulary (texts of
    /// 4 KB and more).
    AllPieces,
    /// The vocabulary first; only pieces that need merging go through the cache, so a
    /// text of whole-token pieces pays nothing for it. The cache is dropped for the rest
    /// of the text when the first [`AUTO_SAMPLE`] merged pieces hit less than one time in
    /// [`AUTO_MIN_HIT_DIV`] (texts of 4 KB and more). The default: with the cache kept
    /// per thread (a per-call cache started cold and lost 6-18%), it encoded prose and
    /// code 1.2-1.5x faster than `Off` on an idle AVX2 EPYC (examples/encode_speed.rs,
    /// cl100k and o200k).
    #[default]
    Auto,
}

/// How one call encodes; every choice gives the same ids (benchmarks compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub cache: PieceCacheMode,
    /// Look tokens of 2..=8 bytes up by a u64 key (true, the default) rather than by
    /// their bytes.
    pub short_keys: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            cache: PieceCacheMode::default(),
            short_keys: true,
        }
    }
}

impl From<PieceCacheMode> for EncodeOptions {
    fn from(cache: PieceCacheMode) -> Self {
        Self {
            cache,
            ..Self::default()
        }
    }
}

/// What happened to the pieces of one text ([`Encoder::piece_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PieceStats {
    pub pieces: u64,
    /// Pieces of one byte (a byte's id) or that are a token whole (one lookup).
    pub known: u64,
    /// Pieces merged (not a token, or a cache miss).
    pub merged: u64,
    /// Pieces whose ids came from the cache.
    pub cache_hits: u64,
    /// The piece at which [`PieceCacheMode::Auto`] dropped the cache, if it did.
    pub cache_dropped_at: Option<u64>,
}

/// Counts pieces for [`PieceStats`]; `()` counts nothing (the encoding path), and being
/// a type parameter that costs nothing.
trait Tally {
    fn known(&mut self) {}
    fn merged(&mut self) {}
    fn hit(&mut self) {}
    fn dropped(&mut self) {}
}

impl Tally for () {}

impl Tally for PieceStats {
    fn known(&mut self) {
        self.pieces += 1;
        self.known += 1;
    }
    fn merged(&mut self) {
        self.pieces += 1;
        self.merged += 1;
    }
    fn hit(&mut self) {
        self.pieces += 1;
        self.cache_hits += 1;
    }
    fn dropped(&mut self) {
        self.cache_dropped_at = Some(self.pieces);
    }
}

pub struct Encoder {
    /// Unique in the process: tells this encoder's entries in a thread's piece cache
    /// from another's.
    id: u64,
    vocab: Vocab,
    hash: String,
    pretokenizer: Pretokenizer,
    /// (left << 32 | right) → the token they merge into; lmrs-order ids, so the value
    /// is also the merge's rank. Empty under the tiktoken rule (`merge_by_bytes`).
    pairs: FlatMap,
    /// The tiktoken rule: two adjacent parts merge into the token their joined bytes
    /// are, with its id as rank, so a merge looks the bytes up in the same tables as
    /// whole pieces. One working set for both lookups: a table of id pairs (every split
    /// of every token: 233k entries, 8 MB, for cl100k; 16 MB for o200k) missed the
    /// cache on most merge steps.
    merge_by_bytes: bool,
    /// The same for two bytes, as a dense 256 x 256 table (`a << 8 | b`): a piece's first
    /// round of ranks is all byte pairs, so merging starts without hashing. Under the
    /// tiktoken rule also the id of every 2-byte token.
    byte_pairs: Vec<u32>,
    /// Bytes of every token, specials included (their UTF-8 text), indexed by external
    /// id; ids no token has (gaps in an imported vocab) are empty.
    token_bytes: Vec<Vec<u8>>,
    /// Bytes → lmrs-order id for ordinary tokens (the lowest if two merges made the
    /// same bytes).
    bytes_to_id: AHashMap<Vec<u8>, u32>,
    /// The same for tokens of 2..=8 bytes, keyed by their bytes as a little-endian u64,
    /// one map per length (`short_ids[len - 2]`): the key sits in the table, so a lookup
    /// reads no heap bytes and hashes one integer.
    short_ids: [FlatMap; 7],
    /// Tokens of 9..=16 bytes the same way, as two words (`mid_ids[len - 9]`): 5% of
    /// the pieces of prose, which a lookup by bytes hashed and compared byte by byte.
    mid_ids: [FlatMap<[u64; 2]>; 8],
    /// A piece that is a token becomes that token without merging (tiktoken does this;
    /// Hugging Face BPE only with `ignore_merges`).
    whole_pieces: bool,
    /// lmrs-order id → external id; None when they are equal.
    external_ids: Option<Vec<u32>>,
    /// Merge result → the one lmrs-order id its bytes have, when several listed merges
    /// make the same token (Hugging Face files converted from tiktoken list every split
    /// of a token); None when each token is made once.
    canonical: Option<Vec<u32>>,
    special_matcher: AhoCorasick,
    /// Special ids in the matcher's pattern order.
    special_ids: Vec<u32>,
}

/// The error for a token id the vocab does not have; `id` is shown as given, so that a
/// negative or huge id from Python is named as such.
pub fn id_out_of_range(id: impl std::fmt::Display, vocab_size: usize) -> Error {
    Error::Invalid(format!(
        "token id {id} is out of range (vocab size {vocab_size})"
    ))
}

/// A piece of 2..=8 bytes as a u64 (little-endian, zero-padded); its length picks the map.
#[inline]
fn short_key(bytes: &[u8]) -> Option<u64> {
    (2..=8).contains(&bytes.len()).then(|| le_word(bytes))
}

/// Up to 8 bytes as a little-endian u64, zero-padded.
#[inline]
fn le_word(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    match len {
        // two overlapping 4-byte reads rather than a variable-length copy (which
        // compiled to a memmove call per piece); the overlap holds the same bytes in
        // both, so OR-ing them is exact
        4..=8 => {
            let word = |at: usize| {
                let four: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or_default();
                u64::from(u32::from_le_bytes(four))
            };
            word(0) | word(len - 4) << ((len - 4) * 8)
        }
        2 => u64::from(u16::from_le_bytes([bytes[0], bytes[1]])),
        3 => u64::from(u16::from_le_bytes([bytes[0], bytes[1]])) | u64::from(bytes[2]) << 16,
        _ => bytes.first().map_or(0, |&b| u64::from(b)),
    }
}

/// 9..=16 bytes as two little-endian words: the first eight and the last eight (they
/// overlap below 16 bytes; the map is chosen by length, so the pair is still exact).
#[inline]
fn mid_key(bytes: &[u8]) -> [u64; 2] {
    let word = |at: usize| {
        let eight: [u8; 8] = bytes[at..at + 8].try_into().unwrap_or_default();
        u64::from_le_bytes(eight)
    };
    [word(0), word(bytes.len() - 8)]
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl Encoder {
    pub fn new(vocab: Vocab) -> Result<Self> {
        let pretokenizer = Pretokenizer::new(vocab.pattern())?;
        let internal_bytes = vocab.token_bytes();
        let mut bytes_to_id: AHashMap<Vec<u8>, u32> = AHashMap::with_capacity(internal_bytes.len());
        for (id, bytes) in internal_bytes.iter().enumerate() {
            bytes_to_id.entry(bytes.clone()).or_insert(id as u32);
        }
        let rule = vocab.merge_rule();
        let merge_by_bytes = rule == MergeRule::Tiktoken;
        let mut pairs = AHashMap::new();
        if !merge_by_bytes {
            pairs.reserve(vocab.merges().len());
            for (i, &(a, b)) in vocab.merges().iter().enumerate() {
                pairs.entry(pair_key(a, b)).or_insert(256 + i as u32);
            }
        }
        // a byte pair's rank: under the tiktoken rule the id of the 2-byte token
        let byte_pairs = (0..1u32 << 16)
            .map(|ab| {
                let rank = if merge_by_bytes {
                    bytes_to_id.get(&[(ab >> 8) as u8, ab as u8][..])
                } else {
                    pairs.get(&pair_key(ab >> 8, ab & 0xff))
                };
                rank.copied().unwrap_or(NO_RANK)
            })
            .collect();
        let names: Vec<&str> = vocab
            .special_tokens()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let special_ids = vocab.special_tokens().iter().map(|&(_, id)| id).collect();
        let special_matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&names)
            .map_err(|e| Error::Invalid(format!("special tokens: {e}")))?;
        let mut token_bytes = vec![Vec::new(); vocab.vocab_size()];
        for (internal, bytes) in internal_bytes.into_iter().enumerate() {
            token_bytes[vocab.external_id(internal as u32) as usize] = bytes;
        }
        for (name, id) in vocab.special_tokens() {
            token_bytes[*id as usize] = name.as_bytes().to_vec();
        }
        let canonical: Vec<u32> = internal_bytes_ids(&token_bytes, &vocab, &bytes_to_id);
        let canonical =
            (!canonical.iter().enumerate().all(|(i, &c)| c == i as u32)).then_some(canonical);
        let hash = vocab.hash();
        let mid_ids: [FlatMap<[u64; 2]>; 8] = std::array::from_fn(|i| {
            FlatMap::new(
                bytes_to_id
                    .iter()
                    .filter(|(bytes, _)| bytes.len() == i + 9)
                    .map(|(bytes, &id)| (mid_key(bytes), id)),
            )
        });
        let short_ids: [FlatMap; 7] = std::array::from_fn(|i| {
            FlatMap::new(
                bytes_to_id
                    .iter()
                    .filter(|(bytes, _)| bytes.len() == i + 2)
                    .filter_map(|(bytes, &id)| Some((short_key(bytes)?, id))),
            )
        });
        Ok(Self {
            id: NEXT_ENCODER_ID.fetch_add(1, Ordering::Relaxed),
            short_ids,
            mid_ids,
            canonical,
            whole_pieces: rule != MergeRule::Hf,
            external_ids: vocab.ids().map(<[u32]>::to_vec),
            vocab,
            hash,
            pretokenizer,
            byte_pairs,
            pairs: FlatMap::new(pairs),
            merge_by_bytes,
            token_bytes,
            bytes_to_id,
            special_matcher,
            special_ids,
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The vocab's hash (computed once).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn eot_id(&self) -> u32 {
        self.vocab.eot_id()
    }

    /// Bytes of a token (a special token's bytes are its UTF-8 text; an id no token has
    /// below `vocab_size` is empty).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The id of an ordinary token with exactly these bytes, or of the special token
    /// with this text.
    pub fn token_to_id(&self, bytes: &[u8]) -> Option<u32> {
        if let Some(&id) = self.bytes_to_id.get(bytes) {
            return Some(self.vocab.external_id(id));
        }
        self.vocab
            .special_tokens()
            .iter()
            .find(|(n, _)| n.as_bytes() == bytes)
            .map(|&(_, id)| id)
    }

    /// Encodes text with special tokens treated as plain text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_ordinary_into(text, &mut out);
        out
    }

    /// Encodes text with special tokens as plain text, as `options` say (the ids are
    /// the same for all options).
    pub fn encode_ordinary_with(&self, text: &str, options: impl Into<EncodeOptions>) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_ordinary_into_with(text, options.into(), &mut out);
        out
    }

    /// Appends the ids of `text` (special tokens as plain text) to `out`.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        self.encode_ordinary_into_with(text, EncodeOptions::default(), out);
    }

    fn encode_ordinary_into_with(&self, text: &str, options: EncodeOptions, out: &mut Vec<u32>) {
        if text.len() >= 2 * PARALLEL_CHUNK_BYTES && self.pretokenizer.splits_at_newlines() {
            self.encode_chunks_into(text, PARALLEL_CHUNK_BYTES, options, out);
        } else {
            self.encode_sequential_into(text, options, out, &mut ());
        }
    }

    /// How the pieces of `text` are encoded with `options`, as one sequential call
    /// would (no chunks): how many are known tokens, merged, or cache hits.
    pub fn piece_stats(&self, text: &str, options: impl Into<EncodeOptions>) -> PieceStats {
        let mut stats = PieceStats::default();
        self.encode_sequential_into(text, options.into(), &mut Vec::new(), &mut stats);
        stats
    }

    /// Cuts `text` into chunks of about `chunk_bytes` where no piece can cross (see
    /// [`Pretokenizer::units`]), encodes them in parallel and appends the ids in order.
    fn encode_chunks_into(
        &self,
        text: &str,
        chunk_bytes: usize,
        options: EncodeOptions,
        out: &mut Vec<u32>,
    ) {
        let chunks: Vec<&str> = self.pretokenizer.units(text, chunk_bytes).collect();
        let parts: Vec<Vec<u32>> = chunks
            .par_iter()
            .map(|chunk| {
                let mut ids = Vec::with_capacity(chunk.len() / 3 + 1);
                self.encode_sequential_into(chunk, options, &mut ids, &mut ());
                ids
            })
            .collect();
        for part in parts {
            out.extend_from_slice(&part);
        }
    }

    fn encode_sequential_into(
        &self,
        text: &str,
        options: EncodeOptions,
        out: &mut Vec<u32>,
        tally: &mut impl Tally,
    ) {
        // monomorphised: the choice costs no branch per piece
        if options.short_keys {
            self.encode_sequential::<true>(text, options.cache, out, tally);
        } else {
            self.encode_sequential::<false>(text, options.cache, out, tally);
        }
    }

    fn encode_sequential<const SHORT_KEYS: bool>(
        &self,
        text: &str,
        mode: PieceCacheMode,
        out: &mut Vec<u32>,
        tally: &mut impl Tally,
    ) {
        let start = out.len();
        let mut scratch = Scratch::default();
        let mode = if text.len() < CACHE_MIN_TEXT {
            PieceCacheMode::Off
        } else {
            mode
        };
        match mode {
            PieceCacheMode::Off => self.pretokenizer.for_each_piece(text, |piece| {
                let piece = piece.as_bytes();
                if let Some(id) = self.known_piece::<SHORT_KEYS>(piece) {
                    out.push(id);
                    tally.known();
                } else {
                    self.merge_piece(piece, out, &mut scratch);
                    tally.merged();
                }
            }),
            PieceCacheMode::AllPieces => {
                PieceCache::with_thread(self.id, |cache| {
                    self.pretokenizer.for_each_piece(text, |piece| {
                        let piece = piece.as_bytes();
                        if piece.len() == 1 {
                            out.push(piece[0] as u32);
                            return tally.known();
                        }
                        let Some(slot) = cache.slot(piece) else {
                            return self.encode_piece::<SHORT_KEYS>(
                                piece,
                                out,
                                &mut scratch,
                                tally,
                            );
                        };
                        if let Some(ids) = cache.get(slot, piece) {
                            out.extend_from_slice(ids);
                            return tally.hit();
                        }
                        let before = out.len();
                        self.encode_piece::<SHORT_KEYS>(piece, out, &mut scratch, tally);
                        cache.put(slot, piece, &out[before..]);
                    })
                });
            }
            PieceCacheMode::Auto => {
                PieceCache::with_thread(self.id, |memo| {
                    let mut auto = AutoCache {
                        cache: Some(memo),
                        probes: 0,
                        hits: 0,
                    };
                    self.pretokenizer.for_each_piece(text, |piece| {
                        let piece = piece.as_bytes();
                        if let Some(id) = self.known_piece::<SHORT_KEYS>(piece) {
                            out.push(id);
                            return tally.known();
                        }
                        self.merge_through(&mut auto, piece, out, &mut scratch, tally);
                    });
                });
            }
        }
        if let Some(external) = &self.external_ids {
            for id in &mut out[start..] {
                *id = external[*id as usize];
            }
        }
    }

    /// [`PieceCacheMode::Auto`]'s path for a piece that is not a token: the cache, or a
    /// merge. Out of line, so that the loop over pieces that are tokens (most of them)
    /// stays small (digits, all tokens, encode 20% faster than with this inlined).
    #[inline(never)]
    fn merge_through(
        &self,
        auto: &mut AutoCache,
        piece: &[u8],
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
        tally: &mut impl Tally,
    ) {
        let Some((cache, slot)) = auto
            .cache
            .as_deref_mut()
            .and_then(|c| c.slot(piece).map(|slot| (c, slot)))
        else {
            self.merge_piece(piece, out, scratch);
            return tally.merged();
        };
        auto.probes += 1;
        if let Some(ids) = cache.get(slot, piece) {
            out.extend_from_slice(ids);
            auto.hits += 1;
            tally.hit();
        } else {
            let before = out.len();
            self.merge_piece(piece, out, scratch);
            cache.put(slot, piece, &out[before..]);
            tally.merged();
        }
        if auto.probes == AUTO_SAMPLE && auto.hits * AUTO_MIN_HIT_DIV < auto.probes {
            auto.cache = None;
            tally.dropped();
        }
    }

    /// Encodes text; the `allowed` special tokens found in it become their ids.
    pub fn encode(&self, text: &str, allowed: &AllowedSpecial) -> Vec<u32> {
        if *allowed == AllowedSpecial::None {
            return self.encode_ordinary(text);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut start = 0;
        for m in self.special_matcher.find_iter(text) {
            let id = self.special_ids[m.pattern().as_usize()];
            if let AllowedSpecial::Some(ids) = allowed {
                if !ids.contains(&id) {
                    continue;
                }
            }
            self.encode_ordinary_into(&text[start..m.start()], &mut out);
            out.push(id);
            start = m.end();
        }
        self.encode_ordinary_into(&text[start..], &mut out);
        out
    }

    /// Encodes documents (special tokens as plain text) in parallel, in order: the ids
    /// of each are those of [`encode_ordinary`](Self::encode_ordinary). Documents longer
    /// than [`DOCUMENT_UNIT_BYTES`] are cut at split points, and the units are
    /// encoded largest first, so a batch of a few documents of very different sizes keeps
    /// every thread busy to its end.
    pub fn encode_documents<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        self.encode_documents_in_units(texts, DOCUMENT_UNIT_BYTES)
    }

    fn encode_documents_in_units<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        unit_bytes: usize,
    ) -> Vec<Vec<u32>> {
        let mut units: Vec<(usize, &str)> = Vec::with_capacity(texts.len());
        for (doc, text) in texts.iter().enumerate() {
            units.extend(
                self.pretokenizer
                    .units(text.as_ref(), unit_bytes)
                    .map(|unit| (doc, unit)),
            );
        }
        // Largest units first, each thread pulling the next: the last units to finish are
        // the small ones, so no thread waits long on another (a batch is a barrier).
        let mut order: Vec<usize> = (0..units.len()).collect();
        order.sort_unstable_by_key(|&i| Reverse(units[i].1.len()));
        let next = AtomicUsize::new(0);
        let workers = rayon::current_num_threads().clamp(1, units.len().max(1));
        let done: Vec<Vec<(usize, Vec<u32>)>> = (0..workers)
            .into_par_iter()
            .map(|_| {
                let mut mine = Vec::new();
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let unit = units[i].1;
                    let mut ids = Vec::with_capacity(unit.len() / 3 + 1);
                    self.encode_sequential_into(unit, EncodeOptions::default(), &mut ids, &mut ());
                    mine.push((i, ids));
                }
                mine
            })
            .collect();
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); units.len()];
        for (i, ids) in done.into_iter().flatten() {
            parts[i] = ids;
        }
        let mut out: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for (&(doc, _), ids) in units.iter().zip(parts) {
            if doc == out.len() {
                out.push(ids);
            } else if let Some(last) = out.last_mut() {
                last.extend_from_slice(&ids);
            }
        }
        out
    }

    /// Encodes many texts in parallel (rayon), in order.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        allowed: &AllowedSpecial,
    ) -> Vec<Vec<u32>> {
        if *allowed == AllowedSpecial::None {
            return self.encode_documents(texts);
        }
        texts
            .par_iter()
            .map(|t| self.encode(t.as_ref(), allowed))
            .collect()
    }

    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let bytes = self
                .token_bytes(id)
                .ok_or_else(|| id_out_of_range(id, self.vocab_size()))?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Decodes to text; invalid UTF-8 sequences become U+FFFD (like errors="replace").
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// [`Self::rank`] of two byte ids (lmrs order: a byte's id is its value).
    #[inline]
    fn byte_rank(&self, left: u8, right: u8) -> u32 {
        self.byte_pairs[(left as usize) << 8 | right as usize]
    }

    #[inline]
    fn rank(&self, left: u32, right: u32) -> u32 {
        self.pairs.get(pair_key(left, right)).unwrap_or(NO_RANK)
    }

    /// The lmrs-order id of the token that is `bytes` (2 bytes or more), or [`NO_RANK`];
    /// under the tiktoken rule also the rank of merging any two parts that make `bytes`.
    #[inline(always)]
    fn token_of(&self, bytes: &[u8]) -> u32 {
        match bytes.len() {
            // the byte-pair table holds 2-byte tokens' ids under the tiktoken rule (merge
            // ranks under the Hugging Face rules)
            2 if self.merge_by_bytes => self.byte_rank(bytes[0], bytes[1]),
            len @ 2..=8 => self.short_ids[len - 2]
                .get(le_word(bytes))
                .unwrap_or(NO_RANK),
            len @ 9..=16 => self.mid_ids[len - 9].get(mid_key(bytes)).unwrap_or(NO_RANK),
            _ => self.bytes_to_id.get(bytes).copied().unwrap_or(NO_RANK),
        }
    }

    /// The id of a piece that needs no merging: one byte, or a token whole (when the
    /// merge rule takes whole pieces).
    #[inline]
    fn known_piece<const SHORT_KEYS: bool>(&self, piece: &[u8]) -> Option<u32> {
        if piece.len() == 1 {
            return Some(piece[0] as u32);
        }
        if !self.whole_pieces {
            return None;
        }
        if !SHORT_KEYS {
            return self.bytes_to_id.get(piece).copied();
        }
        Some(self.token_of(piece)).filter(|&id| id != NO_RANK)
    }

    #[inline]
    fn encode_piece<const SHORT_KEYS: bool>(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
        tally: &mut impl Tally,
    ) {
        if let Some(id) = self.known_piece::<SHORT_KEYS>(piece) {
            out.push(id);
            tally.known();
        } else {
            self.merge_piece(piece, out, scratch);
            tally.merged();
        }
    }

    #[inline]
    fn merge_piece(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        // monomorphised: neither the rule nor the identity costs a branch per merge step
        match (&self.canonical, self.merge_by_bytes) {
            (_, true) => self.merge::<true>(piece, out, scratch, |id| id),
            (None, false) => self.merge::<false>(piece, out, scratch, |id| id),
            (Some(canonical), false) => {
                self.merge::<false>(piece, out, scratch, |id| canonical[id as usize])
            }
        }
    }

    #[inline]
    fn merge<const BY_BYTES: bool>(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
        canonical: impl Fn(u32) -> u32,
    ) {
        if piece.len() < LONG_PIECE {
            self.merge_short::<BY_BYTES>(piece, out, scratch, canonical);
        } else {
            self.merge_long::<BY_BYTES>(piece, out, canonical);
        }
    }

    /// The rank of merging the part at `left` (bytes `piece[left..right]`, id `left_id`)
    /// with the next one (bytes `piece[right..end]`, id `right_id`): by the bytes they
    /// make under the tiktoken rule, by the pair of ids otherwise.
    #[inline]
    fn pair_rank<const BY_BYTES: bool>(
        &self,
        piece: &[u8],
        (left, end): (usize, usize),
        (left_id, right_id): (u32, u32),
    ) -> u32 {
        if BY_BYTES {
            self.token_of(&piece[left..end])
        } else {
            self.rank(left_id, right_id)
        }
    }

    /// Linear scan for the lowest-rank pair; each merge updates only its neighbours.
    fn merge_short<const BY_BYTES: bool>(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
        canonical: impl Fn(u32) -> u32,
    ) {
        let Scratch { ids, ranks, starts } = scratch;
        ids.clear();
        ids.extend(piece.iter().map(|&b| b as u32));
        ranks.clear();
        ranks.extend(piece.windows(2).map(|w| self.byte_rank(w[0], w[1])));
        // where each part starts, and the piece's end (only the bytes rule reads them)
        starts.clear();
        if BY_BYTES {
            starts.extend(0..=piece.len() as u32);
        }
        loop {
            let mut best = NO_RANK;
            let mut at = 0;
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NO_RANK {
                break;
            }
            ids[at] = canonical(best);
            ids.remove(at + 1);
            ranks.remove(at);
            if BY_BYTES {
                starts.remove(at + 1);
            }
            let rank_at = |i: usize| {
                let span = if BY_BYTES {
                    (starts[i] as usize, starts[i + 2] as usize)
                } else {
                    (0, 0)
                };
                self.pair_rank::<BY_BYTES>(piece, span, (ids[i], ids[i + 1]))
            };
            if at + 1 < ids.len() {
                ranks[at] = rank_at(at);
            }
            if at > 0 {
                ranks[at - 1] = rank_at(at - 1);
            }
        }
        out.extend_from_slice(ids);
    }

    /// Heap of (rank, position) over a linked list of parts: O(n log n) for long pieces
    /// (a 40,000-character run of one letter). `rank_at[p]` is the rank of merging the
    /// part at `p` with the next one (NO_RANK for none, or a dead part), so a stale heap
    /// entry is told by one comparison, without looking the pair up again.
    fn merge_long<const BY_BYTES: bool>(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        canonical: impl Fn(u32) -> u32,
    ) {
        const NONE: u32 = u32::MAX;
        let n = piece.len();
        let mut ids: Vec<u32> = piece.iter().map(|&b| b as u32).collect();
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut rank_at: Vec<u32> = piece
            .windows(2)
            .map(|w| self.byte_rank(w[0], w[1]))
            .chain([NO_RANK])
            .collect();
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = rank_at
            .iter()
            .enumerate()
            .filter(|&(_, &r)| r != NO_RANK)
            .map(|(i, &r)| Reverse((r, i as u32)))
            .collect();
        // the rank of the part at `l` with the next one, `r`
        let pair = |ids: &[u32], next: &[u32], l: usize, r: usize| {
            let end = match next[r] {
                NONE => n,
                after => after as usize,
            };
            self.pair_rank::<BY_BYTES>(piece, (l, end), (ids[l], ids[r]))
        };
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let p = pos as usize;
            if rank_at[p] != rank {
                continue; // stale: the part, or its neighbour, changed since
            }
            let r = next[p] as usize;
            ids[p] = canonical(rank);
            rank_at[r] = NO_RANK;
            next[p] = next[r];
            rank_at[p] = match next[p] {
                NONE => NO_RANK,
                after => {
                    prev[after as usize] = pos;
                    pair(&ids, &next, p, after as usize)
                }
            };
            if rank_at[p] != NO_RANK {
                heap.push(Reverse((rank_at[p], pos)));
            }
            if prev[p] != NONE {
                let l = prev[p] as usize;
                rank_at[l] = pair(&ids, &next, l, p);
                if rank_at[l] != NO_RANK {
                    heap.push(Reverse((rank_at[l], l as u32)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(ids[i as usize]);
            i = next[i as usize];
        }
    }
}

/// For each lmrs-order id, the id [`Encoder::encode`] uses for its bytes (the lowest).
fn internal_bytes_ids(
    token_bytes: &[Vec<u8>],
    vocab: &Vocab,
    bytes_to_id: &AHashMap<Vec<u8>, u32>,
) -> Vec<u32> {
    let internal = 256 + vocab.merges().len();
    match vocab.ids() {
        // lmrs's own vocab: merges made by one rule; duplicates keep the lowest id, as
        // the tiktoken rule does
        None => (0..internal as u32).collect(),
        Some(ids) => (0..internal)
            .map(|i| {
                let bytes = &token_bytes[ids[i] as usize];
                bytes_to_id.get(bytes).copied().unwrap_or(i as u32)
            })
            .collect(),
    }
}

/// Texts shorter than this are encoded without a [`PieceCache`] (setting one up costs
/// more than it saves on a few hundred pieces).
const CACHE_MIN_TEXT: usize = 4096;
/// [`PieceCacheMode::Auto`] checks the cache's hit rate after this many merged pieces
/// and drops it below 1/[`AUTO_MIN_HIT_DIV`]: a miss costs a probe and a 68-byte store on
/// top of the merge, a hit saves a merge (several pair lookups), so a rate that low
/// cannot pay.
pub const AUTO_SAMPLE: u32 = 1024;
pub const AUTO_MIN_HIT_DIV: u32 = 8;
/// Longest piece the cache keeps, and most ids it keeps for one piece: nearly every
/// piece of prose and code fits, and most words of scripts of 2-4 bytes a character,
/// which 16 bytes and 4 ids cut off (generated non-Latin text +20%, prose unchanged).
const CACHE_KEY_WORDS: usize = 4;
const CACHE_KEY_BYTES: usize = 8 * CACHE_KEY_WORDS;
const CACHE_IDS: usize = 8;
/// A cached piece's bytes, zero-padded, as little-endian words.
type CacheKey = [u64; CACHE_KEY_WORDS];

/// Whole pieces → their ids: real text repeats its pieces (" the", "    ", "self",
/// a play's speaker names), and a hit costs one probe instead of a vocabulary lookup
/// and a merge. Direct-mapped (a new piece overwrites its slot), [`CACHE_SLOTS`] slots
/// of 68 bytes (1.1 MB per thread that encodes).
/// One per thread, kept between calls (a per-call cache started cold on every text and
/// lost more than it won), and tagged with the encoder that filled it: another
/// encoder's first call on the thread empties it, so no two vocabularies share entries.
struct PieceCache {
    owner: u64,
    slots: Vec<CacheSlot>,
    mask: usize,
}

const CACHE_SLOTS: usize = 16384;

thread_local! {
    static THREAD_CACHE: RefCell<PieceCache> = RefCell::new(PieceCache::empty(u64::MAX));
}

/// Ids of the encoders made so far (see [`Encoder`]'s `id`).
static NEXT_ENCODER_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Default)]
struct CacheSlot {
    /// The piece's bytes, zero-padded; `len` tells "a" from "a\0" (0: empty slot, as
    /// pieces are never empty).
    key: CacheKey,
    len: u8,
    n_ids: u8,
    ids: [u32; CACHE_IDS],
}

impl PieceCache {
    fn empty(owner: u64) -> Self {
        Self {
            owner,
            slots: vec![CacheSlot::default(); CACHE_SLOTS],
            mask: CACHE_SLOTS - 1,
        }
    }

    /// Runs `work` with the calling thread's cache, emptied first when another encoder
    /// filled it (a fresh cache if the thread's is in use or already destroyed).
    fn with_thread<R>(owner: u64, work: impl FnOnce(&mut PieceCache) -> R) -> R {
        let mut work = Some(work);
        let done = THREAD_CACHE.try_with(|cell| {
            let mut cache = cell.try_borrow_mut().ok()?;
            if cache.owner != owner {
                cache.slots.fill(CacheSlot::default());
                cache.owner = owner;
            }
            work.take().map(|work| work(&mut cache))
        });
        match (done, work) {
            (Ok(Some(result)), _) => result,
            (_, Some(work)) => work(&mut PieceCache::empty(owner)),
            // `work` ran, so the first arm matched: not reachable
            (_, None) => unreachable!("the work ran but its result was lost"),
        }
    }

    /// The piece's key and slot index, or None when it is too long to cache.
    #[inline]
    fn slot(&self, piece: &[u8]) -> Option<(CacheKey, usize)> {
        if piece.len() > CACHE_KEY_BYTES {
            return None;
        }
        let mut key: CacheKey = [0; CACHE_KEY_WORDS];
        for (word, chunk) in key.iter_mut().zip(piece.chunks(8)) {
            *word = le_word(chunk);
        }
        let mixed = key
            .iter()
            .fold(piece.len() as u64, |h, &w| (h ^ w).rotate_left(29));
        let h = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some((key, (h >> 40) as usize & self.mask))
    }

    #[inline]
    fn get(&self, (key, index): (CacheKey, usize), piece: &[u8]) -> Option<&[u32]> {
        let slot = &self.slots[index];
        (slot.key == key && slot.len as usize == piece.len())
            .then(|| &slot.ids[..slot.n_ids as usize])
    }

    #[inline]
    fn put(&mut self, (key, index): (CacheKey, usize), piece: &[u8], ids: &[u32]) {
        if ids.len() <= CACHE_IDS {
            let slot = &mut self.slots[index];
            slot.key = key;
            slot.len = piece.len() as u8;
            slot.n_ids = ids.len() as u8;
            slot.ids[..ids.len()].copy_from_slice(ids);
        }
    }
}

/// The thread's cache while [`PieceCacheMode::Auto`] keeps it (None once dropped), and
/// its hit count over the first [`AUTO_SAMPLE`] probes.
struct AutoCache<'c> {
    cache: Option<&'c mut PieceCache>,
    probes: u32,
    hits: u32,
}

/// Buffers reused across the pieces of one text.
#[derive(Default)]
struct Scratch {
    ids: Vec<u32>,
    ranks: Vec<u32>,
    starts: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpe::pretokenize::GPT4_PATTERN;

    /// Plain reference: apply the merge list in order to each piece (minbpe style).
    fn reference_encode(vocab: &Vocab, text: &str) -> Vec<u32> {
        let pre = Pretokenizer::new(vocab.pattern()).unwrap();
        let mut out = Vec::new();
        for piece in pre.pieces(text) {
            let mut ids: Vec<u32> = piece.bytes().map(u32::from).collect();
            for (i, &(a, b)) in vocab.merges().iter().enumerate() {
                let mut j = 0;
                let mut merged = Vec::with_capacity(ids.len());
                while j < ids.len() {
                    if j + 1 < ids.len() && ids[j] == a && ids[j + 1] == b {
                        merged.push(256 + i as u32);
                        j += 2;
                    } else {
                        merged.push(ids[j]);
                        j += 1;
                    }
                }
                ids = merged;
            }
            out.extend(ids);
        }
        out
    }

    fn vocab() -> Vocab {
        // 256 "th", 257 "the", 258 " the", 259 "aa", 260 "aaaa" (an order BPE training
        // could produce: with it, tiktoken's rule and the merge list agree)
        let merges = vec![(116, 104), (256, 101), (32, 257), (97, 97), (259, 259)];
        Vocab::new(GPT4_PATTERN, merges, &["<|pad|>".to_string()]).unwrap()
    }

    #[test]
    fn matches_reference_and_round_trips() {
        let enc = Encoder::new(vocab()).unwrap();
        for text in [
            "the theme then",
            "aaaaaaaaa the",
            "",
            "héllo wörld 123",
            "   the\n\n",
        ] {
            let ids = enc.encode_ordinary(text);
            assert_eq!(ids, reference_encode(enc.vocab(), text), "{text:?}");
            assert_eq!(enc.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn long_pieces_use_the_heap_and_agree_with_the_scan() {
        let enc = Encoder::new(vocab()).unwrap();
        for n in [LONG_PIECE - 1, LONG_PIECE, LONG_PIECE + 3, 40_000] {
            let text = "a".repeat(n);
            let ids = enc.encode_ordinary(&text);
            assert_eq!(ids, reference_encode(enc.vocab(), &text), "n={n}");
            assert_eq!(ids.len(), n / 4 + (n % 4) / 2 + n % 2);
        }
    }

    #[test]
    fn special_tokens_only_when_allowed() {
        let enc = Encoder::new(vocab()).unwrap();
        let eot = enc.eot_id();
        let pad = enc.vocab().special_id("<|pad|>").unwrap();
        let text = "the<|endoftext|>aa<|pad|>";
        let all = enc.encode(text, &AllowedSpecial::All);
        assert_eq!(all, vec![257, eot, 259, pad]);
        let only_pad = enc.encode(text, &AllowedSpecial::Some(vec![pad]));
        assert_eq!(only_pad.last(), Some(&pad));
        assert!(!only_pad.contains(&eot));
        let none = enc.encode(text, &AllowedSpecial::None);
        assert_eq!(none, enc.encode_ordinary(text));
        assert_eq!(enc.decode(&all).unwrap(), text);
    }

    #[test]
    fn decode_replaces_invalid_utf8_and_rejects_unknown_ids() {
        let enc = Encoder::new(vocab()).unwrap();
        let ids = enc.encode_ordinary("é");
        assert_eq!(ids.len(), 2);
        assert_eq!(enc.decode(&ids[..1]).unwrap(), "\u{FFFD}");
        assert!(enc.decode(&[99_999]).is_err());
    }

    /// 3,000 lines drawn from a list of edge cases (spaces, CRLF, digits, '/', tabs).
    fn chunking_text() -> String {
        let lines = [
            "the cat\n",
            "  indented\n",
            "\n\n",
            "x = 1;  \r\n",
            "  \n",
            "end.\n",
            "'s it\n",
            "\t\ttab\n",
            "  \n  \nhello",
            "123456\n",
            "£ sign\n",
            "!!\n\n ",
            "x!\n",
            "/path\n",
            "  \n",
        ];
        let mut seed = 12345u64;
        let mut text = String::new();
        for _ in 0..3000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(lines[(seed >> 33) as usize % lines.len()]);
        }
        text
    }

    #[test]
    fn chunked_encoding_equals_sequential() {
        use crate::bpe::pretokenize::CL100K_PATTERN;
        let text = chunking_text();
        for pattern in [
            GPT4_PATTERN,
            CL100K_PATTERN,
            crate::bpe::pretokenize::O200K_PATTERN,
        ] {
            let merges = vec![(116, 104), (256, 101), (32, 257), (97, 97), (259, 259)];
            let enc = Encoder::new(Vocab::new(pattern, merges, &[]).unwrap()).unwrap();
            let sequential = enc.encode_ordinary(&text);
            for chunk in [1, 7, 64, 1000] {
                let mut chunked = Vec::new();
                enc.encode_chunks_into(&text, chunk, EncodeOptions::default(), &mut chunked);
                assert_eq!(chunked, sequential, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn documents_cut_into_units_equal_each_document_encoded_whole() {
        let text = chunking_text();
        let docs = [
            &text[..],
            "",
            "the cat",
            &text[..text.len() / 3],
            "x\n",
            &text[5..],
        ];
        for pattern in [
            GPT4_PATTERN,
            crate::bpe::pretokenize::O200K_PATTERN,
            r"\S+|\s+",
        ] {
            let merges = vec![(116, 104), (256, 101), (32, 257), (97, 97), (259, 259)];
            let enc = Encoder::new(Vocab::new(pattern, merges, &[]).unwrap()).unwrap();
            let whole: Vec<Vec<u32>> = docs.iter().map(|d| enc.encode_ordinary(d)).collect();
            for unit in [1, 7, 64, 1000, DOCUMENT_UNIT_BYTES] {
                assert_eq!(
                    enc.encode_documents_in_units(&docs, unit),
                    whole,
                    "unit {unit}"
                );
            }
            assert!(enc.encode_documents::<&str>(&[]).is_empty());
        }
    }

    /// Bytes numbered in reverse; merges "bc" (300), "ab" (301), "abc" = "ab" + "c" (302).
    fn reversed(rule: MergeRule) -> Encoder {
        let id = |c: u8| 255 - c as u32;
        let merges = [
            (id(b'b'), id(b'c'), 300),
            (id(b'a'), id(b'b'), 301),
            (301, id(b'c'), 302),
        ];
        let byte_ids: Vec<u32> = (0..256).rev().collect();
        let specials = vec![(EOT_NAME.to_string(), 310)];
        Encoder::new(
            Vocab::with_ids(GPT4_PATTERN, &byte_ids, &merges, specials, EOT_NAME, rule).unwrap(),
        )
        .unwrap()
    }
    const EOT_NAME: &str = crate::bpe::vocab::EOT;

    #[test]
    fn explicit_ids_come_out_and_decode() {
        let enc = reversed(MergeRule::Tiktoken);
        assert_eq!(enc.vocab_size(), 311);
        assert_eq!(enc.encode_ordinary("z ab"), vec![255 - 122, 255 - 32, 301]);
        assert_eq!(
            enc.encode("bc<|endoftext|>", &AllowedSpecial::All),
            vec![300, 310]
        );
        assert_eq!(enc.token_to_id(b"ab"), Some(301));
        assert_eq!(
            enc.decode(&[302, 310, 255 - 32]).unwrap(),
            "abc<|endoftext|> "
        );
        // ids 303..309 belong to no token: they decode to nothing
        assert_eq!(enc.token_bytes(305), Some(&b""[..]));
        let long = "ab".repeat(LONG_PIECE);
        assert_eq!(enc.encode_ordinary(&long), vec![301; LONG_PIECE]);
    }

    #[test]
    fn hf_rule_merges_only_listed_pairs() {
        // "abc": "bc" merges first (rank 0); tiktoken then joins "a" + "bc" into "abc"
        // because that is a token, Hugging Face does not (no merge lists that pair)
        let a = 255 - 97;
        assert_eq!(
            reversed(MergeRule::Tiktoken).encode_ordinary("abc"),
            vec![302]
        );
        assert_eq!(reversed(MergeRule::Hf).encode_ordinary("abc"), vec![a, 300]);
        // a piece that is a token: whole with ignore_merges, merged otherwise
        assert_eq!(
            reversed(MergeRule::HfIgnoreMerges).encode_ordinary("abc"),
            vec![302]
        );
        assert_eq!(reversed(MergeRule::Hf).encode_ordinary("ab"), vec![301]);
    }

    #[test]
    fn several_merges_may_make_one_token() {
        // "abc" listed twice, as "ab"+"c" (rank 2) and "a"+"bc" (rank 3), as Hugging Face
        // files converted from tiktoken do; "abcd" joins "abc" + "d" (rank 4)
        let id = |c: u8| 255 - c as u32;
        let merges = [
            (id(b'b'), id(b'c'), 300),
            (id(b'a'), id(b'b'), 301),
            (301, id(b'c'), 302),
            (id(b'a'), 300, 302),
            (302, id(b'd'), 303),
        ];
        let byte_ids: Vec<u32> = (0..256).rev().collect();
        let specials = vec![(EOT_NAME.to_string(), 310)];
        let vocab = Vocab::with_ids(
            GPT4_PATTERN,
            &byte_ids,
            &merges,
            specials,
            EOT_NAME,
            MergeRule::Hf,
        )
        .unwrap();
        let enc = Encoder::new(vocab).unwrap();
        // "bc" first, then "a"+"bc" makes "abc", which must still join "d"
        assert_eq!(enc.encode_ordinary("abcd"), vec![303]);
        assert_eq!(
            enc.encode_ordinary(&"abcd".repeat(LONG_PIECE)),
            vec![303; LONG_PIECE]
        );
        assert_eq!(enc.decode(&[302, 303]).unwrap(), "abcabcd");
    }

    #[test]
    fn piece_cache_gives_the_ids_of_each_piece_alone() {
        // pieces that are tokens, that merge, that are longer than the cache's key
        // (17+ bytes) or give more ids than it keeps (10 unmerged letters)
        let words = [
            "the",
            " the",
            "aaaa",
            "aaaaaaaaaaaaaaaaaaaaaaa",
            " aaaaaaaaa",
            " xyzxyzxyzq",
            "é",
            "\n\n",
            "  ",
            "abc",
            " abcabc",
            "z",
            " 12345",
            "!!",
        ];
        let mut seed = 99u64;
        let mut text = String::new();
        while text.len() < 6 * CACHE_MIN_TEXT {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(seed >> 33) as usize % words.len()]);
        }
        for enc in [
            Encoder::new(vocab()).unwrap(),
            reversed(MergeRule::Tiktoken),
            reversed(MergeRule::Hf),
        ] {
            let mut expected = Vec::new();
            let mut scratch = Scratch::default();
            for piece in enc.pretokenizer.pieces(&text) {
                enc.encode_piece::<false>(piece.as_bytes(), &mut expected, &mut scratch, &mut ());
            }
            if let Some(external) = &enc.external_ids {
                expected
                    .iter_mut()
                    .for_each(|id| *id = external[*id as usize]);
            }
            for mode in [
                PieceCacheMode::Off,
                PieceCacheMode::AllPieces,
                PieceCacheMode::Auto,
            ] {
                assert_eq!(enc.encode_ordinary_with(&text, mode), expected, "{mode:?}");
                let byte_keys = EncodeOptions {
                    cache: mode,
                    short_keys: false,
                };
                assert_eq!(enc.encode_ordinary_with(&text, byte_keys), expected);
                let stats = enc.piece_stats(&text, mode);
                assert_eq!(
                    stats.known + stats.merged + stats.cache_hits,
                    stats.pieces,
                    "{mode:?}"
                );
                assert_eq!(
                    stats.cache_hits > 0,
                    mode != PieceCacheMode::Off,
                    "{mode:?}"
                );
            }
        }
    }

    #[test]
    fn encoders_taking_turns_on_a_thread_never_share_cached_pieces() {
        // the same pieces have other ids in each vocab; the thread's cache is kept
        // between calls, so each call must see only its own encoder's entries
        let text = " the theme aaaa aaaaaaaa abc abcabc ".repeat(CACHE_MIN_TEXT / 8);
        let encoders = [
            Encoder::new(vocab()).unwrap(),
            reversed(MergeRule::Tiktoken),
            Encoder::new(vocab()).unwrap(),
        ];
        let expected: Vec<Vec<u32>> = encoders
            .iter()
            .map(|e| e.encode_ordinary_with(&text, PieceCacheMode::Off))
            .collect();
        assert_ne!(expected[0], expected[1]);
        for _ in 0..3 {
            for (enc, want) in encoders.iter().zip(&expected) {
                for mode in [PieceCacheMode::AllPieces, PieceCacheMode::Auto] {
                    assert_eq!(&enc.encode_ordinary_with(&text, mode), want, "{mode:?}");
                }
            }
        }
    }

    #[test]
    fn auto_keeps_the_cache_only_while_it_hits() {
        // every piece " theXYZ" is merged (no such token; 4 ids, so cacheable) and new:
        // nothing repeats, so
        // Auto drops the cache after its sample; one piece repeated keeps it
        let enc = Encoder::new(vocab()).unwrap();
        let unique: String = (0..3 * AUTO_SAMPLE)
            .map(|i| {
                let letter = |k: u32| char::from(b'a' + (k % 26) as u8);
                format!(" the{}{}{}", letter(i), letter(i / 26), letter(i / 676))
            })
            .collect();
        let stats = enc.piece_stats(&unique, PieceCacheMode::Auto);
        assert_eq!(stats.cache_hits, 0);
        assert!(stats.cache_dropped_at.is_some(), "{stats:?}");
        let repeated = " theq".repeat(3 * AUTO_SAMPLE as usize);
        let stats = enc.piece_stats(&repeated, PieceCacheMode::Auto);
        assert_eq!(stats.cache_dropped_at, None, "{stats:?}");
        assert_eq!(stats.merged, 1);
        // whole-token pieces never reach the cache in Auto; in AllPieces they do
        let tokens = " the".repeat(3 * AUTO_SAMPLE as usize);
        let auto = enc.piece_stats(&tokens, PieceCacheMode::Auto);
        assert_eq!((auto.known, auto.cache_hits), (auto.pieces, 0));
        let all = enc.piece_stats(&tokens, PieceCacheMode::AllPieces);
        assert_eq!(all.cache_hits, all.pieces - 1);
        for text in [&unique, &repeated, &tokens] {
            assert_eq!(
                enc.encode_ordinary_with(text, PieceCacheMode::Auto),
                enc.encode_ordinary_with(text, PieceCacheMode::Off)
            );
        }
    }

    #[test]
    fn short_key_is_the_zero_padded_little_endian_bytes() {
        let bytes: Vec<u8> = (0..9u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(200))
            .collect();
        for len in 0..=9 {
            let piece = &bytes[..len];
            let expected = (2..=8).contains(&len).then(|| {
                let mut padded = [0u8; 8];
                padded[..len].copy_from_slice(piece);
                u64::from_le_bytes(padded)
            });
            assert_eq!(short_key(piece), expected, "len {len}");
        }
    }

    #[test]
    fn short_keys_tell_trailing_zero_bytes_apart() {
        // "a\0" and "a" pad to the same u64; the per-length maps keep them apart
        let merges = vec![(97, 0), (256, 0), (97, 97)];
        let enc = Encoder::new(Vocab::new(GPT4_PATTERN, merges, &[]).unwrap()).unwrap();
        assert_eq!(enc.known_piece::<true>(b"a\0"), Some(256));
        assert_eq!(enc.known_piece::<true>(b"a\0\0"), Some(257));
        assert_eq!(enc.known_piece::<true>(b"aa"), Some(258));
        assert_eq!(enc.known_piece::<true>(b"a"), Some(97));
        assert_eq!(enc.known_piece::<true>(b"ab"), None);
        for piece in [&b"a\0"[..], b"a\0\0", b"aa", b"a", b"ab"] {
            assert_eq!(
                enc.known_piece::<true>(piece),
                enc.known_piece::<false>(piece)
            );
        }
        let merges = vec![(97, 97), (256, 256), (257, 257), (258, 258), (259, 258)];
        let long = Encoder::new(Vocab::new(GPT4_PATTERN, merges, &[]).unwrap()).unwrap();
        // 8 bytes: the last short map; 16: the last two-word map; 24: the byte-string map
        assert_eq!(long.known_piece::<true>(b"aaaa"), Some(257));
        assert_eq!(long.known_piece::<true>(b"aaaaaaaa"), Some(258));
        assert_eq!(
            long.known_piece::<true>("a".repeat(16).as_bytes()),
            Some(259)
        );
        assert_eq!(
            long.known_piece::<true>("a".repeat(24).as_bytes()),
            Some(260)
        );
        assert_eq!(long.known_piece::<true>("a".repeat(12).as_bytes()), None);
        assert_eq!(long.encode_ordinary(&"a".repeat(12)), vec![258, 257]);
        // 40: five 8s, then 16 16 8 (leftmost first), then the 16 and 8 on the right
        assert_eq!(long.encode_ordinary(&"a".repeat(40)), vec![259, 260]);
    }

    #[test]
    fn batch_matches_single() {
        let enc = Encoder::new(vocab()).unwrap();
        let texts = ["the a", "aaaa<|pad|>", "x"];
        let batch = enc.encode_batch(&texts, &AllowedSpecial::All);
        for (t, ids) in texts.iter().zip(batch) {
            assert_eq!(ids, enc.encode(t, &AllowedSpecial::All));
        }
    }
}
