//! Counting n-grams in bounded memory: over 5M tokens of Zipfian text with planted n-grams,
//! counted by a trainer process against a server, with a memory flag small enough for several
//! sorted runs. The trainer's peak RSS (its `VmHWM`) stays within the flag + 10%, and the
//! planted n-grams' counts, adjusted counts and context statistics are exact.

use std::process::Command;

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};
use paramdb_tests::bench::run_measured;
use paramdb_tests::corpus::{zipf_corpus, Plant};
use paramdb_tests::servers;
use paramdb_trainer::keys::word_key;
use paramdb_trainer::ngram::{self, Row};

use crate::cluster::paramdb_bin;

#[test]
fn counting_stays_within_its_memory_flag_and_planted_counts_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("zipf.txt");
    let plants: Vec<Plant> = [(1, 1), (2, 2), (3, 1), (40, 3), (1000, 7)]
        .iter()
        .enumerate()
        .map(|(p, &(count, left))| Plant {
            words: (0..5).map(|j| format!("plant{p}w{j}")).collect(),
            count,
            left,
        })
        .collect();
    let tokens = zipf_corpus(&corpus, 5_200_000, 50_000, &plants, 7);
    assert!(tokens >= 5_000_000, "{tokens} tokens");

    let (_servers, cluster) = servers::start(&paramdb_bin(), tmp.path(), 1, &[]);
    let memory: u64 = 48 << 20;
    let runs_dir = tmp.path().join("runs");
    std::fs::create_dir_all(&runs_dir).unwrap();
    let (status, peak, said) = run_measured(
        Command::new(paramdb_bin())
            .args(["train", "ngram-lm", "--kn-only", "--order", "5"])
            .args(["--dev-every", "0", "--memory", "48M", "--quiet", "--train"])
            .arg(&corpus)
            .arg("--temp-dir")
            .arg(&runs_dir)
            .arg("--cluster")
            .arg(&cluster),
    );
    assert!(status.success(), "{said}");
    let runs: u64 = said
        .split(" sorted runs")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no run count in {said}"));
    println!(
        "{tokens} tokens, --memory 48M: {runs} sorted runs, trainer peak RSS {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        runs >= 3,
        "{runs} sorted runs: the flag did not force spills"
    );
    assert!(
        peak <= memory + memory / 10,
        "peak RSS {peak} bytes over the flag {memory} + 10%"
    );
    assert_eq!(
        std::fs::read_dir(&runs_dir).unwrap().count(),
        0,
        "sorted runs left behind"
    );

    let map = ClusterMap::load(&cluster).unwrap();
    let client = BlockingClient::connect(map, ClientOptions::default()).unwrap();
    for (p, plant) in plants.iter().enumerate() {
        let k: Vec<u64> = plant.words.iter().map(|w| word_key(w)).collect();
        let key = |g: &[u64]| ngram::ngram_key(g);
        let row =
            |order: usize, g: &[u64]| ngram::rows(&client, "lm", order, &[key(g)]).unwrap()[0];
        let c = plant.count as u64;
        // The 5-gram: its raw count.
        assert_eq!(row(5, &k).count, c, "plant {p}: 5-gram");
        // Its 4-word prefix: left neighbours are the marker words, and as a context it has one
        // extension, counted c times.
        let n = |c: u64| {
            let mut n = [0; 3];
            n[c.min(3) as usize - 1] = 1;
            n
        };
        assert_eq!(
            row(4, &k[..4]),
            Row {
                count: plant.left as u64,
                sum: c,
                n: n(c)
            },
            "plant {p}: 4-gram prefix"
        );
        // Its 4-word suffix: one left neighbour; a context of whatever follows the plant.
        assert_eq!(row(4, &k[1..]).count, 1, "plant {p}: 4-gram suffix");
        // Its first word: the marker words to its left.
        assert_eq!(
            row(1, &k[..1]).count,
            plant.left as u64,
            "plant {p}: first word"
        );
        // A marker word's 5-gram with the plant's first 4 words: raw, its share of the count.
        let share = (0..plant.count).filter(|i| i % plant.left == 0).count() as u64;
        let mut g = vec![word_key(&format!("left{p}x0"))];
        g.extend_from_slice(&k[..4]);
        assert_eq!(row(5, &g).count, share, "plant {p}: marker 5-gram");
    }
}
