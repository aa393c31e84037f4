//! Encode speed and ids: lmrs beside the pure-Rust `tiktoken` crate (a dev-dependency).
//!
//!   cargo run --release --example encode_speed -- [--prose DIR] [--code DIR]
//!       [--vocab FILE.json] [--quick] [--repeat N] [--no-train] [--write-ranks DIR]
//!
//! For cl100k and o200k (the crate's embedded ranks, read back through its own decoder;
//! lmrs builds its encoder from the same ranks with `Vocab::from_ranks`) every document
//! is first encoded by both and the ids compared: any difference stops the run with the
//! input and position named. Then MB/s, every column of a row timed in turns, round by
//! round (the host's speed drifts): one thread (the best of `--repeat` rounds, inside
//! a one-thread rayon pool so lmrs cannot split a big text across cores), and batched
//! (documents in parallel on every core: lmrs `encode_batch`, the crate's `encode`
//! under rayon). Adversarial inputs are timed at two sizes, 4x apart: equal MB/s means
//! linear time.
//!
//! lmrs is timed one thread with each of four `EncodeOptions`: no piece cache with
//! tokens looked up by their bytes (the encoder before short keys and the cache), no
//! cache, every piece through the cache, and auto (the default: short keys, the cache for
//! merged pieces only), so one run shows what short keys and the cache each give on each
//! input; the
//! "known/hit" column is Auto's share of pieces that were one lookup (a byte or a whole
//! token) and of pieces served by the cache, and "drop" marks inputs where Auto dropped
//! the cache (its sampled hit rate was too low).
//!
//! `--write-ranks DIR` writes the crate's ranks as DIR/cl100k_base.tiktoken and
//! DIR/o200k_base.tiktoken ("base64(token) rank" lines, tiktoken's own format) and exits:
//! `benchmarks/bench_tokenizer.py --ranks DIR` times the Python-facing side on them.
//!
//! An lmrs-trained 32k vocabulary (trained here on the prose and code inputs with the
//! cl100k pattern, or `--vocab FILE.json`) is timed for lmrs alone: the crate has no
//! public way to load ranks other than its embedded ones.
//!
//! Inputs: English prose (the Shakespeare corpus, `../shared/corpora/shakespeare`),
//! code (the Python standard library's .py files, chosen as `lmrs quickstart` chooses
//! them), non-Latin text (generated: seven scripts, words drawn Zipf-like from a fixed
//! lexicon per script, so pieces repeat as in real text), adversarial text (generated).
//! `--quick` caps each input at about 1 MB (a smoke run; the numbers mean little).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use _lmrs::bpe::corpus::{collect_files, WordCounts};
use _lmrs::bpe::encode::{AllowedSpecial, EncodeOptions, Encoder, PieceCacheMode};
use _lmrs::bpe::pretokenize::{Pretokenizer, CL100K_PATTERN, O200K_PATTERN};
use _lmrs::bpe::train::{train_bpe, TrainOptions};
use _lmrs::bpe::vocab::{Vocab, EOT};
use rayon::prelude::*;

type BoxError = Box<dyn std::error::Error>;

struct Options {
    prose: PathBuf,
    code: Option<PathBuf>,
    vocab: Option<PathBuf>,
    quick: bool,
    repeat: usize,
    train: bool,
    write_ranks: Option<PathBuf>,
}

fn parse_args() -> Result<Options, BoxError> {
    let mut options = Options {
        prose: Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/shakespeare"),
        code: None,
        vocab: None,
        quick: false,
        repeat: 3,
        train: true,
        write_ranks: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--prose" => options.prose = PathBuf::from(value()?),
            "--code" => options.code = Some(PathBuf::from(value()?)),
            "--vocab" => options.vocab = Some(PathBuf::from(value()?)),
            "--repeat" => options.repeat = value()?.parse::<usize>()?.max(1),
            "--quick" => options.quick = true,
            "--no-train" => options.train = false,
            "--write-ranks" => options.write_ranks = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument {arg} (see the file's header)").into()),
        }
    }
    Ok(options)
}

/// One benchmark input: documents encoded one by one (as a corpus is).
struct Input {
    name: String,
    docs: Vec<String>,
    /// Adversarial inputs: one thread only (a single document has nothing to batch).
    single: bool,
}

impl Input {
    fn bytes(&self) -> usize {
        self.docs.iter().map(String::len).sum()
    }
}

fn read_docs(files: &[PathBuf], cap: usize) -> Vec<String> {
    let mut docs = Vec::new();
    let mut total = 0;
    for path in files {
        if total >= cap {
            break;
        }
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.len();
            docs.push(text);
        }
    }
    docs
}

/// The standard library's directory, as the Python that runs lmrs sees it.
fn python_stdlib() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(path.trim()))
}

/// The .py files `lmrs quickstart` trains on (cli_model.stdlib_python_files): no tests,
/// third-party or generated code, files of 1..=200,000 bytes, 12 MB in all, in os.walk's
/// order (a folder's files by name, then its subfolders by name).
fn stdlib_python_files(root: &Path) -> Vec<PathBuf> {
    const SKIP: [&str; 8] = [
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "encodings",
        "pydoc_data",
    ];
    fn walk(dir: &Path, files: &mut Vec<PathBuf>, total: &mut u64) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return true;
        };
        let mut entries: Vec<(String, PathBuf, bool)> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let is_dir = e.path().is_dir();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.path(),
                    is_dir,
                )
            })
            .collect();
        entries.sort();
        for (name, path, is_dir) in &entries {
            if *is_dir || !name.ends_with(".py") {
                continue;
            }
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size == 0 || size > 200_000 {
                continue;
            }
            if *total + size > 12_000_000 {
                return false;
            }
            files.push(path.clone());
            *total += size;
        }
        for (name, path, is_dir) in &entries {
            if *is_dir
                && !SKIP.contains(&name.as_str())
                && !name.starts_with('.')
                && !walk(path, files, total)
            {
                return false;
            }
        }
        true
    }
    let mut files = Vec::new();
    walk(root, &mut files, &mut 0);
    files
}

/// xorshift64*: deterministic inputs on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn char_in(&mut self, lo: u32, hi: u32) -> char {
        char::from_u32(lo + self.below((hi - lo + 1) as usize) as u32).unwrap_or('?')
    }
}

/// A script for generated text: how to make a word, and how words are joined.
struct Script {
    word: fn(&mut Rng) -> String,
    spaces: bool,
    stop: &'static str,
}

fn syllables(rng: &mut Rng, lo: u32, hi: u32, min: usize, max: usize) -> String {
    let n = min + rng.below(max - min + 1);
    (0..n).map(|_| rng.char_in(lo, hi)).collect()
}

const SCRIPTS: [Script; 7] = [
    Script {
        // common ideographs sit at the start of the block
        word: |r| syllables(r, 0x4E00, 0x4E00 + 3000, 1, 3),
        spaces: false,
        stop: "。",
    },
    Script {
        word: |r| {
            let mut w = syllables(r, 0x4E00, 0x4E00 + 2000, 1, 2);
            w.push_str(&syllables(r, 0x3041, 0x3093, 1, 3));
            w
        },
        spaces: false,
        stop: "、",
    },
    Script {
        word: |r| syllables(r, 0xAC00, 0xAC00 + 2400, 2, 4),
        spaces: true,
        stop: ".",
    },
    Script {
        word: |r| syllables(r, 0x0430, 0x044F, 2, 10),
        spaces: true,
        stop: ",",
    },
    Script {
        word: |r| syllables(r, 0x03B1, 0x03C9, 2, 9),
        spaces: true,
        stop: ".",
    },
    Script {
        word: |r| syllables(r, 0x0621, 0x064A, 2, 8),
        spaces: true,
        stop: "،",
    },
    Script {
        // consonants each followed by a vowel sign (a combining mark) or nothing
        word: |r| {
            let n = 2 + r.below(4);
            let mut w = String::new();
            for _ in 0..n {
                w.push(r.char_in(0x0915, 0x0939));
                if r.below(2) == 0 {
                    w.push(r.char_in(0x093E, 0x094C));
                }
            }
            w
        },
        spaces: true,
        stop: "।",
    },
];

/// Documents of generated text, `bytes` in all: each script's words come from a fixed
/// lexicon of 3,000, drawn with Zipf-like frequencies (rank r ~ 1/(r+1)).
fn non_latin(bytes: usize) -> Vec<String> {
    const LEXICON: usize = 3000;
    let mut rng = Rng(0x5EED_CAFE);
    let cumulative: Vec<f64> = (0..LEXICON)
        .scan(0.0, |sum, r| {
            *sum += 1.0 / (r as f64 + 1.0);
            Some(*sum)
        })
        .collect();
    let total = cumulative[LEXICON - 1];
    let lexicons: Vec<Vec<String>> = SCRIPTS
        .iter()
        .map(|s| (0..LEXICON).map(|_| (s.word)(&mut rng)).collect())
        .collect();
    let doc_bytes = 32 * 1024;
    let mut docs = Vec::new();
    let mut made = 0;
    while made < bytes {
        let which = docs.len() % SCRIPTS.len();
        let script = &SCRIPTS[which];
        let mut doc = String::with_capacity(doc_bytes + 64);
        let mut in_sentence = 0;
        while doc.len() < doc_bytes {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let rank = cumulative.partition_point(|&c| c < u).min(LEXICON - 1);
            if script.spaces && in_sentence > 0 {
                doc.push(' ');
            }
            doc.push_str(&lexicons[which][rank]);
            in_sentence += 1;
            if rng.below(9) == 0 {
                doc.push_str(script.stop);
                in_sentence = 0;
                if rng.below(6) == 0 {
                    doc.push('\n');
                } else if script.spaces {
                    doc.push(' ');
                    in_sentence = 0;
                }
            }
        }
        made += doc.len();
        docs.push(doc);
    }
    docs
}

/// Adversarial texts of about `n` bytes, by name.
fn adversarial(n: usize) -> Vec<(&'static str, String)> {
    let mut rng = Rng(0xAD5E_12A1);
    let letters: String = (0..n)
        .map(|_| (b'a' + rng.below(26) as u8) as char)
        .collect();
    let random_bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    let digits: String = (0..n)
        .map(|_| (b'0' + rng.below(10) as u8) as char)
        .collect();
    let spaces: String = (0..n)
        .map(|_| match rng.below(40) {
            0 => '\n',
            1 => '\t',
            _ => ' ',
        })
        .collect();
    let mut unicode = String::with_capacity(n + 4);
    while unicode.len() < n {
        unicode.push(match rng.below(4) {
            0 => rng.char_in(0x4E00, 0x9FFF),
            1 => rng.char_in(0x0430, 0x044F),
            2 => rng.char_in(0x0915, 0x094C),
            _ => rng.char_in(0x00C0, 0x024F),
        });
    }
    vec![
        ("letters, no spaces", letters),
        (
            "random bytes",
            String::from_utf8_lossy(&random_bytes).into_owned(),
        ),
        ("digits", digits),
        ("whitespace run", spaces),
        ("unicode, no spaces", unicode),
    ]
}

fn inputs(options: &Options) -> Result<Vec<Input>, BoxError> {
    let cap = if options.quick { 1 << 20 } else { usize::MAX };
    let mut out = Vec::new();
    let prose = collect_files(&options.prose, &[])?;
    out.push(Input {
        name: "prose (shakespeare)".into(),
        docs: read_docs(&prose, cap),
        single: false,
    });
    match options.code.clone().or_else(python_stdlib) {
        Some(root) => out.push(Input {
            name: "code (python stdlib)".into(),
            docs: read_docs(&stdlib_python_files(&root), cap),
            single: false,
        }),
        None => eprintln!("no Python standard library found (--code DIR): code skipped"),
    }
    out.push(Input {
        name: "non-latin (generated)".into(),
        docs: non_latin(if options.quick { 1 << 20 } else { 4 << 20 }),
        single: false,
    });
    let small = if options.quick { 16 << 10 } else { 64 << 10 };
    for n in [small, 4 * small] {
        for (name, text) in adversarial(n) {
            out.push(Input {
                name: format!("{name} {} KB", n >> 10),
                docs: vec![text],
                single: true,
            });
        }
    }
    Ok(out)
}

/// Seconds per call of the fastest of `repeat` rounds of each of `runs`, taken in turns
/// (round 1 of each, round 2 of each, ...) so that a change in the host's speed during
/// the measurement hits every column alike; a round repeats a call until it has run for
/// at least [`MIN_ROUND_SECS`], so that small inputs are not timed below the clock's
/// noise.
fn best_interleaved(repeat: usize, runs: &mut [&mut dyn FnMut() -> usize]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; runs.len()];
    let mut calls = vec![1usize; runs.len()];
    let mut sink = 0usize;
    for round in 0..=repeat {
        for (i, run) in runs.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..calls[i] {
                sink = sink.wrapping_add(run());
            }
            let secs = t.elapsed().as_secs_f64();
            if round == 0 {
                // a warm-up round that also sizes the rounds
                calls[i] = (MIN_ROUND_SECS / secs.max(1e-9)).ceil().max(1.0) as usize;
            } else {
                best[i] = best[i].min(secs / calls[i] as f64);
            }
        }
    }
    std::hint::black_box(sink);
    best
}

const MIN_ROUND_SECS: f64 = 0.05;

fn crate_ranks(bpe: &tiktoken::CoreBpe) -> Vec<(Vec<u8>, u32)> {
    (0..bpe.vocab_size() as u32)
        .filter_map(|rank| {
            let bytes = bpe.decode(&[rank]);
            (!bytes.is_empty()).then_some((bytes, rank))
        })
        .collect()
}

struct Reference {
    name: &'static str,
    crate_name: &'static str,
    pattern: &'static str,
    specials: &'static [(&'static str, u32)],
}

const REFERENCES: [Reference; 2] = [
    Reference {
        name: "cl100k",
        crate_name: "cl100k_base",
        pattern: CL100K_PATTERN,
        specials: &[
            ("<|endoftext|>", 100257),
            ("<|fim_prefix|>", 100258),
            ("<|fim_middle|>", 100259),
            ("<|fim_suffix|>", 100260),
            ("<|endofprompt|>", 100276),
        ],
    },
    Reference {
        name: "o200k",
        crate_name: "o200k_base",
        pattern: O200K_PATTERN,
        specials: &[("<|endoftext|>", 199999), ("<|endofprompt|>", 200018)],
    },
];

fn check_same_ids(
    input: &Input,
    vocab: &str,
    lmrs: &Encoder,
    bpe: &tiktoken::CoreBpe,
) -> Result<(), BoxError> {
    for (d, doc) in input.docs.iter().enumerate() {
        let ours = lmrs.encode_ordinary(doc);
        let theirs = bpe.encode(doc);
        if ours != theirs {
            let at = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            let lo = at.saturating_sub(3);
            return Err(format!(
                "{vocab} / {}: document {d} differs at token {at}: lmrs {:?} crate {:?}",
                input.name,
                &ours[lo..(at + 3).min(ours.len())],
                &theirs[lo..(at + 3).min(theirs.len())]
            )
            .into());
        }
    }
    Ok(())
}

fn mb_per_s(bytes: usize, seconds: f64) -> String {
    format!("{:.1}", bytes as f64 / 1e6 / seconds)
}

fn header() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let features: Vec<String> = _lmrs::decode::kernels::cpu::features()
        .into_iter()
        .map(|(name, has)| format!("{name} {}", if has { "yes" } else { "no" }))
        .collect();
    println!("# encode speed: lmrs vs the tiktoken crate");
    println!(
        "CPU: {cpu}; {} threads; {}",
        rayon::current_num_threads(),
        features.join(", ")
    );
    println!("MB/s, higher is better; 1T = one thread (best of the runs), batched = documents in parallel");
}

/// The crate's ranks as `.tiktoken` files in `dir` (written whole, then renamed).
fn write_ranks(dir: &Path) -> Result<(), BoxError> {
    use base64::Engine;
    std::fs::create_dir_all(dir)?;
    for reference in &REFERENCES {
        let Some(bpe) = tiktoken::get_encoding(reference.crate_name) else {
            return Err(format!("the crate has no {}", reference.crate_name).into());
        };
        let mut text = String::new();
        for (bytes, rank) in crate_ranks(bpe) {
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(&bytes));
            text.push_str(&format!(" {rank}\n"));
        }
        let path = dir.join(format!("{}.tiktoken", reference.crate_name));
        let tmp = dir.join(format!(".{}.tiktoken.tmp", reference.crate_name));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The lmrs columns: (byte keys, no cache), then short keys with no cache, every piece
/// cached, and auto (the default; last, as the ratio to the crate uses it).
const MODES: [EncodeOptions; 4] = [
    EncodeOptions {
        cache: PieceCacheMode::Off,
        short_keys: false,
    },
    EncodeOptions {
        cache: PieceCacheMode::Off,
        short_keys: true,
    },
    EncodeOptions {
        cache: PieceCacheMode::AllPieces,
        short_keys: true,
    },
    EncodeOptions {
        cache: PieceCacheMode::Auto,
        short_keys: true,
    },
];

/// Seconds of one thread encoding every document with each of [`MODES`], in order, and
/// with the crate (last), in turns.
fn time_modes(
    lmrs: &Encoder,
    bpe: Option<&tiktoken::CoreBpe>,
    input: &Input,
    repeat: usize,
    one_thread: &rayon::ThreadPool,
) -> Vec<f64> {
    one_thread.install(|| {
        let mut runs: Vec<Box<dyn FnMut() -> usize + '_>> = MODES
            .iter()
            .map(|&mode| {
                Box::new(move || {
                    input
                        .docs
                        .iter()
                        .map(|d| lmrs.encode_ordinary_with(d, mode).len())
                        .sum()
                }) as Box<dyn FnMut() -> usize>
            })
            .collect();
        if let Some(bpe) = bpe {
            runs.push(Box::new(move || {
                input.docs.iter().map(|d| bpe.encode(d).len()).sum()
            }));
        }
        let mut refs: Vec<&mut dyn FnMut() -> usize> =
            runs.iter_mut().map(|r| r.as_mut() as _).collect();
        best_interleaved(repeat, &mut refs)
    })
}

/// Auto's piece counts over the input: "known% / hit%", and whether it dropped the cache
/// on any document.
fn auto_stats(lmrs: &Encoder, input: &Input) -> (String, bool) {
    let (mut pieces, mut known, mut hits, mut dropped) = (0u64, 0u64, 0u64, false);
    for doc in &input.docs {
        let s = lmrs.piece_stats(doc, PieceCacheMode::Auto);
        pieces += s.pieces;
        known += s.known;
        hits += s.cache_hits;
        dropped |= s.cache_dropped_at.is_some();
    }
    let pct = |n: u64| 100.0 * n as f64 / pieces.max(1) as f64;
    (format!("{:.0}/{:.0}", pct(known), pct(hits)), dropped)
}

fn main() -> Result<(), BoxError> {
    let options = parse_args()?;
    if let Some(dir) = &options.write_ranks {
        return write_ranks(dir);
    }
    header();
    let inputs = inputs(&options)?;
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    println!();
    println!(
        "| vocab | input | MB | lmrs 1T byte keys, no cache | no cache | cache all | auto \
         | crate 1T | auto/crate | known/hit % | drop | lmrs batched | crate batched |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for reference in &REFERENCES {
        let Some(bpe) = tiktoken::get_encoding(reference.crate_name) else {
            return Err(format!("the crate has no {}", reference.crate_name).into());
        };
        let specials = reference
            .specials
            .iter()
            .map(|&(n, id)| (n.to_string(), id))
            .collect();
        let vocab = Vocab::from_ranks(reference.pattern, &crate_ranks(bpe), specials, EOT)?;
        let lmrs = Encoder::new(vocab)?;
        for input in &inputs {
            check_same_ids(input, reference.name, &lmrs, bpe)?;
            let bytes = input.bytes();
            let modes = time_modes(&lmrs, Some(bpe), input, options.repeat, &one_thread);
            let (ours, theirs) = (modes[3], modes[4]);
            let (stats, dropped) = auto_stats(&lmrs, input);
            let (ours_batched, theirs_batched) = if input.single {
                ("-".to_string(), "-".to_string())
            } else {
                let batched = best_interleaved(
                    options.repeat,
                    &mut [
                        &mut || lmrs.encode_batch(&input.docs, &AllowedSpecial::None).len(),
                        &mut || {
                            input
                                .docs
                                .par_iter()
                                .map(|d| bpe.encode(d).len())
                                .sum::<usize>()
                        },
                    ],
                );
                (mb_per_s(bytes, batched[0]), mb_per_s(bytes, batched[1]))
            };
            println!(
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.2}x | {stats} | {} | {} | {} |",
                reference.name,
                input.name,
                bytes as f64 / 1e6,
                mb_per_s(bytes, modes[0]),
                mb_per_s(bytes, modes[1]),
                mb_per_s(bytes, modes[2]),
                mb_per_s(bytes, modes[3]),
                mb_per_s(bytes, theirs),
                theirs / ours,
                if dropped { "yes" } else { "" },
                ours_batched,
                theirs_batched
            );
        }
    }
    lmrs_vocab(&options, &inputs, &one_thread)
}

/// The lmrs-trained vocabulary: lmrs alone (the crate cannot load other ranks).
fn lmrs_vocab(
    options: &Options,
    inputs: &[Input],
    one_thread: &rayon::ThreadPool,
) -> Result<(), BoxError> {
    let vocab = match &options.vocab {
        Some(path) => Vocab::load(path)?,
        None if options.train => {
            let pretokenizer = Pretokenizer::new(CL100K_PATTERN)?;
            let mut counts = WordCounts::new();
            for input in inputs.iter().take(2) {
                let texts: Vec<&str> = input.docs.iter().map(String::as_str).collect();
                counts.add_texts(&texts, &pretokenizer);
            }
            let t = Instant::now();
            let merges = train_bpe(&counts, &TrainOptions::new(32_768), &AtomicU64::new(0))?;
            println!(
                "\n(lmrs 32k trained on prose + code in {:.1} s)",
                t.elapsed().as_secs_f64()
            );
            Vocab::new(CL100K_PATTERN, merges, &[])?
        }
        None => return Ok(()),
    };
    let name = format!("lmrs {}", vocab.vocab_size());
    let lmrs = Encoder::new(vocab)?;
    for input in inputs {
        let bytes = input.bytes();
        let modes = time_modes(&lmrs, None, input, options.repeat, one_thread);
        let (stats, dropped) = auto_stats(&lmrs, input);
        let batched = if input.single {
            "-".to_string()
        } else {
            let s = best_interleaved(
                options.repeat,
                &mut [&mut || lmrs.encode_batch(&input.docs, &AllowedSpecial::None).len()],
            );
            mb_per_s(bytes, s[0])
        };
        println!(
            "| {name} | {} | {:.2} | {} | {} | {} | {} | - | - | {stats} | {} | {batched} | - |",
            input.name,
            bytes as f64 / 1e6,
            mb_per_s(bytes, modes[0]),
            mb_per_s(bytes, modes[1]),
            mb_per_s(bytes, modes[2]),
            mb_per_s(bytes, modes[3]),
            if dropped { "yes" } else { "" },
        );
    }
    Ok(())
}
