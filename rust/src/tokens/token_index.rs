//! The document index of a token file (`NAME.bin.idx`): where each document ends and how
//! many bytes of source text it had, so that opening a token file reads this small file
//! instead of scanning every token for `eot_id` (see DESIGN.md, "Token file").
//!
//! Layout, little-endian: a [`HEADER_BYTES`]-byte header (`magic` [`MAGIC`], `version`
//! u64, `num_documents` u64, `num_tokens` u64 of the data file, `num_bytes` u64 summed
//! over its documents), then one 16-byte record per document, in order: `end` u64 (the
//! position just after its `eot_id`, counted from the start of this data file) and
//! `bytes` u64 (the UTF-8 bytes of its text). A document that continues into the next
//! shard is recorded in the shard holding its `eot_id`, as the sidecar counts it.
//!
//! Records are streamed to the file as documents are written and the header is filled in
//! last, so the writer holds no per-document memory.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"lmrs-idx";
pub const VERSION: u64 = 1;
pub const HEADER_BYTES: u64 = 40;
pub const RECORD_BYTES: u64 = 16;

/// `NAME.bin` → `NAME.bin.idx`.
pub fn index_path(bin: &Path) -> PathBuf {
    let mut name = bin.as_os_str().to_owned();
    name.push(".idx");
    PathBuf::from(name)
}

/// The counts an index header records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexHeader {
    pub num_documents: u64,
    pub num_tokens: u64,
    pub num_bytes: u64,
}

impl IndexHeader {
    fn to_bytes(self) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[..8].copy_from_slice(MAGIC);
        let fields = [VERSION, self.num_documents, self.num_tokens, self.num_bytes];
        for (slot, value) in out[8..].chunks_exact_mut(8).zip(fields) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }
}

/// Appends records to a (temporary) index file; [`finish`](Self::finish) writes the header.
pub struct IndexWriter {
    writer: BufWriter<File>,
    header: IndexHeader,
}

impl IndexWriter {
    /// Starts an index in `file` (fresh and empty) with a placeholder header.
    pub fn new(file: File, path: &Path) -> Result<Self> {
        let mut writer = BufWriter::with_capacity(1 << 16, file);
        writer
            .write_all(&IndexHeader::default().to_bytes())
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            writer,
            header: IndexHeader::default(),
        })
    }

    /// Ids of the data file so far (documents may end in a later call, or a later shard).
    pub fn add_tokens(&mut self, count: u64) {
        self.header.num_tokens += count;
    }

    /// A document ends at the current token count, with `bytes` of source text.
    pub fn end_document(&mut self, bytes: u64, path: &Path) -> Result<()> {
        let mut record = [0u8; RECORD_BYTES as usize];
        record[..8].copy_from_slice(&self.header.num_tokens.to_le_bytes());
        record[8..].copy_from_slice(&bytes.to_le_bytes());
        self.writer
            .write_all(&record)
            .map_err(|e| Error::io(path, e))?;
        self.header.num_documents += 1;
        self.header.num_bytes += bytes;
        Ok(())
    }

    /// Writes the header over the placeholder and flushes; the caller commits the file.
    pub fn finish(self, path: &Path) -> Result<IndexHeader> {
        let io = |e| Error::io(path, e);
        let mut file = self.writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.to_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(self.header)
    }
}

/// An index read whole (for tests and tools; `lmrs.data` memory-maps it instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentIndex {
    pub header: IndexHeader,
    /// (end, bytes) per document.
    pub documents: Vec<(u64, u64)>,
}

/// Reads and checks an index file: magic, version, size against the header's count.
pub fn read_index(path: &Path) -> Result<DocumentIndex> {
    let format = |message: String| Error::Format {
        path: path.display().to_string(),
        message,
    };
    let mut content = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut content))
        .map_err(|e| Error::io(path, e))?;
    if content.len() < HEADER_BYTES as usize || &content[..8] != MAGIC {
        return Err(format("not an lmrs document index (bad header)".into()));
    }
    let word = |i: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&content[i..i + 8]);
        u64::from_le_bytes(bytes)
    };
    if word(8) != VERSION {
        return Err(format(format!(
            "index version {}, expected {VERSION}",
            word(8)
        )));
    }
    let header = IndexHeader {
        num_documents: word(16),
        num_tokens: word(24),
        num_bytes: word(32),
    };
    let expected = header
        .num_documents
        .checked_mul(RECORD_BYTES)
        .and_then(|n| n.checked_add(HEADER_BYTES));
    if expected != Some(content.len() as u64) {
        return Err(format(format!(
            "{} bytes, but the header counts {} documents",
            content.len(),
            header.num_documents
        )));
    }
    let documents = (HEADER_BYTES as usize..content.len())
        .step_by(RECORD_BYTES as usize)
        .map(|i| (word(i), word(i + 8)))
        .collect();
    Ok(DocumentIndex { header, documents })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("lmrs-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("t.bin.idx");
        let file = File::create(&path).expect("create");
        let mut writer = IndexWriter::new(file, &path).expect("writer");
        writer.add_tokens(3);
        writer.end_document(10, &path).expect("doc");
        writer.add_tokens(2);
        writer.end_document(0, &path).expect("doc");
        writer.add_tokens(4); // continues in the next shard
        let header = writer.finish(&path).expect("finish");
        let index = read_index(&path).expect("read");
        assert_eq!(index.header, header);
        assert_eq!(
            header,
            IndexHeader {
                num_documents: 2,
                num_tokens: 9,
                num_bytes: 10
            }
        );
        assert_eq!(index.documents, vec![(3, 10), (5, 0)]);
        std::fs::write(&path, &std::fs::read(&path).expect("read")[..50]).expect("truncate");
        assert!(read_index(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
