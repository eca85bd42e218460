//! `paramdb word2vec` with word2vec.c's and fastText's command lines: word2vec.c's example runs
//! unchanged and writes its vectors file most frequent word first, `-save-vocab` and
//! `-read-vocab` behave like word2vec.c's, fastText's form writes `PREFIX.vec`, the model stays
//! in the parameter server, and unsupported flags get a one-line error.

use std::path::Path;
use std::process::{Command, Output};

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::StoreOptions;
use paramdb_trainer::eval::Index;
use paramdb_trainer::export::read_word2vec;
use paramdb_trainer::synth;
use paramdb_trainer::vocab;

use crate::cluster::paramdb_bin;

fn word2vec(args: &str, data: &Path, extra: &[&Path]) -> Output {
    let mut c = Command::new(paramdb_bin());
    c.arg("word2vec");
    // Paths come after the flags that name them: `{}` in `args` is replaced by the next one.
    let mut paths = extra.iter();
    for a in args.split_whitespace() {
        if a == "{}" {
            c.arg(paths.next().expect("a path for each {}"));
        } else {
            c.arg(a);
        }
    }
    c.arg("--data-dir").arg(data);
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn word2vec_c_and_fasttext_command_lines_run_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let sentences = 12_000;
    synth::topic_corpus(&corpus, 30, sentences, 10, 21).unwrap();
    let data = tmp.path().join("data");
    let (vec_bin, vocab_txt) = (tmp.path().join("vec.bin"), tmp.path().join("vocab.txt"));

    // word2vec.c's README example, flag for flag, plus -save-vocab.
    let out = ok(&word2vec(
        "-train {} -output {} -cbow 0 -size 200 -window 5 -negative 5 -hs 0 -sample 1e-4 \
         -threads 2 -binary 1 -iter 3 -save-vocab {}",
        &data,
        &[&corpus, &vec_bin, &vocab_txt],
    ));
    assert!(out.contains("wrote") && out.contains("dim 200"), "{out}");

    // -save-vocab: `</s>` with the line count first, then `word count`, most frequent first.
    let saved = std::fs::read_to_string(&vocab_txt).unwrap();
    let mut lines = saved.lines();
    assert_eq!(lines.next(), Some(format!("</s> {sentences}").as_str()));
    let listed: Vec<(String, u64)> = lines
        .map(|l| {
            let (w, c) = l.split_once(' ').unwrap();
            (w.to_string(), c.parse().unwrap())
        })
        .collect();
    assert!(listed.len() > 200, "{}", listed.len());
    assert!(listed
        .windows(2)
        .all(|p| p[0].1 > p[1].1 || (p[0].1 == p[1].1 && p[0].0 < p[1].0)));

    // The vectors file: binary, dim 200, in the saved vocabulary's order, and trained.
    let e = read_word2vec(&vec_bin, true).unwrap();
    assert_eq!(e.dim, 200);
    let words: Vec<&str> = listed.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(e.words, words);
    let purity = synth::topic_purity(&Index::new(&e, usize::MAX), 30, 5);
    assert!(purity > 0.8, "purity {purity}");

    // The model stays in the parameter server; -read-vocab takes its counts from the file.
    let text = tmp.path().join("v2.txt");
    ok(&word2vec(
        "-train {} -read-vocab {} -output {} -size 16 -iter 1 -threads 1 --model m2",
        &data,
        &[&corpus, &vocab_txt, &text],
    ));
    let client =
        BlockingClient::open_embedded(&data, 1, StoreOptions::default(), ClientOptions::default())
            .unwrap();
    let (a, b) = (
        vocab::load(&client, "w2v").unwrap(),
        vocab::load(&client, "m2").unwrap(),
    );
    assert_eq!((&a.words, &a.counts), (&b.words, &b.counts));
    drop(client);
    let e2 = read_word2vec(&text, false).unwrap();
    assert_eq!((e2.dim, e2.words.len()), (16, words.len()));

    // The same command again resumes the stored model: it is already trained.
    let again = ok(&word2vec(
        "-train {} -read-vocab {} -output {} -size 16 -iter 1 -threads 1 --model m2",
        &data,
        &[&corpus, &vocab_txt, &text],
    ));
    assert!(again.contains("already trained"), "{again}");

    // fastText's form: -output is a prefix, the vectors go to PREFIX.vec.
    let prefix = tmp.path().join("ft");
    ok(&word2vec(
        "skipgram -input {} -output {} -dim 16 -epoch 1 -minCount 5 -neg 5 -ws 5 -lr 0.05 \
         -thread 2 -loss ns --model ft",
        &data,
        &[&corpus, &prefix],
    ));
    let ft = read_word2vec(&tmp.path().join("ft.vec"), false).unwrap();
    assert_eq!((ft.dim, ft.words.len()), (16, words.len()));

    // What paramdb does not do is refused in one line that says so.
    for (args, says) in [
        ("-train {} -hs 1", "hierarchical softmax"),
        ("-train {} -negative 0", "negative sampling"),
        ("-train {} -classes 100", "not supported"),
        ("cbow -input {} -output x -maxn 6", "character n-grams"),
        ("-train {} -size big", "not a whole number"),
        ("-train {} -frobnicate 1", "unknown option"),
    ] {
        let o = word2vec(args, &data, &[&corpus]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args}");
        assert_eq!(err.trim().lines().count(), 1, "{args}: {err}");
        assert!(err.contains(says), "{args}: {err}");
    }
}
