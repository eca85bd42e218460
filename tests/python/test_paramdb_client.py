"""The Python package (client/python, installed with pip) against a running 3-shard cluster:
pull/push/range round trips with numpy, routing across shards, exactly-once retries of a
push, bad input refused with clear errors, and retries that give up on a dead address.

Usage: test_paramdb_client.py CLUSTER_FILE"""

import sys

import numpy as np

import paramdb


def expect_error(fn, code, text):
    try:
        fn()
    except paramdb.ParamdbError as e:
        assert e.code is not None and e.code.name == code, (e.code, str(e))
        assert text in str(e), str(e)
        return
    raise AssertionError(f"expected {code}")


def main():
    c = paramdb.connect(sys.argv[1])
    assert len(c.shards) == 3, c.shards
    c.create_table("py", dim=4)  # rule add, zeros
    assert "py" in c.list_tables()
    assert c.describe_table("py")["dim"] == 4

    # Keys in every shard (an even split of the u64 space), out of order.
    keys = np.array([2**64 - 2, 7, 2**63 + 5, 2**62, 3, 2**64 // 3 * 2 + 1], dtype=np.uint64)
    owners = {c._route(np.array([k], dtype=np.uint64))[0] for k in keys}
    assert owners == {0, 1, 2}, owners
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((len(keys), 4)).astype(np.float32)
    r = c.push("py", keys, vals)
    assert not r["duplicate"]
    np.testing.assert_array_equal(c.pull("py", keys), vals)
    # Never-pushed keys read as the initial value.
    np.testing.assert_array_equal(c.pull("py", [11, 2**63 + 11]), np.zeros((2, 4), np.float32))

    # The same push again with the same sequence number is acknowledged, not applied.
    again = c.push("py", keys, vals, seq=r["seq"])
    assert again["duplicate"], again
    np.testing.assert_array_equal(c.pull("py", keys), vals)
    # A key given twice is refused, as the Rust client refuses it, before any shard is sent
    # its part: the push across shards 0 and 2 changes nothing anywhere.
    expect_error(
        lambda: c.push("py", [7, 7, 2**64 - 2], np.ones((3, 4), np.float32)),
        "INVALID_ARGUMENT",
        "more than once",
    )
    np.testing.assert_array_equal(c.pull("py", keys), vals)
    # A new sequence number is applied (add rule).
    c.push("py", [7, 3], np.ones((2, 4), np.float32))
    got = c.pull("py", [7, 3])
    np.testing.assert_allclose(got[0], vals[1] + 1, rtol=1e-6)
    np.testing.assert_allclose(got[1], vals[4] + 1, rtol=1e-6)

    # Range pulls stream each shard's stored rows in key order.
    rk, rv = c.pull_range("py")
    assert list(rk) == sorted(int(k) for k in keys), rk
    np.testing.assert_array_equal(rv, c.pull("py", rk))
    lo, hi = 2**62, 2**63 + 6
    sk, _ = c.pull_range("py", lo, hi)
    assert [int(k) for k in sk] == sorted(int(k) for k in keys if lo <= int(k) < hi), sk
    blocks = list(c.iter_range("py", block_rows=1))
    assert len(blocks) == len(keys) and all(len(k) == 1 for k, _ in blocks)

    # Deletes: by key across shards (retried with the same seq: applied once), and a range
    # spanning shard boundaries. Deleted rows pull zeros (the initializer) and are no longer
    # stored; a push starts them from zero again.
    d = c.delete("py", [7, 2**64 - 2, 7])
    assert not d["duplicate"]
    assert c.delete("py", [7, 2**64 - 2], seq=d["seq"])["duplicate"]
    np.testing.assert_array_equal(c.pull("py", [7, 2**64 - 2]), np.zeros((2, 4), np.float32))
    c.delete_range("py", 2**62, 2**63 + 6)
    rk, _ = c.pull_range("py")
    gone = {7, 2**64 - 2} | {int(k) for k in keys if 2**62 <= int(k) < 2**63 + 6}
    assert sorted(int(k) for k in rk) == sorted(int(k) for k in keys if int(k) not in gone), rk
    c.push("py", [7], np.full((1, 4), 2.0, np.float32))
    np.testing.assert_array_equal(c.pull("py", [7]), np.full((1, 4), 2.0, np.float32))
    expect_error(lambda: c.delete_range("py", 5, 5), "INVALID_ARGUMENT", "nothing to delete")
    expect_error(lambda: c.delete("nope", [1]), "NOT_FOUND", "nope")

    # Lifecycle policies: admission keeps a key's first push out, the second gets it a row.
    c.create_table("adm", 2, lifecycle="admit_after=2")
    assert c.describe_table("adm")["lifecycle"] == "admit_after=2"
    c.push("adm", [11], np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(c.pull("adm", [11]), np.zeros((1, 2), np.float32))
    c.push("adm", [11], np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(c.pull("adm", [11]), np.ones((1, 2), np.float32))
    c.set_lifecycle("adm", "ttl=1h")
    assert c.describe_table("adm")["lifecycle"] == "ttl=1h"
    expect_error(lambda: c.set_lifecycle("adm", "ttl=0"), "INVALID_ARGUMENT", "ttl")

    # Bad input gets a clear error, and the cluster keeps serving.
    expect_error(lambda: c.pull("nope", [1]), "NOT_FOUND", "nope")
    expect_error(lambda: c.push("py", [1], np.ones(5, np.float32)), "INVALID_ARGUMENT", "")
    expect_error(
        lambda: c.push("py", [1], np.array([1, np.nan, 0, 0], np.float32)),
        "INVALID_ARGUMENT",
        "NaN",
    )
    try:
        c.pull("py", [-1])
        raise AssertionError("negative key accepted")
    except paramdb.ParamdbError as e:
        assert "non-negative" in str(e)
    np.testing.assert_array_equal(c.pull("py", [3]), [vals[4] + 1])

    # Nothing listens here: retries back off, then give up naming the address.
    dead = paramdb.connect(
        [paramdb.Shard(0, 2**64 - 1, "127.0.0.1:1")], max_retries=2, backoff_initial=0.01
    )
    expect_error(lambda: dead.pull("py", [1]), "UNAVAILABLE", "after 3 attempts")
    dead.close()

    c.drop_table("py")
    assert "py" not in c.list_tables()
    c.close()
    print("python package: ok")


if __name__ == "__main__":
    main()
