//! Token files: documents → token ids on disk, per the contract in DESIGN.md.
//!
//! `NAME.bin` holds raw little-endian ids (`uint16` when the vocab has at most 65536
//! tokens, else `uint32`); `NAME.bin.json` is the sidecar. Each document is followed by
//! one `eot_id`. Documents are encoded in parallel, a chunk of documents at a time, and
//! written in their given order, so memory stays bounded by one chunk.
//!
//! Shards: with `shard_tokens` (or `num_parts > 1`) the output is a directory of token
//! files plus `manifest.json`. A shard holds exactly `shard_tokens` ids (the last one
//! fewer); a document may continue in the next shard, and it counts (documents, bytes) in
//! the shard that holds its `eot_id`. With `num_parts = N`, part `i` encodes a contiguous
//! run of the documents (split by size), so that N processes or machines can each write
//! their own shards (`shard-PPPPP-KKKKK.bin`) into one directory; concatenating all shards
//! in name order gives the same ids as a single run. Each part rebuilds the manifest from
//! the shards present when it finishes; `build_manifest` does it again once all are
//! there (two parts finishing at the same moment can race; the manifest lists
//! `missing_parts`, and rebuilding it is cheap).
//!
//! Integrity: each sidecar records its data file's `size_bytes` and `head_tail_sha256`
//! (the sha256 of the first and last [`CHECK_BYTES`] of the file, see
//! [`head_tail_sha256`]); the manifest records both for every shard (`shard_checks`).
//! Readers (`lmrs.data`) verify them when opening: a truncated, replaced or overwritten
//! file is an error naming it, not silently different data. Files written before these
//! fields existed still open, unchecked.
//!
//! Document index: beside each data file, `NAME.bin.idx` ([`crate::tokens::token_index`]) records
//! where each document ends and its bytes, so readers open a token file without scanning
//! it. Sidecars and manifests of version 2 have one for every data file (its size and
//! checksum in the sidecar's `index`, and in the manifest's `index_checks`); version 1
//! files have none and are still read (by a scan).
//!
//! Every file and the shard directory are written by the atomic-write policy
//! ([`crate::atomic`]). A single token file, its index and its sidecar are three names,
//! committed data first, sidecar last: a crash between them leaves new files beside the
//! old sidecar, whose recorded sizes and checksums expose them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::bpe::encode::Encoder;
use crate::fault;
use crate::tokens::token_index::{index_path, IndexWriter};
use crate::{Error, Result};

pub const FORMAT: &str = "lmrs-tokens";
pub const MANIFEST_FORMAT: &str = "lmrs-shards";
/// Written by this version; version 1 (no document index) is still read.
pub const VERSION: u64 = 2;
pub const MIN_VERSION: u64 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";

/// Bytes hashed at each end of a data file for `head_tail_sha256`: enough to catch a
/// replaced or overwritten header or tail, cheap enough to check on every open.
pub const CHECK_BYTES: u64 = 64 << 10;

/// Documents read and encoded together before being written (bounds memory).
const CHUNK_BYTES: u64 = 32 << 20;
const CHUNK_DOCS: usize = 4096;

#[derive(Clone, Debug)]
pub struct TokenFileOptions {
    /// Maximum ids per shard; `Some` writes a shard directory.
    pub shard_tokens: Option<u64>,
    pub num_parts: usize,
    pub part_index: usize,
}

impl Default for TokenFileOptions {
    fn default() -> Self {
        Self {
            shard_tokens: None,
            num_parts: 1,
            part_index: 0,
        }
    }
}

/// The sidecar of one token file (`NAME.bin.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenFileInfo {
    pub format: String,
    pub version: u64,
    pub dtype: String,
    pub num_tokens: u64,
    pub num_documents: u64,
    pub num_bytes: u64,
    pub vocab_size: u64,
    pub tokenizer_hash: String,
    pub eot_id: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub part_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_parts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shard_index: Option<usize>,
    /// Size of the data file in bytes (absent in files written before it existed).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size_bytes: Option<u64>,
    /// [`head_tail_sha256`] of the data file (absent in older files).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_tail_sha256: Option<String>,
    /// Size and checksum of the document index `NAME.bin.idx` (version 2 on).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<FileCheck>,
}

/// A data file's size and [`head_tail_sha256`], as a manifest records them per shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileCheck {
    pub size_bytes: u64,
    pub head_tail_sha256: String,
}

/// `manifest.json` of a shard directory: the sidecar fields summed over the shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u64,
    pub shards: Vec<String>,
    pub dtype: String,
    pub num_tokens: u64,
    pub num_documents: u64,
    pub num_bytes: u64,
    pub vocab_size: u64,
    pub tokenizer_hash: String,
    pub eot_id: u32,
    pub num_parts: usize,
    /// Parts with no shard yet (a multi-part run still going, or a part not copied in).
    pub missing_parts: Vec<usize>,
    /// Every shard's size and checksum, by shard name.
    #[serde(default)]
    pub shard_checks: BTreeMap<String, FileCheck>,
    /// Every shard's document index (`NAME.bin.idx`) size and checksum, by shard name;
    /// version 2 lists them all, version 1 none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub index_checks: BTreeMap<String, FileCheck>,
}

/// What was written: a single token file's sidecar or a shard directory's manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    File(TokenFileInfo),
    Shards(Manifest),
}

impl Written {
    pub fn to_json(&self) -> String {
        match self {
            Written::File(info) => serde_json::to_string_pretty(info),
            Written::Shards(manifest) => serde_json::to_string_pretty(manifest),
        }
        .expect("plain data serializes")
    }

    pub fn num_tokens(&self) -> u64 {
        match self {
            Written::File(info) => info.num_tokens,
            Written::Shards(manifest) => manifest.num_tokens,
        }
    }
}

/// The checksum of a data file's ends: sha256 (hex) of its first `CHECK_BYTES` bytes
/// followed by its last `CHECK_BYTES` bytes (the whole file once when it is shorter than
/// twice that: no byte counted twice). Returns (size in bytes, checksum).
pub fn head_tail_sha256(path: &Path) -> Result<(u64, String)> {
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let head = size.min(CHECK_BYTES);
    let tail_start = size.saturating_sub(CHECK_BYTES).max(head);
    let mut buffer = vec![0u8; (head + (size - tail_start)) as usize];
    let (first, last) = buffer.split_at_mut(head as usize);
    file.read_exact(first).map_err(io)?;
    file.seek(SeekFrom::Start(tail_start)).map_err(io)?;
    file.read_exact(last).map_err(io)?;
    let digest = Sha256::digest(&buffer);
    Ok((size, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

pub fn dtype_for(vocab_size: usize) -> &'static str {
    if vocab_size <= 1 << 16 {
        "uint16"
    } else {
        "uint32"
    }
}

/// Encodes files (one document each, in the given order) into `out`; returns what was
/// written and the files skipped as not text (NUL bytes or invalid UTF-8).
/// `progress(bytes)` is called after each chunk with the bytes just encoded; returning
/// false stops the run (nothing is left at `out`).
pub fn encode_files(
    encoder: &Encoder,
    files: &[PathBuf],
    out: &Path,
    options: &TokenFileOptions,
    progress: &(dyn Fn(u64) -> bool + Sync),
) -> Result<(Written, Vec<PathBuf>)> {
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .map_err(|e| Error::io(f, e))
        })
        .collect::<Result<_>>()?;
    let load = |i: usize| -> Result<Option<Cow<'_, str>>> {
        let bytes = std::fs::read(&files[i]).map_err(|e| Error::io(&files[i], e))?;
        // Like the trainer (corpus.rs): files with NUL bytes or invalid UTF-8 are not
        // text and are skipped (`lmrs corpus add` repairs or drops them beforehand).
        if memchr::memchr(0, &bytes).is_some() {
            return Ok(None);
        }
        Ok(String::from_utf8(bytes).ok().map(Cow::Owned))
    };
    let (written, skipped) = write_documents(encoder, &sizes, &load, out, options, progress)?;
    Ok((
        written,
        skipped.into_iter().map(|i| files[i].clone()).collect(),
    ))
}

/// Encodes in-memory texts (one document each) into `out`.
pub fn encode_texts<S: AsRef<str> + Sync>(
    encoder: &Encoder,
    texts: &[S],
    out: &Path,
    options: &TokenFileOptions,
    progress: &(dyn Fn(u64) -> bool + Sync),
) -> Result<Written> {
    let sizes: Vec<u64> = texts.iter().map(|t| t.as_ref().len() as u64).collect();
    let load =
        |i: usize| -> Result<Option<Cow<'_, str>>> { Ok(Some(Cow::Borrowed(texts[i].as_ref()))) };
    Ok(write_documents(encoder, &sizes, &load, out, options, progress)?.0)
}

/// `part_index` must name one of `num_parts` parts (at least one).
pub fn check_part(num_parts: usize, part_index: usize) -> Result<()> {
    if num_parts == 0 || part_index >= num_parts {
        return Err(Error::Invalid(format!(
            "part_index {part_index} is out of range for num_parts {num_parts}"
        )));
    }
    Ok(())
}

/// The documents of part `part_index` of `num_parts`: a contiguous range, split so that
/// each part gets about the same number of bytes.
pub fn part_range(sizes: &[u64], num_parts: usize, part_index: usize) -> std::ops::Range<usize> {
    let total: u128 = sizes.iter().map(|&s| s as u128).sum();
    let n = num_parts as u128;
    // All-empty documents are split by count instead of by bytes.
    let part_of = |i: usize, before: u128| -> usize {
        match (before * n).checked_div(total) {
            Some(p) => (p as usize).min(num_parts - 1),
            None => (i as u128 * n / sizes.len().max(1) as u128) as usize,
        }
    };
    let mut start = sizes.len();
    let mut end = sizes.len();
    let mut before = 0u128;
    for (i, &size) in sizes.iter().enumerate() {
        let p = part_of(i, before);
        if p >= part_index && start == sizes.len() {
            start = i;
        }
        if p > part_index {
            end = i;
            break;
        }
        before += size as u128;
    }
    start.min(end)..end
}

fn write_documents<'a>(
    encoder: &Encoder,
    sizes: &[u64],
    load: &(dyn Fn(usize) -> Result<Option<Cow<'a, str>>> + Sync),
    out: &Path,
    options: &TokenFileOptions,
    progress: &(dyn Fn(u64) -> bool + Sync),
) -> Result<(Written, Vec<usize>)> {
    let target = Target::prepare(out, options, encoder)?;
    target.check_other_parts()?;
    let range = part_range(sizes, options.num_parts, options.part_index);
    let mut skipped = Vec::new();
    let encoded = encode_into(
        encoder,
        sizes,
        load,
        range,
        &target,
        options,
        progress,
        &mut skipped,
    );
    match encoded {
        Ok(files) => Ok((target.commit(files)?, skipped)),
        Err(e) => {
            target.discard();
            Err(e)
        }
    }
}

/// Where a token writer puts its files, and how they become visible at `out`.
pub(crate) enum Target {
    /// One token file.
    File(PathBuf),
    /// A whole shard directory, built in `tmp` beside `out` and swapped in when committed,
    /// so `out` never holds a half-written directory.
    Dir { tmp: PathBuf, out: PathBuf },
    /// Part `part` of a multi-part run: its shards go straight into the shared `dir`
    /// (each under a temporary name until complete), beside the other parts' shards.
    Part {
        dir: PathBuf,
        part: usize,
        num_parts: usize,
        tokenizer: ShardTokenizer,
    },
}

/// What every part's shards in one directory must share: their tokenizer's hash,
/// vocabulary size and end-of-text id.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardTokenizer {
    hash: String,
    vocab_size: u64,
    eot_id: u32,
}

impl ShardTokenizer {
    fn of(encoder: &Encoder) -> Self {
        Self {
            hash: encoder.hash().to_string(),
            vocab_size: encoder.vocab_size() as u64,
            eot_id: encoder.eot_id(),
        }
    }

    fn wrote(&self, info: &TokenFileInfo) -> bool {
        info.tokenizer_hash == self.hash
            && info.vocab_size == self.vocab_size
            && info.eot_id == self.eot_id
    }
}

impl Target {
    /// Checks `options` and makes the directory the files will be written in.
    pub(crate) fn prepare(
        out: &Path,
        options: &TokenFileOptions,
        encoder: &Encoder,
    ) -> Result<Self> {
        check_part(options.num_parts, options.part_index)?;
        if options.shard_tokens == Some(0) {
            return Err(Error::Invalid("shard_tokens must be positive".into()));
        }
        if options.shard_tokens.is_none() && options.num_parts == 1 {
            return Ok(Target::File(out.to_path_buf()));
        }
        if out.exists() && !out.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: exists and is not a shard directory",
                out.display()
            )));
        }
        if options.num_parts == 1 {
            check_replaceable_dir(out)?;
            let tmp = atomic::temp_path(out)?;
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            return Ok(Target::Dir {
                tmp,
                out: out.to_path_buf(),
            });
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        Ok(Target::Part {
            dir: out.to_path_buf(),
            part: options.part_index,
            num_parts: options.num_parts,
            tokenizer: ShardTokenizer::of(encoder),
        })
    }

    /// Refuses, before anything is written, to commit no documents over `out`: an input
    /// with no usable text is an error, and the file (or directory) already at `out` is
    /// kept. A part of a multi-part run may be empty (more parts than documents).
    pub(crate) fn check_documents(&self, num_documents: u64, detail: &str) -> Result<()> {
        let out = match self {
            Target::File(path) => path,
            Target::Dir { out, .. } => out,
            Target::Part { .. } => return Ok(()),
        };
        if num_documents == 0 {
            return Err(Error::Invalid(format!(
                "{}: not written: the input is empty ({detail})",
                out.display()
            )));
        }
        Ok(())
    }

    /// A part refuses, before it writes anything, a shared directory holding another
    /// part's shards of a different run (another tokenizer or part count): its shards
    /// could never be listed in one manifest with them.
    pub(crate) fn check_other_parts(&self) -> Result<()> {
        if let Target::Part {
            dir,
            part,
            num_parts,
            tokenizer,
        } = self
        {
            if let Some((sidecar, reason)) = foreign_shard(dir, *part, tokenizer, *num_parts) {
                return Err(Error::Invalid(format!(
                    "{}: a shard of another run ({reason}); part {part} not written: \
                     encode into another directory or remove the old shards",
                    sidecar.display()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn layout(&self) -> Layout {
        match self {
            Target::File(path) => Layout::Single(path.clone()),
            Target::Dir { tmp, .. } => Layout::Dir(tmp.clone()),
            Target::Part { dir, .. } => Layout::Dir(dir.clone()),
        }
    }

    /// Makes the committed `files` (what [`ShardSink::finish`] returned) visible at `out`
    /// and returns the sidecar or manifest; a part also removes its own stale shards.
    pub(crate) fn commit(self, files: Vec<(PathBuf, TokenFileInfo)>) -> Result<Written> {
        match self {
            Target::File(path) => files
                .into_iter()
                .next()
                .map(|(_, info)| Written::File(info))
                .ok_or_else(|| Error::Invalid(format!("{}: nothing written", path.display()))),
            Target::Dir { tmp, out } => {
                let committed = build_manifest(&tmp).and_then(|manifest| {
                    atomic::replace_dir(&tmp, &out, "token_file.dir").map(|_| manifest)
                });
                if committed.is_err() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Ok(Written::Shards(committed?))
            }
            Target::Part {
                dir,
                part,
                num_parts,
                tokenizer,
            } => {
                remove_stale_shards(&dir, part, &files)?;
                build_manifest(&dir).map(Written::Shards).inspect_err(|_| {
                    // Another run's part came in meanwhile: this part is refused, and
                    // takes its shards back out of the shared directory.
                    if foreign_shard(&dir, part, &tokenizer, num_parts).is_some() {
                        for (path, _) in &files {
                            let _ = std::fs::remove_file(sidecar_path(path));
                            let _ = std::fs::remove_file(index_path(path));
                            let _ = std::fs::remove_file(path);
                        }
                    }
                })
            }
        }
    }

    /// After a failure (the sink has removed its own files): removes a temporary directory.
    pub(crate) fn discard(self) {
        if let Target::Dir { tmp, .. } = self {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Encode documents `range` into a fresh sink; on failure the sink's files are removed.
#[allow(clippy::too_many_arguments)]
fn encode_into<'a>(
    encoder: &Encoder,
    sizes: &[u64],
    load: &(dyn Fn(usize) -> Result<Option<Cow<'a, str>>> + Sync),
    range: std::ops::Range<usize>,
    target: &Target,
    options: &TokenFileOptions,
    progress: &(dyn Fn(u64) -> bool + Sync),
    skipped: &mut Vec<usize>,
) -> Result<Vec<(PathBuf, TokenFileInfo)>> {
    let mut sink = ShardSink::new(encoder, target.layout(), options);
    let num_inputs = range.len();
    let result = encode_range(encoder, sizes, load, range, &mut sink, progress, skipped)
        .and_then(|_| {
            let detail = if num_inputs == 0 {
                "no documents".to_string()
            } else {
                format!("{num_inputs} files, none of them text: NUL bytes or invalid UTF-8")
            };
            target.check_documents(sink.num_documents(), &detail)
        })
        .and_then(|_| sink.finish());
    if result.is_err() {
        sink.abandon();
    }
    result
}

/// A shard directory may replace `out` only if `out` is one already, or empty, or absent.
pub(crate) fn check_replaceable_dir(out: &Path) -> Result<()> {
    if out.is_dir() && !out.join(MANIFEST_NAME).is_file() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Invalid(format!(
                "{}: directory exists and is not a shard directory (no {MANIFEST_NAME}); \
                 not overwriting it",
                out.display()
            )));
        }
    }
    Ok(())
}

fn encode_range<'a>(
    encoder: &Encoder,
    sizes: &[u64],
    load: &(dyn Fn(usize) -> Result<Option<Cow<'a, str>>> + Sync),
    range: std::ops::Range<usize>,
    sink: &mut ShardSink,
    progress: &(dyn Fn(u64) -> bool + Sync),
    skipped: &mut Vec<usize>,
) -> Result<()> {
    let eot = encoder.eot_id();
    let mut start = range.start;
    while start < range.end {
        let mut end = start;
        let mut chunk_bytes = 0;
        while end < range.end && (end == start || chunk_bytes + sizes[end] <= CHUNK_BYTES) {
            chunk_bytes += sizes[end];
            end += 1;
            if end - start >= CHUNK_DOCS {
                break;
            }
        }
        // Read in parallel (None: skipped, not text), then encoded in even units of work
        // (a chunk often holds a few large files among many small ones).
        let loaded: Vec<Option<Cow<'a, str>>> = (start..end)
            .into_par_iter()
            .map(load)
            .collect::<Result<_>>()?;
        let texts: Vec<&str> = loaded.iter().flatten().map(|t| t.as_ref()).collect();
        let mut encoded = encoder.encode_documents(&texts).into_iter().zip(&texts);
        let mut done = 0;
        for (i, doc) in (start..end).zip(&loaded) {
            if doc.is_none() {
                skipped.push(i);
            } else if let Some((mut ids, text)) = encoded.next() {
                ids.push(eot);
                sink.write_document(&ids, text.len() as u64)?;
            }
        }
        fault::point("token_file.chunk_written");
        done += sizes[start..end].iter().sum::<u64>();
        if !progress(done) {
            return Err(Error::Interrupted);
        }
        start = end;
    }
    Ok(())
}

pub(crate) enum Layout {
    /// One token file at this path (no shards).
    Single(PathBuf),
    /// Shards in this directory.
    Dir(PathBuf),
}

struct OpenShard {
    writer: BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    info: TokenFileInfo,
    index: IndexWriter,
    index_tmp: PathBuf,
}

/// A shard complete and synced under temporary names, waiting for its commit.
struct ClosedShard {
    path: PathBuf,
    tmp: PathBuf,
    index_tmp: PathBuf,
    info: TokenFileInfo,
}

/// Writes ids into shard files (or one file), starting a new shard when one is full.
pub(crate) struct ShardSink {
    layout: Layout,
    limit: u64,
    wide: bool,
    template: TokenFileInfo,
    current: Option<OpenShard>,
    /// Finished shards, still under their temporary names.
    closed: Vec<ClosedShard>,
    buffer: Vec<u8>,
}

impl ShardSink {
    pub(crate) fn new(encoder: &Encoder, layout: Layout, options: &TokenFileOptions) -> Self {
        let sharded = matches!(layout, Layout::Dir(_));
        let vocab_size = encoder.vocab_size();
        let template = TokenFileInfo {
            format: FORMAT.into(),
            version: VERSION,
            dtype: dtype_for(vocab_size).into(),
            num_tokens: 0,
            num_documents: 0,
            num_bytes: 0,
            vocab_size: vocab_size as u64,
            tokenizer_hash: encoder.hash().to_string(),
            eot_id: encoder.eot_id(),
            part_index: sharded.then_some(options.part_index),
            num_parts: sharded.then_some(options.num_parts),
            shard_index: None,
            size_bytes: None,
            head_tail_sha256: None,
            index: None,
        };
        Self {
            layout,
            limit: if sharded {
                options.shard_tokens.unwrap_or(u64::MAX)
            } else {
                u64::MAX
            },
            wide: vocab_size > 1 << 16,
            template,
            current: None,
            closed: Vec::new(),
            buffer: Vec::new(),
        }
    }

    fn shard_path(&self, index: usize) -> PathBuf {
        match &self.layout {
            Layout::Single(path) => path.clone(),
            Layout::Dir(dir) => {
                let name = match self.template.num_parts {
                    Some(n) if n > 1 => {
                        format!(
                            "shard-{:05}-{index:05}.bin",
                            self.template.part_index.unwrap_or(0)
                        )
                    }
                    _ => format!("shard-{index:05}.bin"),
                };
                dir.join(name)
            }
        }
    }

    fn open(&mut self) -> Result<&mut OpenShard> {
        if self.current.is_none() {
            let index = self.closed.len();
            let path = self.shard_path(index);
            let tmp = atomic::temp_path(&path)?;
            let file = atomic::create_temp(&tmp)?;
            let index_tmp = match atomic::temp_path(&index_path(&path)) {
                Ok(index_tmp) => index_tmp,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let index_writer =
                atomic::create_temp(&index_tmp).and_then(|f| IndexWriter::new(f, &index_tmp));
            let index_writer = match index_writer {
                Ok(w) => w,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    let _ = std::fs::remove_file(&index_tmp);
                    return Err(e);
                }
            };
            let mut info = self.template.clone();
            if matches!(self.layout, Layout::Dir(_)) {
                info.shard_index = Some(index);
            }
            self.current = Some(OpenShard {
                writer: BufWriter::with_capacity(1 << 20, file),
                tmp,
                path,
                info,
                index: index_writer,
                index_tmp,
            });
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    pub(crate) fn write_document(&mut self, ids: &[u32], num_bytes: u64) -> Result<()> {
        let mut rest = ids;
        let mut buffer = std::mem::take(&mut self.buffer);
        let (limit, wide) = (self.limit, self.wide);
        let result = loop {
            let shard = match self.open() {
                Ok(shard) => shard,
                Err(e) => break Err(e),
            };
            let room = (limit - shard.info.num_tokens).min(rest.len() as u64) as usize;
            let (now, later) = rest.split_at(room);
            buffer.clear();
            if wide {
                buffer.extend(now.iter().flat_map(|id| id.to_le_bytes()));
            } else {
                // ids < vocab_size <= 65536 here, so the cast keeps every bit.
                buffer.extend(now.iter().flat_map(|&id| (id as u16).to_le_bytes()));
            }
            if let Err(e) = shard.writer.write_all(&buffer) {
                break Err(Error::io(&shard.path, e));
            }
            shard.info.num_tokens += room as u64;
            shard.index.add_tokens(room as u64);
            if later.is_empty() {
                shard.info.num_documents += 1;
                shard.info.num_bytes += num_bytes;
                if let Err(e) = shard.index.end_document(num_bytes, &shard.index_tmp) {
                    break Err(e);
                }
                let full = shard.info.num_tokens == limit;
                break if full { self.close() } else { Ok(()) };
            }
            if let Err(e) = self.close() {
                break Err(e);
            }
            rest = later;
        };
        self.buffer = buffer;
        result
    }

    fn close(&mut self) -> Result<()> {
        if let Some(shard) = self.current.take() {
            let OpenShard {
                writer,
                tmp,
                path,
                mut info,
                index,
                index_tmp,
            } = shard;
            // Registered first, so that abandon() removes both temporaries on any error.
            self.closed.push(ClosedShard {
                path: path.clone(),
                tmp: tmp.clone(),
                index_tmp: index_tmp.clone(),
                info: info.clone(),
            });
            writer
                .into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?;
            index.finish(&index_tmp)?;
            // (atomic::commit syncs each file before renaming it)
            let (size, checksum) = head_tail_sha256(&tmp)?;
            info.size_bytes = Some(size);
            info.head_tail_sha256 = Some(checksum);
            let (size_bytes, head_tail_sha256) = head_tail_sha256(&index_tmp)?;
            info.index = Some(FileCheck {
                size_bytes,
                head_tail_sha256,
            });
            if let Some(last) = self.closed.last_mut() {
                last.info = info;
            }
        }
        Ok(())
    }

    /// Documents written so far (ended in this sink's shards).
    pub(crate) fn num_documents(&self) -> u64 {
        let closed: u64 = self.closed.iter().map(|s| s.info.num_documents).sum();
        closed + self.current.as_ref().map_or(0, |s| s.info.num_documents)
    }

    /// Closes the last shard, then commits every shard, its index and then its sidecar.
    /// Data goes first: the old content of the sidecar (if any) records the old sizes and
    /// checksums, so a crash between the renames is caught by readers, never read as valid.
    pub(crate) fn finish(&mut self) -> Result<Vec<(PathBuf, TokenFileInfo)>> {
        if self.current.is_none() && self.closed.is_empty() {
            self.open()?; // an empty part still writes one (empty) file
        }
        self.close()?;
        let mut done = Vec::new();
        let mut pending = std::mem::take(&mut self.closed).into_iter();
        while let Some(shard) = pending.next() {
            let ClosedShard {
                path,
                tmp,
                index_tmp,
                info,
            } = shard;
            let json = serde_json::to_string_pretty(&info).expect("plain data serializes");
            let committed = atomic::commit(&tmp, &path, "token_file.data")
                .and_then(|_| atomic::commit(&index_tmp, &index_path(&path), "token_file.index"))
                .and_then(|_| {
                    atomic::write_file(&sidecar_path(&path), json.as_bytes(), "token_file.sidecar")
                });
            if let Err(e) = committed {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&index_tmp);
                self.closed = pending.collect(); // for abandon()
                return Err(e);
            }
            done.push((path, info));
        }
        Ok(done)
    }

    /// Removes the temporary files after an error.
    pub(crate) fn abandon(&mut self) {
        if let Some(shard) = self.current.take() {
            drop(shard.writer);
            drop(shard.index);
            let _ = std::fs::remove_file(&shard.tmp);
            let _ = std::fs::remove_file(&shard.index_tmp);
        }
        for shard in self.closed.drain(..) {
            let _ = std::fs::remove_file(shard.tmp);
            let _ = std::fs::remove_file(shard.index_tmp);
        }
    }
}

pub fn sidecar_path(bin: &Path) -> PathBuf {
    let mut name = bin.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// The first shard of another part in `dir` that cannot join this run's shards in one
/// manifest (another tokenizer, vocabulary, end-of-text id or part count): its sidecar and
/// the reason. Shards of `part` itself are not looked at (this run replaces them), nor
/// are unreadable sidecars (`build_manifest` names those).
fn foreign_shard(
    dir: &Path,
    part: usize,
    tokenizer: &ShardTokenizer,
    num_parts: usize,
) -> Option<(PathBuf, String)> {
    let own = format!("shard-{part:05}-");
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("shard-") && name.ends_with(".bin") && !name.starts_with(&own)
        })
        .collect();
    names.sort();
    for path in names {
        let sidecar = sidecar_path(&path);
        let Ok(info) = read_info(&sidecar) else {
            continue;
        };
        let theirs = info.num_parts.unwrap_or(1);
        let reason = if !tokenizer.wrote(&info) {
            "written with another tokenizer".to_string()
        } else if theirs != num_parts {
            format!("{theirs} parts, this run has {num_parts}")
        } else {
            continue;
        };
        return Some((sidecar, reason));
    }
    None
}

/// Removes shards of `part` left by an earlier run that this run did not write.
fn remove_stale_shards(
    dir: &Path,
    part: usize,
    written: &[(PathBuf, TokenFileInfo)],
) -> Result<()> {
    let prefix = format!("shard-{part:05}-");
    let hidden_prefix = format!(".{prefix}");
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A crashed earlier run's temporaries, also of shards this run did not write.
        if let Some((target, _)) = name
            .strip_prefix('.')
            .filter(|_| name.starts_with(&hidden_prefix))
            .and_then(|rest| rest.split_once(".tmp-"))
        {
            atomic::remove_leftovers(&dir.join(target));
            continue;
        }
        if name.starts_with(&prefix)
            && name.ends_with(".bin")
            && !written.iter().any(|(p, _)| *p == path)
        {
            let _ = std::fs::remove_file(sidecar_path(&path));
            let _ = std::fs::remove_file(index_path(&path));
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}

pub fn read_info(sidecar: &Path) -> Result<TokenFileInfo> {
    let content = std::fs::read(sidecar).map_err(|e| Error::io(sidecar, e))?;
    let info: TokenFileInfo = serde_json::from_slice(&content).map_err(|e| Error::Format {
        path: sidecar.display().to_string(),
        message: format!("not a valid token file sidecar ({e})"),
    })?;
    if info.format != FORMAT || !(MIN_VERSION..=VERSION).contains(&info.version) {
        return Err(Error::Format {
            path: sidecar.display().to_string(),
            message: format!(
                "format {:?} version {}, expected {FORMAT:?} version {MIN_VERSION} to {VERSION}",
                info.format, info.version
            ),
        });
    }
    if info.version >= 2 && info.index.is_none() {
        return Err(Error::Format {
            path: sidecar.display().to_string(),
            message: format!("version {} sidecar without an 'index' record", info.version),
        });
    }
    Ok(info)
}

/// (Re)writes `DIR/manifest.json` from the shards (`*.bin` with a sidecar) in `dir`.
pub fn build_manifest(dir: &Path) -> Result<Manifest> {
    let mut shards: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("shard-") && name.ends_with(".bin") && sidecar_path(&path).is_file() {
            shards.push(path);
        }
    }
    shards.sort();
    let first = shards.first().ok_or_else(|| Error::Format {
        path: dir.display().to_string(),
        message: "no shards (shard-*.bin with a sidecar) in this directory".into(),
    })?;
    let base = read_info(&sidecar_path(first))?;
    let num_parts = base.num_parts.unwrap_or(1);
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: VERSION,
        shards: Vec::new(),
        dtype: base.dtype.clone(),
        num_tokens: 0,
        num_documents: 0,
        num_bytes: 0,
        vocab_size: base.vocab_size,
        tokenizer_hash: base.tokenizer_hash.clone(),
        eot_id: base.eot_id,
        num_parts,
        missing_parts: Vec::new(),
        shard_checks: BTreeMap::new(),
        index_checks: BTreeMap::new(),
    };
    let mut present = vec![false; num_parts];
    let mut all_indexed = true;
    for shard in &shards {
        let sidecar = sidecar_path(shard);
        let info = read_info(&sidecar)?;
        let same = info.tokenizer_hash == base.tokenizer_hash
            && info.dtype == base.dtype
            && info.vocab_size == base.vocab_size
            && info.eot_id == base.eot_id
            && info.num_parts.unwrap_or(1) == num_parts;
        if !same {
            return Err(Error::Format {
                path: sidecar.display().to_string(),
                message: format!(
                    "shard does not match {} (different tokenizer, dtype or num_parts)",
                    first.display()
                ),
            });
        }
        let size = std::fs::metadata(shard)
            .map_err(|e| Error::io(shard, e))?
            .len();
        let width = if info.dtype == "uint32" { 4 } else { 2 };
        if size != info.num_tokens * width {
            return Err(Error::Format {
                path: shard.display().to_string(),
                message: format!(
                    "{size} bytes but the sidecar says {} {} tokens",
                    info.num_tokens, info.dtype
                ),
            });
        }
        let (size_bytes, head_tail_sha256) = head_tail_sha256(shard)?;
        if info.size_bytes.is_some_and(|s| s != size_bytes)
            || info
                .head_tail_sha256
                .as_ref()
                .is_some_and(|c| *c != head_tail_sha256)
        {
            return Err(Error::Format {
                path: shard.display().to_string(),
                message: format!(
                    "size or checksum does not match its sidecar {} (truncated, replaced or \
                     overwritten?)",
                    sidecar.display()
                ),
            });
        }
        let name = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &info.index {
            Some(recorded) => {
                let index = index_path(shard);
                let (index_size, index_checksum) = self::head_tail_sha256(&index)?;
                if recorded.size_bytes != index_size || recorded.head_tail_sha256 != index_checksum
                {
                    return Err(Error::Format {
                        path: index.display().to_string(),
                        message: format!(
                            "size or checksum does not match its sidecar {} (truncated, \
                             replaced or overwritten?)",
                            sidecar.display()
                        ),
                    });
                }
                manifest.index_checks.insert(name.clone(), recorded.clone());
            }
            None => all_indexed = false,
        }
        if let Some(p) = info.part_index.filter(|&p| p < num_parts) {
            present[p] = true;
        }
        manifest.num_tokens += info.num_tokens;
        manifest.num_documents += info.num_documents;
        manifest.num_bytes += info.num_bytes;
        manifest.shard_checks.insert(
            name.clone(),
            FileCheck {
                size_bytes,
                head_tail_sha256,
            },
        );
        manifest.shards.push(name);
    }
    manifest.missing_parts = (0..num_parts).filter(|&p| !present[p]).collect();
    if !all_indexed {
        // shards of an older lmrs among them: readers scan, as for any version 1 manifest
        manifest.version = MIN_VERSION;
        manifest.index_checks.clear();
    }
    let json = serde_json::to_string_pretty(&manifest).expect("plain data serializes");
    atomic::write_file(
        &dir.join(MANIFEST_NAME),
        json.as_bytes(),
        "token_file.manifest",
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpe::pretokenize::GPT4_PATTERN;
    use crate::bpe::vocab::Vocab;

    fn encoder() -> Encoder {
        Encoder::new(Vocab::new(GPT4_PATTERN, vec![(116, 104), (256, 101)], &[]).unwrap()).unwrap()
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lmrs-tf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_u16(path: &Path) -> Vec<u32> {
        std::fs::read(path)
            .unwrap()
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect()
    }

    fn expected(enc: &Encoder, texts: &[&str]) -> Vec<u32> {
        texts
            .iter()
            .flat_map(|t| {
                let mut ids = enc.encode_ordinary(t);
                ids.push(enc.eot_id());
                ids
            })
            .collect()
    }

    const TEXTS: [&str; 4] = ["the cat", "", "then the <|endoftext|> end", "x"];
    const ALWAYS: &(dyn Fn(u64) -> bool + Sync) = &|_| true;

    #[test]
    fn single_file_with_sidecar() {
        let enc = encoder();
        let dir = tmp_dir("single");
        let out = dir.join("t.bin");
        let written =
            encode_texts(&enc, &TEXTS, &out, &TokenFileOptions::default(), ALWAYS).unwrap();
        let Written::File(info) = written else {
            panic!("expected a file")
        };
        assert_eq!(read_u16(&out), expected(&enc, &TEXTS));
        assert_eq!(info.num_documents, 4);
        assert_eq!(
            info.num_bytes,
            TEXTS.iter().map(|t| t.len() as u64).sum::<u64>()
        );
        assert_eq!(read_info(&sidecar_path(&out)).unwrap(), info);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            3,
            "the data, its index and its sidecar; no temporary files left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_split_at_the_limit_and_concatenate_to_the_stream() {
        let enc = encoder();
        let dir = tmp_dir("shards");
        let out = dir.join("shards");
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        let Written::Shards(m) = encode_texts(&enc, &TEXTS, &out, &options, ALWAYS).unwrap() else {
            panic!("expected shards")
        };
        let all: Vec<u32> = m
            .shards
            .iter()
            .flat_map(|s| read_u16(&out.join(s)))
            .collect();
        assert_eq!(all, expected(&enc, &TEXTS));
        assert_eq!(m.num_tokens as usize, all.len());
        assert_eq!(m.num_documents, 4);
        assert!(m.shards.len() >= 2 && m.missing_parts.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parts_are_disjoint_and_together_equal_one_run() {
        let enc = encoder();
        let dir = tmp_dir("parts");
        let out = dir.join("parts");
        for part in [2, 0] {
            let options = TokenFileOptions {
                shard_tokens: None,
                num_parts: 3,
                part_index: part,
            };
            let Written::Shards(m) = encode_texts(&enc, &TEXTS, &out, &options, ALWAYS).unwrap()
            else {
                panic!()
            };
            assert!(m.missing_parts.contains(&1));
        }
        let options = TokenFileOptions {
            shard_tokens: None,
            num_parts: 3,
            part_index: 1,
        };
        encode_texts(&enc, &TEXTS, &out, &options, ALWAYS).unwrap();
        let m = build_manifest(&out).unwrap();
        assert!(m.missing_parts.is_empty());
        let all: Vec<u32> = m
            .shards
            .iter()
            .flat_map(|s| read_u16(&out.join(s)))
            .collect();
        assert_eq!(all, expected(&enc, &TEXTS));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// (end, bytes) of every document whose eot is in `ids`, counted from `ids`' start.
    fn scanned(enc: &Encoder, ids: &[u32], texts: &[&str], first_doc: usize) -> Vec<(u64, u64)> {
        ids.iter()
            .enumerate()
            .filter(|(_, &id)| id == enc.eot_id())
            .zip(&texts[first_doc..])
            .map(|((i, _), t)| (i as u64 + 1, t.len() as u64))
            .collect()
    }

    #[test]
    fn every_data_file_has_an_index_of_its_document_ends() {
        use crate::tokens::token_index::read_index;
        let enc = encoder();
        let dir = tmp_dir("index");
        let out = dir.join("t.bin");
        let Written::File(info) =
            encode_texts(&enc, &TEXTS, &out, &TokenFileOptions::default(), ALWAYS).unwrap()
        else {
            panic!("expected a file")
        };
        let index = read_index(&index_path(&out)).unwrap();
        assert_eq!(index.documents, scanned(&enc, &read_u16(&out), &TEXTS, 0));
        assert_eq!(index.header.num_tokens, info.num_tokens);
        assert_eq!(index.header.num_bytes, info.num_bytes);
        let (size, checksum) = head_tail_sha256(&index_path(&out)).unwrap();
        assert_eq!(info.version, VERSION);
        assert_eq!(
            info.index,
            Some(FileCheck {
                size_bytes: size,
                head_tail_sha256: checksum
            })
        );

        let shards = dir.join("shards");
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        let Written::Shards(m) = encode_texts(&enc, &TEXTS, &shards, &options, ALWAYS).unwrap()
        else {
            panic!("expected shards")
        };
        assert_eq!(m.version, VERSION);
        assert_eq!(m.index_checks.len(), m.shards.len());
        let mut docs_before = 0;
        for name in &m.shards {
            let bin = shards.join(name);
            let index = read_index(&index_path(&bin)).unwrap();
            let expected = scanned(&enc, &read_u16(&bin), &TEXTS, docs_before);
            assert_eq!(index.documents, expected, "{name}");
            assert_eq!(
                read_info(&sidecar_path(&bin)).unwrap().index.as_ref(),
                Some(&m.index_checks[name])
            );
            docs_before += expected.len();
        }
        assert_eq!(docs_before, TEXTS.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_1_sidecars_still_read_and_a_manifest_over_them_is_version_1() {
        let enc = encoder();
        let dir = tmp_dir("v1");
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        let Written::Shards(m) =
            encode_texts(&enc, &TEXTS, &dir.join("s"), &options, ALWAYS).unwrap()
        else {
            panic!("expected shards")
        };
        // the first shard as an older lmrs wrote it: no index, version 1
        let bin = dir.join("s").join(&m.shards[0]);
        let mut info = read_info(&sidecar_path(&bin)).unwrap();
        info.version = 1;
        info.index = None;
        std::fs::write(sidecar_path(&bin), serde_json::to_string(&info).unwrap()).unwrap();
        std::fs::remove_file(index_path(&bin)).unwrap();
        let rebuilt = build_manifest(&dir.join("s")).unwrap();
        assert_eq!(rebuilt.version, 1);
        assert!(rebuilt.index_checks.is_empty());
        // a version 2 sidecar must have its index record
        info.version = 2;
        std::fs::write(sidecar_path(&bin), serde_json::to_string(&info).unwrap()).unwrap();
        assert!(read_info(&sidecar_path(&bin)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn part_ranges_cover_everything_once() {
        let sizes = [5, 0, 100, 1, 1, 1, 50];
        for n in 1..10 {
            let mut next = 0;
            for p in 0..n {
                let r = part_range(&sizes, n, p);
                assert_eq!(r.start, next, "n={n} p={p}");
                next = r.end;
            }
            assert_eq!(next, sizes.len());
        }
    }

    #[test]
    fn head_tail_checksum_covers_each_byte_once() {
        let dir = tmp_dir("check");
        let path = dir.join("f.bin");
        let k = CHECK_BYTES as usize;
        for size in [0, 1, k - 1, k, k + 1, 2 * k, 2 * k + 1, 5 * k + 3] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let mut hashed = data[..size.min(k)].to_vec();
            hashed.extend_from_slice(&data[size.saturating_sub(k).max(size.min(k))..]);
            let expected: String = Sha256::digest(&hashed)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                head_tail_sha256(&path).unwrap(),
                (size as u64, expected),
                "{size}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sidecars_and_manifests_record_size_and_checksum() {
        let enc = encoder();
        let dir = tmp_dir("integrity");
        let out = dir.join("t.bin");
        let Written::File(info) =
            encode_texts(&enc, &TEXTS, &out, &TokenFileOptions::default(), ALWAYS).unwrap()
        else {
            panic!("expected a file")
        };
        let (size, checksum) = head_tail_sha256(&out).unwrap();
        assert_eq!(info.size_bytes, Some(size));
        assert_eq!(info.head_tail_sha256.as_deref(), Some(checksum.as_str()));

        let shards = dir.join("shards");
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        let Written::Shards(m) = encode_texts(&enc, &TEXTS, &shards, &options, ALWAYS).unwrap()
        else {
            panic!("expected shards")
        };
        assert_eq!(m.shard_checks.len(), m.shards.len());
        for name in &m.shards {
            let (size, checksum) = head_tail_sha256(&shards.join(name)).unwrap();
            assert_eq!(m.shard_checks[name].size_bytes, size);
            assert_eq!(m.shard_checks[name].head_tail_sha256, checksum);
        }
        // a shard overwritten in place (same size) no longer matches its sidecar
        let first = shards.join(&m.shards[0]);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let err = build_manifest(&shards).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains(&m.shards[0]),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writers_collect_their_own_leftovers_of_dead_processes() {
        let enc = encoder();
        let dir = tmp_dir("leftovers");
        let dead = "999999999-1-0"; // a process id above the kernel's limit: never running
        let debris = [
            format!(".t.bin.tmp-{dead}"),
            format!(".t.bin.json.tmp-{dead}"),
            format!(".shards.tmp-{dead}"),
            format!("shards.old-{dead}"),
        ];
        for name in &debris[..2] {
            std::fs::write(dir.join(name), "half").unwrap();
        }
        for name in &debris[2..] {
            std::fs::create_dir(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("shard-00000.bin"), "half").unwrap();
        }
        std::fs::write(dir.join("unrelated.tmp-1"), "keep").unwrap();
        encode_texts(
            &enc,
            &TEXTS,
            &dir.join("t.bin"),
            &TokenFileOptions::default(),
            ALWAYS,
        )
        .unwrap();
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        encode_texts(&enc, &TEXTS, &dir.join("shards"), &options, ALWAYS).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "shards",
                "t.bin",
                "t.bin.idx",
                "t.bin.json",
                "unrelated.tmp-1"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_to_replace_a_foreign_directory() {
        let enc = encoder();
        let dir = tmp_dir("foreign");
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let options = TokenFileOptions {
            shard_tokens: Some(5),
            ..Default::default()
        };
        assert!(encode_texts(&enc, &TEXTS, &dir, &options, ALWAYS).is_err());
        assert!(dir.join("keep.txt").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
