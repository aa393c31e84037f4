//! Splitting text into words ("pieces") before BPE, so that merges never cross
//! word boundaries. The default is the GPT-4 (cl100k) pattern.
//!
//! INTERFACE (shared by corpus.rs, train.rs, encode.rs; keep it stable):
//!   `Pretokenizer::new(pattern)`, `Pretokenizer::gpt4()`, `.pattern()`,
//!   `.for_each_piece(text, |piece: &str| ...)`, `.pieces(text) -> Vec<&str>`.
//!
//! The GPT-4 pattern (and tiktoken's spelling of it, [`CL100K_PATTERN`]), tiktoken's
//! o200k pattern and GPT-2's are split by hand-written scanners that yield exactly the
//! regex's pieces, several times faster than the backtracking regex engine (the tests
//! compare them with the regex engine on random text). Their character classes
//! (`\p{L}`, `\p{Lu}`, `\p{M}`, `\p{N}`, `\s`, ...) come from `regex-syntax`, the same
//! Unicode tables the regex engine uses, so the two cannot drift apart. Any other pattern runs through `fancy-regex`; text that
//! pattern does not match becomes pieces too (see [`Pretokenizer::for_each_piece`]), so
//! that no pattern can make the tokenizer drop text.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The GPT-4 (cl100k_base) split pattern, as used by minbpe and rustbpe.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// tiktoken's cl100k_base pattern. It differs from [`GPT4_PATTERN`] in one place: a run
/// of whitespace that reaches the end of the text is one piece (`\s++$`), where
/// GPT4_PATTERN cuts it after its last newline ("a\n  " → "a", "\n  " here, but
/// "a", "\n", "  " with GPT4_PATTERN). Use it to reproduce tiktoken's ids exactly.
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// tiktoken's GPT-2 (r50k_base, p50k_base) pattern.
pub const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";

/// The pattern of Hugging Face's `ByteLevel(use_regex=True)` pre-tokenizer (GPT-2's
/// original spelling; differs from [`GPT2_PATTERN`] only for whitespace at the end of a
/// text).
pub const HF_BYTE_LEVEL_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// tiktoken's o200k_base pattern.
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

#[derive(Clone)]
pub struct Pretokenizer {
    pattern: String,
    splitter: Splitter,
}

#[derive(Clone)]
enum Splitter {
    /// The hand-written GPT-4 scanner. `whole_trailing_space` selects the cl100k
    /// spelling (`\s++$`).
    Gpt4 {
        classes: &'static CharClasses,
        whole_trailing_space: bool,
    },
    /// The hand-written o200k scanner.
    O200k {
        classes: &'static CharClasses,
    },
    /// The hand-written GPT-2 scanner ([`GPT2_PATTERN`]).
    Gpt2 {
        classes: &'static CharClasses,
    },
    Regex(fancy_regex::Regex),
}

impl Pretokenizer {
    /// Compiles `pattern`; the GPT-4 pattern (either spelling), o200k's and GPT-2's pick
    /// their hand-written scanner.
    pub fn new(pattern: &str) -> Result<Self> {
        let splitter = if pattern == GPT4_PATTERN || pattern == CL100K_PATTERN {
            Splitter::Gpt4 {
                classes: CharClasses::get(),
                whole_trailing_space: pattern == CL100K_PATTERN,
            }
        } else if pattern == O200K_PATTERN {
            Splitter::O200k {
                classes: CharClasses::get(),
            }
        } else if pattern == GPT2_PATTERN {
            Splitter::Gpt2 {
                classes: CharClasses::get(),
            }
        } else {
            Splitter::Regex(Self::compile_regex(pattern)?)
        };
        Ok(Self {
            pattern: pattern.to_string(),
            splitter,
        })
    }

    /// Always the regex engine, even for the GPT-4 pattern (the reference for tests
    /// and benchmarks of the fast scanner).
    pub fn new_regex(pattern: &str) -> Result<Self> {
        Ok(Self {
            pattern: pattern.to_string(),
            splitter: Splitter::Regex(Self::compile_regex(pattern)?),
        })
    }

    fn compile_regex(pattern: &str) -> Result<fancy_regex::Regex> {
        fancy_regex::Regex::new(pattern).map_err(|e| {
            // The regex engine draws a caret under the error on a second line; errors
            // are one line (they end up as `lmrs: FILE: problem`).
            let message = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Error::Invalid(format!("invalid pre-tokenization pattern: {message}"))
        })
    }

    pub fn gpt4() -> Self {
        Self::new(GPT4_PATTERN).expect("the built-in GPT-4 pattern compiles")
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// True when the GPT-4 scanner splits the text: no piece crosses a '\n' followed by
    /// a printable ASCII character, and a text cut there splits as the whole would (the
    /// rule corpus.rs cuts large files by).
    pub fn is_fast(&self) -> bool {
        matches!(self.splitter, Splitter::Gpt4 { .. })
    }

    /// True when a hand-written scanner (not the regex engine) splits the text.
    pub fn is_hand_written(&self) -> bool {
        !matches!(self.splitter, Splitter::Regex(_))
    }

    /// True when a text cut just after a '\n' followed by a printable ASCII character
    /// other than '/' splits into the same pieces as the whole: GPT-4's and o200k's
    /// scanners (o200k's punctuation runs take `[\r\n/]*` after them). Not GPT-2's: its
    /// `\s++$` makes whitespace that ends a part one piece ("  \n" at the end, but
    /// "  ", "\n" before a word).
    pub fn splits_at_newlines(&self) -> bool {
        matches!(
            self.splitter,
            Splitter::Gpt4 { .. } | Splitter::O200k { .. }
        )
    }

    /// `text` in order, cut into units of about `unit_bytes` that split into the same
    /// pieces as the whole (so they can be encoded or counted apart, in parallel): cut
    /// just after a '\n' followed by a printable ASCII character other than '/', the
    /// first such point at or after `unit_bytes` into a unit. One unit when the pattern
    /// does not split at newlines (see [`splits_at_newlines`](Self::splits_at_newlines))
    /// or the text has no such point.
    pub fn units<'t>(&self, text: &'t str, unit_bytes: usize) -> impl Iterator<Item = &'t str> {
        let splits = self.splits_at_newlines();
        let mut start = Some(0);
        std::iter::from_fn(move || {
            let from = start?;
            let end = if splits && text.len() - from > unit_bytes {
                split_point_after(text.as_bytes(), from + unit_bytes)
            } else {
                None
            };
            start = end;
            Some(&text[from..end.unwrap_or(text.len())])
        })
    }

    /// Calls `f` on each piece of `text`, in order. The pieces are never empty and
    /// always cover the text exactly: for any pattern, their concatenation is `text`.
    pub fn for_each_piece<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        match &self.splitter {
            Splitter::Gpt4 {
                classes,
                whole_trailing_space,
            } => {
                let scanner = Gpt4Scanner {
                    text: text.as_bytes(),
                    classes,
                    whole_trailing_space: *whole_trailing_space,
                };
                walk_pieces(text, |start| scanner.piece_end(start), f);
            }
            Splitter::O200k { classes } => {
                let scanner = Gpt4Scanner {
                    text: text.as_bytes(),
                    classes,
                    whole_trailing_space: false,
                };
                walk_pieces(text, |start| scanner.o200k_piece_end(start), f);
            }
            Splitter::Gpt2 { classes } => {
                let scanner = Gpt4Scanner {
                    text: text.as_bytes(),
                    classes,
                    whole_trailing_space: true,
                };
                walk_pieces(text, |start| scanner.gpt2_piece_end(start), f);
            }
            Splitter::Regex(regex) => {
                // Text the pattern does not match (the gaps between matches) is a piece of
                // its own: dropping it would make decode(encode(x)) != x for a pattern
                // like `x*` or `\w+`. Empty matches cut nothing, so a gap is the maximal
                // run between non-empty matches (`x*` gives "hello world " and "xx", not
                // one piece per character).
                let mut covered = 0;
                for m in regex.find_iter(text) {
                    let Ok(m) = m else {
                        // The backtrack limit on pathological input: the rest of the text
                        // becomes one piece, so that it is still encoded.
                        break;
                    };
                    // Matches come in order and do not overlap; `max` only guards the
                    // invariant that every byte is emitted once.
                    let (start, end) = (m.start().max(covered), m.end());
                    if end <= start {
                        continue;
                    }
                    if start > covered {
                        f(&text[covered..start]);
                    }
                    f(&text[start..end]);
                    covered = end;
                }
                if covered < text.len() {
                    f(&text[covered..]);
                }
            }
        }
    }

    pub fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        self.for_each_piece(text, |p| out.push(p));
        out
    }
}

/// The four character kinds the GPT-4 pattern distinguishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    /// `\p{L}`
    Letter = 0,
    /// `\p{N}`
    Number = 1,
    /// `\s` (Unicode White_Space)
    Space = 2,
    /// everything else (punctuation, symbols, marks, controls...)
    Other = 3,
}

/// The finer kinds the o200k pattern distinguishes (letters by case, marks); each is
/// one [`Kind`] of the GPT-4 pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Fine {
    /// `\p{Lu}`, `\p{Lt}`: only in o200k's upper-case class
    Upper = 0,
    /// `\p{Ll}`: only in its lower-case class
    Lower = 1,
    /// `\p{Lm}`, `\p{Lo}`: in both
    Both = 2,
    /// `\p{M}`: in both, but not a letter (`\p{L}`)
    Mark = 3,
    Number = 4,
    Space = 5,
    Other = 6,
}

const FINES: [Fine; 7] = [
    Fine::Upper,
    Fine::Lower,
    Fine::Both,
    Fine::Mark,
    Fine::Number,
    Fine::Space,
    Fine::Other,
];

/// The GPT-4 kind of each fine kind.
const COARSE: [Kind; 7] = [
    Kind::Letter,
    Kind::Letter,
    Kind::Letter,
    Kind::Other,
    Kind::Number,
    Kind::Space,
    Kind::Other,
];

impl Fine {
    /// In `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`.
    #[inline(always)]
    fn upper(self) -> bool {
        (self as u8) != 1 && (self as u8) <= 3
    }
    /// In `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`.
    #[inline(always)]
    fn lower(self) -> bool {
        (1..=3).contains(&(self as u8))
    }
    /// In `[^\s\p{L}\p{N}]`.
    #[inline(always)]
    fn other(self) -> bool {
        matches!(self, Fine::Mark | Fine::Other)
    }
}

/// Kind of every code point: a two-level table (256-entry blocks, deduplicated) plus
/// direct tables for ASCII. About 30 KB, built once from regex-syntax's Unicode data.
struct CharClasses {
    ascii: [Kind; 128],
    ascii_fine: [Fine; 128],
    block_of: Vec<u16>,
    /// [`Fine`] as u8.
    blocks: Vec<[u8; 256]>,
}

impl CharClasses {
    fn get() -> &'static CharClasses {
        static TABLE: OnceLock<CharClasses> = OnceLock::new();
        TABLE.get_or_init(CharClasses::build)
    }

    fn build() -> CharClasses {
        let mut kinds = vec![Fine::Other as u8; 0x11_0000];
        // Later classes win; they are disjoint in Unicode anyway.
        for (class, kind) in [
            (r"\s", Fine::Space),
            (r"\p{N}", Fine::Number),
            (r"\p{M}", Fine::Mark),
            (r"[\p{Lm}\p{Lo}]", Fine::Both),
            (r"\p{Ll}", Fine::Lower),
            (r"[\p{Lu}\p{Lt}]", Fine::Upper),
        ] {
            for (start, end) in unicode_class_ranges(class) {
                for cp in start..=end {
                    kinds[cp as usize] = kind as u8;
                }
            }
        }
        let mut block_of = Vec::with_capacity(0x1100);
        let mut blocks: Vec<[u8; 256]> = Vec::new();
        for chunk in kinds.chunks_exact(256) {
            let mut block = [0u8; 256];
            block.copy_from_slice(chunk);
            let index = match blocks.iter().position(|b| *b == block) {
                Some(i) => i,
                None => {
                    blocks.push(block);
                    blocks.len() - 1
                }
            };
            block_of.push(index as u16);
        }
        let ascii_fine: [Fine; 128] = std::array::from_fn(|cp| FINES[kinds[cp] as usize]);
        CharClasses {
            ascii: ascii_fine.map(|f| COARSE[f as usize]),
            ascii_fine,
            block_of,
            blocks,
        }
    }

    #[inline]
    fn kind(&self, cp: u32) -> Kind {
        if cp < 128 {
            return self.ascii[cp as usize];
        }
        COARSE[self.fine_above_ascii(cp) as usize]
    }

    #[inline]
    fn fine(&self, cp: u32) -> Fine {
        if cp < 128 {
            return self.ascii_fine[cp as usize];
        }
        self.fine_above_ascii(cp)
    }

    #[inline]
    fn fine_above_ascii(&self, cp: u32) -> Fine {
        let block = self.block_of[(cp >> 8) as usize] as usize;
        FINES[self.blocks[block][(cp & 0xff) as usize] as usize]
    }
}

/// The code point ranges of a one-class regex such as `\p{L}`, as the regex engine sees them.
fn unicode_class_ranges(class: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(class).expect("built-in Unicode class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => unreachable!("{class} is a Unicode class"),
    }
}

/// Calls `f` on the pieces of `text` that `piece_end` (a hand-written scanner: the end of
/// the piece starting at a byte offset) cuts, in order.
fn walk_pieces<'t>(text: &'t str, piece_end: impl Fn(usize) -> usize, mut f: impl FnMut(&'t str)) {
    let mut start = 0;
    while start < text.len() {
        let end = piece_end(start);
        f(&text[start..end]);
        start = end;
    }
}

/// Finds the end of the GPT-4 piece starting at each position. Each branch below is one
/// alternative of the pattern, tried in the pattern's order:
///   1 `'(?i:[sdmt]|ll|ve|re)`        2 `[^\r\n\p{L}\p{N}]?+\p{L}+`    3 `\p{N}{1,3}`
///   4 ` ?[^\s\p{L}\p{N}]++[\r\n]*`   5 `\s*[\r\n]`   6 `\s+(?!\S)`   7 `\s+`
struct Gpt4Scanner<'a> {
    text: &'a [u8],
    classes: &'a CharClasses,
    whole_trailing_space: bool,
}

impl Gpt4Scanner<'_> {
    /// The code point at byte `i` (a char boundary) and its length in bytes.
    #[inline(always)]
    fn decode(&self, i: usize) -> (u32, usize) {
        let t = self.text;
        let b0 = t[i] as u32;
        if b0 < 0x80 {
            (b0, 1)
        } else if b0 < 0xE0 {
            (((b0 & 0x1F) << 6) | (t[i + 1] as u32 & 0x3F), 2)
        } else if b0 < 0xF0 {
            (
                ((b0 & 0x0F) << 12) | ((t[i + 1] as u32 & 0x3F) << 6) | (t[i + 2] as u32 & 0x3F),
                3,
            )
        } else {
            let cp = ((b0 & 0x07) << 18)
                | ((t[i + 1] as u32 & 0x3F) << 12)
                | ((t[i + 2] as u32 & 0x3F) << 6)
                | (t[i + 3] as u32 & 0x3F);
            (cp, 4)
        }
    }

    /// Code point, kind and byte length at `i`, or None at the end of the text.
    #[inline(always)]
    fn at(&self, i: usize) -> Option<(u32, Kind, usize)> {
        if i >= self.text.len() {
            return None;
        }
        let b = self.text[i];
        if b < 0x80 {
            return Some((b as u32, self.classes.ascii[b as usize], 1));
        }
        let (cp, len) = self.decode(i);
        Some((cp, self.classes.kind(cp), len))
    }

    /// End of the run of characters of `kind` starting at `i`.
    #[inline(always)]
    fn skip_kind(&self, mut i: usize, kind: Kind) -> usize {
        let t = self.text;
        while i < t.len() {
            let b = t[i];
            if b < 0x80 {
                if self.classes.ascii[b as usize] != kind {
                    break;
                }
                i += 1;
            } else {
                let (cp, len) = self.decode(i);
                if self.classes.kind(cp) != kind {
                    break;
                }
                i += len;
            }
        }
        i
    }

    /// `[\r\n]*` from `i`.
    #[inline(always)]
    fn skip_newlines(&self, mut i: usize) -> usize {
        while i < self.text.len() && matches!(self.text[i], b'\r' | b'\n') {
            i += 1;
        }
        i
    }

    /// End of `(?i:[sdmt]|ll|ve|re)` at `i` (just after an apostrophe), if it matches.
    /// Case-insensitive matching in the regex engine uses Unicode simple case folding,
    /// under which U+017F (long s) equals 's'; no other letter here has a non-ASCII fold.
    fn contraction_end(&self, i: usize) -> Option<usize> {
        let (c1, _, l1) = self.at(i)?;
        let second = |expected: u8| match self.at(i + l1) {
            Some((c2, _, l2)) if c2 | 0x20 == expected as u32 => Some(i + l1 + l2),
            _ => None,
        };
        match c1 {
            0x17F => Some(i + l1),
            c if c < 0x80 => match (c as u8) | 0x20 {
                b's' | b'd' | b'm' | b't' => Some(i + l1),
                b'l' => second(b'l'),
                b'v' | b'r' => second(b'e'),
                _ => None,
            },
            _ => None,
        }
    }

    /// End (exclusive byte offset) of the piece starting at `start` (< text length).
    #[inline(always)]
    fn piece_end(&self, start: usize) -> usize {
        let Some((c0, kind0, l0)) = self.at(start) else {
            return start;
        };
        let next = start + l0;
        match kind0 {
            // 2, with an empty prefix.
            Kind::Letter => self.skip_kind(next, Kind::Letter),
            // 3: at most three numbers.
            Kind::Number => {
                let mut end = next;
                for _ in 0..2 {
                    match self.at(end) {
                        Some((_, Kind::Number, len)) => end += len,
                        _ => break,
                    }
                }
                end
            }
            Kind::Other => {
                if c0 == '\'' as u32 {
                    if let Some(end) = self.contraction_end(next) {
                        return end; // 1
                    }
                }
                if let Some((_, Kind::Letter, l1)) = self.at(next) {
                    return self.skip_kind(next + l1, Kind::Letter); // 2
                }
                self.skip_newlines(self.skip_kind(next, Kind::Other)) // 4
            }
            Kind::Space => {
                let is_newline = |c: u32| c == '\r' as u32 || c == '\n' as u32;
                match self.at(next) {
                    Some((_, Kind::Letter, l1)) if !is_newline(c0) => {
                        return self.skip_kind(next + l1, Kind::Letter); // 2
                    }
                    Some((_, Kind::Other, l1)) if c0 == ' ' as u32 => {
                        return self.skip_newlines(self.skip_kind(next + l1, Kind::Other));
                        // 4
                    }
                    _ => {}
                }
                // The maximal whitespace run [start, end), its last newline and the
                // start of its last character (for backing off one character).
                let mut after_last_newline = if is_newline(c0) { Some(next) } else { None };
                let mut last_char_start = start;
                let mut end = next;
                while let Some((c, Kind::Space, len)) = self.at(end) {
                    if is_newline(c) {
                        after_last_newline = Some(end + len);
                    }
                    last_char_start = end;
                    end += len;
                }
                if self.whole_trailing_space && end == self.text.len() {
                    return end; // cl100k's `\s++$`
                }
                if let Some(e) = after_last_newline {
                    return e; // 5
                }
                if end == self.text.len() || last_char_start == start {
                    return end; // 6 up to the end of the text, or 7 for a single character
                }
                last_char_start // 6: leave one space to prefix the next word
            }
        }
    }
}

/// The o200k and GPT-2 scanners share the decoding helpers above.
impl Gpt4Scanner<'_> {
    /// Code point, fine kind and byte length at `i`, or None at the end of the text.
    #[inline(always)]
    fn at_fine(&self, i: usize) -> Option<(u32, Fine, usize)> {
        let b = *self.text.get(i)?;
        if b < 0x80 {
            return Some((b as u32, self.classes.ascii_fine[b as usize], 1));
        }
        let (cp, len) = self.decode(i);
        Some((cp, self.classes.fine(cp), len))
    }

    /// End of the run from `i` of characters whose fine kind passes `keep`.
    #[inline(always)]
    fn skip_fine(&self, mut i: usize, keep: impl Fn(Fine) -> bool) -> usize {
        while let Some((_, fine, len)) = self.at_fine(i) {
            if !keep(fine) {
                break;
            }
            i += len;
        }
        i
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `i`: the end of the contraction, or `i`.
    #[inline(always)]
    fn o200k_contraction(&self, i: usize) -> usize {
        if self.text.get(i) == Some(&b'\'') {
            if let Some(end) = self.contraction_end(i + 1) {
                return end;
            }
        }
        i
    }

    /// o200k's first alternative from `i` (after its optional prefix):
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+` + contraction. The
    /// upper-case run is greedy; when no lower-case character follows it, the engine
    /// backs off to the run's last character that is in both classes.
    fn o200k_lower_word(&self, i: usize) -> Option<usize> {
        let mut end = i;
        let mut after_last_both = None;
        while let Some((_, fine, len)) = self.at_fine(end) {
            if !fine.upper() {
                break;
            }
            end += len;
            if fine.lower() {
                after_last_both = Some(end);
            }
        }
        let word_end = match self.at_fine(end) {
            Some((_, Fine::Lower, len)) => self.skip_fine(end + len, Fine::lower),
            _ => after_last_both?,
        };
        Some(self.o200k_contraction(word_end))
    }

    /// o200k's second alternative from `i`: `[\p{Lu}..\p{M}]+[\p{Ll}..\p{M}]*` + contraction.
    fn o200k_upper_word(&self, i: usize) -> Option<usize> {
        match self.at_fine(i) {
            Some((_, fine, len)) if fine.upper() => {
                let end = self.skip_fine(i + len, Fine::upper);
                Some(self.o200k_contraction(self.skip_fine(end, Fine::lower)))
            }
            _ => None,
        }
    }

    /// Alternatives 1 and 2 when the word and what ends it are ASCII (most pieces of
    /// English and code): ASCII letters are only upper (`Lu`) or lower (`Ll`), so the
    /// word is `[A-Z]*[a-z]+` or `[A-Z]+`, with no backing off. None when the piece is
    /// not such a word or a non-ASCII byte is met where it could change the answer; the
    /// general scanner then decides.
    #[inline(always)]
    fn o200k_ascii_word(&self, start: usize) -> Option<usize> {
        let t = self.text;
        let c0 = t[start];
        let p = if c0.is_ascii_alphabetic() {
            start
        } else if c0 < 0x80 && !matches!(c0, b'\r' | b'\n') && !c0.is_ascii_digit() {
            match t.get(start + 1) {
                Some(c1) if c1.is_ascii_alphabetic() => start + 1,
                _ => return None,
            }
        } else {
            return None;
        };
        let run = |mut i: usize, keep: fn(&u8) -> bool| {
            while i < t.len() && keep(&t[i]) {
                i += 1;
            }
            i
        };
        let upper_end = run(p, u8::is_ascii_uppercase);
        let end = run(upper_end, u8::is_ascii_lowercase);
        if t.get(end).is_some_and(|&b| b >= 0x80) {
            return None; // a mark or a non-ASCII letter could continue the word
        }
        Some(self.o200k_contraction(end))
    }

    /// End of the o200k piece starting at `start` (< text length). The alternatives:
    ///   1 `[^\r\n\p{L}\p{N}]?` upper* lower+ contraction?
    ///   2 `[^\r\n\p{L}\p{N}]?` upper+ lower* contraction?
    ///   3 `\p{N}{1,3}`   4 ` ?[^\s\p{L}\p{N}]+[\r\n/]*`   5 `\s*[\r\n]+`
    ///   6 `\s+(?!\S)`    7 `\s+`
    /// (upper = `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, lower = `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`).
    #[inline(always)]
    fn o200k_piece_end(&self, start: usize) -> usize {
        let Some((c0, fine0, l0)) = self.at_fine(start) else {
            return start;
        };
        let next = start + l0;
        if fine0 == Fine::Number {
            // a number neither starts a word nor prefixes one: alternatives 1 and 2
            // cannot match here, so go straight to 3 (digit runs are this fast)
            let mut end = next;
            for _ in 0..2 {
                match self.at_fine(end) {
                    Some((_, Fine::Number, len)) => end += len,
                    _ => break,
                }
            }
            return end; // 3
        }
        if let Some(end) = self.o200k_ascii_word(start) {
            return end; // 1 or 2, all in ASCII
        }
        let is_newline = |c: u32| c == '\r' as u32 || c == '\n' as u32;
        // the optional prefix: anything but a letter, a number, '\r' or '\n'
        let prefix = !is_newline(c0) && matches!(fine0, Fine::Space | Fine::Mark | Fine::Other);
        if prefix {
            if let Some(end) = self.o200k_lower_word(next) {
                return end; // 1
            }
        }
        if let Some(end) = self.o200k_lower_word(start) {
            return end; // 1 without the prefix
        }
        if prefix {
            if let Some(end) = self.o200k_upper_word(next) {
                return end; // 2
            }
        }
        if let Some(end) = self.o200k_upper_word(start) {
            return end; // 2 without the prefix
        }
        let newlines_or_slash = |mut i: usize| {
            while matches!(self.text.get(i), Some(b'\r' | b'\n' | b'/')) {
                i += 1;
            }
            i
        };
        if c0 == ' ' as u32 {
            if let Some((_, fine1, l1)) = self.at_fine(next) {
                if fine1.other() {
                    return newlines_or_slash(self.skip_fine(next + l1, Fine::other));
                    // 4
                }
            }
        }
        if fine0.other() {
            return newlines_or_slash(self.skip_fine(next, Fine::other)); // 4
        }
        self.whitespace_end(start, c0, next, true)
    }

    /// End of a piece of whitespace starting at `start` (first character `c0`, which ends
    /// at `next`): `\s*[\r\n]` / `\s*[\r\n]+` (to just after the run's last newline) when
    /// `newline_rule`, else `\s++$` (the whole run when it ends the text); then
    /// `\s+(?!\S)` (leave the run's last character to prefix what follows) and `\s+`.
    fn whitespace_end(&self, start: usize, c0: u32, next: usize, newline_rule: bool) -> usize {
        let is_newline = |c: u32| c == '\r' as u32 || c == '\n' as u32;
        let mut after_last_newline = is_newline(c0).then_some(next);
        let mut last_char_start = start;
        let mut end = next;
        while let Some((c, Kind::Space, len)) = self.at(end) {
            if is_newline(c) {
                after_last_newline = Some(end + len);
            }
            last_char_start = end;
            end += len;
        }
        if newline_rule {
            if let Some(e) = after_last_newline {
                return e;
            }
        }
        if end == self.text.len() || last_char_start == start {
            return end;
        }
        last_char_start
    }

    /// End of the GPT-2 piece starting at `start` (< text length):
    ///   1 `'(?:[sdmt]|ll|ve|re)`   2 ` ?\p{L}++`   3 ` ?\p{N}++`
    ///   4 ` ?[^\s\p{L}\p{N}]++`    5 `\s++$`       6 `\s+(?!\S)`   7 `\s`
    #[inline(always)]
    fn gpt2_piece_end(&self, start: usize) -> usize {
        let Some((c0, kind0, l0)) = self.at(start) else {
            return start;
        };
        let next = start + l0;
        if c0 == '\'' as u32 {
            // case-sensitive, unlike GPT-4's `(?i:...)`
            let t = self.text;
            let end = match (t.get(next), t.get(next + 1)) {
                (Some(b's' | b'd' | b'm' | b't'), _) => Some(next + 1),
                (Some(b'l'), Some(b'l')) | (Some(b'v' | b'r'), Some(b'e')) => Some(next + 2),
                _ => None,
            };
            if let Some(end) = end {
                return end; // 1
            }
        }
        let (from, kind) = match self.at(next) {
            Some((_, kind1, l1)) if c0 == ' ' as u32 && kind1 != Kind::Space => (next + l1, kind1),
            _ => (next, kind0),
        };
        match kind {
            Kind::Letter | Kind::Number | Kind::Other => self.skip_kind(from, kind), // 2, 3, 4
            Kind::Space => self.whitespace_end(start, c0, next, false),              // 5, 6, 7
        }
    }
}

/// The first position at or after `from` where the pieces of every hand-written
/// pattern that splits at newlines can be cut without changing them: just after a '\n'
/// followed by a printable ASCII character other than '/'. No piece spans it: a piece
/// holding a newline ends with its newline or whitespace run, and neither continues into
/// a non-space (o200k's punctuation runs take `[\r\n/]*` after them, hence not before a
/// '/').
fn split_point_after(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(offset) = memchr::memchr(b'\n', bytes.get(i..)?) {
        let newline = i + offset;
        if bytes
            .get(newline + 1)
            .is_some_and(|&b| b.is_ascii_graphic() && b != b'/')
        {
            return Some(newline + 1);
        }
        i = newline + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_numbers_and_spaces() {
        let p = Pretokenizer::gpt4();
        assert!(p.is_fast());
        assert_eq!(
            p.pieces("Hello world's 12345  !!\n"),
            vec!["Hello", " world", "'s", " ", "123", "45", " ", " !!\n"]
        );
    }

    #[test]
    fn other_patterns_use_the_regex_engine() {
        let p = Pretokenizer::new(r"\w+|\s+").unwrap();
        assert!(!p.is_fast());
        assert_eq!(p.pieces("ab  cd"), vec!["ab", "  ", "cd"]);
        let err = Pretokenizer::new("(unclosed")
            .err()
            .expect("does not compile");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }

    #[test]
    fn text_the_pattern_does_not_match_is_kept_as_pieces() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("x*", "hello world xx", &["hello world ", "xx"]),
            ("x*", "", &[]),
            ("x*", "xax", &["x", "a", "x"]),
            (r"\w+", "  ab, cd!", &["  ", "ab", ", ", "cd", "!"]),
            ("q", "no match at all", &["no match at all"]),
            ("", "empty pattern", &["empty pattern"]),
            ("a??", "aaa", &["aaa"]),
            (r"(?<=a)b", "abab", &["a", "b", "a", "b"]),
            (r"\b", "a b", &["a b"]),
            (r"é+|\s", "ééé xé", &["ééé", " ", "x", "é"]),
        ];
        for &(pattern, text, expected) in cases {
            let p = Pretokenizer::new(pattern).unwrap();
            assert_eq!(p.pieces(text), expected, "pattern {pattern:?} on {text:?}");
        }
    }

    #[test]
    fn pieces_cover_the_text_for_any_pattern() {
        let patterns = [
            "x*",
            "",
            "^",
            "$",
            r"\w+",
            r"\s",
            r"\p{L}+|\p{N}",
            r"(?=a)",
            r"a|ab|b*",
            r"[^\s]{2}",
            r"(.)\1",
            r".{2,3}",
            GPT4_PATTERN,
        ];
        let mut rng = Rng(7);
        for pattern in patterns {
            for regex in [false, true] {
                let p = if regex {
                    Pretokenizer::new_regex(pattern).unwrap()
                } else {
                    Pretokenizer::new(pattern).unwrap()
                };
                for _ in 0..500 {
                    let text = random_text(&mut rng);
                    let pieces = p.pieces(&text);
                    assert!(pieces.iter().all(|piece| !piece.is_empty()), "{pattern:?}");
                    assert_eq!(pieces.concat(), text, "pattern {pattern:?}");
                }
            }
        }
    }

    #[test]
    fn a_backtracking_limit_keeps_the_rest_of_the_text() {
        // Catastrophic backtracking: fancy-regex gives up with an error; the text from
        // there on must still come out as a piece.
        let p = Pretokenizer::new(r"(?:(a|a)+(?=b)\1)|c").unwrap();
        let text = format!("c{}!", "a".repeat(40));
        let regex = fancy_regex::Regex::new(p.pattern()).unwrap();
        assert!(
            regex.find_iter(&text).any(|m| m.is_err()),
            "the limit is hit"
        );
        assert_eq!(p.pieces(&text).concat(), text);
    }

    /// A tiny deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Characters chosen to hit every branch of the pattern and every class boundary.
    const ALPHABET: &[&str] = &[
        "a",
        "b",
        "Z",
        "s",
        "S",
        "t",
        "T",
        "d",
        "m",
        "l",
        "L",
        "v",
        "e",
        "E",
        "r",
        "R",
        "'",
        "'",
        "\u{17F}",
        "\u{212A}",
        " ",
        " ",
        " ",
        "\t",
        "\n",
        "\n",
        "\r",
        "\r\n",
        "\u{a0}",
        "\u{2028}",
        "\u{2029}",
        "\u{85}",
        "\u{3000}",
        "\u{1680}",
        "\u{b}",
        "\u{c}",
        "0",
        "7",
        "9",
        "\u{660}",
        "\u{b2}",
        "\u{bd}",
        "\u{2167}",
        ".",
        ",",
        "!",
        "?",
        "-",
        "(",
        "\"",
        "#",
        "_",
        "\u{2019}",
        "é",
        "e\u{301}",
        "\u{301}",
        "ß",
        "ǅ",
        "ʰ",
        "中",
        "文",
        "日本",
        "한",
        "\u{1F600}",
        "\u{1F44D}\u{1F3FD}",
        "\u{200D}",
        "\u{FEFF}",
        "\u{0}",
        "\u{7f}",
        "\u{10FFFF}",
        "\u{E000}",
        "Ωμέγα",
        "мир",
        "١٢٣",
        "\u{1D400}",
        "\u{1D7CE}",
        "\u{10400}",
        "ab",
        "the",
        " the",
        "'ll",
        "'VE",
        "'re",
        "123456",
        "/",
        "\n/",
        "AB",
        "É",
        "HTML",
        "\u{2C6}",
        "\u{AA}",
        "\u{903}",
        "\u{20DD}",
        "\u{1F88}",
        "Ǆ",
        "'S",
        "'Ll",
    ];

    fn random_text(rng: &mut Rng) -> String {
        let len = rng.below(24);
        (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect()
    }

    fn assert_same_as_regex(pattern: &str, texts: impl Iterator<Item = String>) {
        let fast = Pretokenizer::new(pattern).unwrap();
        let slow = Pretokenizer::new_regex(pattern).unwrap();
        assert!(fast.is_hand_written() && !slow.is_hand_written());
        for text in texts {
            assert_eq!(
                fast.pieces(&text),
                slow.pieces(&text),
                "pattern {pattern:?} on text {text:?}"
            );
        }
    }

    const HAND_WRITTEN: [&str; 4] = [GPT4_PATTERN, CL100K_PATTERN, O200K_PATTERN, GPT2_PATTERN];

    #[test]
    fn fast_scanner_equals_regex_on_generated_text() {
        for pattern in HAND_WRITTEN {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            assert_same_as_regex(pattern, (0..20_000).map(|_| random_text(&mut rng)));
        }
    }

    #[test]
    fn fast_scanner_equals_regex_on_random_code_points() {
        // Any code point at all (valid chars only), in short strings.
        let mut rng = Rng(42);
        let texts = (0..5_000).map(|_| {
            let len = rng.below(12);
            (0..len)
                .map(|_| {
                    let cp = if rng.below(2) == 0 {
                        rng.below(0x800)
                    } else {
                        rng.below(0x11_0000)
                    };
                    char::from_u32(cp as u32).unwrap_or(' ')
                })
                .collect::<String>()
        });
        let texts: Vec<String> = texts.collect();
        for pattern in HAND_WRITTEN {
            assert_same_as_regex(pattern, texts.iter().cloned());
        }
    }

    #[test]
    fn fast_scanners_equal_regex_on_long_mixed_text() {
        // Longer texts than above, so that runs of every class and their boundaries
        // meet in every order; ASCII-heavy like real text.
        let mut rng = Rng(0xD1FF_E4E7);
        let texts: Vec<String> = (0..400)
            .map(|_| {
                let len = 50 + rng.below(200);
                (0..len)
                    .map(|_| match rng.below(4) {
                        0 => ALPHABET[rng.below(ALPHABET.len())].to_string(),
                        1 => ["a", "B", " ", "\n", "1", ".", "'s", "/"][rng.below(8)].to_string(),
                        _ => char::from_u32(rng.below(0x3000) as u32)
                            .unwrap_or('x')
                            .to_string(),
                    })
                    .collect()
            })
            .collect();
        for pattern in HAND_WRITTEN {
            assert_same_as_regex(pattern, texts.iter().cloned());
        }
        assert!(!Pretokenizer::new(O200K_PATTERN).unwrap().is_fast());
        assert!(Pretokenizer::new(O200K_PATTERN)
            .unwrap()
            .splits_at_newlines());
        assert!(!Pretokenizer::new(GPT2_PATTERN)
            .unwrap()
            .splits_at_newlines());
    }

    #[test]
    fn edge_cases() {
        let cases = [
            "",
            " ",
            "  ",
            "\n",
            "\n\n",
            " \n ",
            "a\n  ",
            "a \n\n  b",
            "  a",
            "\t\tb",
            "\u{a0}word",
            "\r\nx",
            "x\r\n",
            "'s",
            "'S",
            "'\u{17F}",
            "'ll",
            "'lL",
            "'l",
            "'ve",
            "'v",
            "'re",
            "'r",
            "'x",
            "'",
            "''s",
            "don't",
            "I'M",
            "it's.",
            "1234567",
            "a1b2",
            " 1",
            " !",
            "  !",
            "!!\n\n",
            "! \n",
            "\u{301}abc",
            " \u{301}",
            "(hello",
            " (hello",
            "\u{1F600}\u{1F600}x",
            "中文 text",
            "   \n",
            "x   ",
            "x \u{2028} y",
        ];
        let cases = cases.iter().copied().chain([
            "HelloWorld's",
            "HELLOworld",
            "HTML'S",
            "ǅa",
            "\u{301}A",
            "a\u{301}B",
            "A\u{301}",
            " \u{301}",
            "!\n/x",
            " !\r\n//",
            "\u{2C6}\u{2C6}A",
            "ABC def",
            "\tWord",
            " 'll",
            "x's'LL",
        ]);
        for pattern in HAND_WRITTEN {
            assert_same_as_regex(pattern, cases.clone().map(|s| s.to_string()));
        }
        let p = Pretokenizer::gpt4();
        assert_eq!(p.pieces("a\n  "), vec!["a", "\n", "  "]);
        assert_eq!(
            Pretokenizer::new(CL100K_PATTERN).unwrap().pieces("a\n  "),
            vec!["a", "\n  "]
        );
        assert_eq!(p.pieces("'\u{17F}x"), vec!["'\u{17F}", "x"]);
        assert_eq!(p.pieces("  hi"), vec![" ", " hi"]);
    }

    #[test]
    fn contraction_case_folds_are_as_hardcoded() {
        // contraction_end assumes the only non-ASCII simple case fold of these letters
        // is U+017F for 's'; check that against the regex engine's own tables.
        for (class, extra) in [("(?i)[sdmt]", vec![0x17F]), ("(?i)[lver]", vec![])] {
            let mut expected: Vec<u32> = class[5..class.len() - 1]
                .bytes()
                .flat_map(|b| [b as u32, (b as char).to_ascii_uppercase() as u32])
                .chain(extra)
                .collect();
            expected.sort();
            let got: Vec<u32> = unicode_class_ranges(class)
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .collect();
            assert_eq!(got, expected, "{class}");
        }
    }

    #[test]
    fn char_classes_match_the_regex_engine() {
        let classes = CharClasses::get();
        // The table is built from the regex engine's ranges; spot-check the kinds that matter.
        assert_eq!(classes.kind('a' as u32), Kind::Letter);
        assert_eq!(classes.kind('中' as u32), Kind::Letter);
        assert_eq!(classes.kind('\u{b2}' as u32), Kind::Number);
        assert_eq!(classes.kind('\u{a0}' as u32), Kind::Space);
        assert_eq!(classes.kind('\u{85}' as u32), Kind::Space);
        assert_eq!(classes.kind('\u{200B}' as u32), Kind::Other); // zero-width space is not White_Space
        assert_eq!(classes.kind('\u{301}' as u32), Kind::Other);
        assert_eq!(classes.kind(0x10FFFF), Kind::Other);
    }

    #[test]
    fn named_patterns_compile_and_split_like_their_libraries() {
        let gpt2 = Pretokenizer::new(GPT2_PATTERN).unwrap();
        assert_eq!(
            gpt2.pieces("Hello world's 123!!"),
            ["Hello", " world", "'s", " 123", "!!"]
        );
        assert_eq!(gpt2.pieces("a  \n"), ["a", "  \n"]);
        let hf = Pretokenizer::new(HF_BYTE_LEVEL_PATTERN).unwrap();
        assert_eq!(hf.pieces("a  \n"), ["a", "  \n"]);
        assert_eq!(hf.pieces("a  b"), ["a", " ", " b"]);
        let o200k = Pretokenizer::new(O200K_PATTERN).unwrap();
        assert_eq!(
            o200k.pieces("HelloWorld's a/b\n"),
            ["Hello", "World's", " a", "/b", "\n"]
        );
    }
}
