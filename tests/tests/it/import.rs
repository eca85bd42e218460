//! Bulk import: every export format reads back (export → import → export gives the same
//! bytes), GloVe's header-less text loads as a model, bad files get one-line errors and change
//! nothing, and in the engine an import replaces stored and cached rows, survives a crash,
//! and a killed import leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::{ClientId, Store, TableSpec, UpdateRule};
use paramdb_trainer::synth;

use crate::cluster::paramdb_bin;
use crate::common::manual_opts;

fn paramdb(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(paramdb_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn ok(o: std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The file and the side files its format writes beside it.
fn files_of(path: &Path) -> Vec<PathBuf> {
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut v = vec![path.to_path_buf()];
    for side in [".keys.npy", ".metadata.tsv"] {
        let p = path.with_file_name(format!("{stem}{side}"));
        if p.exists() {
            v.push(p);
        }
    }
    v
}

fn same_bytes(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files_of(a), files_of(b));
    assert_eq!(fa.len(), fb.len(), "{what}: side files");
    for (x, y) in fa.iter().zip(&fb) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{what}: {} and {} differ",
            x.display(),
            y.display()
        );
    }
}

#[test]
fn export_import_export_is_byte_identical_for_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 5_000, 10, 11).unwrap();
    let data = tmp.path().join("data");
    ok(
        crate::word2vec::train_cmd(&corpus, &data).output().unwrap(),
        "train",
    );
    // Labelled formats, in the model's frequency order, into a model of a fresh data dir.
    for (format, file) in [
        ("word2vec-text", "v.txt"),
        ("word2vec-bin", "v.bin"),
        ("tsv", "v.tsv"),
    ] {
        let dir = tmp.path().join(format);
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (dir.join(file), dir.join(format!("again-{file}")));
        let fresh = dir.join("data");
        let f = first.to_str().unwrap();
        ok(
            paramdb(&["export", "w2v.in", "--format", format, "--out", f], &data),
            "export",
        );
        let said = ok(
            paramdb(&["import", "m.in", "--format", format, "--in", f], &fresh),
            "import",
        );
        assert!(said.contains("new words in m.vocab"), "{said}");
        let s = second.to_str().unwrap();
        let said = ok(
            paramdb(&["export", "m.in", "--format", format, "--out", s], &fresh),
            "export again",
        );
        assert!(said.contains("in count order"), "{said}");
        same_bytes(&first, &second, format);
    }
    // Keyed formats, in key order, into a plain table.
    for (format, file) in [("npy", "v.npy"), ("safetensors", "v.safetensors")] {
        let dir = tmp.path().join(format);
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (dir.join(file), dir.join(format!("again-{file}")));
        let fresh = dir.join("data");
        let f = first.to_str().unwrap();
        ok(
            paramdb(
                &[
                    "export", "w2v.in", "--format", format, "--order", "key", "--out", f,
                ],
                &data,
            ),
            "export",
        );
        ok(
            paramdb(&["import", "plain", "--format", format, "--in", f], &fresh),
            "import",
        );
        let s = second.to_str().unwrap();
        ok(
            paramdb(&["export", "plain", "--format", format, "--out", s], &fresh),
            "export again",
        );
        same_bytes(&first, &second, format);
    }
}

#[test]
fn glove_text_without_a_header_loads_as_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let glove = tmp.path().join("glove.txt");
    let lines = ["the 0.5 -1.25 3", "cat 0.25 0.5 -0.75", "dog 0.3 0.5 -0.7"];
    std::fs::write(&glove, lines.join("\n") + "\n").unwrap();
    let data = tmp.path().join("data");
    let g = glove.to_str().unwrap();
    ok(
        paramdb(
            &["import", "g.in", "--format", "word2vec-text", "--in", g],
            &data,
        ),
        "import",
    );
    let out = tmp.path().join("out.txt");
    ok(
        paramdb(
            &[
                "export",
                "g.in",
                "--format",
                "word2vec-text",
                "--out",
                out.to_str().unwrap(),
            ],
            &data,
        ),
        "export",
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut it = text.lines();
    let header: Vec<&str> = it.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["3", "3"]);
    assert_eq!(it.collect::<Vec<_>>(), lines, "the file's order and values");
    let said = ok(
        paramdb(&["neighbours", "--model", "g", "cat", "--k", "1"], &data),
        "neighbours",
    );
    assert!(said.contains("dog"), "{said}");
}

#[test]
fn bad_imports_get_one_line_errors_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let write = |name: &str, body: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write("good.txt", b"2 4\n5 1 2 3 4\n9 5 6 7 8\n");
    ok(
        paramdb(
            &["import", "t", "--format", "word2vec-text", "--in", &good],
            &data,
        ),
        "import",
    );
    let before = ok(paramdb(&["get", "t", "5", "9"], &data), "get");
    let mut bin = b"2 4\n5 ".to_vec();
    bin.extend(1.0f32.to_le_bytes());
    // An npy header promising 2 rows of 4, and one row and a half of data.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        npy.extend(v.to_le_bytes());
    }
    let cases: Vec<(String, &str, &str)> = vec![
        (
            write("dim3.txt", b"1 3\n5 1 2 3\n"),
            "word2vec-text",
            "has rows of dim 3; table \"t\" has dim 4",
        ),
        (
            write("short.txt", b"3 4\n5 1 2 3 4\n9 5 6 7 8\n"),
            "word2vec-text",
            "truncated",
        ),
        (write("cut.bin", &bin), "word2vec-bin", "truncated"),
        (
            write("cut.npy", &npy),
            "npy",
            "is truncated: it ends inside row 2 of the 2",
        ),
        (
            write("nan.txt", b"2 4\n5 1 2 3 4\n9 5 NaN 7 8\n"),
            "word2vec-text",
            "NaN and infinities are refused",
        ),
        (
            write("ragged.txt", b"2 4\n5 1 2 3 4\n9 5 6 7\n"),
            "word2vec-text",
            "has 3 values, not 4",
        ),
        (
            write("word.txt", b"1 4\ncat 1 2 3 4\n"),
            "word2vec-text",
            "is not a key",
        ),
        (
            write("junk.npy", b"not numpy at all"),
            "npy",
            "is not a .npy file",
        ),
    ];
    for (file, format, want) in &cases {
        let o = paramdb(&["import", "t", "--format", format, "--in", file], &data);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{file}: accepted");
        assert!(err.contains(want), "{file}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{file}: one line: {err}");
    }
    assert_eq!(ok(paramdb(&["get", "t", "5", "9"], &data), "get"), before);
}

#[test]
fn imports_replace_stored_and_cached_rows_and_survive_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let opts = || paramdb_engine::StoreOptions {
        cache_bytes: 1 << 20,
        ..manual_opts()
    };
    let store = Store::open(&dir, opts()).unwrap();
    store
        .create_table(TableSpec::new("t", 2).with_rule(UpdateRule::Adagrad {
            lr: 0.5,
            eps: 1e-8,
            initial_accumulator: 0.1,
        }))
        .unwrap();
    let keys: Vec<u64> = (0..100).collect();
    store
        .push("t", ClientId(1), 1, &keys, &vec![1.0; 200])
        .unwrap();
    store.checkpoint().unwrap();
    // Cached now, and one row changed in memory since.
    let _ = store.pull("t", &keys).unwrap();
    store.push("t", ClientId(1), 2, &[3], &[1.0, 1.0]).unwrap();
    let mut imp = store.begin_import("t", 1 << 20).unwrap();
    for k in 0..50u64 {
        imp.add(k, &[k as f32, -(k as f32)]).unwrap();
    }
    // Bad rows are refused and leave the import usable.
    assert!(imp.add(60, &[1.0]).is_err());
    assert!(imp.add(61, &[f32::NAN, 0.0]).is_err());
    let info = imp.finish().unwrap();
    assert_eq!(info.rows, 50);
    let check = |store: &Store| {
        let got = store.pull("t", &keys).unwrap();
        for k in 0..50usize {
            assert_eq!(&got[k * 2..k * 2 + 2], &[k as f32, -(k as f32)], "key {k}");
        }
        let untouched = store.pull("t", &[70]).unwrap();
        assert!(untouched[0] < 0.0, "row 70 keeps its pushed value");
    };
    check(&store);
    // A push after the import starts from the imported row and a fresh optimizer state:
    // AdaGrad's first step from accumulator 0.1 with gradient 1 moves it by 0.5/sqrt(1.1).
    store.push("t", ClientId(1), 3, &[10], &[1.0, 1.0]).unwrap();
    let after = store.pull("t", &[10]).unwrap();
    let step = 0.5 / (1.1f32 + 1e-8).sqrt();
    assert!((after[0] - (10.0 - step)).abs() < 1e-5, "{after:?}");
    store.crash();
    let store = Store::open(&dir, opts()).unwrap();
    let got = store.pull("t", &[10]).unwrap();
    assert_eq!(got, after, "the push after the import replays onto it");
    // An import dropped before finishing ingests nothing; a staging directory a killed
    // process left behind is removed by the next open.
    let mut imp = store.begin_import("t", 1 << 20).unwrap();
    for k in 0..50u64 {
        imp.add(k, &[7.0, 7.0]).unwrap();
    }
    drop(imp);
    store.close().unwrap();
    let stale = dir.join("import-left-by-a-crash");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("000000.sst"), b"half a table file").unwrap();
    let store = Store::open(&dir, opts()).unwrap();
    assert_ne!(store.pull("t", &[0]).unwrap(), vec![7.0, 7.0]);
    assert!(!stale.exists(), "staging directories are removed at open");
    store.close().unwrap();
    // Over gRPC and in process, the client routes an import's rows to their shards.
    let cluster = crate::cluster::Cluster::start(3, &[]);
    let emb_dir = tmp.path().join("emb");
    let embedded =
        BlockingClient::open_embedded(&emb_dir, 3, manual_opts(), ClientOptions::default())
            .unwrap();
    for c in [cluster.client(), embedded] {
        c.create_table(paramdb_client::TableSpec::new("i", 2))
            .unwrap();
        let keys: Vec<u64> = (0..90u64).map(|i| i * (u64::MAX / 90)).collect();
        let mut imp = c.import("i").unwrap();
        for &k in &keys {
            imp.add(k, &[(k >> 56) as f32, 1.0]).unwrap();
        }
        assert!(imp.add(1, &[f32::INFINITY, 0.0]).is_err());
        let r = imp.finish().unwrap();
        assert_eq!(r.rows, 90);
        assert!(r.files >= 3, "every shard ingested a file: {r:?}");
        let got = c.pull("i", &keys).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(&got[i * 2..i * 2 + 2], &[(k >> 56) as f32, 1.0]);
        }
    }
    cluster.stop();
}

/// `word → vector` of a word2vec text file.
fn read_vectors(path: &Path) -> Vec<(String, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut it = l.split(' ');
            let w = it.next().unwrap().to_string();
            (w, it.map(|x| x.parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn imported_vectors_warm_start_a_training_run() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    synth::topic_corpus(&corpus, 30, 5_000, 10, 11).unwrap();
    let trained = tmp.path().join("trained");
    ok(
        crate::word2vec::train_cmd(&corpus, &trained)
            .output()
            .unwrap(),
        "train",
    );
    let all = tmp.path().join("all.txt");
    ok(
        paramdb(
            &[
                "export",
                "w2v.in",
                "--format",
                "word2vec-text",
                "--out",
                all.to_str().unwrap(),
            ],
            &trained,
        ),
        "export",
    );
    // The first half of the words go in; the rest start from the trainer's initializer.
    let vectors = read_vectors(&all);
    let (given, missing) = vectors.split_at(vectors.len() / 2);
    let mut text = format!("{} 32\n", given.len());
    for (w, v) in given {
        let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        text += &format!("{w} {}\n", v.join(" "));
    }
    let half = tmp.path().join("half.txt");
    std::fs::write(&half, text).unwrap();
    let data = tmp.path().join("data");
    ok(
        paramdb(
            &[
                "import",
                "m.in",
                "--format",
                "word2vec-text",
                "--in",
                half.to_str().unwrap(),
            ],
            &data,
        ),
        "import",
    );
    let train = |dim: &str| {
        Command::new(paramdb_bin())
            .args(["train", "word2vec", "--model", "m", "--corpus"])
            .arg(&corpus)
            .arg("--data-dir")
            .arg(&data)
            .args(["--dim", dim, "--epochs", "1", "--batch-words", "5000"])
            .args(["--alpha", "0.000001", "--min-alpha", "0.0000001", "--quiet"])
            .output()
            .unwrap()
    };
    let o = train("16");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a run of another dim was accepted");
    assert!(err.contains("dim 32") && err.contains("--dim 16"), "{err}");
    let said = ok(train("32"), "train from the imported vectors");
    assert!(!said.contains("resumed"), "{said}");
    let after = tmp.path().join("after.txt");
    ok(
        paramdb(
            &[
                "export",
                "m.in",
                "--format",
                "word2vec-text",
                "--out",
                after.to_str().unwrap(),
            ],
            &data,
        ),
        "export after training",
    );
    let after: std::collections::HashMap<String, Vec<f32>> =
        read_vectors(&after).into_iter().collect();
    assert_eq!(after.len(), vectors.len(), "the corpus's vocabulary");
    // A learning rate of 1e-6 moves a vector by far less than 1e-3: an imported word keeps
    // its vector, which a trained model holds far from the initializer's ±1/64.
    let mut far = 0;
    for (w, v) in given {
        let a = &after[w];
        let moved = v
            .iter()
            .zip(a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(moved < 1e-3, "{w} moved by {moved}");
        far += usize::from(v.iter().any(|x| x.abs() > 0.05));
    }
    assert!(
        far * 2 > given.len(),
        "the trained vectors are near the initializer"
    );
    for (w, _) in missing {
        let big = after[w].iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            big > 1e-3 && big < 0.5 / 32.0 + 1e-3,
            "{w}, missing from the file, is not word2vec's initial vector: max |x| {big}"
        );
    }
}
