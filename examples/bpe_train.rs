//! Times the trainer end to end, from files on disk to merges:
//!   cargo run --release --example bpe_train -- DIR VOCAB_SIZE [EXT] [--min-frequency N] [--out FILE]
//! `--out` writes each merged token's bytes as hex, one per line (to compare with rustbpe).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use _lmrs::bpe::corpus::{collect_files, count_words_in_files};
use _lmrs::bpe::pretokenize::Pretokenizer;
use _lmrs::bpe::train::{train_bpe, TrainOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take_flag = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        let value = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        value
    };
    let out = take_flag("--out");
    let min_frequency: u64 = take_flag("--min-frequency").map_or(Ok(1), |v| v.parse())?;
    let [root, vocab_size, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: bpe_train DIR VOCAB_SIZE [EXT] [--min-frequency N] [--out FILE]".into(),
        );
    };
    let extensions: Vec<String> = rest.to_vec();

    let t0 = Instant::now();
    let files = collect_files(&PathBuf::from(root), &extensions)?;
    let t1 = Instant::now();
    let counts = count_words_in_files(&files, &Pretokenizer::gpt4(), &|_| {})?;
    let t2 = Instant::now();
    // rustbpe has no special tokens: ask for the same number of merges.
    let mut opts = TrainOptions::new(vocab_size.parse()?);
    opts.num_special_tokens = 0;
    opts.min_frequency = min_frequency;
    let merges = train_bpe(&counts.words, &opts, &AtomicU64::new(0))?;
    let t3 = Instant::now();

    println!(
        "{} files, {:.1} MB, {} distinct words; walk {:.3}s, count {:.3}s, train {:.3}s ({} merges); total {:.3}s",
        counts.files_read,
        counts.bytes_read as f64 / 1e6,
        counts.words.len(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        merges.len(),
        (t3 - t0).as_secs_f64(),
    );
    if let Some(out) = out {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut text = String::new();
        for (a, b) in merges {
            let token = [tokens[a as usize].as_slice(), tokens[b as usize].as_slice()].concat();
            text.extend(token.iter().map(|b| format!("{b:02x}")));
            text.push('\n');
            tokens.push(token);
        }
        std::fs::write(out, text)?;
    }
    Ok(())
}
