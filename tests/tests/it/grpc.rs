//! The gRPC service and the client against real shard processes: routing across 3 shards,
//! both range calls, a stale cluster map, a push whose reply is lost, bad input.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, KeyRange, TableSpec};
use paramdb_proto::cluster::ShardEntry;
use paramdb_proto::v1::{self, paramdb_client::ParamdbClient};
use tonic::Code;

use crate::cluster::Cluster;

#[test]
fn grpc_three_shards_route_pull_push_and_ranges() {
    let cluster = Cluster::start(3, &["--sync", "interval=5"]);
    let client = cluster.client();
    client.create_table(TableSpec::new("emb", 4)).unwrap();
    let starts: Vec<u64> = cluster.map.shards.iter().map(|s| s.range[0]).collect();
    // One push whose keys live on all three shards.
    let keys = [7, starts[1] + 5, starts[2] + 9, u64::MAX - 3];
    let values: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let ack = client.push("emb", &keys, &values).unwrap();
    assert!(!ack.duplicate);
    assert_eq!(client.pull("emb", &keys).unwrap(), values);
    let stats = client.stats().unwrap();
    for (i, s) in stats.iter().enumerate() {
        assert!(
            s.store.pushes >= 1 && s.store.tables == 1,
            "shard {i} got no push: {s:?}"
        );
    }
    // A dense block across the shard 0 / shard 1 boundary.
    let block: Vec<f32> = (0..6 * 4).map(|i| 100.0 + i as f32).collect();
    client.push_range("emb", starts[1] - 3, &block).unwrap();
    let block_keys: Vec<u64> = (starts[1] - 3..starts[1] + 3).collect();
    let mut want = block.clone();
    // starts[1] + 5 is outside the block; nothing else overlaps.
    assert_eq!(client.pull("emb", &block_keys).unwrap(), want);
    // Range pull across the boundary, in key order, only stored rows.
    let rows: Vec<(u64, Vec<f32>)> = client
        .pull_range("emb", KeyRange::new(starts[1] - 10, starts[1] + 6))
        .flat_map(|b| {
            let b = b.unwrap();
            let dim = b.dim as usize;
            b.keys
                .into_iter()
                .enumerate()
                .map(move |(i, k)| (k, b.values[i * dim..(i + 1) * dim].to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let got_keys: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let mut want_keys = block_keys.clone();
    want_keys.push(starts[1] + 5);
    assert_eq!(got_keys, want_keys);
    want.extend_from_slice(&values[4..8]);
    assert_eq!(rows.into_iter().flat_map(|r| r.1).collect::<Vec<_>>(), want);

    // A client whose map is stale (shard 0 "owns" everything) is told, not misrouted.
    let stale = ClusterMap {
        shards: vec![ShardEntry::new(
            [0, u64::MAX],
            cluster.map.shards[0].address.clone(),
        )],
        ..ClusterMap::default()
    };
    let stale_client = BlockingClient::connect(stale, ClientOptions::default()).unwrap();
    let err = stale_client
        .push("emb", &[starts[2] + 1], &[1.0; 4])
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(paramdb_client::Code::FailedPrecondition),
        "{err}"
    );
    assert!(err.to_string().contains("outside shard 0's range"), "{err}");
    assert_eq!(client.pull("emb", &[starts[2] + 1]).unwrap(), vec![0.0; 4]);
    cluster.stop();
}

/// A TCP proxy that can hold back everything the server sends, then cut the connection.
struct Proxy {
    addr: String,
    hold: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hold = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let (h, c) = (hold.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (c1, s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c1, s1, None));
                let (h, c) = (h.clone(), c.clone());
                std::thread::spawn(move || pipe(server, client, Some((h, c))));
            }
        });
        Proxy { addr, hold, cut }
    }
}

/// Copies `from` → `to`; in the server→client direction, drops what arrives while `hold` is
/// set and closes both sockets once `cut` is set.
fn pipe(mut from: TcpStream, mut to: TcpStream, ctl: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>) {
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 16 << 10];
    loop {
        if let Some((_, cut)) = &ctl {
            if cut.swap(false, Ordering::SeqCst) {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                let held = ctl
                    .as_ref()
                    .is_some_and(|(hold, _)| hold.load(Ordering::SeqCst));
                if !held && to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

#[test]
fn grpc_push_whose_reply_is_lost_is_retried_and_applied_once() {
    let cluster = Cluster::start(1, &[]);
    let direct = cluster.client();
    direct.create_table(TableSpec::new("t", 2)).unwrap();
    let proxy = Proxy::start(cluster.map.shards[0].address.clone());
    let mut map = cluster.map.clone();
    map.shards[0].address = proxy.addr.clone();
    let via_proxy = BlockingClient::connect(map, ClientOptions::default()).unwrap();
    assert_eq!(via_proxy.pull("t", &[1]).unwrap(), vec![0.0, 0.0]); // connection is up

    proxy.hold.store(true, Ordering::SeqCst);
    let pusher = {
        let c = via_proxy.clone();
        std::thread::spawn(move || c.push("t", &[1], &[3.0, 4.0]))
    };
    // Wait until the server has applied (and acknowledged into the void) the push.
    let deadline = Instant::now() + Duration::from_secs(20);
    while direct.stats().unwrap()[0].store.pushes < 1 {
        assert!(
            Instant::now() < deadline,
            "the push never reached the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    proxy.hold.store(false, Ordering::SeqCst);
    proxy.cut.store(true, Ordering::SeqCst);
    let ack = pusher
        .join()
        .unwrap()
        .expect("the client retries after the cut");
    assert!(
        ack.duplicate,
        "the retry must be recognised as already applied"
    );
    assert_eq!(
        direct.pull("t", &[1]).unwrap(),
        vec![3.0, 4.0],
        "applied exactly once"
    );
    let s = &direct.stats().unwrap()[0];
    assert_eq!((s.store.pushes, s.store.duplicate_pushes), (1, 1));
    cluster.stop();
}

#[test]
fn grpc_bad_input_gets_its_status_and_the_server_keeps_serving() {
    let map = ClusterMap {
        shards: vec![ShardEntry::new([0, 1_000_000], "127.0.0.1:0")],
        ..ClusterMap::default()
    };
    let cluster = Cluster::start_with(
        map,
        &["--max-keys", "1000", "--max-message-bytes", "1048576"],
    );
    let client = cluster.client();
    client.create_table(TableSpec::new("t", 3)).unwrap();
    client.push("t", &[5], &[1.0, 2.0, 3.0]).unwrap();
    let addr = format!("http://{}", cluster.map.shards[0].address);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = ParamdbClient::connect(addr.clone())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        let f = |v: &[f32]| paramdb_proto::packed::f32s_to_bytes(v).into();
        let push = |keys: Vec<u64>, values: &[f32], table: &str| v1::PushRequest {
            table: table.into(),
            client_id: 9,
            seq: 1,
            keys,
            values: f(values),
            parts: 1,
        };
        let cases: Vec<(&str, v1::PushRequest, Code)> = vec![
            (
                "wrong dim",
                push(vec![1], &[1.0, 2.0], "t"),
                Code::InvalidArgument,
            ),
            (
                "NaN",
                push(vec![1], &[1.0, f32::NAN, 0.0], "t"),
                Code::InvalidArgument,
            ),
            (
                "Inf",
                push(vec![1], &[f32::INFINITY, 0.0, 0.0], "t"),
                Code::InvalidArgument,
            ),
            (
                "unknown table",
                push(vec![1], &[1.0; 3], "nope"),
                Code::NotFound,
            ),
            (
                "out-of-range key",
                push(vec![2_000_000], &[1.0; 3], "t"),
                Code::FailedPrecondition,
            ),
            (
                "empty key list",
                push(vec![], &[], "t"),
                Code::InvalidArgument,
            ),
            (
                "too many keys",
                push((0..1001).collect(), &vec![0.5; 3003], "t"),
                Code::InvalidArgument,
            ),
            (
                "oversized message",
                push((0..900).collect(), &vec![0.5; 300_000], "t"),
                Code::ResourceExhausted,
            ),
            // Past 4× the limit tonic stops reading itself; it is the same refusal.
            (
                "message over 4× the limit",
                push((0..900).collect(), &vec![0.5; 1_500_000], "t"),
                Code::ResourceExhausted,
            ),
            // A name far over any table's length: refused as bad input, and quoted short
            // enough for the status to fit in gRPC's metadata.
            (
                "75 KB table name",
                push(vec![1], &[1.0; 3], &"n".repeat(75_000)),
                Code::InvalidArgument,
            ),
            (
                "10 KB unknown table name",
                push(vec![1], &[1.0; 3], &"t".repeat(10_000)),
                Code::InvalidArgument,
            ),
        ];
        for (what, req, code) in cases {
            let err = raw.push(req).await.expect_err(what);
            assert_eq!(err.code(), code, "{what}: {}", err.message());
            assert!(
                err.message().len() < 1000,
                "{what}: a {} byte message",
                err.message().len()
            );
        }
        // A pull's staleness bound is in entries or in milliseconds, not both.
        let err = raw
            .pull(v1::PullRequest {
                table: "t".into(),
                keys: vec![5],
                max_lag_entries: Some(10),
                max_lag_ms: Some(10),
            })
            .await
            .expect_err("two staleness bounds");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        // On an unreplicated shard a bound is met by the one server.
        let ok = raw
            .pull(v1::PullRequest {
                table: "t".into(),
                keys: vec![5],
                max_lag_ms: Some(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.dim, 3);
        // Malformed message bytes: a Pull whose body is not protobuf.
        let err = raw_call(
            &addr,
            "/paramdb.v1.Paramdb/Pull",
            vec![0xff, 0xff, 0xff, 0x0f, 0x01],
        )
        .await;
        assert_eq!(
            err.code(),
            Code::Internal,
            "malformed bytes: {}",
            err.message()
        );
    });
    // Still serving, data unchanged.
    assert_eq!(
        client.pull("t", &[5, 1]).unwrap(),
        vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(client.stats().unwrap()[0].store.pushes, 1);
    cluster.stop();
}

/// Sends `body` as the raw message of a unary call (no protobuf encoding) and returns the
/// status the server answers with.
async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> tonic::Status {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct Raw;
    struct RawEnc;
    struct RawDec;
    impl Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use prost::bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use prost::bytes::Buf;
            let mut v = vec![0; src.remaining()];
            src.copy_to_slice(&mut v);
            Ok(Some(v))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("malformed bytes must be refused")
}

/// With room for one request at a time, a second call while a range stream still holds its
/// slot is refused with RESOURCE_EXHAUSTED; once the stream is dropped, calls go through.
#[test]
fn grpc_concurrency_limit_refuses_with_resource_exhausted() {
    let map = ClusterMap {
        shards: vec![ShardEntry::new([0, 1_000_000], "127.0.0.1:0")],
        ..ClusterMap::default()
    };
    let cluster = Cluster::start_with(map, &["--max-concurrent", "1"]);
    let client = cluster.client();
    const DIM: usize = 1000;
    client
        .create_table(TableSpec::new("wide", DIM as u32))
        .unwrap();
    // 3,000 rows of 4 KB: more than the HTTP/2 stream window (4 MB) plus the server's few
    // blocks of read-ahead, so an unread stream keeps its producer (and its slot) waiting.
    for start in (0..3000u64).step_by(500) {
        client
            .push_range("wide", start, &vec![0.5; 500 * DIM])
            .unwrap();
    }
    let addr = format!("http://{}", cluster.map.shards[0].address);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = ParamdbClient::connect(addr.clone()).await.unwrap();
        let mut stream = raw
            .pull_range(v1::PullRangeRequest {
                table: "wide".into(),
                start: 0,
                end: 3000,
                block_rows: 16,
                since_lsn: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
        let mut other = ParamdbClient::connect(addr.clone()).await.unwrap();
        let pull = v1::PullRequest {
            table: "wide".into(),
            keys: vec![7],
            ..Default::default()
        };
        let err = other.pull(pull.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
        assert!(err.message().contains("concurrent"), "{}", err.message());
        drop(stream);
        // The server notices the cancelled stream, and its producer gives the slot back.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match other.pull(pull.clone()).await {
                Ok(r) => {
                    assert_eq!(r.into_inner().values.len(), DIM * 4);
                    break;
                }
                Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("after the stream ended: {e}"),
            }
        }
    });
    cluster.stop();
}

/// While a restarted server replays its log, standard health checking says NOT_SERVING and
/// calls get UNAVAILABLE; once replay is done it says SERVING and the data is there.
#[test]
fn grpc_health_is_not_serving_while_the_log_replays() {
    use paramdb_engine::{ClientId, Store, StoreOptions, SyncPolicy};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let tmp = tempfile::tempdir().unwrap();
    // About 400 MB of log and no checkpoint: the next open replays all of it.
    {
        let opts = StoreOptions {
            sync: SyncPolicy::None,
            checkpoint_log_bytes: u64::MAX,
            checkpoint_interval: None,
            background: false,
            ..StoreOptions::default()
        };
        let store = Store::open(tmp.path().join("shard-0"), opts).unwrap();
        store.create_table(TableSpec::new("t", 100)).unwrap();
        let values = vec![0.5f32; 1000 * 100];
        for b in 0..1000u64 {
            let keys: Vec<u64> = (b * 1000..(b + 1) * 1000).collect();
            store
                .push("t", ClientId::ANONYMOUS, 0, &keys, &values)
                .unwrap();
        }
    } // dropped without a checkpoint
    let (_servers, file) =
        paramdb_tests::servers::start(&crate::cluster::paramdb_bin(), tmp.path(), 1, &[]);
    let map = ClusterMap::load(&file).unwrap();
    let addr = format!("http://{}", map.shards[0].address);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let status =
            |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
        let first = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(status(first), ServingStatus::NotServing as i32);
        let mut raw = ParamdbClient::connect(addr.clone()).await.unwrap();
        let pull = v1::PullRequest {
            table: "t".into(),
            keys: vec![7],
            ..Default::default()
        };
        let err = raw.pull(pull.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        assert!(err.message().contains("replaying"), "{}", err.message());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = health
                .check(HealthCheckRequest {
                    service: "paramdb.v1.Paramdb".into(),
                })
                .await
                .unwrap();
            if status(r) == ServingStatus::Serving as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "never became SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let values = raw.pull(pull).await.unwrap().into_inner().values;
        assert_eq!(
            paramdb_proto::packed::bytes_to_f32s(&values).unwrap(),
            vec![0.5; 100]
        );
    });
}

/// SIGTERM while a client holds a PullRange stream open without reading: the server waits out
/// its shutdown grace period, cancels the stream (the client gets an error, not a clean end),
/// checkpoints and exits 0, so the next start has nothing to replay.
#[test]
fn sigterm_finishes_despite_a_stalled_range_stream() {
    let mut cluster = Cluster::start(1, &["--shutdown-grace-secs", "1"]);
    let client = cluster.client();
    client.create_table(TableSpec::new("big", 100)).unwrap();
    // 24 MB of rows: more than the client's HTTP/2 windows (4 MB a stream) hold in flight.
    for start in (0..60_000u64).step_by(10_000) {
        let keys: Vec<u64> = (start..start + 10_000).collect();
        client
            .push("big", &keys, &vec![0.25; 10_000 * 100])
            .unwrap();
    }
    let addr = format!("http://{}", cluster.map.shards[0].address);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The channel stays open (dropping it would close the connection, which the server sees
    // as a cancelled stream): a client that is alive but stopped reading.
    let (_channel, mut stream) = rt.block_on(async {
        // Default HTTP/2 windows (64 KB): the server's sends block as soon as we stop reading.
        let mut raw = ParamdbClient::connect(addr).await.unwrap();
        let mut stream = raw
            .pull_range(v1::PullRangeRequest {
                table: "big".into(),
                start: 0,
                end: u64::MAX,
                block_rows: 16,
                since_lsn: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
        (raw, stream)
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = cluster.procs[0].id();
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = cluster.procs[0].try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server was still up 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "did not wait out the grace period: {:?}",
        started.elapsed()
    );
    // The stream must not end as if complete: reading on gives an error before any clean end.
    let ended_in_error = rt.block_on(async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    });
    assert!(
        ended_in_error,
        "a cancelled stream ended like a complete one"
    );
    // Checkpointed on the way out: a restart replays nothing and has every row.
    cluster.restart(0);
    let client = cluster.client();
    assert_eq!(
        client.stats().unwrap()[0].store.checkpoint_lsn,
        client.stats().unwrap()[0].store.last_lsn
    );
    assert_eq!(client.pull("big", &[59_999]).unwrap(), vec![0.25; 100]);
    cluster.stop();
}
