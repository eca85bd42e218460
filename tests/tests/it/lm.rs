//! The n-gram language model: counts streamed through sorted runs equal a direct count, however
//! small the memory; every Kneser-Ney context and every neural softmax sums to 1; and a
//! trainer SIGKILLed while counting or while training the network resumes.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::StoreOptions;
use paramdb_trainer::keys::word_key;
use paramdb_trainer::ngram::{self, CountConfig, Kn, Row, BOS, EOS, UNK};
use paramdb_trainer::nlm::{self, Neural, NeuralConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::cluster::paramdb_bin;

/// Sentences from a small Markov chain, so that n-grams repeat (counts of 1, 2, 3 and more),
/// with an empty line and one-word lines among them.
pub(crate) fn markov_corpus(
    path: &Path,
    sentences: usize,
    vocab: usize,
    seed: u64,
) -> Vec<Vec<String>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = vec![Vec::new()];
    for i in 0..sentences {
        let len = if i % 50 == 0 {
            1
        } else {
            rng.random_range(2..14)
        };
        let mut prev = rng.random_range(0..vocab);
        let mut s = Vec::new();
        for _ in 0..len {
            // Mostly one of three successors of the previous word.
            let next = if rng.random_bool(0.8) {
                (prev * 7 + rng.random_range(0..3)) % vocab
            } else {
                rng.random_range(0..vocab)
            };
            s.push(format!("w{next}"));
            prev = next;
        }
        out.push(s);
    }
    let text: String = out.iter().map(|s| s.join(" ") + "\n").collect();
    std::fs::write(path, text).unwrap();
    out
}

fn client(dir: &Path) -> BlockingClient {
    BlockingClient::open_embedded(dir, 2, StoreOptions::default(), ClientOptions::default())
        .unwrap()
}

/// KenLM's counts, computed directly from their definition: raw counts for the highest order
/// and for n-grams starting with `<s>`, otherwise the number of distinct words seen to the
/// left; `<s>` alone has none.
fn direct_counts(sentences: &[Vec<String>], n: usize) -> Vec<HashMap<Vec<u64>, u64>> {
    let mut raw: Vec<HashMap<Vec<u64>, u64>> = vec![HashMap::new(); n + 1];
    let mut left: Vec<HashMap<Vec<u64>, HashSet<u64>>> = vec![HashMap::new(); n + 1];
    let bos = word_key(BOS);
    for s in sentences {
        let mut t = vec![bos];
        t.extend(s.iter().map(|w| word_key(w)));
        t.push(word_key(EOS));
        for k in 1..=n {
            for i in 0..t.len().saturating_sub(k - 1) {
                let g = t[i..i + k].to_vec();
                *raw[k].entry(g.clone()).or_default() += 1;
                if i > 0 {
                    left[k].entry(g).or_default().insert(t[i - 1]);
                }
            }
        }
    }
    (0..=n)
        .map(|k| {
            raw[k]
                .iter()
                .map(|(g, &c)| {
                    let a = if k == n || (g[0] == bos && k > 1) {
                        c
                    } else if g[0] == bos {
                        0
                    } else {
                        left[k][g].len() as u64
                    };
                    (g.clone(), a)
                })
                .collect()
        })
        .collect()
}

/// A context's statistics: Σ counts of its extensions, and extensions with 1, 2, 3+.
type Stats = HashMap<Vec<u64>, (u64, [u64; 3])>;

/// Each context's statistics from the direct counts.
fn context_stats(counts: &[HashMap<Vec<u64>, u64>]) -> Vec<Stats> {
    let mut out: Vec<Stats> = vec![HashMap::new(); counts.len()];
    for (k, level) in counts.iter().enumerate().skip(1) {
        for (g, &a) in level {
            if a == 0 {
                continue;
            }
            let e = out[k - 1].entry(g[..k - 1].to_vec()).or_default();
            e.0 += a;
            e.1[a.min(3) as usize - 1] += 1;
        }
    }
    out
}

#[test]
fn kneser_ney_counts_match_a_direct_count_and_each_context_sums_to_one() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let sentences = markov_corpus(&corpus, 600, 60, 11);
    let client = client(&tmp.path().join("shards"));
    let n = 4;
    let want = direct_counts(&sentences, n);
    let stats = context_stats(&want);
    // Everything in memory, and the smallest budget: several sorted runs, merged in several
    // passes, and the records of each order sorted on disk too.
    for (model, memory) in [("one", 64 << 20), ("many", ngram::MIN_COUNT_MEMORY)] {
        let cfg = CountConfig {
            memory,
            temp_dir: Some(tmp.path().to_path_buf()),
            ..CountConfig::new(n)
        };
        let r = ngram::count(&client, model, &corpus, &cfg, &|_, _| {}).unwrap();
        if model == "one" {
            assert_eq!(r.runs, 1);
        } else {
            // More runs than one merge pass takes at this budget (3).
            assert!(r.runs > 3, "{} runs", r.runs);
        }
        for k in 1..=n {
            let grams: Vec<&Vec<u64>> = want[k].keys().collect();
            let keys: Vec<u64> = grams.iter().map(|g| ngram::ngram_key(g)).collect();
            let rows = ngram::rows(&client, model, k, &keys).unwrap();
            for (g, row) in grams.iter().zip(&rows) {
                let (sum, nk) = stats[k].get(*g).copied().unwrap_or_default();
                let expect = Row {
                    count: want[k][*g],
                    sum: if k < n { sum } else { 0 },
                    n: if k < n { nk } else { [0; 3] },
                };
                assert_eq!(*row, expect, "{model}: order {k} n-gram {g:?}");
            }
            // Count-of-counts for the discounts.
            let mut t = [0u64; 4];
            for &a in want[k].values() {
                if (1..=4).contains(&a) {
                    t[a as usize - 1] += 1;
                }
            }
            assert_eq!(r.coc[k].t, t, "{model}: order {k}");
        }
        let empty = ngram::rows(&client, model, 0, &[0]).unwrap()[0];
        assert_eq!((empty.sum, empty.n), stats[0][&Vec::new()], "{model}");
        // Each n-gram is spelled once, as its words.
        let words = ngram::spell::load_words(&client, model).unwrap();
        for (k, want) in want.iter().enumerate().skip(1) {
            let mut spelled = Vec::new();
            let mut grams = ngram::spell::Grams::open(&client, model, k, 0);
            while let Some(g) = grams.next_gram().unwrap() {
                spelled.push(
                    g.iter()
                        .map(|&i| word_key(&words[&ngram::spell::row_key(0, i as u64)]))
                        .collect::<Vec<u64>>(),
                );
            }
            // (`<s>` alone is a context, not an n-gram.)
            let mut expect: Vec<Vec<u64>> = want
                .iter()
                .filter(|(_, &c)| c > 0)
                .map(|(g, _)| g.clone())
                .collect();
            spelled.sort();
            expect.sort();
            assert_eq!(spelled, expect, "{model}: order {k}'s spellings");
        }
        assert!(words.values().any(|w| w == "w7"));
    }

    // Every context's distribution sums to 1 over the vocabulary (words, </s>, <unk>): the
    // contexts of the corpus's first sentences, and contexts never seen, with <unk> in them.
    let kn = Kn::load(&client, "many").unwrap();
    let vocab: Vec<u64> = kn
        .vocabulary(&client)
        .unwrap()
        .iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(vocab.len() as u64, kn.vocab_size);
    assert!(vocab.contains(&word_key(UNK)) && vocab.contains(&word_key(EOS)));
    let bos = word_key(BOS);
    let mut histories: Vec<Vec<u64>> = Vec::new();
    for s in sentences.iter().take(12) {
        let mut h = vec![bos];
        histories.push(h.clone());
        for w in s {
            h.push(word_key(w));
            histories.push(h.clone());
        }
    }
    histories.push(vec![bos, word_key("w3"), kn.unk()]);
    histories.push(vec![
        bos,
        word_key("w59"),
        word_key("w1"),
        word_key("w58"),
        word_key("w2"),
    ]);
    histories.push(vec![bos, kn.unk(), kn.unk()]);
    for h in &histories {
        let q: Vec<(&[u64], u64)> = vocab.iter().map(|&w| (h.as_slice(), w)).collect();
        let total: f64 = kn
            .log_probs(&client, &q)
            .unwrap()
            .iter()
            .map(|l| l.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "history {h:?}: Σ p = {total}");
    }
}

/// The ARPA export through an independent reader: the `kenlm` package from PyPI loads it and
/// scores IMDb's `test.txt` to the perplexities `paramdb eval perplexity` prints, digit for
/// digit, including OOVs and excluding them, with the same OOV count. The corpus is the first
/// 3,000 reviews of `train.txt` and a line with a word longer than one spelling row and
/// non-ASCII words, which the test text has too.
#[test]
fn arpa_export_read_by_kenlm_scores_as_eval_perplexity_does() {
    let shared = crate::word2vec::shared_data();
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!("{} naïve café words </s> here\n", "ü".repeat(50));
    let train = std::fs::read_to_string(shared.join("train.txt")).expect("train.txt");
    let mut text: String = train.lines().take(3000).map(|l| format!("{l}\n")).collect();
    text.push_str(&extra);
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, text).unwrap();
    let mut test = std::fs::read_to_string(shared.join("test.txt")).expect("test.txt");
    test.push_str(&extra);
    let test_path = tmp.path().join("test.txt");
    std::fs::write(&test_path, test).unwrap();
    let data = tmp.path().join("data");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(paramdb_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    for order in [2, 5] {
        let model = format!("m{order}");
        run(&[
            &os("train"),
            &os("ngram-lm"),
            &os("--train"),
            corpus.as_os_str(),
            &os("--model"),
            &os(&model),
            &os("--order"),
            &os(&order.to_string()),
            &os("--kn-only"),
            &os("--dev-every"),
            &os("0"),
        ]);
        let arpa = tmp.path().join(format!("{model}.arpa"));
        let out = run(&[
            &os("export"),
            &os(&model),
            &os("--format"),
            &os("arpa"),
            &os("--out"),
            arpa.as_os_str(),
        ]);
        assert!(out.contains(&format!("{order}-grams")), "{out}");
        let ours = run(&[
            &os("eval"),
            &os("perplexity"),
            &os("--test"),
            test_path.as_os_str(),
            &os("--model"),
            &os(&model),
        ]);
        let ours = line_with(&ours, "Kneser-Ney");
        let ours = &ours[ours.find("perplexity").unwrap()..];
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/python/kenlm_perplexity.py");
        let k = Command::new(crate::python::python())
            .arg(script)
            .arg(&arpa)
            .arg(&test_path)
            .output()
            .unwrap();
        let theirs = String::from_utf8_lossy(&k.stdout);
        assert!(
            k.status.success(),
            "kenlm: {theirs}{}",
            String::from_utf8_lossy(&k.stderr)
        );
        assert_eq!(theirs.trim(), ours.trim(), "order {order}");
        // The compact form scores the same, with no server or data directory.
        let compact = tmp.path().join(format!("{model}.knc"));
        let out = run(&[
            &os("export"),
            &os(&model),
            &os("--format"),
            &os("kn-compact"),
            &os("--out"),
            compact.as_os_str(),
        ]);
        assert!(out.contains("compact form"), "{out}");
        let from_file = run(&[
            &os("eval"),
            &os("perplexity"),
            &os("--test"),
            test_path.as_os_str(),
            &os("--compact"),
            compact.as_os_str(),
        ]);
        let from_file = line_with(&from_file, "Kneser-Ney");
        assert_eq!(
            &from_file[from_file.find("perplexity").unwrap()..],
            ours,
            "order {order}, compact"
        );
    }
}

#[test]
fn neural_softmax_sums_to_one_and_the_interpolation_beats_both_models() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let test = tmp.path().join("test.txt");
    markov_corpus(&corpus, 6000, 300, 5);
    let held_out = markov_corpus(&test, 500, 300, 6);
    let client = client(&tmp.path().join("shards"));
    let cfg = CountConfig {
        memory: 64 << 20,
        ..CountConfig::new(3)
    };
    ngram::count(&client, "m", &corpus, &cfg, &|_, _| {}).unwrap();
    let kn = Kn::load(&client, "m").unwrap();
    let net = NeuralConfig {
        emb_dim: 16,
        hidden: 32,
        out_dim: 16,
        samples: 64,
        batch: 256,
        epochs: 3,
        lr: 0.1,
        dense_lr: 0.05,
        threads: 2,
        ..NeuralConfig::default()
    };
    let report = nlm::train(&client, &kn, &corpus, &net, &|_| {}).unwrap();
    assert_eq!(report.tokens_done, kn.meta.tokens * 3);
    let neural = Neural::load(&client, &kn, 2).unwrap().unwrap();
    assert_eq!(neural.vocab_size() as u64, kn.vocab_size);

    let bos = word_key(BOS);
    let w = |i: usize| word_key(&format!("w{i}"));
    for h in [
        vec![bos],
        vec![bos, w(3)],
        vec![bos, w(3), w(21)],
        vec![bos, kn.unk(), w(7)],
    ] {
        let dist = neural.distribution(&client, &h).unwrap();
        let total: f64 = dist.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "history {h:?}: Σ p = {total}");
        // The batched, tiled path gives the same numbers.
        let vocab: Vec<u64> = kn
            .vocabulary(&client)
            .unwrap()
            .iter()
            .map(|v| v.0)
            .collect();
        let q: Vec<(&[u64], u64)> = vocab.iter().map(|&v| (h.as_slice(), v)).collect();
        for (a, b) in neural.log_probs(&client, &q).unwrap().iter().zip(&dist) {
            assert!((a - b).abs() < 1e-4, "{a} against {b}");
        }
    }

    // On held-out text the network learned the chain (far better than uniform), and the
    // interpolation is better than either model alone.
    let mut queries = Vec::new();
    let sents: Vec<Vec<u64>> = held_out
        .iter()
        .map(|s| {
            let mut t = vec![bos];
            t.extend(s.iter().map(|x| word_key(x)));
            t.push(word_key(EOS));
            t
        })
        .collect();
    for s in &sents {
        for j in 1..s.len() {
            queries.push((&s[..j], s[j]));
        }
    }
    let a = neural.log_probs(&client, &queries).unwrap();
    let b = kn.log_probs(&client, &queries).unwrap();
    let ppl = |lp: &[f64]| (-lp.iter().sum::<f64>() / lp.len() as f64).exp();
    let lambda = nlm::tune_lambda(&a, &b);
    let mixed: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| nlm::mix(lambda, x, y))
        .collect();
    let (pn, pk, pm) = (ppl(&a), ppl(&b), ppl(&mixed));
    assert!(
        pn < kn.vocab_size as f64 / 5.0,
        "neural {pn}, vocabulary {}",
        kn.vocab_size
    );
    assert!(
        pm < pn && pm < pk,
        "interpolated {pm}, neural {pn}, Kneser-Ney {pk}"
    );
}

fn train_cmd(corpus: &Path, data: &Path) -> Command {
    train_epochs(corpus, data, 3)
}

fn train_epochs(corpus: &Path, data: &Path, epochs: u32) -> Command {
    let mut c = Command::new(paramdb_bin());
    c.args(["train", "ngram-lm", "--train"])
        .arg(corpus)
        .arg("--data-dir")
        .arg(data)
        .args(["--order", "3", "--dev-every", "20", "--memory", "64K"])
        .args(["--emb-dim", "16", "--hidden", "64", "--out-dim", "16"])
        .args(["--samples", "128", "--batch", "256", "--epochs"])
        .arg(epochs.to_string())
        .args(["--checkpoint-secs", "0.1", "--quiet"]);
    c
}

/// Starts the trainer and SIGKILLs it once a line of its output contains `when` (or at once
/// if `when` is empty), after `delay`. Returns the output seen.
fn kill_during(corpus: &Path, data: &Path, when: &str, delay: Duration) -> String {
    let mut child = train_cmd(corpus, data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    if !when.is_empty() {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        for l in lines.by_ref() {
            let l = l.unwrap();
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(when) || Instant::now() > deadline {
                break;
            }
        }
    }
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(running, "the trainer finished before the kill: {seen}");
    seen
}

fn run_to_end(corpus: &Path, data: &Path) -> String {
    let out = train_cmd(corpus, data).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn perplexities(data: &Path, test: &Path) -> String {
    let out = Command::new(paramdb_bin())
        .args(["eval", "perplexity", "--test"])
        .arg(test)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line_with<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in: {text}"))
}

/// The perplexity on a line that has one.
fn ppl_of(line: &str) -> f64 {
    number_after(line, "perplexity ")
}

#[test]
fn ngram_lm_killed_while_counting_or_training_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let test = tmp.path().join("test.txt");
    markov_corpus(&corpus, 60_000, 2000, 21);
    markov_corpus(&test, 2000, 2000, 22);

    // Uninterrupted.
    let calm = tmp.path().join("calm");
    let calm_out = run_to_end(&corpus, &calm);
    assert!(
        calm_out.contains("counted") && calm_out.contains("trained the neural model"),
        "{calm_out}"
    );
    let three_epochs = number_after(line_with(&calm_out, "trained the neural model"), ", ");
    let calm_ppl = perplexities(&calm, &test);

    // Killed while counting (the counts start over), then while training the network (it
    // continues from its last recorded position).
    let data = tmp.path().join("killed");
    kill_during(&corpus, &data, "", Duration::from_millis(400));
    let seen = kill_during(&corpus, &data, "vocabulary", Duration::from_millis(1500));
    assert!(seen.contains("counted"), "{seen}");
    let out = run_to_end(&corpus, &data);
    assert!(
        out.contains("already complete"),
        "counted again after the network started: {out}"
    );
    let pct: f64 = line_with(&out, "resumed the neural model")
        .split("checkpoint at ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume point in: {out}"));
    assert!(pct > 0.0 && pct < 100.0, "resumed at {pct}%: {out}");
    let again = run_to_end(&corpus, &data);
    assert!(again.contains("already trained"), "{again}");

    // The counts are exactly those of the uninterrupted run; the network, trained in two
    // parts, is as good.
    let killed_ppl = perplexities(&data, &test);
    let kn = "Kneser-Ney 3-gram";
    assert_eq!(line_with(&killed_ppl, kn), line_with(&calm_ppl, kn));
    // Two asynchronous workers make every run of the network a little different (uninterrupted
    // runs of this test have scored 65 to 71); the interpolation varies far less (37.6–37.8).
    for (what, tolerance) in [("neural", 0.12), ("interpolated", 0.03)] {
        let (a, b) = (
            ppl_of(line_with(&killed_ppl, what)),
            ppl_of(line_with(&calm_ppl, what)),
        );
        assert!(
            (a / b - 1.0).abs() < tolerance,
            "{what}: {a} after the kill, {b} without"
        );
    }
    let (mixed, kn_ppl) = (
        ppl_of(line_with(&killed_ppl, "interpolated")),
        ppl_of(line_with(&killed_ppl, kn)),
    );
    assert!(
        mixed < kn_ppl,
        "interpolated {mixed} against Kneser-Ney {kn_ppl}"
    );

    // A fourth epoch on request: the network trains on from where it stopped.
    let out = train_epochs(&corpus, &data, 4).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let pct = number_after(
        line_with(&text, "resumed the neural model"),
        "checkpoint at ",
    );
    assert!(
        (pct - 75.0).abs() < 0.5,
        "a 4th epoch after 3 resumes at {pct}%: {text}"
    );
    let tokens = number_after(line_with(&text, "trained the neural model"), ", ");
    assert!(
        (tokens / (three_epochs / 3.0) - 1.0).abs() < 0.01,
        "one more epoch trained {tokens} tokens, three trained {three_epochs}: {text}"
    );
}

fn number_after(line: &str, before: &str) -> f64 {
    line.split(before)
        .nth(1)
        .and_then(|s| s.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after {before:?} in {line:?}"))
}

#[test]
fn ngram_lm_bad_input_gets_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    markov_corpus(&corpus, 300, 50, 3);
    let data = tmp.path().join("data");
    let paramdb = |args: &[&str]| {
        let out = Command::new(paramdb_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Success when `want` is empty, else a one-line error containing it.
    let expect = |args: &[&str], want: &str| {
        let (ok, err) = paramdb(args);
        if want.is_empty() {
            assert!(ok, "{args:?}: {err}");
        } else {
            assert!(!ok && err.contains(want), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    };
    let c = corpus.to_str().unwrap();
    for (args, want) in [
        (
            vec!["train", "ngram-lm", "--train", c, "--order", "0"],
            "--order 0",
        ),
        (
            vec!["train", "ngram-lm", "--train", c, "--order", "9"],
            "--order 9",
        ),
        (
            vec!["train", "ngram-lm", "--train", "/nonexistent.txt"],
            "/nonexistent.txt",
        ),
        (
            vec![
                "train",
                "ngram-lm",
                "--train",
                c,
                "--kn-only",
                "--dev-every",
                "0",
            ],
            "",
        ),
        (
            vec!["eval", "perplexity", "--test", c, "--model", "nope"],
            "no complete n-gram counts",
        ),
        (
            vec![
                "train", "ngram-lm", "--train", c, "--model", "m2", "--memory", "1K",
            ],
            "below the minimum of 64 KiB",
        ),
        (
            vec![
                "train",
                "ngram-lm",
                "--train",
                c,
                "--dev-every",
                "0",
                "--hidden",
                "0",
            ],
            "must be positive",
        ),
    ] {
        expect(&args, want);
    }
    // ARPA: a model that is not there, or whose counts are incomplete (a count that did not
    // finish leaves no meta row: here it is deleted), is refused in one line, and no file is
    // left behind.
    let arpa = tmp.path().join("m.arpa");
    let a = arpa.to_str().unwrap();
    for (args, want) in [
        (
            vec!["export", "nope", "--format", "arpa", "--out", a],
            "no complete n-gram counts",
        ),
        (vec!["delete", "lm.lm", "0"], ""),
        (
            vec!["export", "lm", "--format", "arpa", "--out", a],
            "no complete n-gram counts",
        ),
        (
            vec!["import", "t", "--in", a, "--format", "arpa"],
            "cannot be imported",
        ),
        (
            vec![
                "train",
                "ngram-lm",
                "--train",
                c,
                "--kn-only",
                "--dev-every",
                "0",
            ],
            "",
        ),
        (
            vec![
                "export", "lm", "--format", "arpa", "--out", a, "--start", "5",
            ],
            "do not apply",
        ),
        (vec!["export", "lm", "--format", "arpa", "--out", a], ""),
    ] {
        expect(&args, want);
        if !want.is_empty() {
            assert!(!arpa.exists() || args[0] == "import", "{args:?} left {a}");
        }
    }
    assert!(arpa.exists());
    // The compact form: refused for import; a damaged, cut or foreign file is an error.
    let knc = tmp.path().join("m.knc");
    let k = knc.to_str().unwrap();
    let t = tmp.path().join("t.txt");
    std::fs::write(&t, "a b c\n").unwrap();
    let t = t.to_str().unwrap();
    expect(&["export", "lm", "--format", "kn-compact", "--out", k], "");
    expect(&["eval", "perplexity", "--test", t, "--compact", k], "");
    expect(
        &["import", "t", "--in", k, "--format", "kn-compact"],
        "not imported",
    );
    let whole = std::fs::read(&knc).unwrap();
    let damaged = tmp.path().join("damaged.knc");
    let mut bytes = whole.clone();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let cut = tmp.path().join("cut.knc");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    for (file, want) in [
        (damaged.to_str().unwrap(), "fail their CRC"),
        (cut.to_str().unwrap(), "run past its end"),
        (a, "magic bytes"),
        ("/nonexistent.knc", "opening"),
    ] {
        expect(
            &["eval", "perplexity", "--test", t, "--compact", file],
            want,
        );
    }
    // A model goes on only with the corpus and settings it was counted with.
    let other = tmp.path().join("other.txt");
    markov_corpus(&other, 100, 50, 4);
    let o = other.to_str().unwrap();
    for args in [
        vec!["train", "ngram-lm", "--train", o, "--dev-every", "0"],
        vec![
            "train",
            "ngram-lm",
            "--train",
            c,
            "--dev-every",
            "0",
            "--order",
            "3",
        ],
    ] {
        let (ok, err) = paramdb(&args);
        assert!(
            !ok && err.contains("was counted with --order 5 --dev-every 0"),
            "{err}"
        );
    }
    // The counts are still there and still score.
    let (ok, err) = paramdb(&["eval", "perplexity", "--test", c]);
    assert!(ok, "{err}");
}

/// Counting processes that disagree: one started with another --order is refused in one line
/// naming both settings, the one left waiting gives up in one line after --wait-secs, and a
/// --process outside --processes is refused.
#[test]
fn counting_processes_that_disagree_get_one_line_errors() {
    let cluster = crate::cluster::Cluster::start(1, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    markov_corpus(&corpus, 2000, 50, 7);
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    let run = |process: &str, processes: &str, order: &str| {
        Command::new(paramdb_bin())
            .args([
                "train",
                "ngram-lm",
                "--kn-only",
                "--dev-every",
                "0",
                "--quiet",
            ])
            .args([
                "--process",
                process,
                "--processes",
                processes,
                "--order",
                order,
            ])
            .args(["--wait-secs", "3", "--train"])
            .arg(&corpus)
            .arg("--cluster")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let err = |c: std::process::Child| {
        let out = c.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        e
    };
    let first = run("0", "2", "4");
    std::thread::sleep(Duration::from_millis(500));
    let e = err(run("1", "2", "3"));
    assert!(
        e.contains("process 0 counts with --order 4") && e.contains("process 1 has --order 3"),
        "{e}"
    );
    let e = err(first);
    assert!(e.contains("gave up after 3s waiting for"), "{e}");
    let e = err(run("2", "2", "4"));
    assert!(e.contains("--process 2 --processes 2"), "{e}");
}
