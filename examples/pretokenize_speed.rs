//! Pre-tokenization throughput on one thread, hand-written scanner vs regex engine:
//!   cargo run --release --example pretokenize_speed -- FILE_OR_DIR [EXT]

use std::path::PathBuf;
use std::time::Instant;

use _lmrs::bpe::corpus::{collect_files, WordCounts};
use _lmrs::bpe::pretokenize::{Pretokenizer, GPT4_PATTERN};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first() else {
        return Err("usage: pretokenize_speed FILE_OR_DIR [EXT]".into());
    };
    let mut text = String::new();
    for path in collect_files(&PathBuf::from(root), &args[1..])? {
        if let Ok(s) = std::fs::read_to_string(&path) {
            text.push_str(&s);
        }
    }
    let mb = text.len() as f64 / 1e6;
    for (name, p) in [
        ("fast", Pretokenizer::gpt4()),
        ("regex", Pretokenizer::new_regex(GPT4_PATTERN)?),
    ] {
        let t = Instant::now();
        let mut pieces = 0usize;
        p.for_each_piece(&text, |_| pieces += 1);
        let dt = t.elapsed().as_secs_f64();
        println!("{name:>5}: {pieces} pieces, {:.0} MB/s", mb / dt);
    }
    let t = Instant::now();
    let mut counts = WordCounts::new();
    counts.add_text(&text, &Pretokenizer::gpt4());
    println!(
        "split+count: {} distinct, {:.0} MB/s",
        counts.len(),
        mb / t.elapsed().as_secs_f64()
    );
    Ok(())
}
