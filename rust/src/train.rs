//! The BPE trainer: from counted words to an ordered list of merges.
//!
//! Each distinct word is a sequence of token ids, weighted by its count. The trainer
//! keeps, for every adjacent pair, its total count and the words it occurs in, and a
//! max-heap of (count, pair). Each merge pops the best pair, rewrites only the words that
//! contain it and adjusts the counts of the pairs around each occurrence; nothing is
//! recounted from scratch.
//!
//! The result is exactly the textbook algorithm (recount everything, take the most
//! frequent pair) with ties broken towards the smaller pair `(a, b)`, as rustbpe does,
//! so both give the same merges on the same words. It does not depend on thread count
//! or hash seeds: every count is an exact sum and the heap order is total.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use rayon::prelude::*;

use crate::corpus::WordCounts;
use crate::{Error, Result};

/// Two token ids; merge `i` turns the pair into token `256 + i`.
pub type Pair = (u32, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainOptions {
    /// The size of the finished vocabulary: 256 byte tokens + merges + special tokens.
    pub vocab_size: usize,
    /// Special tokens the caller will add after the merges (`<|endoftext|>` at least).
    pub num_special_tokens: usize,
    /// Stop early when the most frequent pair occurs fewer times than this (1: never
    /// stop early, as rustbpe; the CLI uses 2, which skips pairs seen only once and
    /// so may end with fewer merges than asked for).
    pub min_frequency: u64,
    /// Never create a token longer than this many bytes.
    pub max_token_length: Option<usize>,
}

impl TrainOptions {
    /// `vocab_size` with one special token, no minimum frequency and no length limit.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            num_special_tokens: 1,
            min_frequency: 1,
            max_token_length: None,
        }
    }

    /// How many merges to learn (at most; fewer when pairs run out or fall below
    /// `min_frequency`).
    pub fn num_merges(&self) -> Result<usize> {
        let minimum = 256 + self.num_special_tokens;
        if self.vocab_size < minimum {
            return Err(Error::Invalid(format!(
                "vocab_size {} is too small: it must be at least 256 byte tokens + {} special tokens = {minimum}",
                self.vocab_size, self.num_special_tokens
            )));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "vocab_size {} does not fit in 32-bit token ids",
                self.vocab_size
            )));
        }
        Ok(self.vocab_size - minimum)
    }
}

/// Learns merges from `counts`. `progress` is set to the number of merges done so far
/// (poll it from another thread). Returns the merges in order: merge `i` creates token
/// `256 + i`.
pub fn train_bpe(
    counts: &WordCounts,
    opts: &TrainOptions,
    progress: &AtomicU64,
) -> Result<Vec<Pair>> {
    let num_merges = opts.num_merges()?;
    let mut trainer = Trainer::new(counts, opts);
    let mut merges = Vec::with_capacity(num_merges);
    while merges.len() < num_merges {
        let Some(pair) = trainer.best_pair() else {
            break;
        };
        let new_id = (256 + merges.len()) as u32;
        trainer.merge(pair, new_id);
        merges.push(pair);
        progress.store(merges.len() as u64, Ordering::Relaxed);
    }
    Ok(merges)
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline]
fn unkey(k: u64) -> Pair {
    ((k >> 32) as u32, k as u32)
}

/// What the trainer knows about one pair.
#[derive(Default)]
struct PairState {
    /// Occurrences in the corpus (sum of the counts of the words, once per occurrence).
    count: i64,
    /// Words that contain (or once contained) the pair, without repeats; a word that
    /// lost the pair since is harmless (merging finds nothing in it).
    words: Vec<u32>,
}

struct Trainer {
    /// All words' token ids, concatenated; word `w` is `ids[start[w]..start[w] + len[w]]`.
    /// Merges only shorten words, so each is rewritten in place.
    ids: Vec<u32>,
    start: Vec<usize>,
    len: Vec<u32>,
    count: Vec<u64>,
    pairs: AHashMap<u64, PairState>,
    /// (count, pair) candidates, best first: larger count, then smaller pair. An entry
    /// may be stale (the pair's count has dropped since); it is checked when popped.
    heap: BinaryHeap<(u64, std::cmp::Reverse<u64>)>,
    /// Byte length of every token so far.
    token_len: Vec<u32>,
    min_frequency: u64,
    max_token_length: usize,
}

impl Trainer {
    fn new(counts: &WordCounts, opts: &TrainOptions) -> Self {
        // Single-byte words have no pairs: leave them out.
        let total: usize = counts
            .iter()
            .filter(|(w, _)| w.len() >= 2)
            .map(|(w, _)| w.len())
            .sum();
        let mut ids = Vec::with_capacity(total);
        let mut start = Vec::with_capacity(counts.len());
        let mut len = Vec::with_capacity(counts.len());
        let mut count = Vec::with_capacity(counts.len());
        for (word, c) in counts.iter().filter(|(w, _)| w.len() >= 2) {
            start.push(ids.len());
            len.push(word.len() as u32);
            count.push(c);
            ids.extend(word.iter().map(|&b| b as u32));
        }
        let mut trainer = Trainer {
            ids,
            start,
            len,
            count,
            pairs: AHashMap::new(),
            heap: BinaryHeap::new(),
            token_len: vec![1; 256],
            min_frequency: opts.min_frequency.max(1),
            max_token_length: opts.max_token_length.unwrap_or(usize::MAX),
        };
        trainer.count_byte_pairs();
        trainer
    }

    /// The initial pair counts and word lists. Before any merge every pair is two
    /// bytes, so plain arrays indexed by `a << 8 | b` replace the hash map. Words are
    /// split into one contiguous range per thread; concatenating the ranges' word lists
    /// in order keeps every list sorted and free of repeats.
    fn count_byte_pairs(&mut self) {
        let num_words = self.len.len();
        let num_ranges = rayon::current_num_threads().max(1);
        let per_range = num_words.div_ceil(num_ranges).max(1);
        let partials: Vec<(Vec<u64>, Vec<Vec<u32>>)> = (0..num_words)
            .step_by(per_range)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|first| {
                let mut counts = vec![0u64; 1 << 16];
                let mut words: Vec<Vec<u32>> = vec![Vec::new(); 1 << 16];
                for w in first..(first + per_range).min(num_words) {
                    let s = self.start[w];
                    let word = &self.ids[s..s + self.len[w] as usize];
                    for pair in word.windows(2) {
                        let k = ((pair[0] << 8) | pair[1]) as usize;
                        counts[k] += self.count[w];
                        if words[k].last() != Some(&(w as u32)) {
                            words[k].push(w as u32);
                        }
                    }
                }
                (counts, words)
            })
            .collect();
        let mut partials = partials.into_iter();
        let Some((mut counts, mut words)) = partials.next() else {
            return;
        };
        for (more_counts, more_words) in partials {
            for k in 0..1 << 16 {
                counts[k] += more_counts[k];
                words[k].extend_from_slice(&more_words[k]);
            }
        }
        for (k, (c, w)) in counts.into_iter().zip(words).enumerate() {
            if c > 0 {
                let pair = key((k >> 8) as u32, (k & 0xff) as u32);
                self.pairs.insert(
                    pair,
                    PairState {
                        count: c as i64,
                        words: w,
                    },
                );
                self.push_candidate(pair);
            }
        }
    }

    /// Queues `pair` with its current count, or forgets it for good when it can never
    /// be merged: counts only fall, and token lengths never change.
    fn push_candidate(&mut self, pair: u64) {
        let Some(state) = self.pairs.get(&pair) else {
            return;
        };
        let (a, b) = unkey(pair);
        let too_long = (self.token_len[a as usize] + self.token_len[b as usize]) as usize
            > self.max_token_length;
        if state.count < self.min_frequency as i64 || too_long {
            self.pairs.remove(&pair);
        } else {
            self.heap
                .push((state.count as u64, std::cmp::Reverse(pair)));
        }
    }

    /// The most frequent pair (ties: the smaller pair), or None when nothing is left
    /// at or above `min_frequency`.
    fn best_pair(&mut self) -> Option<Pair> {
        while let Some((count, std::cmp::Reverse(pair))) = self.heap.pop() {
            let current = self.pairs.get(&pair).map_or(0, |s| s.count.max(0) as u64);
            if current == count {
                return (count >= self.min_frequency).then(|| unkey(pair));
            }
            if current > 0 {
                // Stale: the count has dropped. Requeue (or drop) at the true count.
                self.push_candidate(pair);
            }
        }
        None
    }

    /// Replaces every occurrence of `pair` by `new_id` and updates the pair counts.
    fn merge(&mut self, pair: Pair, new_id: u32) {
        let merged = key(pair.0, pair.1);
        let words = self
            .pairs
            .remove(&merged)
            .map(|s| s.words)
            .unwrap_or_default();
        self.token_len
            .push(self.token_len[pair.0 as usize] + self.token_len[pair.1 as usize]);
        let mut new_pairs: Vec<u64> = Vec::new();
        for &w in &words {
            self.merge_word(w, pair, new_id, merged, &mut new_pairs);
        }
        for k in new_pairs {
            self.push_candidate(k);
        }
    }

    /// Merges `pair` in word `w`: for each occurrence `x a b y`, the pairs (x, a) and
    /// (b, y) lose one occurrence and (x, new) and (new, y) gain one.
    fn merge_word(
        &mut self,
        w: u32,
        (a, b): Pair,
        new_id: u32,
        merged: u64,
        new_pairs: &mut Vec<u64>,
    ) {
        let wi = w as usize;
        let s = self.start[wi];
        let n = self.len[wi] as usize;
        let c = self.count[wi] as i64;
        let mut read = s;
        let mut write = s;
        let end = s + n;
        while read < end {
            if read + 1 < end && self.ids[read] == a && self.ids[read + 1] == b {
                if write > s {
                    let x = self.ids[write - 1];
                    self.add(key(x, a), -c, merged);
                    self.add_new(key(x, new_id), c, w, new_pairs);
                }
                if read + 2 < end {
                    let y = self.ids[read + 2];
                    self.add(key(b, y), -c, merged);
                    self.add_new(key(new_id, y), c, w, new_pairs);
                }
                self.ids[write] = new_id;
                read += 2;
            } else {
                self.ids[write] = self.ids[read];
                read += 1;
            }
            write += 1;
        }
        self.len[wi] = (write - s) as u32;
    }

    /// Adds `delta` (negative) to an existing pair's count; a pair nobody has any more
    /// is removed.
    #[inline]
    fn add(&mut self, pair: u64, delta: i64, merged: u64) {
        if pair == merged {
            return; // the pair being merged is already gone from the table
        }
        if let Some(state) = self.pairs.get_mut(&pair) {
            state.count += delta;
            if state.count <= 0 {
                self.pairs.remove(&pair);
            }
        }
    }

    /// Adds `delta` to a pair that contains the new token, recording word `w` in it.
    #[inline]
    fn add_new(&mut self, pair: u64, delta: i64, w: u32, new_pairs: &mut Vec<u64>) {
        let state = self.pairs.entry(pair).or_insert_with(|| {
            new_pairs.push(pair);
            PairState::default()
        });
        state.count += delta;
        if state.words.last() != Some(&w) {
            state.words.push(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::Pretokenizer;
    use std::collections::BTreeMap;

    /// The textbook algorithm: recount every pair before every merge.
    fn reference_bpe(counts: &WordCounts, opts: &TrainOptions) -> Vec<Pair> {
        let mut words: Vec<(Vec<u32>, u64)> = counts
            .iter()
            .map(|(w, c)| (w.iter().map(|&b| b as u32).collect(), c))
            .collect();
        let mut token_len: Vec<usize> = vec![1; 256];
        let max_len = opts.max_token_length.unwrap_or(usize::MAX);
        let mut merges = Vec::new();
        for i in 0..opts.num_merges().unwrap() {
            let mut pair_counts: BTreeMap<Pair, u64> = BTreeMap::new();
            for (ids, c) in &words {
                for p in ids.windows(2) {
                    *pair_counts.entry((p[0], p[1])).or_default() += c;
                }
            }
            // Most frequent allowed pair; among equals the first (smallest) in the BTreeMap.
            let mut best: Option<(Pair, u64)> = None;
            for (&p, &c) in &pair_counts {
                if token_len[p.0 as usize] + token_len[p.1 as usize] <= max_len
                    && best.is_none_or(|(_, bc)| c > bc)
                {
                    best = Some((p, c));
                }
            }
            let Some((pair, c)) = best else { break };
            if c < opts.min_frequency {
                break;
            }
            let new_id = 256 + i as u32;
            for (ids, _) in &mut words {
                let mut out = Vec::with_capacity(ids.len());
                let mut j = 0;
                while j < ids.len() {
                    if j + 1 < ids.len() && (ids[j], ids[j + 1]) == pair {
                        out.push(new_id);
                        j += 2;
                    } else {
                        out.push(ids[j]);
                        j += 1;
                    }
                }
                *ids = out;
            }
            token_len.push(token_len[pair.0 as usize] + token_len[pair.1 as usize]);
            merges.push(pair);
        }
        merges
    }

    fn train(counts: &WordCounts, opts: &TrainOptions) -> Vec<Pair> {
        train_bpe(counts, opts, &AtomicU64::new(0)).unwrap()
    }

    fn counts_of(text: &str) -> WordCounts {
        let mut counts = WordCounts::new();
        counts.add_text(text, &Pretokenizer::gpt4());
        counts
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Words over a tiny alphabet, so that repeated and overlapping pairs ("aaa",
    /// "abab") and count ties are everywhere.
    fn random_counts(rng: &mut Rng) -> WordCounts {
        let mut counts = WordCounts::new();
        for _ in 0..1 + rng.below(60) {
            let len = 1 + rng.below(9) as usize;
            let word: Vec<u8> = (0..len)
                .map(|_| b"aabbc d"[rng.below(7) as usize])
                .collect();
            counts.add(&word, 1 + rng.below(4));
        }
        counts
    }

    #[test]
    fn equals_the_reference_on_generated_corpora() {
        let mut rng = Rng(0x1234_5678);
        for _ in 0..300 {
            let counts = random_counts(&mut rng);
            let mut opts = TrainOptions::new(256 + 1 + rng.below(40) as usize);
            opts.min_frequency = 1 + rng.below(3);
            opts.max_token_length = [None, Some(2), Some(3), Some(5)][rng.below(4) as usize];
            assert_eq!(
                train(&counts, &opts),
                reference_bpe(&counts, &opts),
                "{opts:?}"
            );
        }
    }

    #[test]
    fn equals_the_reference_on_text() {
        let text = "the cat sat on the mat; the cat's hat is flat. 1234 12 34 aaaa abab\n\n  that's that\n";
        let counts = counts_of(&text.repeat(3));
        let opts = TrainOptions::new(256 + 1 + 30);
        let merges = train(&counts, &opts);
        assert_eq!(merges.len(), 30);
        assert_eq!(merges, reference_bpe(&counts, &opts));
    }

    #[test]
    fn ties_go_to_the_smaller_pair() {
        // "ab" and "cd" both occur 5 times; (97, 98) < (99, 100).
        let counts: WordCounts = [(&b"cd"[..], 5), (&b"ab"[..], 5)].into_iter().collect();
        assert_eq!(
            train(&counts, &TrainOptions::new(259)),
            vec![(97, 98), (99, 100)]
        );
    }

    #[test]
    fn min_frequency_stops_early() {
        let counts: WordCounts = [(&b"abc"[..], 3), (&b"xy"[..], 1)].into_iter().collect();
        let mut opts = TrainOptions::new(300);
        opts.min_frequency = 2;
        assert_eq!(train(&counts, &opts), vec![(97, 98), (256, 99)]);
        opts.min_frequency = 1;
        assert_eq!(train(&counts, &opts), vec![(97, 98), (256, 99), (120, 121)]);
    }

    #[test]
    fn max_token_length_is_respected() {
        let counts = counts_of(&"abcdefgh abcdefgh abcd ".repeat(10));
        let mut opts = TrainOptions::new(400);
        opts.max_token_length = Some(3);
        let merges = train(&counts, &opts);
        let mut len = vec![1usize; 256];
        for &(a, b) in &merges {
            len.push(len[a as usize] + len[b as usize]);
        }
        assert!(!merges.is_empty());
        assert!(len.iter().all(|&l| l <= 3));
        assert_eq!(merges, reference_bpe(&counts, &opts));
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rng = Rng(99);
        let mut counts = WordCounts::new();
        for _ in 0..20 {
            counts.merge(random_counts(&mut rng));
        }
        let opts = TrainOptions::new(256 + 1 + 50);
        let runs: Vec<Vec<Pair>> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // A copy rebuilt in a different order, so the hash map order differs too.
                let mut words: Vec<(Vec<u8>, u64)> =
                    counts.iter().map(|(w, c)| (w.to_vec(), c)).collect();
                let shift = threads * 7 % words.len();
                words.rotate_left(shift);
                let copy: WordCounts = words.iter().map(|(w, c)| (w.as_slice(), *c)).collect();
                pool.install(|| train(&copy, &opts))
            })
            .collect();
        assert_eq!(runs[0], runs[1]);
        assert_eq!(runs[0], runs[2]);
    }

    #[test]
    fn stops_when_pairs_run_out_and_reports_progress() {
        let counts: WordCounts = [(&b"abc"[..], 1), (&b"z"[..], 9)].into_iter().collect();
        let progress = AtomicU64::new(0);
        let merges = train_bpe(&counts, &TrainOptions::new(1000), &progress).unwrap();
        assert_eq!(merges, vec![(97, 98), (256, 99)]);
        assert_eq!(progress.load(Ordering::Relaxed), 2);
        assert!(
            train_bpe(&WordCounts::new(), &TrainOptions::new(300), &progress)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn vocab_size_too_small_is_an_error() {
        let err = train_bpe(
            &WordCounts::new(),
            &TrainOptions::new(256),
            &AtomicU64::new(0),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("vocab_size 256 is too small"),
            "{err}"
        );
        assert_eq!(TrainOptions::new(257).num_merges().unwrap(), 0);
    }
}
