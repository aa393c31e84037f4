//! PyO3 glue for [`crate::bpe`]: the Rust tokenizer (`CoreTokenizer`: training, encoding,
//! decoding, token files from files and texts), `WordCounter` and `collect_files`.
//!
//! Long work runs with the GIL released. Work that reports progress runs on a scoped
//! worker thread that bumps an `AtomicU64`; the calling thread (holding the GIL between
//! waits) polls it and calls the Python callback with the running total, and turns
//! Ctrl-C into a stop request for the worker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyInt};

use crate::bpe::corpus::{collect_files as collect, count_words_in_files, CountShards, WordCounts};
use crate::bpe::encode::{id_out_of_range, AllowedSpecial, Encoder};
use crate::bpe::pretokenize::{Pretokenizer, GPT4_PATTERN};
use crate::bpe::train::{train_bpe_owned, TrainOptions};
use crate::bpe::vocab::{MergeRule, Vocab};
use crate::py::errors::{guard, to_py_err};
use crate::tokens::arrow_texts::arrow_texts_of;
use crate::tokens::token_file::{self, TokenFileOptions};
use crate::Error;

/// Texts at least this long are encoded with the GIL released.
const DETACH_BYTES: usize = 1 << 14;

/// Runs `work` on a worker thread; while it runs, calls `callback(total)` with the
/// counter's value every 100 ms (and once at the end). Ctrl-C or an exception from the
/// callback sets the stop flag, waits for the worker, and is raised.
fn run_with_progress<T: Send>(
    py: Python<'_>,
    callback: Option<&Bound<'_, PyAny>>,
    work: impl FnOnce(&AtomicU64, &AtomicBool) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let counter = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let (counter, stop) = (&counter, &stop);
        scope.spawn(move || {
            // Caught here, a panic is reported with its message; left to the scope, it
            // would resurface as "a scoped thread panicked" with nothing to go on.
            let result = crate::catch_panic("a worker thread", || work(counter, stop));
            let _ = tx.send(result.and_then(|r| r));
        });
        let mut rx = rx;
        let mut reported = u64::MAX;
        let mut pending_err: Option<PyErr> = None;
        loop {
            let (received, back) = py.detach(move || {
                let r = rx.recv_timeout(Duration::from_millis(100));
                (r, rx)
            });
            rx = back;
            let finished = match received {
                Ok(result) => Some(result),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(Error::Internal(
                    "lmrs internal error: a worker thread stopped without a result".into(),
                ))),
            };
            if pending_err.is_none() {
                let now = counter.load(Ordering::Relaxed);
                if let (Some(cb), true) = (callback, now != reported) {
                    reported = now;
                    if let Err(e) = cb.call1((now,)) {
                        pending_err = Some(e);
                    }
                }
                if pending_err.is_none() {
                    if let Err(e) = py.check_signals() {
                        pending_err = Some(e);
                    }
                }
                if pending_err.is_some() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            if let Some(result) = finished {
                return match pending_err {
                    Some(e) => Err(e),
                    None => result.map_err(to_py_err),
                };
            }
        }
    })
}

fn allowed_from(allowed: Option<Vec<u32>>) -> AllowedSpecial {
    match allowed {
        None => AllowedSpecial::All,
        Some(ids) => AllowedSpecial::Some(ids),
    }
}

/// The Rust tokenizer: a vocab and its encoder. Immutable, so threads share it freely.
#[pyclass(frozen, module = "lmrs._lmrs")]
pub(crate) struct CoreTokenizer {
    pub(crate) encoder: Arc<Encoder>,
}

impl CoreTokenizer {
    fn from_vocab_obj(vocab: Vocab) -> PyResult<Self> {
        Ok(Self {
            encoder: Arc::new(Encoder::new(vocab).map_err(to_py_err)?),
        })
    }

    /// One token id. An int outside u32 (negative, huge) is out of the vocab like any
    /// other: the same ValueError naming it, not PyO3's OverflowError without the id.
    fn token_id(&self, id: &Bound<'_, PyAny>) -> PyResult<u32> {
        id.extract::<u32>()
            .map_err(|e| self.bad_id(id).unwrap_or(e))
    }

    /// A sequence of token ids; the fast path is one extraction, the slow path (only on
    /// failure) finds the id to name.
    fn token_ids(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        ids.extract::<Vec<u32>>().map_err(|e| {
            ids.try_iter()
                .ok()
                .and_then(|items| items.flatten().find_map(|id| self.bad_id(&id)))
                .unwrap_or(e)
        })
    }

    /// The out-of-range error for an int that is not a u32; None for anything else
    /// (not an int at all keeps its TypeError).
    fn bad_id(&self, id: &Bound<'_, PyAny>) -> Option<PyErr> {
        if !id.is_instance_of::<PyInt>() || id.extract::<u32>().is_ok() {
            return None;
        }
        let shown = id.str().ok()?.to_string();
        Some(to_py_err(id_out_of_range(shown, self.encoder.vocab_size())))
    }
}

#[pymethods]
impl CoreTokenizer {
    /// A tokenizer from merges and special token names (`<|endoftext|>` is added first
    /// when missing; ids follow the merges).
    #[staticmethod]
    #[pyo3(signature = (merges, pattern=None, special_tokens=Vec::new()))]
    fn from_merges(
        merges: Vec<(u32, u32)>,
        pattern: Option<String>,
        special_tokens: Vec<String>,
    ) -> PyResult<Self> {
        guard("Tokenizer.from_vocab", || {
            let pattern = pattern.unwrap_or_else(|| GPT4_PATTERN.to_string());
            Self::from_vocab_obj(Vocab::new(&pattern, merges, &special_tokens).map_err(to_py_err)?)
        })
    }

    /// A tokenizer with explicit special token ids (validated: they follow the merges).
    #[staticmethod]
    fn from_parts(
        merges: Vec<(u32, u32)>,
        pattern: String,
        special_tokens: Vec<(String, u32)>,
    ) -> PyResult<Self> {
        guard("Tokenizer.from_vocab", || {
            Self::from_vocab_obj(
                Vocab::from_parts(&pattern, merges, special_tokens).map_err(to_py_err)?,
            )
        })
    }

    /// A tokenizer with its own ids (an imported one): see `Vocab::with_ids`.
    #[staticmethod]
    fn from_ids(
        pattern: String,
        byte_ids: Vec<u32>,
        merges: Vec<(u32, u32, u32)>,
        special_tokens: Vec<(String, u32)>,
        eot: String,
        merge_rule: String,
    ) -> PyResult<Self> {
        guard("Tokenizer.from_ids", || {
            let rule = MergeRule::from_name(&merge_rule).ok_or_else(|| {
                PyValueError::new_err(format!("unknown merge rule {merge_rule:?}"))
            })?;
            Self::from_vocab_obj(
                Vocab::with_ids(&pattern, &byte_ids, &merges, special_tokens, &eot, rule)
                    .map_err(to_py_err)?,
            )
        })
    }

    /// A tokenizer from tiktoken's ranks (token bytes, rank == id): see `Vocab::from_ranks`.
    #[staticmethod]
    fn from_ranks(
        py: Python<'_>,
        pattern: String,
        ranks: Vec<(Vec<u8>, u32)>,
        special_tokens: Vec<(String, u32)>,
        eot: String,
    ) -> PyResult<Self> {
        guard("Tokenizer.from_tiktoken", || {
            let vocab = py
                .detach(|| Vocab::from_ranks(&pattern, &ranks, special_tokens, &eot))
                .map_err(to_py_err)?;
            Self::from_vocab_obj(vocab)
        })
    }

    /// A tokenizer from the content of a tokenizer file; `name` names it in errors.
    #[staticmethod]
    fn from_json(py: Python<'_>, content: Vec<u8>, name: String) -> PyResult<Self> {
        guard("Tokenizer.from_json", || {
            let vocab = py
                .detach(|| Vocab::from_json(&content, &name))
                .map_err(to_py_err)?;
            Self::from_vocab_obj(vocab)
        })
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        guard("Tokenizer.load", || {
            let vocab = py.detach(|| Vocab::load(&path)).map_err(to_py_err)?;
            Self::from_vocab_obj(vocab)
        })
    }

    /// Writes the tokenizer JSON atomically (see `atomic.rs`).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        guard("Tokenizer.save", || {
            py.detach(|| self.encoder.vocab().save(&path))
                .map_err(to_py_err)
        })
    }

    fn to_json(&self) -> PyResult<String> {
        guard("Tokenizer.to_json", || Ok(self.encoder.vocab().to_json()))
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.encoder.vocab_size()
    }

    #[getter]
    fn eot_id(&self) -> u32 {
        self.encoder.eot_id()
    }

    #[getter]
    fn pattern(&self) -> String {
        self.encoder.vocab().pattern().to_string()
    }

    /// The merge pairs in rank order, in this tokenizer's ids.
    #[getter]
    fn merges(&self) -> Vec<(u32, u32)> {
        let vocab = self.encoder.vocab();
        match vocab.ids() {
            None => vocab.merges().to_vec(),
            Some(_) => vocab
                .merges_with_ids()
                .into_iter()
                .map(|(a, b, _)| (a, b))
                .collect(),
        }
    }

    /// (a, b, id) for each merge in rank order: it joins ids a and b into id.
    #[getter]
    fn merges_with_ids(&self) -> Vec<(u32, u32, u32)> {
        self.encoder.vocab().merges_with_ids()
    }

    /// The id of each byte value.
    #[getter]
    fn byte_ids(&self) -> Vec<u32> {
        self.encoder.vocab().byte_ids()
    }

    #[getter]
    fn merge_rule(&self) -> &'static str {
        self.encoder.vocab().merge_rule().name()
    }

    /// The name of the special token that ends a document.
    #[getter]
    fn eot_token(&self) -> String {
        self.encoder.vocab().eot().to_string()
    }

    /// The file version `save` writes (1 unless the ids or rule need 2).
    #[getter]
    fn file_version(&self) -> u64 {
        if self.encoder.vocab().is_version_1() {
            crate::bpe::vocab::VERSION
        } else {
            crate::bpe::vocab::VERSION_IDS
        }
    }

    /// (token, id) sorted by id.
    #[getter]
    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.encoder.vocab().special_tokens().to_vec()
    }

    #[getter]
    fn hash(&self) -> String {
        self.encoder.hash().to_string()
    }

    /// Encodes with special tokens as plain text.
    fn encode_ordinary(&self, py: Python<'_>, text: PyBackedStr) -> PyResult<Vec<u32>> {
        guard("Tokenizer.encode_ordinary", || {
            Ok(if text.len() >= DETACH_BYTES {
                py.detach(|| self.encoder.encode_ordinary(&text))
            } else {
                self.encoder.encode_ordinary(&text)
            })
        })
    }

    /// Encodes; `allowed` lists the special ids recognised in the text (None: all).
    #[pyo3(signature = (text, allowed=None))]
    fn encode(
        &self,
        py: Python<'_>,
        text: PyBackedStr,
        allowed: Option<Vec<u32>>,
    ) -> PyResult<Vec<u32>> {
        guard("Tokenizer.encode", || {
            let allowed = allowed_from(allowed);
            Ok(if text.len() >= DETACH_BYTES {
                py.detach(|| self.encoder.encode(&text, &allowed))
            } else {
                self.encoder.encode(&text, &allowed)
            })
        })
    }

    /// Encodes to a numpy uint32 array (no Python list in between).
    #[pyo3(signature = (text, allowed=None, ordinary=false))]
    fn encode_to_numpy<'py>(
        &self,
        py: Python<'py>,
        text: PyBackedStr,
        allowed: Option<Vec<u32>>,
        ordinary: bool,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        guard("Tokenizer.encode_to_numpy", || {
            let allowed = if ordinary {
                AllowedSpecial::None
            } else {
                allowed_from(allowed)
            };
            Ok(py
                .detach(|| self.encoder.encode(&text, &allowed))
                .into_pyarray(py))
        })
    }

    /// Encodes many texts in parallel with the GIL released.
    #[pyo3(signature = (texts, allowed=None, ordinary=false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<PyBackedStr>,
        allowed: Option<Vec<u32>>,
        ordinary: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        guard("Tokenizer.encode_batch", || {
            let allowed = if ordinary {
                AllowedSpecial::None
            } else {
                allowed_from(allowed)
            };
            Ok(py.detach(|| self.encoder.encode_batch(&texts, &allowed)))
        })
    }

    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard("Tokenizer.decode_bytes", || {
            let ids = self.token_ids(ids)?;
            let bytes = self.encoder.decode_bytes(&ids).map_err(to_py_err)?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// Decodes to str; invalid UTF-8 becomes U+FFFD (like errors="replace").
    fn decode(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        guard("Tokenizer.decode", || {
            let ids = self.token_ids(ids)?;
            self.encoder.decode(&ids).map_err(to_py_err)
        })
    }

    fn decode_batch(&self, py: Python<'_>, batch: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
        use rayon::prelude::*;
        guard("Tokenizer.decode_batch", || {
            let batch = batch
                .iter()
                .map(|ids| self.token_ids(ids))
                .collect::<PyResult<Vec<_>>>()?;
            py.detach(|| {
                batch
                    .par_iter()
                    .map(|ids| self.encoder.decode(ids))
                    .collect::<crate::Result<Vec<String>>>()
            })
            .map_err(to_py_err)
        })
    }

    fn token_to_id(&self, token: &[u8]) -> PyResult<Option<u32>> {
        guard("Tokenizer.token_to_id", || {
            Ok(self.encoder.token_to_id(token))
        })
    }

    fn id_to_token<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guard("Tokenizer.id_to_token", || {
            let vocab_size = self.encoder.vocab_size();
            let id = self.token_id(id)?;
            let bytes = self
                .encoder
                .token_bytes(id)
                .ok_or_else(|| to_py_err(id_out_of_range(id, vocab_size)))?;
            Ok(PyBytes::new(py, bytes))
        })
    }

    /// The bytes of every token (specials included), indexed by id.
    fn all_token_bytes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        guard("Tokenizer.all_token_bytes", || {
            Ok((0..self.encoder.vocab_size() as u32)
                .filter_map(|id| self.encoder.token_bytes(id))
                .map(|b| PyBytes::new(py, b))
                .collect())
        })
    }

    /// Encodes files (one document each) into a token file or shard directory; returns
    /// (sidecar or manifest JSON, skipped file paths). `progress(bytes_done)`.
    #[pyo3(signature = (paths, out, shard_tokens=None, num_parts=1, part_index=0, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_files(
        &self,
        py: Python<'_>,
        paths: Vec<PathBuf>,
        out: PathBuf,
        shard_tokens: Option<u64>,
        num_parts: usize,
        part_index: usize,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<(String, Vec<PathBuf>)> {
        guard("Tokenizer.encode_files", || {
            let options = TokenFileOptions {
                shard_tokens,
                num_parts,
                part_index,
            };
            let encoder = &self.encoder;
            let (written, skipped) = run_with_progress(py, progress.as_ref(), |counter, stop| {
                let report = |n: u64| {
                    counter.fetch_add(n, Ordering::Relaxed);
                    !stop.load(Ordering::Relaxed)
                };
                token_file::encode_files(encoder, &paths, &out, &options, &report)
            })?;
            Ok((written.to_json(), skipped))
        })
    }

    /// Encodes texts (one document each) into a token file or shard directory.
    #[pyo3(signature = (texts, out, shard_tokens=None, num_parts=1, part_index=0))]
    fn encode_texts(
        &self,
        py: Python<'_>,
        texts: Vec<PyBackedStr>,
        out: PathBuf,
        shard_tokens: Option<u64>,
        num_parts: usize,
        part_index: usize,
    ) -> PyResult<String> {
        guard("Tokenizer.encode_files", || {
            let options = TokenFileOptions {
                shard_tokens,
                num_parts,
                part_index,
            };
            let written = py
                .detach(|| {
                    token_file::encode_texts(&self.encoder, &texts, &out, &options, &|_| true)
                })
                .map_err(to_py_err)?;
            Ok(written.to_json())
        })
    }
}

/// Word counts gathered from files and texts, then trained into a tokenizer.
#[pyclass(module = "lmrs._lmrs")]
pub(crate) struct WordCounter {
    pretokenizer: Pretokenizer,
    counts: WordCounts,
    /// Counts of `add_texts` / `add_arrow` batches, one map per thread until read.
    shards: CountShards,
}

impl WordCounter {
    /// Every count so far in `counts` (the batches' per-thread maps merged into it).
    fn settle(&mut self) -> &mut WordCounts {
        let shards = std::mem::take(&mut self.shards);
        if !shards.is_empty() {
            self.counts.merge(shards.merged());
        }
        &mut self.counts
    }
}

#[pymethods]
impl WordCounter {
    #[new]
    #[pyo3(signature = (pattern=None))]
    fn new(pattern: Option<String>) -> PyResult<Self> {
        guard("Tokenizer.train", || {
            let pattern = pattern.unwrap_or_else(|| GPT4_PATTERN.to_string());
            Ok(Self {
                pretokenizer: Pretokenizer::new(&pattern).map_err(to_py_err)?,
                counts: WordCounts::new(),
                shards: CountShards::default(),
            })
        })
    }

    /// Distinct words so far.
    fn __len__(&mut self) -> usize {
        self.settle().len()
    }

    /// Reads and counts files in parallel (Rust reads them; no Python str per file).
    /// `progress(bytes_done)`. Returns {bytes_read, files_read, files_skipped,
    /// skipped_paths}; files that are not text (NUL bytes, invalid UTF-8) are skipped.
    #[pyo3(signature = (paths, progress=None))]
    fn add_files<'py>(
        &mut self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guard("Tokenizer.train", || {
            let pretokenizer = &self.pretokenizer;
            let counted = run_with_progress(py, progress.as_ref(), |counter, _| {
                let report = |n: u64| {
                    counter.fetch_add(n, Ordering::Relaxed);
                };
                count_words_in_files(&paths, pretokenizer, &report)
            })?;
            self.counts.merge(counted.words);
            let stats = PyDict::new(py);
            stats.set_item("bytes_read", counted.bytes_read)?;
            stats.set_item("files_read", counted.files_read)?;
            stats.set_item("files_skipped", counted.files_skipped)?;
            stats.set_item("skipped_paths", counted.skipped_paths)?;
            Ok(stats)
        })
    }

    /// Counts a batch of texts in parallel with the GIL released; returns their bytes.
    fn add_texts(&mut self, py: Python<'_>, texts: Vec<PyBackedStr>) -> PyResult<u64> {
        guard("Tokenizer.train", || {
            let (shards, pretokenizer) = (&mut self.shards, &self.pretokenizer);
            Ok(py.detach(|| {
                let refs: Vec<&str> = texts.iter().map(|t| &**t).collect();
                shards.add_texts(&refs, pretokenizer);
                refs.iter().map(|t| t.len() as u64).sum()
            }))
        })
    }

    /// Counts the rows of Arrow string/binary arrays without nulls, given as
    /// `TokenStream.write_arrow` takes them; returns (bytes counted, indices of the rows
    /// skipped as invalid UTF-8, counted across the arrays).
    fn add_arrow(
        &mut self,
        py: Python<'_>,
        arrays: crate::py::arrow::CapsulePairs<'_>,
    ) -> PyResult<(u64, Vec<usize>)> {
        guard("Tokenizer.train", || {
            let buffers = crate::py::arrow::arrow_buffers_of(&arrays)?;
            let (shards, pretokenizer) = (&mut self.shards, &self.pretokenizer);
            py.detach(|| {
                let rows = arrow_texts_of(&buffers)?;
                shards.add_texts(&rows.texts, pretokenizer);
                Ok((
                    rows.texts.iter().map(|t| t.len() as u64).sum(),
                    rows.invalid,
                ))
            })
            .map_err(to_py_err)
        })
    }

    /// Learns merges and returns (tokenizer, seconds). `progress(merges_done)`.
    /// Consumes the counts (the counter is empty afterwards): the trainer copies them into
    /// its own arrays and frees them, which keeps peak memory down on large corpora.
    #[pyo3(signature = (vocab_size, special_tokens=Vec::new(), min_frequency=2, max_token_length=None, progress=None))]
    fn train(
        &mut self,
        py: Python<'_>,
        vocab_size: usize,
        special_tokens: Vec<String>,
        min_frequency: u64,
        max_token_length: Option<usize>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<(CoreTokenizer, f64)> {
        guard("Tokenizer.train", || {
            let mut names = vec![crate::bpe::vocab::EOT.to_string()];
            for name in special_tokens {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let options = TrainOptions {
                vocab_size,
                num_special_tokens: names.len(),
                min_frequency,
                max_token_length,
            };
            options.num_merges().map_err(to_py_err)?; // fail before the counts are taken
            let counts = std::mem::take(self.settle());
            let start = Instant::now();
            let merges = run_with_progress(py, progress.as_ref(), move |counter, _| {
                train_bpe_owned(counts, &options, counter)
            })?;
            let seconds = start.elapsed().as_secs_f64();
            let vocab =
                Vocab::new(self.pretokenizer.pattern(), merges, &names).map_err(to_py_err)?;
            Ok((CoreTokenizer::from_vocab_obj(vocab)?, seconds))
        })
    }
}

/// Files under `root` (or `root` itself), sorted; hidden entries skipped; `extensions`
/// like ["py", ".txt"] (empty: all).
#[pyfunction]
#[pyo3(signature = (root, extensions=Vec::new()))]
pub(crate) fn collect_files(
    py: Python<'_>,
    root: PathBuf,
    extensions: Vec<String>,
) -> PyResult<Vec<PathBuf>> {
    guard("collect_files", || {
        py.detach(|| collect(&root, &extensions)).map_err(to_py_err)
    })
}
