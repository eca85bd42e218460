"""paramdb's Python client: pull and push parameter rows by key and by key range.

    import paramdb
    c = paramdb.connect("cluster.toml")
    c.create_table("emb", dim=64, init="normal(0.01)", rule="adagrad(0.1,1e-8,0.1)")
    rows = c.pull("emb", [3, 17, 2**40])          # numpy float32, shape (3, 64)
    c.push("emb", [3, 17], grads)                 # applied exactly once, retries included
    keys, values = c.pull_range("emb", 0, 2**32)  # every stored row in [0, 2**32)

Keys are routed to shards by the cluster file's key ranges, as the Rust client does, and a
failed call is retried with backoff; a retried push reuses its sequence number, so each shard
applies it once.
"""

from .client import Client, ParamdbError, Shard, connect, load_cluster

__all__ = ["Client", "ParamdbError", "Shard", "connect", "load_cluster"]
