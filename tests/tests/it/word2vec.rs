//! The word2vec trainer end to end: planted structure is learned through the client, a killed
//! training run resumes from its recorded position, and gensim (from PyPI) loads both export
//! formats and scores the same analogies as `paramdb eval analogy`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::StoreOptions;
use paramdb_trainer::eval::Index;
use paramdb_trainer::export;
use paramdb_trainer::synth::{self, TOPICS};
use paramdb_trainer::word2vec::{self, Config};

use crate::cluster::paramdb_bin;

fn topic_purity(e: &export::Embeddings, per_topic: usize) -> f64 {
    synth::topic_purity(&Index::new(e, usize::MAX), per_topic, 5)
}

#[test]
fn word2vec_learns_planted_topics_through_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 20_000, 10, 3).unwrap();
    let client = BlockingClient::open_embedded(
        &tmp.path().join("shards"),
        2,
        StoreOptions::default(),
        ClientOptions::default(),
    )
    .unwrap();
    // The third model holds only 20 words in memory while counting and while training, so
    // counts are spilled to the server many times and most words of every batch are looked
    // up there: it must see the same vocabulary and learn the same structure.
    let mut sizes = Vec::new();
    for (model, cbow, small) in [
        ("sg", false, false),
        ("cbow", true, false),
        ("sg-small", false, true),
    ] {
        let cfg = Config {
            model: model.into(),
            dim: 32,
            epochs: 3,
            cbow,
            alpha: if cbow { 0.05 } else { 0.025 },
            batch_words: 10_000,
            count_spill_words: if small { 20 } else { 1 << 20 },
            cached_words: if small { 20 } else { 1 << 20 },
            ..Config::default()
        };
        let report = word2vec::train(&client, &corpus, &cfg, &|_| {}).unwrap();
        // Every topic's frequent words and the 6 fillers (the rarest topic words may fall
        // under min-count 5).
        assert!(
            report.vocab_size > TOPICS.len() * 25,
            "{}",
            report.vocab_size
        );
        let e = export::from_server(&client, &cfg.model).unwrap();
        let purity = topic_purity(&e, 30);
        assert!(purity > 0.9, "{model}: {purity}");
        assert_eq!(report.words_done, report.train_words * 3);
        sizes.push((report.vocab_size, report.train_words));
    }
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
    let untrained = Config {
        model: "untrained".into(),
        epochs: 1,
        ..Config::default()
    };
    // Train nothing: a corpus with no word frequent enough is refused with a clear error.
    let tiny = tmp.path().join("tiny.txt");
    std::fs::write(&tiny, "a b c\n").unwrap();
    let err = word2vec::train(&client, &tiny, &untrained, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("at least 5 times"), "{err}");
}

/// CBOW learns planted neighbours as well as skip-gram does from the same short run. Before
/// issue #17 CBOW gave each context word a `1/cw` share of the hidden layer's error (about a
/// sixth at window 5), where word2vec.c and gensim give it all of it, so with this little
/// training it fell well behind skip-gram (see `cbow_gives_every_context_row_the_whole_error`
/// for the rule itself).
#[test]
fn word2vec_cbow_learns_planted_neighbours_as_well_as_skip_gram() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 40, 3_000, 10, 17).unwrap();
    let client = BlockingClient::open_embedded(
        &tmp.path().join("shards"),
        1,
        StoreOptions::default(),
        ClientOptions::default(),
    )
    .unwrap();
    let purity = |model: &str, cbow: bool| {
        let cfg = Config {
            model: model.into(),
            dim: 32,
            epochs: 1,
            cbow,
            alpha: if cbow { 0.05 } else { 0.025 },
            sample: 0.0,
            threads: 1,
            batch_words: 2_000,
            ..Config::default()
        };
        word2vec::train(&client, &corpus, &cfg, &|_| {}).unwrap();
        topic_purity(&export::from_server(&client, model).unwrap(), 40)
    };
    let (sg, cbow) = (purity("sg", false), purity("cbow", true));
    println!("topic purity after one short epoch: skip-gram {sg:.3}, CBOW {cbow:.3}");
    assert!(sg > 0.6, "skip-gram {sg}");
    assert!(
        cbow > 0.6 && cbow >= sg - 0.05,
        "CBOW {cbow} against skip-gram {sg}"
    );
}

pub(crate) fn train_cmd(corpus: &Path, data: &Path) -> Command {
    let mut c = Command::new(paramdb_bin());
    c.args(["train", "word2vec", "--corpus"])
        .arg(corpus)
        .arg("--data-dir")
        .arg(data)
        .args(["--dim", "32", "--epochs", "6", "--batch-words", "5000"])
        .args(["--checkpoint-secs", "0.1", "--quiet"]);
    c
}

#[test]
fn word2vec_killed_trainer_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 150_000, 10, 5).unwrap();
    let data = tmp.path().join("data");
    let mut child = train_cmd(&corpus, &data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        still_running && !out.contains("trained"),
        "the kill must land while training (make the corpus bigger): {out}"
    );

    let again = train_cmd(&corpus, &data).output().unwrap();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let pct: f64 = text
        .split("checkpoint at ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume message in: {text}"));
    assert!(pct > 0.0 && pct < 100.0, "resumed at {pct}%: {text}");
    // The rest of the words, not all of them, were trained by the second run.
    let done = words_trained(&text);
    let total = 150_000 * 10 * 6;
    assert!(
        (done as f64) < total as f64 * (1.0 - pct / 100.0) * 1.02 + 10_000.0,
        "{done} words after resuming at {pct}%: {text}"
    );

    // A third run has nothing left to do.
    let third = train_cmd(&corpus, &data).output().unwrap();
    assert!(String::from_utf8_lossy(&third.stdout).contains("already trained"));
    let client =
        BlockingClient::open_embedded(&data, 1, StoreOptions::default(), ClientOptions::default())
            .unwrap();
    let e = export::from_server(&client, "w2v").unwrap();
    assert!(topic_purity(&e, 30) > 0.9);
}

/// `../shared/data` beside the repository (where CI has it), or `PARAMDB_DATA`.
pub(crate) fn shared_data() -> PathBuf {
    std::env::var("PARAMDB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

#[test]
fn word2vec_exports_load_in_gensim_with_the_same_analogy_score() {
    let data = shared_data();
    let tmp = tempfile::tempdir().unwrap();
    // The first 12,000 reviews (about 2.8M words) of the IMDb training split.
    let text = std::fs::read_to_string(data.join("train.txt")).expect("../shared/data/train.txt");
    let head: String = text.lines().take(12_000).flat_map(|l| [l, "\n"]).collect();
    let corpus = tmp.path().join("imdb-head.txt");
    std::fs::write(&corpus, head).unwrap();
    let store = tmp.path().join("data");
    let out = Command::new(paramdb_bin())
        .args(["train", "word2vec", "--corpus"])
        .arg(&corpus)
        .arg("--data-dir")
        .arg(&store)
        .args([
            "--dim", "50", "--epochs", "2", "--sample", "1e-4", "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let questions = data.join("questions-words.txt");
    let mut ours = Vec::new();
    for (binary, file) in [(false, "v.txt"), (true, "v.bin")] {
        let path = tmp.path().join(file);
        let mut export = Command::new(paramdb_bin());
        export
            .args(["export", "w2v.in", "--out"])
            .arg(&path)
            .arg("--data-dir")
            .arg(&store)
            .arg("--format")
            .arg(if binary {
                "word2vec-bin"
            } else {
                "word2vec-text"
            });
        assert!(export.status().unwrap().success());
        let mut eval = Command::new(paramdb_bin());
        eval.args(["eval", "analogy", "--questions"])
            .arg(&questions)
            .arg("--vectors")
            .arg(&path);
        if binary {
            eval.arg("--binary");
        }
        let o = eval.output().unwrap();
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        let line = s
            .lines()
            .find(|l| l.starts_with("analogy accuracy"))
            .unwrap_or_else(|| panic!("{s}"))
            .to_string();
        // "(correct/evaluated questions"
        let counts = line
            .split('(')
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        ours.push(counts);
    }
    assert_eq!(ours[0], ours[1], "text and binary exports score alike");
    let py = Command::new(crate::python::python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_gensim_export.py"))
        .arg(tmp.path().join("v.txt"))
        .arg(tmp.path().join("v.bin"))
        .arg(&questions)
        .arg(&corpus)
        .arg("5")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "gensim:\n{stdout}\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let gensim = stdout
        .lines()
        .find_map(|l| l.strip_prefix("gensim analogy: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim();
    let (ours_c, ours_n) = ours[0].split_once('/').unwrap();
    let (g_c, g_n) = gensim.split_once('/').unwrap();
    assert_eq!(
        ours_n, g_n,
        "questions evaluated: ours {} gensim {gensim}",
        ours[0]
    );
    let (a, b): (i64, i64) = (ours_c.parse().unwrap(), g_c.parse().unwrap());
    // Ties in the nearest-word search may break differently; allow a handful.
    assert!(
        (a - b).abs() <= 3,
        "correct: ours {} gensim {gensim}",
        ours[0]
    );
    assert!(a > 0, "some analogies must be right: {}", ours[0]);
}

/// The `… N in-vocabulary words in` count of a `trained` line.
fn words_trained(out: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with("trained"))
        .and_then(|l| l.split("training alone: ").nth(1))
        .and_then(|s| s.split(" in-vocabulary words").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no trained line in: {out}"))
}

#[test]
fn word2vec_two_trainer_processes_share_one_cluster() {
    let cluster = crate::cluster::Cluster::start(2, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 40_000, 10, 9).unwrap();
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(paramdb_bin())
                .args(["train", "word2vec", "--corpus"])
                .arg(&corpus)
                .arg("--cluster")
                .arg(&file)
                .args(["--process", &i.to_string(), "--processes", "2"])
                .args([
                    "--dim",
                    "32",
                    "--epochs",
                    "3",
                    "--batch-words",
                    "10000",
                    "--quiet",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "{s}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            s
        })
        .collect();
    let (a, b) = (words_trained(&outs[0]), words_trained(&outs[1]));
    // Each process trained its half of the corpus, three times.
    let share = a as f64 / (a + b) as f64;
    assert!((0.4..0.6).contains(&share), "{a} and {b} words");
    let client = cluster.client();
    let e = export::from_server(&client, "w2v").unwrap();
    assert!(topic_purity(&e, 30) > 0.9);
    // Same flags again: both halves are done.
    let again = Command::new(paramdb_bin())
        .args(["train", "word2vec", "--corpus"])
        .arg(&corpus)
        .arg("--cluster")
        .arg(&file)
        .args([
            "--process",
            "1",
            "--processes",
            "2",
            "--dim",
            "32",
            "--epochs",
            "3",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("already trained"));
    cluster.stop();
}

/// Every export format of a trained model's table, read back by numpy, safetensors, gensim and
/// a tsv parser, equals the rows pulled through the client bit for bit, labelled by word: most
/// frequent word first by default (ties by word), in key order with `--order key`, and the same
/// bytes when the sort spills runs to disk.
#[test]
fn export_formats_read_back_by_independent_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 5_000, 10, 11).unwrap();
    let data = tmp.path().join("data");
    let out = train_cmd(&corpus, &data).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = |dir: &Path, format: &str, file: &str, extra: &[&str]| {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new(paramdb_bin())
            .args(["export", "w2v.in", "--format", format, "--out"])
            .arg(dir.join(file))
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let formats = [
        ("npy", "v.npy"),
        ("safetensors", "v.safetensors"),
        ("word2vec-text", "v.txt"),
        ("word2vec-bin", "v.bin"),
        ("tsv", "v.tsv"),
    ];
    let (by_count, by_key) = (tmp.path().join("count"), tmp.path().join("key"));
    for (format, file) in formats {
        let said = export(&by_count, format, file, &[]);
        assert!(said.contains("in count order"), "{said}");
        export(&by_key, format, file, &["--order", "key"]);
    }
    // Sorting in runs of about 4 KiB spilled to disk gives the same bytes.
    let spilled = tmp.path().join("spilled");
    export(&spilled, "word2vec-bin", "v.bin", &["--sort-memory", "4K"]);
    assert_eq!(
        std::fs::read(spilled.join("v.bin")).unwrap(),
        std::fs::read(by_count.join("v.bin")).unwrap()
    );
    let client =
        BlockingClient::open_embedded(&data, 1, StoreOptions::default(), ClientOptions::default())
            .unwrap();
    // The references: the table's rows through the client, in key order, and in the order of
    // the vocabulary (`Vocab` sorts by count, then word).
    let vocab = paramdb_trainer::vocab::load(&client, "w2v").unwrap();
    let rank: std::collections::HashMap<u64, usize> = vocab
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| (paramdb_trainer::keys::word_key(w), i))
        .collect();
    let mut rows: Vec<(u64, Vec<f32>)> = Vec::new();
    for block in client.pull_range("w2v.in", paramdb_client::KeyRange::new(0, u64::MAX)) {
        let block = block.unwrap();
        let dim = block.dim as usize;
        for (k, v) in block.keys.iter().zip(block.values.chunks(dim)) {
            rows.push((*k, v.to_vec()));
        }
    }
    drop(client);
    let write_ref = |dir: &Path, rows: &[(u64, Vec<f32>)]| {
        let (mut keys, mut values, mut words) = (Vec::new(), Vec::new(), String::new());
        for (k, v) in rows {
            keys.extend_from_slice(&k.to_le_bytes());
            words.push_str(&vocab.words[rank[k]]);
            words.push('\n');
            for x in v {
                values.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(dir.join("ref.keys"), keys).unwrap();
        std::fs::write(dir.join("ref.values"), values).unwrap();
        std::fs::write(dir.join("ref.words"), words).unwrap();
    };
    write_ref(&by_key, &rows);
    rows.sort_by_key(|(k, _)| rank[k]);
    write_ref(&by_count, &rows);
    for dir in [&by_count, &by_key] {
        let py = Command::new(crate::python::python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_exports.py"))
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            py.status.success() && String::from_utf8_lossy(&py.stdout).contains("exports: ok"),
            "{}: {}\n{}",
            dir.display(),
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr)
        );
    }
    // A table of no model has no counts to sort by.
    let o = Command::new(paramdb_bin())
        .args([
            "export",
            "w2v.state",
            "--format",
            "npy",
            "--order",
            "count",
            "--out",
        ])
        .arg(tmp.path().join("state.npy"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("needs a vocabulary"),
        "{err}"
    );
}

/// The word vectors of a model as (word, bits), sorted: for exact comparison.
pub(crate) fn vector_bits(client: &BlockingClient, model: &str) -> Vec<(String, Vec<u32>)> {
    let e = export::from_server(client, model).unwrap();
    let mut v: Vec<(String, Vec<u32>)> = e
        .words
        .iter()
        .zip(e.vectors.chunks(e.dim))
        .map(|(w, x)| (w.clone(), x.iter().map(|f| f.to_bits()).collect()))
        .collect();
    v.sort();
    v
}

/// A one-worker trainer against a 3-shard cluster; SIGKILLs a shard every `kill_every` while
/// it runs (cycling through the shards) and restarts it. Returns the model's vector bits and
/// the kills made.
fn train_through_kills(
    corpus: &Path,
    kill_every: Option<Duration>,
) -> (Vec<(String, Vec<u32>)>, usize) {
    let mut cluster = crate::cluster::Cluster::start(3, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    let mut trainer = Command::new(paramdb_bin())
        .args(["train", "word2vec", "--corpus"])
        .arg(corpus)
        .arg("--cluster")
        .arg(&file)
        .args(["--threads", "1", "--dim", "16", "--epochs", "3"])
        .args(["--batch-words", "4000", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kills = 0;
    if let Some(every) = kill_every {
        loop {
            std::thread::sleep(every);
            if trainer.try_wait().unwrap().is_some() {
                break;
            }
            let i = kills % 3;
            cluster.kill(i);
            cluster.restart(i);
            kills += 1;
        }
    }
    let out = trainer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "trainer failed after {kills} shard kills: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (vector_bits(&cluster.client(), "w2v"), kills)
}

#[test]
fn word2vec_survives_shard_crashes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 60_000, 10, 5).unwrap();
    let (calm, _) = train_through_kills(&corpus, None);
    let (crashed, kills) = train_through_kills(&corpus, Some(Duration::from_millis(300)));
    assert!(
        kills >= 2,
        "training ended before the shards could be killed ({kills} kills)"
    );
    assert_eq!(calm.len(), crashed.len());
    let differing = calm.iter().zip(&crashed).filter(|(a, b)| a != b).count();
    println!(
        "word2vec through {kills} shard SIGKILLs: {} word vectors, {differing} differ from an uninterrupted run",
        calm.len()
    );
    assert_eq!(differing, 0);
}
