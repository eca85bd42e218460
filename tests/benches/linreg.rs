//! The ps/worker linear-regression example against two `paramdb serve` processes: steps/s and
//! time until every parameter is within 0.05 of the truth, asynchronous vs bulk-synchronous vs
//! bounded staleness (s = 2), 2 and 4 workers. Each worker is a thread with its own client
//! (own connections and runtime), as a worker process would be. Prints Markdown.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`).
//!
//! `cargo bench -p paramdb-tests --bench linreg`

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};
use paramdb_trainer::linreg::{self, Config, Mode};

const TOLERANCE: f32 = 0.05;
const STEPS: u64 = 1500;

fn paramdb() -> PathBuf {
    paramdb_tests::servers::paramdb_bin()
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_servers, file) = paramdb_tests::servers::start(&paramdb(), tmp.path(), 2, &[]);
    let map = ClusterMap::load(&file).expect("cluster file");
    let connect =
        || BlockingClient::connect(map.clone(), ClientOptions::default()).expect("client");
    println!(
        "## Linear regression, 2 shard servers (`sync`), {STEPS} steps per worker, batch 32\n"
    );
    println!("| mode | workers | steps/s (all workers) | time to max error < {TOLERANCE} | final max error |");
    println!("|---|---|---|---|---|");
    for workers in [2usize, 4] {
        for (label, mode) in [
            ("async", Mode::Async),
            ("bulk-synchronous", Mode::Bsp),
            ("bounded staleness s=2", Mode::Ssp(2)),
        ] {
            let model = format!("bench_{workers}_{}", label.split(' ').next().unwrap_or("m"));
            let cfg = Config {
                model: model.clone(),
                workers,
                steps: STEPS,
                mode,
                ..Config::default()
            };
            let monitor = connect();
            let done = AtomicBool::new(false);
            let started = Instant::now();
            let reached = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let cfg = &cfg;
                        s.spawn(move || {
                            linreg::run_worker(&connect(), cfg, w, &|_| {}).expect("worker")
                        })
                    })
                    .collect();
                let watcher = s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        if let Ok(p) = linreg::params(&monitor, &model) {
                            if linreg::max_error(&p, cfg.seed) < TOLERANCE {
                                return Some(started.elapsed());
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    None
                });
                for h in handles {
                    h.join().expect("worker thread");
                }
                done.store(true, Ordering::Relaxed);
                watcher.join().expect("watcher")
            });
            let secs = started.elapsed().as_secs_f64();
            let err =
                linreg::max_error(&linreg::params(&monitor, &model).expect("params"), cfg.seed);
            println!(
                "| {label} | {workers} | {:.0} | {} | {err:.4} |",
                (STEPS * workers as u64) as f64 / secs,
                reached.map_or("not reached".to_string(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                ))
            );
        }
    }
}
