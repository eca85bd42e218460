//! The client's in-process transport: the same API against embedded shards, no network; and
//! bounded staleness through worker clocks.

use std::time::Duration;

use paramdb_client::{BlockingClient, Client, ClientOptions, Clock, KeyRange, TableSpec};

use crate::common::manual_opts;

#[test]
fn embedded_client_has_the_same_api_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let c = BlockingClient::open_embedded(tmp.path(), 3, manual_opts(), ClientOptions::default())
        .unwrap();
    c.create_table(TableSpec::new("e", 2)).unwrap();
    let starts: Vec<u64> = c
        .inner()
        .cluster()
        .shards
        .iter()
        .map(|s| s.range[0])
        .collect();
    let keys = [1, starts[1] + 1, starts[2] + 1];
    let vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let seq = c.next_seq();
    assert!(!c.push_with_seq("e", seq, &keys, &vals).unwrap().duplicate);
    assert!(
        c.push_with_seq("e", seq, &keys, &vals).unwrap().duplicate,
        "a resent push is a duplicate"
    );
    assert_eq!(c.pull("e", &keys).unwrap(), vals);
    c.push_range("e", starts[1] - 1, &[7.0, 7.0, 8.0, 8.0])
        .unwrap();
    let got: Vec<u64> = c
        .pull_range("e", KeyRange::new(0, u64::MAX))
        .flat_map(|b| b.unwrap().keys)
        .collect();
    assert_eq!(
        got,
        vec![1, starts[1] - 1, starts[1], starts[1] + 1, starts[2] + 1]
    );
    for (i, s) in c.stats().unwrap().iter().enumerate() {
        assert!(s.store.pushes >= 1, "shard {i}: {s:?}");
    }
    // Keys outside every shard's range do not exist in an even map; unknown tables do.
    assert_eq!(
        c.pull("nope", &[1]).unwrap_err().code(),
        Some(paramdb_client::Code::NotFound)
    );
}

#[test]
fn bounded_staleness_clock_holds_a_fast_worker_back() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client =
            Client::open_embedded(tmp.path(), 1, manual_opts(), ClientOptions::default()).unwrap();
        let mut slow = Clock::join(client.clone(), "train", 1, 2, 1).await.unwrap();
        let fast = tokio::spawn({
            let client = client.clone();
            async move {
                let mut fast = Clock::join(client, "train", 0, 2, 1).await.unwrap();
                for _ in 0..4 {
                    fast.advance().await.unwrap();
                }
                fast.clock()
            }
        });
        // With staleness 1 and the slow worker at 0, the fast one finishes step 1 and blocks
        // in step 2 (it may not run more than one clock ahead).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !fast.is_finished(),
            "the fast worker ran ahead of the bound"
        );
        for _ in 0..3 {
            slow.advance().await.unwrap();
        }
        let done = tokio::time::timeout(Duration::from_secs(10), fast)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done, slow.clock()), (4, 3));
    });
}
