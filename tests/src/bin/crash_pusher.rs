//! Child process for the SIGKILL crash test: opens a store under `sync`, then writes the
//! deterministic workload with deletes (`workload::op`: pushes, deletes of keys and of ranges)
//! from several client threads, printing `ACK <client> <seq>` after each acknowledgement,
//! until it is killed. The hot-row cache is on and small (32 rows for
//! the 64 shared keys and the witnesses), so pushes read rows from it, checkpoints refresh it,
//! and admissions and evictions go on while the kills land.
//!
//! Usage: `crash_pusher DIR START_SEQ_1 START_SEQ_2 …` (one client thread per start seq;
//! client ids are 1, 2, …).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use paramdb_engine::{ClientId, KeyRange, Store, StoreOptions, SyncPolicy, TableSpec};
use paramdb_tests::workload::{op, Op, DIM};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .context("usage: crash_pusher DIR START_SEQ...")?;
    let starts: Vec<u64> = args[1..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("start sequence numbers")?;
    let opts = StoreOptions {
        sync: SyncPolicy::Sync,
        // Small triggers so kills also land inside checkpoints and segment rotations.
        checkpoint_log_bytes: 96 << 10,
        max_segment_bytes: 32 << 10,
        cache_bytes: 32 * (24 + DIM as u64 * 4 + paramdb_engine::CACHE_SLOT_OVERHEAD as u64),
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(dir, opts).context("opening the store")?);
    if store.describe_table("crash").is_err() {
        store.create_table(TableSpec::new("crash", DIM as u32))?;
    }
    println!("OPEN");
    let threads: Vec<_> = starts
        .into_iter()
        .enumerate()
        .map(|(i, start)| {
            let store = store.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let client = i as u64 + 1;
                for seq in start.. {
                    let c = ClientId(client);
                    match op(client, seq) {
                        Op::Push { keys, values } => store.push("crash", c, seq, &keys, &values)?,
                        Op::DeleteKeys(keys) => store.delete("crash", c, seq, &keys)?,
                        Op::DeleteRange { start, end } => {
                            store.delete_range("crash", c, seq, KeyRange::new(start, end))?
                        }
                    };
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {client} {seq}")?;
                    out.flush()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("pusher thread panicked")?;
    }
    Ok(())
}
