//! Walking folders, reading files in parallel and counting pre-tokenized words.
//!
//! Memory is bounded by the distinct words plus the files in flight (one per rayon
//! thread; files over [`CHUNK_BYTES`] are read in newline-aligned chunks), never by the
//! size of the corpus.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ahash::AHashMap;
use rayon::prelude::*;

use crate::bpe::pretokenize::Pretokenizer;
use crate::{Error, Result};

/// Files larger than this are read and counted chunk by chunk.
pub const CHUNK_BYTES: usize = 8 << 20;

/// Every file under `root` (or `root` itself when it is a file), sorted by path so the
/// order is the same on every machine. Hidden files and folders (names starting with
/// '.', such as `.git`) are skipped below `root`. Symlinked folders are followed, except
/// a link to a folder that holds it (a loop). `extensions` keeps only files with one
/// of the given extensions, written "py" or ".py" (case-insensitive); empty keeps all.
pub fn collect_files(root: &Path, extensions: &[String]) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let wanted: Vec<String> = extensions
        .iter()
        .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            // A link to a folder that holds it: followed, it would never end. Skipped,
            // as `lmrs corpus add` skips it.
            Err(e) if e.loop_ancestor().is_some() => continue,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                return Err(Error::Invalid(format!("{}: {e}", path.display())));
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let keep = wanted.is_empty()
            || entry
                .path()
                .extension()
                .map(|ext| {
                    wanted
                        .iter()
                        .any(|w| ext.to_string_lossy().eq_ignore_ascii_case(w))
                })
                .unwrap_or(false);
        if keep {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok(files)
}

/// Counts of distinct pre-tokenized words (their UTF-8 bytes → occurrences).
///
/// Most words are short, so words of up to [`SHORT_WORD_BYTES`] bytes live inline in a
/// 16-byte key (hashed as one u128, compared without following a pointer) and only
/// longer ones are allocated: counting is mostly hash-map lookups, and this makes them
/// several times cheaper.
#[derive(Default, Clone, Debug)]
pub struct WordCounts {
    short: AHashMap<ShortWord, u64>,
    long: AHashMap<Box<[u8]>, u64>,
}

/// The longest word kept inline.
pub const SHORT_WORD_BYTES: usize = 15;

/// A word of at most 15 bytes: the bytes, zero-padded, with the length in the last byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ShortWord([u8; 16]);

impl ShortWord {
    #[inline]
    fn new(word: &[u8]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..word.len()].copy_from_slice(word);
        bytes[15] = word.len() as u8;
        ShortWord(bytes)
    }

    /// The word of `len` bytes at the start of `window` (16 bytes of the text): one
    /// unaligned load and a mask, where copying `len` bytes would call memcpy and then
    /// stall reading them back as one value.
    #[inline]
    fn from_window(window: [u8; 16], len: usize) -> Self {
        let mask = (1u128 << (8 * len)) - 1;
        let word = u128::from_le_bytes(window) & mask;
        ShortWord((word | (len as u128) << 120).to_le_bytes())
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        &self.0[..self.0[15] as usize]
    }
}

impl std::hash::Hash for ShortWord {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_le_bytes(self.0));
    }
}

impl WordCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total occurrences of all words.
    pub fn total(&self) -> u64 {
        self.short.values().sum::<u64>() + self.long.values().sum::<u64>()
    }

    pub fn get(&self, word: &[u8]) -> u64 {
        let count = if word.len() <= SHORT_WORD_BYTES {
            self.short.get(&ShortWord::new(word))
        } else {
            self.long.get(word)
        };
        count.copied().unwrap_or(0)
    }

    /// (word bytes, count) in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        let short = self
            .short
            .iter()
            .map(|(word, &count)| (word.bytes(), count));
        short.chain(self.long.iter().map(|(word, &count)| (&**word, count)))
    }

    /// Adds `count` occurrences of `word`; allocates only for a long word not seen before.
    #[inline]
    pub fn add(&mut self, word: &[u8], count: u64) {
        if word.len() <= SHORT_WORD_BYTES {
            self.add_short(ShortWord::new(word), count);
        } else {
            self.add_long(word, count);
        }
    }

    #[inline]
    fn add_short(&mut self, word: ShortWord, count: u64) {
        // get_mut first: the common case (a word seen before) stays inlined and never
        // reserves room.
        if let Some(c) = self.short.get_mut(&word) {
            *c += count;
        } else {
            self.short.insert(word, count);
        }
    }

    fn add_long(&mut self, word: &[u8], count: u64) {
        if let Some(c) = self.long.get_mut(word) {
            *c += count;
        } else {
            self.long.insert(word.into(), count);
        }
    }

    /// Splits `text` into words and counts them.
    pub fn add_text(&mut self, text: &str, pretokenizer: &Pretokenizer) {
        let bytes = text.as_bytes();
        let base = bytes.as_ptr() as usize;
        pretokenizer.for_each_piece(text, |piece| {
            let len = piece.len();
            if len > SHORT_WORD_BYTES {
                return self.add_long(piece.as_bytes(), 1);
            }
            // Pieces are slices of `text`: read the 16 bytes from the piece's start
            // when the text has them (all but the last few pieces).
            let start = piece.as_ptr() as usize - base;
            let word = match bytes
                .get(start..start + 16)
                .and_then(|w| <[u8; 16]>::try_from(w).ok())
            {
                Some(window) => ShortWord::from_window(window, len),
                None => ShortWord::new(piece.as_bytes()),
            };
            self.add_short(word, 1);
        });
    }

    /// Counts the words of many texts in parallel (each text is one document); see
    /// [`CountShards`], which keeps its maps across batches.
    pub fn add_texts(&mut self, texts: &[&str], pretokenizer: &Pretokenizer) {
        let mut shards = CountShards::default();
        shards.add_texts(texts, pretokenizer);
        self.merge(shards.merged());
    }

    /// Adds all counts of `other` into `self`.
    pub fn merge(&mut self, other: WordCounts) {
        if other.len() > self.len() {
            let smaller = std::mem::replace(self, other);
            return self.merge(smaller);
        }
        for (word, count) in other.short {
            *self.short.entry(word).or_insert(0) += count;
        }
        for (word, count) in other.long {
            *self.long.entry(word).or_insert(0) += count;
        }
    }
}

/// Texts are counted in units of about this many bytes (cut where no piece crosses):
/// a batch of a few long documents then ends with small units, not with one thread
/// counting the last long document while the others wait.
const COUNT_UNIT_BYTES: usize = 64 << 10;

/// Word counts of batches of texts, one map per worker thread, kept across batches and
/// merged once when read ([`merged`](Self::merged)). Record files arrive as batches of
/// about 1 MB: merging the threads' maps after every batch ran on one thread while the
/// other waited, and each batch of a few uneven documents left a thread idle at its end
/// (counting a Parquet file of the 72 plays took 37-40 ms against 30 ms for the same
/// text as files).
#[derive(Default, Debug)]
pub struct CountShards {
    shards: Vec<WordCounts>,
}

impl CountShards {
    /// Counts the words of `texts` (each one document) in parallel: the texts are cut
    /// into units (see [`Pretokenizer::units`]), which each thread pulls largest first
    /// into its own map.
    pub fn add_texts(&mut self, texts: &[&str], pretokenizer: &Pretokenizer) {
        let mut units: Vec<&str> = texts
            .iter()
            .flat_map(|text| pretokenizer.units(text, COUNT_UNIT_BYTES))
            .collect();
        units.sort_unstable_by_key(|unit| std::cmp::Reverse(unit.len()));
        let workers = rayon::current_num_threads().clamp(1, units.len().max(1));
        if self.shards.len() < workers {
            self.shards.resize_with(workers, WordCounts::new);
        }
        let next = AtomicUsize::new(0);
        self.shards[..workers].par_iter_mut().for_each(|acc| {
            while let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                acc.add_text(unit, pretokenizer);
            }
        });
    }

    /// True when no text has been counted.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.len() == 0)
    }

    /// The counts of every text added, in one map.
    pub fn merged(self) -> WordCounts {
        self.shards
            .into_iter()
            .fold(WordCounts::new(), |mut all, shard| {
                all.merge(shard);
                all
            })
    }
}

impl<'a> FromIterator<(&'a [u8], u64)> for WordCounts {
    fn from_iter<I: IntoIterator<Item = (&'a [u8], u64)>>(iter: I) -> Self {
        let mut counts = WordCounts::new();
        for (word, count) in iter {
            counts.add(word, count);
        }
        counts
    }
}

/// The result of counting the words of a list of files.
#[derive(Default, Debug)]
pub struct CorpusCounts {
    pub words: WordCounts,
    /// Bytes of the files that were counted (skipped files not included).
    pub bytes_read: u64,
    pub files_read: u64,
    /// Files that are not text: not valid UTF-8, or containing NUL bytes.
    pub files_skipped: u64,
    /// Their paths, sorted.
    pub skipped_paths: Vec<PathBuf>,
}

impl CorpusCounts {
    fn merged(mut self, other: CorpusCounts) -> CorpusCounts {
        self.words.merge(other.words);
        self.bytes_read += other.bytes_read;
        self.files_read += other.files_read;
        self.files_skipped += other.files_skipped;
        self.skipped_paths.extend(other.skipped_paths);
        self
    }
}

/// Reads `paths` in parallel and counts their words. `progress` is called from the
/// worker threads with the number of bytes just processed (keep it cheap, e.g. an
/// `AtomicU64::fetch_add`). A file that cannot be read is an error naming it; a file
/// that is not text is skipped and listed in the result.
pub fn count_words_in_files(
    paths: &[PathBuf],
    pretokenizer: &Pretokenizer,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CorpusCounts> {
    // One accumulator per thread, each pulling the next file from a shared index: the
    // number of maps alive (and so the memory) stays at the thread count, and a thread
    // that draws large files does not hold the others up.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = rayon::current_num_threads().clamp(1, paths.len().max(1));
    let partials: Vec<Result<CorpusCounts>> = (0..workers)
        .into_par_iter()
        .map(|_| {
            let mut acc = CorpusCounts::default();
            while !failed.load(Ordering::Relaxed) {
                let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                if let Err(e) = count_file(path, pretokenizer, progress, CHUNK_BYTES, &mut acc) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(acc)
        })
        .collect();
    let mut result = CorpusCounts::default();
    for partial in partials {
        result = result.merged(partial?);
    }
    result.skipped_paths.sort();
    Ok(result)
}

/// Counts one file into `acc`, or records it as skipped.
fn count_file(
    path: &Path,
    pretokenizer: &Pretokenizer,
    progress: &(dyn Fn(u64) + Sync),
    chunk_bytes: usize,
    acc: &mut CorpusCounts,
) -> Result<()> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // Chunk boundaries are exact only for the hand-written GPT-4 scanner (see
    // `chunk_split_point`); other patterns read the whole file.
    let counted = if size > chunk_bytes as u64 && pretokenizer.is_fast() {
        count_large_file(path, &mut file, size, chunk_bytes, pretokenizer, progress)?.map(
            |(bytes, words)| {
                acc.words.merge(words);
                bytes
            },
        )
    } else {
        let mut bytes = Vec::with_capacity(size as usize + 1);
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        match as_text(&bytes) {
            Some(text) => {
                acc.words.add_text(text, pretokenizer);
                progress(bytes.len() as u64);
                Some(bytes.len() as u64)
            }
            None => {
                progress(bytes.len() as u64);
                None
            }
        }
    };
    match counted {
        Some(bytes) => {
            acc.bytes_read += bytes;
            acc.files_read += 1;
        }
        None => {
            acc.files_skipped += 1;
            acc.skipped_paths.push(path.to_path_buf());
        }
    }
    Ok(())
}

/// `bytes` as text, or None for binary data (NUL bytes) and invalid UTF-8.
fn as_text(bytes: &[u8]) -> Option<&str> {
    if memchr::memchr(0, bytes).is_some() {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Counts a large file chunk by chunk into its own map, so that a file found not to be
/// text halfway through leaves nothing behind. Returns None when it is not text.
fn count_large_file(
    path: &Path,
    file: &mut File,
    size: u64,
    chunk_bytes: usize,
    pretokenizer: &Pretokenizer,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<(u64, WordCounts)>> {
    let mut words = WordCounts::new();
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_bytes + chunk_bytes / 8);
    let mut done = 0u64;
    loop {
        let read = file
            .by_ref()
            .take(chunk_bytes as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        let at_end = read == 0;
        // Without a safe split point (one huge line) keep reading: the buffer grows.
        let split = if at_end {
            Some(buf.len())
        } else {
            chunk_split_point(&buf)
        };
        let Some(split) = split else { continue };
        let Some(text) = as_text(&buf[..split]) else {
            progress(size.saturating_sub(done));
            return Ok(None);
        };
        words.add_text(text, pretokenizer);
        progress(split as u64);
        done += split as u64;
        buf.drain(..split);
        if at_end {
            return Ok(Some((done, words)));
        }
    }
}

/// Where a chunk may end without changing the GPT-4 pieces: just after a '\n' that is
/// followed by a printable ASCII character. No piece spans such a point (a piece with a
/// newline in it ends at the newline run or whitespace run, and neither continues into
/// a non-space character), and every piece before it is decided by text before it.
fn chunk_split_point(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while let Some(nl) = memchr::memrchr(b'\n', &bytes[..end]) {
        if let Some(&next) = bytes.get(nl + 1) {
            if next.is_ascii_graphic() {
                return Some(nl + 1);
            }
        }
        end = nl;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lmrs-corpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn counts_of(text: &str) -> WordCounts {
        let mut counts = WordCounts::new();
        counts.add_text(text, &Pretokenizer::gpt4());
        counts
    }

    fn sorted(counts: &WordCounts) -> Vec<(Vec<u8>, u64)> {
        let mut v: Vec<_> = counts.iter().map(|(w, c)| (w.to_vec(), c)).collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn follows_symlinked_folders_and_skips_a_loop() {
        let dir = temp_dir("links");
        let (root, outside) = (dir.join("root"), dir.join("outside"));
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("real").join("a.txt"), "a").unwrap();
        std::fs::write(outside.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("real").join("loop")).unwrap();
        let files = collect_files(&root, &[]).unwrap();
        assert_eq!(
            files,
            vec![
                root.join("linked").join("b.txt"),
                root.join("real").join("a.txt")
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn collects_sorted_files_skipping_hidden_and_filtering_extensions() {
        let dir = temp_dir("collect");
        for path in [
            "b.py",
            "a.txt",
            "sub/c.PY",
            ".hidden.py",
            ".git/x.py",
            "sub/.cache/y.py",
            "sub/d",
        ] {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
        }
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            files
                .iter()
                .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(collect_files(&dir, &[]).unwrap()),
            ["a.txt", "b.py", "sub/c.PY", "sub/d"]
        );
        assert_eq!(
            names(collect_files(&dir, &[".py".into()]).unwrap()),
            ["b.py", "sub/c.PY"]
        );
        assert_eq!(
            names(collect_files(&dir, &["txt".into(), "py".into()]).unwrap()),
            ["a.txt", "b.py", "sub/c.PY"]
        );
        // A single file is taken as is.
        assert_eq!(
            collect_files(&dir.join("a.txt"), &["py".into()]).unwrap(),
            [dir.join("a.txt")]
        );
        let err = collect_files(&dir.join("missing"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_words_in_files_and_skips_binary_files() {
        let dir = temp_dir("count");
        std::fs::write(dir.join("a.txt"), "hello world hello").unwrap();
        std::fs::write(dir.join("b.txt"), "world\n").unwrap();
        std::fs::write(dir.join("c.bin"), b"abc\0def").unwrap();
        std::fs::write(dir.join("d.txt"), b"caf\xe9").unwrap(); // Latin-1, not UTF-8
        let files = collect_files(&dir, &[]).unwrap();
        let progress = AtomicU64::new(0);
        let result = count_words_in_files(&files, &Pretokenizer::gpt4(), &|n| {
            progress.fetch_add(n, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(result.files_read, 2);
        assert_eq!(result.files_skipped, 2);
        assert_eq!(result.skipped_paths, [dir.join("c.bin"), dir.join("d.txt")]);
        assert_eq!(result.bytes_read, 17 + 6);
        assert_eq!(progress.load(Ordering::Relaxed), 17 + 6 + 7 + 4);
        // Each file is its own document: "world" starts b.txt without a space.
        let mut expected = counts_of("hello world hello");
        expected.merge(counts_of("world\n"));
        assert_eq!(sorted(&result.words), sorted(&expected));
        assert_eq!(result.words.get(b"hello"), 1);
        assert_eq!(result.words.get(b" hello"), 1);
        assert_eq!(result.words.get(b" world"), 1);
        assert_eq!(result.words.get(b"world"), 1);
        assert_eq!(result.words.total(), 5);

        std::fs::remove_file(dir.join("a.txt")).unwrap();
        let err = count_words_in_files(&files, &Pretokenizer::gpt4(), &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.txt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunked_reading_counts_the_same_words() {
        let dir = temp_dir("chunks");
        let mut text = String::new();
        let lines = [
            "def f(x):\n",
            "    return x  \n",
            "\n",
            "\n\n  # comment\n",
            "x = 'it''s' + \"ok\"\n",
            "\t\n",
            "é中\n",
        ];
        for i in 0..400 {
            text.push_str(lines[i % lines.len()]);
            text.push_str(&"word ".repeat(i % 7));
        }
        let path = dir.join("big.txt");
        std::fs::write(&path, &text).unwrap();
        for chunk in [16, 64, 1000] {
            let mut acc = CorpusCounts::default();
            let progress = AtomicU64::new(0);
            let report = |n| {
                progress.fetch_add(n, Ordering::Relaxed);
            };
            count_file(&path, &Pretokenizer::gpt4(), &report, chunk, &mut acc).unwrap();
            assert_eq!(
                sorted(&acc.words),
                sorted(&counts_of(&text)),
                "chunk size {chunk}"
            );
            assert_eq!(acc.bytes_read, text.len() as u64);
            assert_eq!(progress.load(Ordering::Relaxed), text.len() as u64);
        }
        // Not text halfway through: skipped, with nothing counted.
        let mut bad = text.clone().into_bytes();
        bad.extend_from_slice(b"\xff\n");
        std::fs::write(&path, &bad).unwrap();
        let mut acc = CorpusCounts::default();
        count_file(&path, &Pretokenizer::gpt4(), &|_| {}, 64, &mut acc).unwrap();
        assert!(acc.words.is_empty());
        assert_eq!(acc.files_skipped, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn add_texts_equals_sequential_counting() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("doc {i}: the cat's {} hat\n", "big ".repeat(i % 5)))
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut parallel = WordCounts::new();
        parallel.add_texts(&refs[..100], &Pretokenizer::gpt4());
        parallel.add_texts(&refs[100..], &Pretokenizer::gpt4());
        let mut sequential = WordCounts::new();
        for t in &refs {
            sequential.add_text(t, &Pretokenizer::gpt4());
        }
        assert_eq!(sorted(&parallel), sorted(&sequential));
        assert_eq!(parallel.get(b" cat"), 200);
    }

    #[test]
    fn count_shards_across_batches_equal_sequential_counting() {
        // documents longer than a unit (cut at newlines) and short ones, in three batches
        let long: Vec<String> = (0..3)
            .map(|d| {
                (0..4000)
                    .map(|i| format!("Line {i} of doc {d}:  the  cat's hat\n  indented {i}\n"))
                    .collect()
            })
            .collect();
        assert!(long[0].len() > 2 * COUNT_UNIT_BYTES);
        let short: Vec<String> = (0..50).map(|i| format!("short {i} words\n")).collect();
        let mut texts: Vec<&str> = long.iter().map(String::as_str).collect();
        texts.extend(short.iter().map(String::as_str));
        for pattern in [
            crate::bpe::pretokenize::GPT4_PATTERN,
            crate::bpe::pretokenize::O200K_PATTERN,
            r"\S+|\s+",
        ] {
            let pretokenizer = Pretokenizer::new(pattern).unwrap();
            let mut shards = CountShards::default();
            assert!(shards.is_empty());
            for batch in texts.chunks(20) {
                shards.add_texts(batch, &pretokenizer);
            }
            assert!(!shards.is_empty());
            let mut sequential = WordCounts::new();
            for text in &texts {
                sequential.add_text(text, &pretokenizer);
            }
            assert_eq!(sorted(&shards.merged()), sorted(&sequential));
        }
    }

    #[test]
    fn short_and_long_words_are_counted_apart() {
        let mut counts = WordCounts::new();
        let long = [b'x'; SHORT_WORD_BYTES + 1];
        for word in [
            &b""[..],
            b"a",
            b"a\0",
            &long[..SHORT_WORD_BYTES],
            &long,
            &long,
            b"a",
        ] {
            counts.add(word, 1);
        }
        assert_eq!(counts.len(), 5);
        assert_eq!(counts.total(), 7);
        // A word read from a window of the text is the same key as a copied one.
        let window: [u8; 16] = *b"a\0bcdefghijklmno";
        assert_eq!(ShortWord::from_window(window, 1), ShortWord::new(b"a"));
        assert_eq!(ShortWord::from_window(window, 2), ShortWord::new(b"a\0"));
        assert_eq!(
            ShortWord::from_window(window, 15),
            ShortWord::new(&window[..15])
        );
        assert_eq!(ShortWord::from_window(window, 0), ShortWord::new(b""));
        assert_eq!(counts.get(b"a"), 2);
        assert_eq!(counts.get(b"a\0"), 1);
        assert_eq!(counts.get(b""), 1);
        assert_eq!(counts.get(&long), 2);
        assert_eq!(counts.get(&long[..SHORT_WORD_BYTES]), 1);
        let mut words: Vec<Vec<u8>> = counts.iter().map(|(w, _)| w.to_vec()).collect();
        words.sort();
        assert_eq!(
            words,
            [
                vec![],
                b"a".to_vec(),
                b"a\0".to_vec(),
                long[..15].to_vec(),
                long.to_vec()
            ]
        );
    }

    #[test]
    fn split_point_is_after_a_newline_before_a_printable_character() {
        assert_eq!(chunk_split_point(b"ab\ncd\n\nef"), Some(7));
        assert_eq!(chunk_split_point(b"ab\n cd\n\n"), None);
        assert_eq!(chunk_split_point(b"no newline"), None);
    }
}
