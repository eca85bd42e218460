"""Pushes all-ones rows to 100 keys spread over the whole key space (so over every shard) of table `loop` N times through the paramdb package,
printing a line after each acknowledged push, while the caller kills and restarts shards.
A push whose answer is lost is retried with the same sequence number, so at the end every
value must be exactly N.

Usage: push_loop.py CLUSTER_FILE N"""

import sys

import numpy as np

import paramdb

STEP = 2**64 // 100


def main():
    c = paramdb.connect(sys.argv[1], backoff_max=0.2)
    n = int(sys.argv[2])
    c.create_table("loop", dim=2)
    keys = np.arange(100, dtype=np.uint64) * np.uint64(STEP)
    ones = np.ones((100, 2), np.float32)
    for i in range(n):
        c.push("loop", keys, ones)
        print(f"acked {i + 1}", flush=True)
    got = c.pull("loop", keys)
    assert (got == n).all(), got
    print(f"retries {c.retries}", flush=True)
    print("push loop: ok", flush=True)


if __name__ == "__main__":
    main()
