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

use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use rayon::prelude::*;

use crate::bpe::corpus::WordCounts;
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
    // Run on a rayon worker thread: the counting maps were allocated and freed by those
    // threads, and the allocator keeps per-thread arenas, so the trainer reuses that
    // memory instead of adding to the peak (about 10 MB less on 170 MB of code).
    rayon::scope(|_| train_bpe_with(counts, opts, progress, PARALLEL_MERGE_WORDS))
}

/// [`train_bpe`] that takes the counts and frees them as soon as the trainer has copied
/// them into its flat arrays, so the peak holds one of the two, not both.
pub fn train_bpe_owned(
    counts: WordCounts,
    opts: &TrainOptions,
    progress: &AtomicU64,
) -> Result<Vec<Pair>> {
    rayon::scope(|_| {
        let num_merges = opts.num_merges()?;
        let trainer = Trainer::new(&counts, opts);
        drop(counts);
        Ok(run_merges(trainer, num_merges, progress))
    })
}

fn train_bpe_with(
    counts: &WordCounts,
    opts: &TrainOptions,
    progress: &AtomicU64,
    parallel_merge_words: usize,
) -> Result<Vec<Pair>> {
    let num_merges = opts.num_merges()?;
    let mut trainer = Trainer::new(counts, opts);
    trainer.parallel_merge_words = parallel_merge_words;
    Ok(run_merges(trainer, num_merges, progress))
}

fn run_merges(mut trainer: Trainer, num_merges: usize, progress: &AtomicU64) -> Vec<Pair> {
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
    merges
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline]
fn unkey(k: u64) -> Pair {
    ((k >> 32) as u32, k as u32)
}

/// A pair's count and its words, as gathered by a merge (or the first count).
#[derive(Default)]
struct PairState {
    /// Occurrences in the corpus (sum of the counts of the words, once per occurrence).
    count: i64,
    /// Words that contain (or once contained) the pair, without repeats; a word that
    /// lost the pair since is harmless (merging finds nothing in it).
    words: Vec<u32>,
}

/// A pair in the table: its count and where its word list is in `Trainer::word_lists`.
/// Lists live outside the table to keep its buckets small (24 bytes, not 40): the
/// table holds every pair seen, and it is the largest thing the trainer allocates.
struct PairEntry {
    count: i64,
    slot: u32,
}

struct Word {
    /// `ids[start..start + len]`
    start: usize,
    count: u64,
    len: u32,
}

struct Trainer {
    /// All words' token ids, concatenated in word order. Merges only shorten words,
    /// so each is rewritten in place.
    ids: Vec<u32>,
    /// Where each word is in `ids`, and its count (together: one cache miss per word).
    words: Vec<Word>,
    pairs: AHashMap<u64, PairEntry>,
    /// Word lists of the pairs in `pairs`, by slot; freed slots are reused.
    word_lists: Vec<Vec<u32>>,
    free_slots: Vec<u32>,
    /// (count, pair) candidates, best first: larger count, then smaller pair. An entry
    /// may be stale (the pair's count has dropped since); it is checked when popped.
    heap: CandidateHeap,
    /// Byte length of every token so far.
    token_len: Vec<u32>,
    min_frequency: u64,
    max_token_length: usize,
    /// Reused between merges to save allocations (one per parallel task).
    scratches: Vec<MergeScratch>,
    /// Merges touching at least this many words run on several threads.
    parallel_merge_words: usize,
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
        let mut words = Vec::with_capacity(counts.len());
        for (word, count) in counts.iter().filter(|(w, _)| w.len() >= 2) {
            words.push(Word {
                start: ids.len(),
                count,
                len: word.len() as u32,
            });
            ids.extend(word.iter().map(|&b| b as u32));
        }
        let mut trainer = Trainer {
            ids,
            words,
            pairs: AHashMap::new(),
            word_lists: Vec::new(),
            free_slots: Vec::new(),
            heap: CandidateHeap::default(),
            token_len: vec![1; 256],
            min_frequency: opts.min_frequency.max(1),
            max_token_length: opts.max_token_length.unwrap_or(usize::MAX),
            scratches: Vec::new(),
            parallel_merge_words: PARALLEL_MERGE_WORDS,
        };
        trainer.count_byte_pairs();
        trainer
    }

    /// The initial pair counts and word lists. Before any merge every pair is two
    /// bytes, so plain arrays indexed by `a << 8 | b` replace the hash map. Words are
    /// split into one contiguous range per thread; concatenating the ranges' word lists
    /// in order keeps every list sorted and free of repeats.
    fn count_byte_pairs(&mut self) {
        let num_words = self.words.len();
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
                    let Word { start, count, len } = self.words[w];
                    for pair in self.ids[start..start + len as usize].windows(2) {
                        let k = ((pair[0] << 8) | pair[1]) as usize;
                        counts[k] += count;
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
                self.insert_pair(
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

    fn insert_pair(&mut self, pair: u64, state: PairState) {
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.word_lists[slot as usize] = state.words;
                slot
            }
            None => {
                self.word_lists.push(state.words);
                (self.word_lists.len() - 1) as u32
            }
        };
        self.pairs.insert(
            pair,
            PairEntry {
                count: state.count,
                slot,
            },
        );
    }

    /// Removes `pair` from the table, returning its word list.
    fn remove_pair(&mut self, pair: u64) -> Vec<u32> {
        match self.pairs.remove(&pair) {
            Some(entry) => {
                self.free_slots.push(entry.slot);
                std::mem::take(&mut self.word_lists[entry.slot as usize])
            }
            None => Vec::new(),
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
            self.remove_pair(pair);
        } else {
            self.heap.push((state.count as u64, pair));
        }
    }

    /// The most frequent pair (ties: the smaller pair), or None when nothing is left
    /// at or above `min_frequency`.
    fn best_pair(&mut self) -> Option<Pair> {
        while let Some((count, pair)) = self.heap.pop() {
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
    /// The changes are gathered per merge in scratch tables indexed by token id (no
    /// hashing, hot in cache) and applied to the big pair table once per affected pair,
    /// not once per occurrence. Merges that touch many words are split over threads:
    /// each rewrites its own contiguous range of words, since every word list is sorted.
    fn merge(&mut self, pair: Pair, new_id: u32) {
        let merged = key(pair.0, pair.1);
        let words = self.remove_pair(merged);
        self.token_len
            .push(self.token_len[pair.0 as usize] + self.token_len[pair.1 as usize]);
        let threads = rayon::current_num_threads();
        let parallel = words.len() >= self.parallel_merge_words && threads >= 2;
        let tasks = if parallel { threads } else { 1 };
        let mut scratches = std::mem::take(&mut self.scratches);
        scratches.resize_with(scratches.len().max(tasks), MergeScratch::default);
        for scratch in &mut scratches[..tasks] {
            scratch.reset(pair, new_id);
        }
        if parallel {
            self.merge_parallel(&words, &mut scratches[..tasks]);
        } else {
            let scratch = &mut scratches[0];
            for &w in &words {
                let word = &mut self.words[w as usize];
                let ids = &mut self.ids[word.start..word.start + word.len as usize];
                word.len = scratch.merge_word(ids, w, word.count as i64) as u32;
            }
        }
        let (first, later) = scratches.split_first_mut().expect("at least one scratch");
        for more in &mut later[..tasks - 1] {
            first.absorb(more);
        }
        self.apply(first);
        self.scratches = scratches;
    }

    /// Applies one merge's changes to the pair table and queues the new pairs.
    fn apply(&mut self, scratch: &mut MergeScratch) {
        let ((a, b), new_id) = (scratch.pair, scratch.new_id);
        let lost = scratch.lost_left.drain().map(|(x, d)| (key(x, a), d));
        let lost = lost.chain(scratch.lost_right.drain().map(|(y, d)| (key(b, y), d)));
        for (k, delta) in lost {
            let gone = self.pairs.get_mut(&k).is_some_and(|entry| {
                entry.count += delta;
                entry.count <= 0
            });
            if gone {
                self.remove_pair(k);
            }
        }
        let fresh = scratch
            .fresh_left
            .drain_fresh()
            .map(|(x, s)| (key(x, new_id), s));
        let fresh: Vec<(u64, PairState)> = fresh
            .chain(
                scratch
                    .fresh_right
                    .drain_fresh()
                    .map(|(y, s)| (key(new_id, y), s)),
            )
            .collect();
        for (k, state) in fresh {
            self.insert_pair(k, state);
            self.push_candidate(k);
        }
    }

    /// Merges in `list` (sorted), one contiguous range of words per scratch.
    fn merge_parallel(&mut self, list: &[u32], scratches: &mut [MergeScratch]) {
        let per_task = list.len().div_ceil(scratches.len());
        // Each task owns the words from its first one up to the next task's first, and
        // their ids: cut both arrays there.
        let cuts: Vec<(usize, usize)> = list
            .chunks(per_task)
            .skip(1)
            .map(|chunk| (self.words[chunk[0] as usize].start, chunk[0] as usize))
            .chain(std::iter::once((self.ids.len(), self.words.len())))
            .collect();
        let mut tasks = Vec::new();
        let (mut ids_rest, mut ids_offset): (&mut [u32], usize) = (&mut self.ids, 0);
        let (mut words_rest, mut words_offset): (&mut [Word], usize) = (&mut self.words, 0);
        for ((chunk, &(ids_cut, words_cut)), scratch) in
            list.chunks(per_task).zip(&cuts).zip(scratches.iter_mut())
        {
            let (ids_here, ids_after) =
                std::mem::take(&mut ids_rest).split_at_mut(ids_cut - ids_offset);
            let (words_here, words_after) =
                std::mem::take(&mut words_rest).split_at_mut(words_cut - words_offset);
            tasks.push((
                chunk,
                ids_here,
                ids_offset,
                words_here,
                words_offset,
                scratch,
            ));
            (ids_rest, words_rest) = (ids_after, words_after);
            (ids_offset, words_offset) = (ids_cut, words_cut);
        }
        tasks
            .into_par_iter()
            .for_each(|(chunk, ids, ids_offset, words, words_offset, scratch)| {
                for &w in chunk {
                    let word = &mut words[w as usize - words_offset];
                    let s = word.start - ids_offset;
                    word.len = scratch.merge_word(
                        &mut ids[s..s + word.len as usize],
                        w,
                        word.count as i64,
                    ) as u32;
                }
            });
    }
}

/// A max-heap of (count, pair): larger count first, then the smaller pair. Four
/// children per node halve the depth of a binary heap (and the cache misses on a big one).
#[derive(Default)]
struct CandidateHeap {
    items: Vec<(u64, u64)>,
}

impl CandidateHeap {
    #[inline]
    fn before(x: (u64, u64), y: (u64, u64)) -> bool {
        x.0 > y.0 || (x.0 == y.0 && x.1 < y.1)
    }

    fn push(&mut self, item: (u64, u64)) {
        let items = &mut self.items;
        items.push(item);
        let mut i = items.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 4;
            if !Self::before(items[i], items[parent]) {
                break;
            }
            items.swap(i, parent);
            i = parent;
        }
    }

    fn pop(&mut self) -> Option<(u64, u64)> {
        let last = self.items.pop()?;
        if self.items.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.items[0], last);
        let items = &mut self.items;
        let n = items.len();
        let mut i = 0;
        loop {
            let first = 4 * i + 1;
            if first >= n {
                break;
            }
            let mut best = first;
            for child in first + 1..(first + 4).min(n) {
                if Self::before(items[child], items[best]) {
                    best = child;
                }
            }
            if !Self::before(items[best], items[i]) {
                break;
            }
            items.swap(i, best);
            i = best;
        }
        Some(top)
    }
}

/// Merges touching at least this many words run on several threads.
const PARALLEL_MERGE_WORDS: usize = 4096;

/// Per-token accumulators for one merge: entry `t` stands for the pair made of `t` and
/// a side fixed by the merge (e.g. `(t, a)`). Only touched entries are visited or reset.
#[derive(Default)]
struct TokenTable {
    count: Vec<i64>,
    /// Words the pair was made in (only for pairs with the new token).
    words: Vec<Vec<u32>>,
    /// `stamp[t] == generation` when entry `t` is live in this merge.
    stamp: Vec<u32>,
    generation: u32,
    touched: Vec<u32>,
}

impl TokenTable {
    /// Starts a new merge over tokens `0..size`; `with_words` for the tables that keep
    /// word lists (the others leave `words` empty, saving 24 bytes per token).
    fn reset(&mut self, size: usize, with_words: bool) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: no stale stamp may equal the new generation.
            self.stamp.fill(0);
            self.generation = 1;
        }
        self.touched.clear();
        if self.count.len() < size {
            self.count.resize(size, 0);
            self.stamp.resize(size, 0);
        }
        if with_words && self.words.len() < size {
            self.words.resize_with(size, Vec::new);
        }
    }

    #[inline]
    fn entry(&mut self, t: u32) -> usize {
        let i = t as usize;
        if self.stamp[i] != self.generation {
            self.stamp[i] = self.generation;
            self.count[i] = 0;
            if let Some(words) = self.words.get_mut(i) {
                words.clear();
            }
            self.touched.push(t);
        }
        i
    }

    #[inline]
    fn add(&mut self, t: u32, c: i64) {
        let i = self.entry(t);
        self.count[i] += c;
    }

    #[inline]
    fn add_in_word(&mut self, t: u32, c: i64, w: u32) {
        let i = self.entry(t);
        self.count[i] += c;
        if self.words[i].last() != Some(&w) {
            self.words[i].push(w);
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.touched.iter().map(|&t| (t, self.count[t as usize]))
    }

    /// The live pairs (count > 0) with their words, moved out.
    fn drain_fresh(&mut self) -> impl Iterator<Item = (u32, PairState)> + '_ {
        let (count, words) = (&self.count, &mut self.words);
        self.touched
            .iter()
            .filter(move |&&t| count[t as usize] > 0)
            .map(move |&t| {
                (
                    t,
                    PairState {
                        count: count[t as usize],
                        words: std::mem::take(&mut words[t as usize]),
                    },
                )
            })
    }

    /// Adds the entries of `later` (a later range of words, so word lists stay sorted).
    fn absorb(&mut self, later: &TokenTable) {
        for &t in &later.touched {
            let i = self.entry(t);
            self.count[i] += later.count[t as usize];
            if let Some(words) = later.words.get(t as usize) {
                self.words[i].extend_from_slice(words);
            }
        }
    }
}

/// What one merge of `pair` into `new_id` changes, before it is applied to the table.
#[derive(Default)]
struct MergeScratch {
    pair: Pair,
    new_id: u32,
    /// (x, a) losing occurrences, by x.
    lost_left: TokenTable,
    /// (b, y) losing occurrences, by y.
    lost_right: TokenTable,
    /// (x, new), by x.
    fresh_left: TokenTable,
    /// (new, y), by y.
    fresh_right: TokenTable,
}

impl MergeScratch {
    fn reset(&mut self, pair: Pair, new_id: u32) {
        self.pair = pair;
        self.new_id = new_id;
        let size = new_id as usize + 1;
        self.lost_left.reset(size, false);
        self.lost_right.reset(size, false);
        self.fresh_left.reset(size, true);
        self.fresh_right.reset(size, true);
    }

    /// Merges the pair in one word (`c` copies of word number `w`), rewriting it in place;
    /// returns its new length. For each occurrence `x a b y`, the pairs (x, a) and
    /// (b, y) lose one occurrence and (x, new) and (new, y) gain one.
    #[inline]
    fn merge_word(&mut self, word: &mut [u32], w: u32, c: i64) -> usize {
        let ((a, b), new_id) = (self.pair, self.new_id);
        let n = word.len();
        let (mut read, mut write) = (0, 0);
        while read < n {
            if read + 1 < n && word[read] == a && word[read + 1] == b {
                if write > 0 {
                    let x = word[write - 1];
                    if x == new_id {
                        // (new, a), made by the previous occurrence ("a b a b").
                        self.fresh_right.add(a, -c);
                    } else if (x, a) != (a, b) {
                        self.lost_left.add(x, -c);
                    }
                    self.fresh_left.add_in_word(x, c, w);
                }
                if read + 2 < n {
                    let y = word[read + 2];
                    if (b, y) != (a, b) {
                        self.lost_right.add(y, -c);
                    }
                    self.fresh_right.add_in_word(y, c, w);
                }
                word[write] = new_id;
                read += 2;
            } else {
                word[write] = word[read];
                read += 1;
            }
            write += 1;
        }
        write
    }

    fn absorb(&mut self, later: &MergeScratch) {
        self.lost_left.absorb(&later.lost_left);
        self.lost_right.absorb(&later.lost_right);
        self.fresh_left.absorb(&later.fresh_left);
        self.fresh_right.absorb(&later.fresh_right);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpe::pretokenize::Pretokenizer;
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
        for _ in 0..150 {
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
    fn parallel_merges_equal_sequential_ones() {
        let mut rng = Rng(7);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for _ in 0..40 {
            let counts = random_counts(&mut rng);
            let opts = TrainOptions::new(256 + 1 + 30);
            // Every merge of 2 words or more takes the parallel path.
            let parallel =
                pool.install(|| train_bpe_with(&counts, &opts, &AtomicU64::new(0), 2).unwrap());
            assert_eq!(parallel, reference_bpe(&counts, &opts));
        }
    }

    #[test]
    fn candidate_heap_pops_in_order() {
        let mut rng = Rng(5);
        let mut heap = CandidateHeap::default();
        let mut items: Vec<(u64, u64)> = (0..500).map(|_| (rng.below(20), rng.below(50))).collect();
        for &item in &items {
            heap.push(item);
        }
        // Larger count first, then smaller pair.
        items.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        let popped: Vec<(u64, u64)> = std::iter::from_fn(|| heap.pop()).collect();
        assert_eq!(popped, items);
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

    /// `batches` random count tables from seed `seed`, merged into one.
    fn merged_random_counts(seed: u64, batches: usize) -> WordCounts {
        let mut rng = Rng(seed);
        let mut counts = WordCounts::new();
        for _ in 0..batches {
            counts.merge(random_counts(&mut rng));
        }
        counts
    }

    #[test]
    fn owned_training_equals_borrowed() {
        let counts = merged_random_counts(7, 10);
        let opts = TrainOptions::new(256 + 1 + 40);
        let progress = AtomicU64::new(0);
        let borrowed = train_bpe(&counts, &opts, &progress).unwrap();
        let owned = train_bpe_owned(counts, &opts, &progress).unwrap();
        assert!(!borrowed.is_empty());
        assert_eq!(borrowed, owned);
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let counts = merged_random_counts(99, 20);
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
