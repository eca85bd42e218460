//! `paramdb word2vec -train FILE -output FILE …`: word2vec.c's command line (single-dash
//! flags, its defaults, `-save-vocab`, `-read-vocab`, the vectors file written at the end), with
//! fastText's names accepted where they mean the same thing, and fastText's own form
//! (`paramdb word2vec skipgram|cbow -input FILE -output PREFIX`, which writes `PREFIX.vec`).
//! The model also stays in the parameter server, so `eval`, `neighbours`, `export` and a resumed
//! run work on it as on any other.
//!
//! clap cannot parse single-dash long flags, so the flags are read here from a table.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use paramdb_client::{BlockingClient, KeyRange};
use paramdb_trainer::word2vec::{self, Config};

use crate::export::{self, Format, Order};
use crate::target::Target;

/// What a flag sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    Train,
    Output,
    Size,
    Window,
    Sample,
    Hs,
    Negative,
    Threads,
    Iter,
    MinCount,
    Alpha,
    Classes,
    Debug,
    Binary,
    SaveVocab,
    ReadVocab,
    Cbow,
    Loss,
    Minn,
    Maxn,
    WordNgrams,
    // paramdb's own.
    Model,
    DataDir,
    Shards,
    Cluster,
}

/// Every flag: word2vec.c's names first, then fastText's aliases, then paramdb's own
/// (double-dash, as elsewhere in paramdb).
const FLAGS: &[(&str, Setting)] = &[
    ("-train", Setting::Train),
    ("-output", Setting::Output),
    ("-size", Setting::Size),
    ("-window", Setting::Window),
    ("-sample", Setting::Sample),
    ("-hs", Setting::Hs),
    ("-negative", Setting::Negative),
    ("-threads", Setting::Threads),
    ("-iter", Setting::Iter),
    ("-min-count", Setting::MinCount),
    ("-alpha", Setting::Alpha),
    ("-classes", Setting::Classes),
    ("-debug", Setting::Debug),
    ("-binary", Setting::Binary),
    ("-save-vocab", Setting::SaveVocab),
    ("-read-vocab", Setting::ReadVocab),
    ("-cbow", Setting::Cbow),
    // fastText.
    ("-input", Setting::Train),
    ("-dim", Setting::Size),
    ("-ws", Setting::Window),
    ("-t", Setting::Sample),
    ("-neg", Setting::Negative),
    ("-thread", Setting::Threads),
    ("-epoch", Setting::Iter),
    ("-minCount", Setting::MinCount),
    ("-lr", Setting::Alpha),
    ("-verbose", Setting::Debug),
    ("-loss", Setting::Loss),
    ("-minn", Setting::Minn),
    ("-maxn", Setting::Maxn),
    ("-wordNgrams", Setting::WordNgrams),
    // paramdb.
    ("--model", Setting::Model),
    ("--data-dir", Setting::DataDir),
    ("--shards", Setting::Shards),
    ("--cluster", Setting::Cluster),
];

const USAGE: &str = "\
usage: paramdb word2vec -train FILE [-output FILE] [options]       (word2vec.c's flags)
       paramdb word2vec skipgram|cbow -input FILE -output PREFIX [options]   (fastText's form)

word2vec.c options (defaults as word2vec.c's, except -threads: this machine's cores):
  -train FILE        training text (fastText: -input)
  -output FILE       write the word vectors here at the end, most frequent word first
                     (fastText form: PREFIX.vec)
  -size N            vector size, 100 (fastText: -dim)
  -window N          window, 5 (fastText: -ws)
  -sample X          subsampling threshold, 1e-3; 0 turns it off (fastText: -t, 1e-4)
  -hs 0              hierarchical softmax is not supported; only 0 is accepted
  -negative N        negative samples, 5; at least 1 (fastText: -neg)
  -threads N         worker threads (fastText: -thread)
  -iter N            epochs, 5 (fastText: -epoch)
  -min-count N       drop words seen fewer times, 5 (fastText: -minCount)
  -alpha X           starting learning rate, 0.025 for skip-gram and 0.05 for CBOW
                     (fastText: -lr, 0.05)
  -classes 0         K-means word classes are not supported; only 0 is accepted
  -debug N           0 prints only the summary; 2 (default) shows progress (fastText: -verbose)
  -binary 0|1        vectors file in binary (1) or text (0, default)
  -save-vocab FILE   write the vocabulary (`word count`, most frequent first, </s> first)
  -read-vocab FILE   take the counts from FILE instead of counting the corpus
  -cbow 0|1          CBOW (1, word2vec.c's default) or skip-gram (0)
fastText options accepted: -loss ns, -minn 0, -maxn 0, -wordNgrams 1.

paramdb options: --model NAME (w2v), --data-dir DIR (paramdb-data), --shards N (1), --cluster FILE.
The model stays in the parameter server; running the same command again resumes it.";

/// The parsed command line.
#[derive(Debug, Clone)]
struct Flags {
    train: Option<PathBuf>,
    output: Option<PathBuf>,
    /// fastText's form: `-output` is a prefix, the vectors go to `PREFIX.vec` (text).
    fasttext: bool,
    size: u32,
    window: usize,
    sample: f64,
    negative: usize,
    threads: usize,
    iter: u32,
    min_count: u64,
    alpha: Option<f32>,
    debug: u32,
    binary: bool,
    save_vocab: Option<PathBuf>,
    read_vocab: Option<PathBuf>,
    cbow: bool,
    target: Target,
    model: String,
}

impl Flags {
    fn defaults() -> Flags {
        Flags {
            train: None,
            output: None,
            fasttext: false,
            size: 100,
            window: 5,
            sample: 1e-3,
            negative: 5,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            iter: 5,
            min_count: 5,
            alpha: None,
            debug: 2,
            binary: false,
            save_vocab: None,
            read_vocab: None,
            cbow: true,
            target: Target {
                data_dir: PathBuf::from("paramdb-data"),
                shards: 1,
                cluster: None,
                gone_retention_secs: paramdb_engine::DEFAULT_GONE_RETENTION_SECS,
            },
            model: "w2v".into(),
        }
    }

    fn config(&self) -> Config {
        Config {
            model: self.model.clone(),
            dim: self.size,
            window: self.window,
            negative: self.negative,
            min_count: self.min_count,
            sample: self.sample,
            epochs: self.iter,
            alpha: self.alpha.unwrap_or(match (self.fasttext, self.cbow) {
                (true, _) => 0.05,
                (false, true) => 0.05,
                (false, false) => 0.025,
            }),
            cbow: self.cbow,
            threads: self.threads,
            batch_words: word2vec::default_batch_words(self.cbow),
            read_vocab: self.read_vocab.clone(),
            ..Config::default()
        }
    }
}

/// A user's string in an error message, cut short.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> anyhow::Result<T> {
    v.parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {} is not {what}", quote(v)))
}

fn switch(flag: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => bail!("{flag}: {} must be 0 or 1", quote(v)),
    }
}

/// Parses `args` (after `paramdb word2vec`). `Ok(None)` means help was asked for.
fn parse(args: &[String]) -> anyhow::Result<Option<Flags>> {
    let mut f = Flags::defaults();
    let mut rest = args;
    if let Some(cmd) = rest.first().filter(|a| !a.starts_with('-')) {
        match cmd.as_str() {
            "skipgram" | "cbow" => {
                f.fasttext = true;
                f.cbow = cmd == "cbow";
                f.sample = 1e-4;
                rest = &rest[1..];
            }
            other => bail!(
                "unknown command {} (expected skipgram or cbow, as fastText's, or word2vec.c's flags; see paramdb word2vec -help)",
                quote(other)
            ),
        }
    }
    let mut quiet = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "-help" | "--help" => return Ok(None),
            "--quiet" | "-quiet" => {
                quiet = true;
                continue;
            }
            _ => {}
        }
        let Some(&(_, setting)) = FLAGS.iter().find(|(name, _)| name == flag) else {
            bail!(
                "unknown option {} (paramdb word2vec takes word2vec.c's options and fastText's names for them; see paramdb word2vec -help)",
                quote(flag)
            );
        };
        let Some(v) = it.next() else {
            bail!("{flag} needs a value");
        };
        match setting {
            Setting::Train => f.train = Some(PathBuf::from(v)),
            Setting::Output => f.output = Some(PathBuf::from(v)),
            Setting::Size => f.size = number(flag, v, "a whole number")?,
            Setting::Window => f.window = number(flag, v, "a whole number")?,
            Setting::Sample => f.sample = number(flag, v, "a number")?,
            Setting::Hs => {
                if switch(flag, v)? {
                    bail!("-hs 1 (hierarchical softmax) is not supported: paramdb trains with negative sampling (-hs 0 -negative N)");
                }
            }
            Setting::Negative => {
                f.negative = number(flag, v, "a whole number")?;
                if f.negative == 0 {
                    bail!("{flag} 0 would train with hierarchical softmax only, which paramdb does not support: it trains with negative sampling (-negative 1 or more)");
                }
            }
            Setting::Threads => f.threads = number(flag, v, "a whole number")?,
            Setting::Iter => f.iter = number(flag, v, "a whole number")?,
            Setting::MinCount => f.min_count = number(flag, v, "a whole number")?,
            Setting::Alpha => f.alpha = Some(number(flag, v, "a number")?),
            Setting::Classes => {
                if number::<u64>(flag, v, "a whole number")? != 0 {
                    bail!("-classes (K-means word classes) is not supported: only -classes 0 is");
                }
            }
            Setting::Debug => f.debug = number(flag, v, "a whole number")?,
            Setting::Binary => f.binary = switch(flag, v)?,
            Setting::SaveVocab => f.save_vocab = Some(PathBuf::from(v)),
            Setting::ReadVocab => f.read_vocab = Some(PathBuf::from(v)),
            Setting::Cbow => f.cbow = switch(flag, v)?,
            Setting::Loss => {
                if v != "ns" {
                    bail!(
                        "-loss {}: only negative sampling (-loss ns) is supported",
                        quote(v)
                    );
                }
            }
            Setting::Minn | Setting::Maxn => {
                if number::<u64>(flag, v, "a whole number")? != 0 {
                    bail!("{flag}: character n-grams (fastText's subwords) are not supported: use -minn 0 -maxn 0");
                }
            }
            Setting::WordNgrams => {
                if number::<u64>(flag, v, "a whole number")? != 1 {
                    bail!("-wordNgrams: only single words (-wordNgrams 1) are supported");
                }
            }
            Setting::Model => f.model = v.clone(),
            Setting::DataDir => f.target.data_dir = PathBuf::from(v),
            Setting::Shards => f.target.shards = number(flag, v, "a whole number")?,
            Setting::Cluster => f.target.cluster = Some(PathBuf::from(v)),
        }
    }
    if quiet {
        f.debug = 0;
    }
    if f.train.is_none() {
        bail!("-train FILE is required (fastText: -input FILE); see paramdb word2vec -help");
    }
    if f.fasttext && f.output.is_none() {
        bail!("-output PREFIX is required in fastText's form");
    }
    Ok(Some(f))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(f) = parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let corpus = f.train.clone().expect("checked by parse");
    let client = f.target.connect()?;
    let cfg = f.config();
    crate::train::train_word2vec(&client, &corpus, &cfg, f.debug == 0)?;
    if let Some(path) = &f.save_vocab {
        let words = save_vocab(&client, &cfg.model, &corpus, path)?;
        println!("saved the vocabulary ({words} words) to {}", path.display());
    }
    if let Some(out) = &f.output {
        let (path, format) = if f.fasttext {
            let mut p = out.clone().into_os_string();
            p.push(".vec");
            (PathBuf::from(p), Format::Word2vecText)
        } else if f.binary {
            (out.clone(), Format::Word2vecBin)
        } else {
            (out.clone(), Format::Word2vecText)
        };
        let w = export::export(
            &client,
            &export::Request {
                table: &word2vec::in_table(&cfg.model),
                format,
                out: &path,
                range: KeyRange::all(),
                vocab: Some(&cfg.model),
                order: Some(Order::Count),
                sort_memory: 256 << 20,
                quiet: f.debug == 0,
                since: None,
            },
        )?;
        println!(
            "wrote {} word vectors of dim {} to {}",
            w.rows,
            w.dim,
            path.display()
        );
    }
    Ok(())
}

/// Writes the model's vocabulary as word2vec.c's `-save-vocab` does: `word count` per line,
/// most frequent first (ties by word), after `</s>` with the corpus's line count, which is
/// what word2vec.c counts for it. Returns the number of words written.
fn save_vocab(
    client: &BlockingClient,
    model: &str,
    corpus: &Path,
    path: &Path,
) -> anyhow::Result<u64> {
    let lines = count_lines(corpus)?;
    let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(w, "</s> {lines}").map_err(io)?;
    let mut n = 0;
    export::for_each_word_by_count(client, model, path, |word, count| {
        n += 1;
        writeln!(w, "{word} {count}").map_err(io)
    })?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(n)
}

fn count_lines(corpus: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(corpus).with_context(|| format!("reading {}", corpus.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", corpus.display()))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn word2vec_c_example_parses_with_its_meaning() {
        let f = parse(&args(
            "-train t.txt -output vec.bin -cbow 0 -size 200 -window 5 -negative 5 -hs 0 \
             -sample 1e-4 -threads 2 -binary 1 -iter 3",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(f.train.as_deref(), Some(Path::new("t.txt")));
        assert_eq!(f.output.as_deref(), Some(Path::new("vec.bin")));
        assert!(!f.cbow && f.binary && !f.fasttext);
        assert_eq!(
            (f.size, f.window, f.negative, f.threads, f.iter),
            (200, 5, 5, 2, 3)
        );
        assert_eq!(f.sample, 1e-4);
        assert_eq!(f.config().alpha, 0.025);
        // word2vec.c's defaults: CBOW with alpha 0.05.
        let d = parse(&args("-train t.txt")).unwrap().unwrap();
        assert!(d.cbow);
        assert_eq!(d.config().alpha, 0.05);
        assert_eq!(d.sample, 1e-3);
    }

    #[test]
    fn fasttext_form_and_names() {
        let f = parse(&args(
            "skipgram -input t.txt -output model -dim 50 -epoch 2 -minCount 3 -neg 7 -ws 4 -lr 0.1 -thread 1 -loss ns -minn 0 -maxn 0",
        ))
        .unwrap()
        .unwrap();
        assert!(f.fasttext && !f.cbow);
        assert_eq!(
            (f.size, f.iter, f.min_count, f.negative, f.window),
            (50, 2, 3, 7, 4)
        );
        assert_eq!((f.alpha, f.threads, f.sample), (Some(0.1), 1, 1e-4));
    }

    #[test]
    fn unsupported_and_bad_flags_say_so() {
        let err = |s: &str| parse(&args(s)).unwrap_err().to_string();
        assert!(err("-train t -hs 1").contains("hierarchical softmax"));
        assert!(err("-train t -negative 0").contains("negative"));
        assert!(err("-train t -classes 10").contains("not supported"));
        assert!(err("-train t -loss hs").contains("negative sampling"));
        assert!(err("-train t -maxn 6").contains("character n-grams"));
        assert!(err("-train t -size ten").contains("not a whole number"));
        assert!(err("-train t -size").contains("needs a value"));
        assert!(err("-output v").contains("-train FILE is required"));
        let long = format!("-train t -{}", "x".repeat(10_000));
        let e = err(&long);
        assert!(e.contains("unknown option") && e.len() < 300, "{e}");
        assert!(parse(&args("-help")).unwrap().is_none());
    }
}
