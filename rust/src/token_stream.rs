//! Token files from documents that arrive in batches (records of JSONL, Parquet, CSV or
//! Arrow files read by `lmrs.records`), so a corpus never has to be in memory whole.
//!
//! The layout and the integrity fields are those of [`crate::token_file`]: one token file
//! (+ document index and sidecar) or, with `shard_tokens`, a shard directory built beside `out` and swapped
//! in when [`TokenStream::finish`] runs. Each document is followed by one `eot_id`, as in
//! a token file made from text files, so the same documents give the same ids either way.
//! Splitting into parts (`num_parts > 1`) needs every document's size up front and is
//! left to [`crate::token_file::encode_files`].

use std::path::{Path, PathBuf};

use crate::atomic;
use crate::encode::Encoder;
use crate::token_file::{
    build_manifest, check_replaceable_dir, Layout, ShardSink, TokenFileOptions, Written,
};
use crate::{Error, Result};

/// An open token file (or shard directory) that documents are appended to in batches.
/// Nothing is visible at `out` until [`finish`](Self::finish); dropping the stream
/// without finishing removes what it wrote.
pub struct TokenStream {
    sink: ShardSink,
    out: PathBuf,
    /// The temporary shard directory, when writing shards.
    tmp_dir: Option<PathBuf>,
    done: bool,
}

impl TokenStream {
    pub fn create(encoder: &Encoder, out: &Path, shard_tokens: Option<u64>) -> Result<Self> {
        if shard_tokens == Some(0) {
            return Err(Error::Invalid("shard_tokens must be positive".into()));
        }
        let options = TokenFileOptions {
            shard_tokens,
            ..TokenFileOptions::default()
        };
        let (layout, tmp_dir) = if shard_tokens.is_some() {
            if out.exists() && !out.is_dir() {
                return Err(Error::Invalid(format!(
                    "{}: exists and is not a shard directory",
                    out.display()
                )));
            }
            check_replaceable_dir(out)?;
            let tmp_dir = atomic::temp_path(out)?;
            std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
            (Layout::Dir(tmp_dir.clone()), Some(tmp_dir))
        } else {
            (Layout::Single(out.to_path_buf()), None)
        };
        Ok(Self {
            sink: ShardSink::new(encoder, layout, &options),
            out: out.to_path_buf(),
            tmp_dir,
            done: false,
        })
    }

    /// Encodes `texts` in parallel and appends them in order, each followed by `eot_id`.
    /// Returns the UTF-8 bytes written.
    pub fn write<S: AsRef<str> + Sync>(&mut self, encoder: &Encoder, texts: &[S]) -> Result<u64> {
        if self.done {
            return Err(Error::Invalid("token stream already finished".into()));
        }
        let eot = encoder.eot_id();
        let encoded = encoder.encode_documents(texts);
        let mut bytes = 0;
        for (mut ids, text) in encoded.into_iter().zip(texts) {
            let num_bytes = text.as_ref().len() as u64;
            ids.push(eot);
            if let Err(e) = self.sink.write_document(&ids, num_bytes) {
                self.abandon();
                return Err(e);
            }
            bytes += num_bytes;
        }
        Ok(bytes)
    }

    /// Commits the token file (or shard directory) at `out` and returns what was written.
    pub fn finish(&mut self) -> Result<Written> {
        if self.done {
            return Err(Error::Invalid("token stream already finished".into()));
        }
        self.done = true;
        let result = self.sink.finish();
        let mut files = match result {
            Ok(files) => files,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        let Some(tmp_dir) = self.tmp_dir.take() else {
            return Ok(Written::File(files.remove(0).1));
        };
        let committed = build_manifest(&tmp_dir).and_then(|manifest| {
            atomic::replace_dir(&tmp_dir, &self.out, "token_file.dir").map(|_| manifest)
        });
        if committed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp_dir);
        }
        Ok(Written::Shards(committed?))
    }

    /// Removes everything written so far (after an error, or when the caller gives up).
    pub fn abandon(&mut self) {
        self.done = true;
        self.sink.abandon();
        if let Some(tmp_dir) = self.tmp_dir.take() {
            let _ = std::fs::remove_dir_all(tmp_dir);
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            self.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::GPT4_PATTERN;
    use crate::token_file::encode_texts;
    use crate::token_index::index_path;
    use crate::vocab::Vocab;

    fn encoder() -> Encoder {
        let vocab = Vocab::new(GPT4_PATTERN, vec![(116, 104), (256, 101)], &[]).expect("vocab");
        Encoder::new(vocab).expect("encoder")
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lmrs-ts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn batches_give_the_same_file_as_one_call() {
        let dir = tmp_dir("same");
        let enc = encoder();
        let texts = ["first doc", "", "second, longer document", "x"];
        let whole = dir.join("whole.bin");
        encode_texts(&enc, &texts, &whole, &TokenFileOptions::default(), &|_| {
            true
        })
        .expect("encode");
        let streamed = dir.join("streamed.bin");
        let mut stream = TokenStream::create(&enc, &streamed, None).expect("create");
        stream.write(&enc, &texts[..1]).expect("write");
        stream.write(&enc, &texts[1..]).expect("write");
        let written = stream.finish().expect("finish");
        assert_eq!(
            std::fs::read(&whole).expect("read"),
            std::fs::read(&streamed).expect("read")
        );
        let index = |bin: &Path| std::fs::read(index_path(bin)).expect("an index beside the data");
        assert_eq!(index(&whole), index(&streamed));
        match written {
            Written::File(info) => assert_eq!(info.num_documents, 4),
            Written::Shards(_) => panic!("expected one file"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropped_stream_leaves_nothing() {
        let dir = tmp_dir("drop");
        let enc = encoder();
        let out = dir.join("shards");
        let mut stream = TokenStream::create(&enc, &out, Some(3)).expect("create");
        stream.write(&enc, &["some text here"]).expect("write");
        drop(stream);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
