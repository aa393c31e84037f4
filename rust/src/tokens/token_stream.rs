//! Token files from documents that arrive in batches (records of JSONL, Parquet, CSV or
//! Arrow files read by `lmrs.records`), so a corpus never has to be in memory whole.
//!
//! The layout and the integrity fields are those of [`crate::tokens::token_file`]: one token file
//! (+ document index and sidecar); with `shard_tokens`, a shard directory built beside
//! `out` and swapped in when [`TokenStream::finish`] runs; with `num_parts > 1`, part
//! `part_index`'s shards in the shared directory `out` (the caller feeds only that part's
//! documents: `lmrs.records` picks them by byte range, row group or record). Each document
//! is followed by one `eot_id`, as in a token file made from text files, so the same
//! documents give the same ids either way.

use std::path::Path;

use crate::bpe::encode::Encoder;
use crate::tokens::token_file::{ShardSink, Target, TokenFileOptions, Written};
use crate::{Error, Result};

/// An open token file (or shard directory) that documents are appended to in batches.
/// Nothing is visible at `out` until [`finish`](Self::finish); dropping the stream
/// without finishing removes what it wrote.
pub struct TokenStream {
    sink: ShardSink,
    /// Where the files go; taken when committed or discarded.
    target: Option<Target>,
    done: bool,
}

impl TokenStream {
    /// `options`: `shard_tokens`, and `num_parts` / `part_index` for one part of a
    /// multi-part run (as [`crate::tokens::token_file::encode_files`] takes them).
    pub fn create(encoder: &Encoder, out: &Path, options: &TokenFileOptions) -> Result<Self> {
        let target = Target::prepare(out, options, encoder)?;
        target.check_other_parts()?;
        Ok(Self {
            sink: ShardSink::new(encoder, target.layout(), options),
            target: Some(target),
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
        let checked = match &self.target {
            Some(target) => target.check_documents(self.sink.num_documents(), "no documents"),
            None => Err(Error::Invalid("token stream already finished".into())),
        };
        if let Err(e) = checked {
            self.abandon();
            return Err(e);
        }
        let files = match self.sink.finish() {
            Ok(files) => files,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        let target = self.target.take();
        target
            .ok_or_else(|| Error::Invalid("token stream already finished".into()))?
            .commit(files)
    }

    /// Removes everything written so far (after an error, or when the caller gives up).
    pub fn abandon(&mut self) {
        self.done = true;
        self.sink.abandon();
        if let Some(target) = self.target.take() {
            target.discard();
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
    use crate::bpe::pretokenize::GPT4_PATTERN;
    use crate::bpe::vocab::Vocab;
    use crate::tokens::token_file::encode_texts;
    use crate::tokens::token_index::index_path;
    use std::path::PathBuf;

    fn encoder() -> Encoder {
        let vocab = Vocab::new(GPT4_PATTERN, vec![(116, 104), (256, 101)], &[]).expect("vocab");
        Encoder::new(vocab).expect("encoder")
    }

    fn sharded(shard_tokens: Option<u64>, num_parts: usize, part_index: usize) -> TokenFileOptions {
        TokenFileOptions {
            shard_tokens,
            num_parts,
            part_index,
        }
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
        let mut stream =
            TokenStream::create(&enc, &streamed, &TokenFileOptions::default()).expect("create");
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
        let mut stream = TokenStream::create(&enc, &out, &sharded(Some(3), 1, 0)).expect("create");
        stream.write(&enc, &["some text here"]).expect("write");
        drop(stream);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parts_streamed_give_the_shards_of_encode_texts_parts() {
        // The stream of part p, fed part p's documents, writes what encode_texts writes
        // for that part: same shard names, same bytes, one manifest over all parts.
        let dir = tmp_dir("parts");
        let enc = encoder();
        let texts = [
            "first doc",
            "",
            "second, longer document",
            "x",
            "the end",
            "more",
        ];
        let whole = dir.join("whole");
        let streamed = dir.join("streamed");
        for part in 0..3 {
            let options = sharded(Some(4), 3, part);
            let range = crate::tokens::token_file::part_range(
                &texts.iter().map(|t| t.len() as u64).collect::<Vec<_>>(),
                3,
                part,
            );
            encode_texts(&enc, &texts, &whole, &options, &|_| true).expect("encode");
            let mut stream = TokenStream::create(&enc, &streamed, &options).expect("create");
            stream.write(&enc, &texts[range]).expect("write");
            stream.finish().expect("finish");
        }
        let mut names: Vec<_> = std::fs::read_dir(&whole)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert!(names
            .iter()
            .any(|n| n.to_string_lossy().starts_with("shard-00002-")));
        for name in &names {
            let read = |d: &Path| std::fs::read(d.join(name)).expect("read");
            assert_eq!(read(&whole), read(&streamed), "{name:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_documents_is_refused_and_the_old_file_kept() {
        let dir = tmp_dir("empty");
        let enc = encoder();
        let out = dir.join("t.bin");
        let mut stream = TokenStream::create(&enc, &out, &sharded(None, 1, 0)).expect("create");
        stream.write(&enc, &["kept"]).expect("write");
        stream.finish().expect("finish");
        let before = std::fs::read(&out).expect("read");
        let mut empty = TokenStream::create(&enc, &out, &sharded(None, 1, 0)).expect("create");
        let refused = empty.finish();
        assert!(
            matches!(&refused, Err(Error::Invalid(m)) if m.contains("the input is empty")),
            "{refused:?}"
        );
        assert_eq!(std::fs::read(&out).expect("read"), before);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 3); // .bin, .idx, .json
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_part_out_of_range_is_refused() {
        let dir = tmp_dir("range");
        let result = TokenStream::create(&encoder(), &dir.join("x"), &sharded(None, 2, 2));
        assert!(matches!(result, Err(Error::Invalid(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
