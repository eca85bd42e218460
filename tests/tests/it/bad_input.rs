//! Bad requests get a typed error; nothing is logged or applied and the store keeps serving.

use paramdb_engine::{Classify, ClientId, InputError, PushError, Store, TableSpec, UpdateRule};

use crate::common::manual_opts;

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = paramdb_engine::StoreOptions {
        max_request_bytes: 64 << 10,
        ..manual_opts()
    };
    let store = Store::open(tmp.path(), opts.clone()).unwrap();
    store
        .create_table(TableSpec::new("t", 3).with_rule(UpdateRule::Sgd { lr: 0.5 }))
        .unwrap();
    store
        .push("t", ClientId(1), 1, &[7], &[1.0, 2.0, 3.0])
        .unwrap();
    let before = store.pull("t", &[7, 8]).unwrap();
    let lsn = store.stats().last_lsn;

    let c = ClientId(2);
    let cases: Vec<(&str, Result<_, PushError>)> = vec![
        ("wrong dim", store.push("t", c, 1, &[7], &[1.0, 2.0])),
        (
            "nan",
            store.push("t", c, 1, &[7, 8], &[1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0]),
        ),
        (
            "inf",
            store.push("t", c, 1, &[7], &[f32::INFINITY, 2.0, 3.0]),
        ),
        (
            "unknown table",
            store.push("nope", c, 1, &[7], &[1.0, 2.0, 3.0]),
        ),
        ("empty", store.push("t", c, 1, &[], &[])),
        ("duplicate key", store.push("t", c, 1, &[7, 7], &[1.0; 6])),
        ("seq 0", store.push("t", c, 0, &[7], &[1.0; 3])),
        (
            "too large",
            store.push(
                "t",
                c,
                1,
                &(0..10_000).collect::<Vec<_>>(),
                &vec![1.0; 30_000],
            ),
        ),
        (
            "range overflow",
            store.push_range("t", c, 1, u64::MAX - 1, &[1.0; 9]),
        ),
        ("range wrong dim", store.push_range("t", c, 1, 0, &[1.0; 4])),
        (
            "range nan",
            store.push_range("t", c, 1, 0, &[1.0, f32::NEG_INFINITY, 0.0]),
        ),
    ];
    for (what, r) in cases {
        let err = r.expect_err(what);
        assert!(err.is_bad_input(), "{what}: {err}");
        let PushError::Input(input) = &err else {
            panic!("{what}: not an input error: {err}");
        };
        match (what, input) {
            ("wrong dim" | "range wrong dim", InputError::DimensionMismatch { dim: 3, .. })
            | (
                "nan",
                InputError::NonFinite {
                    key: 8, index: 1, ..
                },
            )
            | (
                "inf",
                InputError::NonFinite {
                    key: 7, index: 0, ..
                },
            )
            | (
                "range nan",
                InputError::NonFinite {
                    key: 0, index: 1, ..
                },
            )
            | ("unknown table", InputError::UnknownTable { .. })
            | ("empty", InputError::EmptyRequest { .. })
            | ("duplicate key", InputError::DuplicateKey { key: 7, .. })
            | ("seq 0", InputError::InvalidSequence { client: 2 })
            | ("too large", InputError::RequestTooLarge { .. })
            | ("range overflow", InputError::KeyRangeOverflow { .. }) => {}
            _ => panic!("{what}: unexpected error {err}"),
        }
    }
    let bad = |e: &dyn Classify| e.is_bad_input();
    for (what, refused_as_bad_input) in [
        (
            "pull unknown",
            store.pull("nope", &[1]).err().map(|e| bad(&e)),
        ),
        ("pull empty", store.pull("t", &[]).err().map(|e| bad(&e))),
        (
            "bad spec",
            store
                .create_table(TableSpec::new("x", 0))
                .err()
                .map(|e| bad(&e)),
        ),
        (
            "exists",
            store
                .create_table(TableSpec::new("t", 3))
                .err()
                .map(|e| bad(&e)),
        ),
        (
            "drop unknown",
            store.drop_table("nope").err().map(|e| bad(&e)),
        ),
        (
            "scan unknown",
            store
                .scan("nope", paramdb_engine::KeyRange::all())
                .err()
                .map(|e| bad(&e)),
        ),
    ] {
        assert_eq!(refused_as_bad_input, Some(true), "{what}");
    }

    assert_eq!(store.stats().last_lsn, lsn, "nothing was logged");
    assert_eq!(
        store.pull("t", &[7, 8]).unwrap(),
        before,
        "nothing was applied"
    );
    // Still serving, and client 2's sequence 1 was never consumed by the refusals.
    let ack = store.push("t", c, 1, &[8], &[2.0, 2.0, 2.0]).unwrap();
    assert!(!ack.duplicate);
    drop(store);
    let store = Store::open(tmp.path(), opts).unwrap();
    assert_eq!(store.pull("t", &[7]).unwrap(), before[..3].to_vec());
    assert_eq!(store.pull("t", &[8]).unwrap(), vec![-1.0, -1.0, -1.0]);
}
