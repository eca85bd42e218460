//! `paramdb crash-demo`: the store's crash guarantee, shown on a real process. A child process
//! pushes 1,000-row batches of dim-100 gradients into an embedded shard under `sync`; the demo
//! SIGKILLs it at random moments, restarts it (it retries its unacknowledged push with the
//! same sequence number), then reopens the shard and compares every row with an oracle.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paramdb_engine::{
    ClientId, Initializer, Store, StoreOptions, SyncPolicy, TableSpec, UpdateRule,
};
use rand::{Rng, SeedableRng};

const TABLE: &str = "embeddings";
const DIM: usize = 100;
const BATCH: usize = 1000;
const KEY_SPACE: u64 = 50_000;
const CLIENT: ClientId = ClientId(1);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the shard lives (default: a new directory under the system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How many times to SIGKILL the pushing process.
    #[arg(long, default_value_t = 5)]
    kills: usize,
}

/// Push `seq`'s batch: keys and small integer gradients derived from `seq` alone, so the
/// oracle can recompute them (integers add exactly in f32).
fn batch(seq: u64) -> (Vec<u64>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seq);
    let mut keys: Vec<u64> = Vec::with_capacity(BATCH);
    let mut seen = std::collections::HashSet::with_capacity(BATCH);
    while keys.len() < BATCH {
        let k = rng.random_range(0..KEY_SPACE);
        if seen.insert(k) {
            keys.push(k);
        }
    }
    let values = (0..BATCH * DIM)
        .map(|_| rng.random_range(-2i32..=2) as f32)
        .collect();
    (keys, values)
}

fn options() -> StoreOptions {
    StoreOptions {
        sync: SyncPolicy::Sync,
        checkpoint_log_bytes: 32 << 20,
        ..StoreOptions::default()
    }
}

pub fn pusher(dir: &Path, start: u64) -> anyhow::Result<()> {
    let store = Store::open(dir, options())?;
    println!("OPEN {}", store.recovery_report().records_replayed);
    std::io::stdout().flush()?;
    for seq in start.. {
        let (keys, values) = batch(seq);
        store.push(TABLE, CLIENT, seq, &keys, &values)?;
        println!("ACK {seq}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("paramdb-crash-demo-{}", std::process::id())),
    };
    println!("paramdb crash-demo: embedded shard at {}", dir.display());
    {
        let store = Store::open(&dir, options())?;
        if store.describe_table(TABLE).is_err() {
            store.create_table(
                TableSpec::new(TABLE, DIM as u32)
                    .with_init(Initializer::Zeros)
                    .with_rule(UpdateRule::Add),
            )?;
            println!("created table {TABLE:?}: dim {DIM}, rule add, zeros init");
        }
        if store.stats().last_lsn > 0 || store.pull(TABLE, &[0])?.iter().any(|v| *v != 0.0) {
            bail!(
                "{} already holds pushes; give the demo a new --data-dir",
                dir.display()
            );
        }
        store.close()?;
    }

    let exe = std::env::current_exe().context("finding the paramdb binary")?;
    let mut rng = rand::rng();
    let mut last_acked = 0u64;
    for round in 1..=args.kills {
        let mut child = Command::new(&exe)
            .args(["demo-pusher", "--data-dir"])
            .arg(&dir)
            .args(["--start-seq", &(last_acked + 1).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the pushing process")?;
        let out = child.stdout.take().context("child stdout")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let live = Duration::from_millis(rng.random_range(300..900));
        std::thread::sleep(live);
        child.kill().context("SIGKILL")?;
        let status = child.wait()?;
        let lines = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        let mut replayed = 0;
        let first = last_acked + 1;
        for l in &lines {
            if let Some(n) = l.strip_prefix("OPEN ") {
                replayed = n.parse()?;
            } else if let Some(s) = l.strip_prefix("ACK ") {
                let s: u64 = s.parse()?;
                if s != last_acked + 1 {
                    bail!("acknowledgements out of order: {s} after {last_acked}");
                }
                last_acked = s;
            }
        }
        println!(
            "round {round}: child replayed {replayed} log records, pushed {} acknowledged batches ({} rows) in {} ms, then SIGKILL ({status})",
            last_acked + 1 - first,
            (last_acked + 1 - first) * BATCH as u64,
            live.as_millis()
        );
    }

    let t = Instant::now();
    let store = Store::open(&dir, options())?;
    let rep = store.recovery_report().clone();
    println!(
        "reopened in {} ms: replayed {} records ({:.1} MiB of log){}",
        t.elapsed().as_millis(),
        rep.records_replayed,
        rep.bytes_read as f64 / (1 << 20) as f64,
        match &rep.torn_tail {
            Some((seg, off, n, _)) =>
                format!(", cut a torn tail of {n} bytes at {}:{off}", seg.display()),
            None => String::new(),
        }
    );
    // The push that may have been in flight at the last kill: retry it, as a client would.
    let (keys, values) = batch(last_acked + 1);
    let ack = store.push(TABLE, CLIENT, last_acked + 1, &keys, &values)?;
    println!(
        "retried push {}: {}",
        last_acked + 1,
        if ack.duplicate {
            "already applied before the kill (deduplicated)"
        } else {
            "applied now"
        }
    );
    let total = last_acked + 1;

    let mut oracle = vec![0.0f64; KEY_SPACE as usize * DIM];
    for seq in 1..=total {
        let (keys, values) = batch(seq);
        for (i, k) in keys.iter().enumerate() {
            for d in 0..DIM {
                oracle[*k as usize * DIM + d] += values[i * DIM + d] as f64;
            }
        }
    }
    let all: Vec<u64> = (0..KEY_SPACE).collect();
    let got = store.pull(TABLE, &all)?;
    let wrong = got
        .iter()
        .zip(&oracle)
        .filter(|(g, o)| **g as f64 != **o)
        .count();
    if wrong > 0 {
        bail!("{wrong} of {} values differ from the oracle", got.len());
    }
    println!(
        "verified: {total} pushes ({} rows) each applied exactly once; all {KEY_SPACE} rows × {DIM} match the oracle bit for bit",
        total * BATCH as u64
    );
    let row = store.pull(TABLE, &[42])?;
    println!("pull {TABLE}[42][..8] = {:?}", &row[..8]);
    let s = store.stats();
    println!(
        "stats: last LSN {}, checkpoint LSN {}, {} dirty rows, {} log segments",
        s.last_lsn, s.checkpoint_lsn, s.dirty_rows, s.log_segments
    );
    store.close()?;
    println!(
        "closed cleanly (checkpointed); data left in {}",
        dir.display()
    );
    Ok(())
}
