"""The client: routing by key range, retries with backoff, exactly-once pushes."""

from __future__ import annotations

import itertools
import os
import random
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from . import paramdb_pb2 as pb
from . import paramdb_pb2_grpc as pb_grpc

KEY_MAX = 2**64 - 1
# The codes the Rust client retries: the call may not have reached the shard, or its answer
# was lost. A push retried after its answer was lost is acknowledged as a duplicate.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}
MAX_MESSAGE = 256 << 20


def _quote(s: str) -> str:
    """A user string for an error message, cut to 64 characters as the Rust crates do."""
    return repr(s) if len(s) <= 64 else f"{s[:64]!r}… ({len(s.encode())} bytes)"


class ParamdbError(Exception):
    """A call failed: refused by a shard (bad input, unknown table, …) or out of retries."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Shard:
    """One shard of the cluster: the keys in [start, end) live at `address`."""

    start: int
    end: int
    address: str


@dataclass
class Cluster:
    shards: list
    token: Optional[str] = None
    tls: Optional[dict] = None


def load_cluster(path: Union[str, os.PathLike]) -> Cluster:
    """Reads a cluster file (`[[shard]] range = [start, end] address = "host:port"`, plus the
    optional `token_file` and `[tls]`); relative paths are relative to the file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(path))
    rel = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    shards = []
    for s in doc.get("shard", []):
        start, end = s["range"]
        shards.append(Shard(int(start), int(end), str(s["address"])))
    if not shards:
        raise ParamdbError(f"{path}: no [[shard]] entries")
    shards.sort(key=lambda s: s.start)
    for a, b in zip(shards, shards[1:]):
        if a.end != b.start:
            raise ParamdbError(f"{path}: shard ranges must be contiguous ({a.end} then {b.start})")
    token = None
    if "token_file" in doc:
        with open(rel(doc["token_file"])) as f:
            token = f.read().strip()
    tls = None
    if "tls" in doc:
        tls = {k: (rel(v) if k != "domain" else v) for k, v in doc["tls"].items()}
    return Cluster(shards, token, tls)


def connect(
    cluster: Union[str, os.PathLike, Sequence[Shard]],
    *,
    token: Optional[str] = None,
    timeout: float = 30.0,
    max_retries: int = 30,
    backoff_initial: float = 0.02,
    backoff_max: float = 1.0,
) -> "Client":
    """Connects to a cluster: a cluster file's path, an address "host:port" (one shard holding
    every key), or a list of `Shard`. The token is `token`, else the cluster file's
    `token_file`, else the `PARAMDB_TOKEN` environment variable."""
    if isinstance(cluster, (list, tuple)):
        c = Cluster(list(cluster))
    elif isinstance(cluster, str) and ":" in cluster and not os.path.exists(cluster):
        c = Cluster([Shard(0, KEY_MAX, cluster)])
    else:
        c = load_cluster(cluster)
    token = token or c.token or os.environ.get("PARAMDB_TOKEN")
    return Client(c, token, timeout, max_retries, backoff_initial, backoff_max)


class Client:
    """A connection to every shard of a cluster. Thread-safe; sequence numbers are shared."""

    def __init__(self, cluster: Cluster, token, timeout, max_retries, backoff_initial, backoff_max):
        self.shards = list(cluster.shards)
        self._starts = np.array([s.start for s in self.shards], dtype=np.uint64)
        self._ends = np.array([s.end for s in self.shards], dtype=np.uint64)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = (backoff_initial, backoff_max)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # Never 0: 0 is the anonymous client, which gets no deduplication.
        self.client_id = random.SystemRandom().randrange(1, 2**63)
        #: Calls retried so far (after a retryable failure), over the client's life.
        self.retries = 0
        self._seq = itertools.count(1)
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        self._channels = []
        for s in self.shards:
            if cluster.tls:
                t = cluster.tls
                read = lambda k: open(t[k], "rb").read() if k in t else None  # noqa: E731
                creds = grpc.ssl_channel_credentials(read("ca"), read("key"), read("cert"))
                opts = options + (
                    [("grpc.ssl_target_name_override", t["domain"])] if "domain" in t else []
                )
                ch = grpc.secure_channel(s.address, creds, options=opts)
            else:
                ch = grpc.insecure_channel(s.address, options=options)
            self._channels.append(ch)
        self._stubs = [pb_grpc.ParamdbStub(ch) for ch in self._channels]

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_seq(self) -> int:
        """Reserves a sequence number (to retry a push yourself, pass it as `seq`)."""
        return next(self._seq)

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, shard: int, method: str, request):
        delay, cap = self.backoff
        for attempt in itertools.count(1):
            try:
                return getattr(self._stubs[shard], method)(
                    request, timeout=self.timeout, metadata=self._metadata
                )
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRYABLE and attempt <= self.max_retries:
                    self.retries += 1
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, cap)
                    continue
                what = f"shard {shard} ({self.shards[shard].address}): {code.name}: {e.details()}"
                if code in RETRYABLE:
                    what = f"{what} (after {attempt} attempts)"
                raise ParamdbError(what, code) from None

    def _route(self, keys: np.ndarray) -> np.ndarray:
        """The shard of each key."""
        idx = np.searchsorted(self._starts, keys, side="right").astype(np.int64) - 1
        bad = (idx < 0) | (keys >= self._ends[np.maximum(idx, 0)])
        if bad.any():
            raise ParamdbError(f"key {int(keys[bad][0])} is in no shard's range")
        return idx

    @staticmethod
    def _keys(keys) -> np.ndarray:
        """Keys as a flat uint64 array: from an integer array, or any iterable of ints."""
        if isinstance(keys, np.ndarray):
            if keys.dtype.kind not in "ui" or (keys.dtype.kind == "i" and keys.size and keys.min() < 0):
                raise ParamdbError("keys must be non-negative integers")
            return np.ascontiguousarray(keys, dtype=np.uint64).ravel()
        ints = [int(k) for k in keys]
        if any(k < 0 or k > KEY_MAX for k in ints):
            raise ParamdbError("keys must be non-negative integers below 2**64")
        return np.array(ints, dtype=np.uint64)

    def _each_shard(self, keys: np.ndarray):
        """(shard, positions of its keys) for every shard the keys touch."""
        shard_of = self._route(keys)
        for s in np.unique(shard_of):
            yield int(s), np.nonzero(shard_of == s)[0]

    # -- tables -------------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        dim: int,
        init: str = "",
        rule: str = "",
        seed: int = 0,
        lifecycle: str = "",
    ):
        """Creates `name` on every shard. `init`: "zeros", "uniform(low,high)", "normal(std)";
        `rule`: "add", "sgd(lr)", "adagrad(lr,eps,initial_accumulator)",
        "adam(lr,beta1,beta2,eps)"; `lifecycle`: "none" or e.g. "ttl=7d,admit_after=2,
        max_rows=1000000" (`max_rows` per shard)."""
        spec = pb.TableSpec(
            name=name, dim=dim, init=init, rule=rule, seed=seed, lifecycle=lifecycle
        )
        for s in range(len(self.shards)):
            self._call(s, "CreateTable", pb.CreateTableRequest(spec=spec))

    def drop_table(self, name: str) -> None:
        for s in range(len(self.shards)):
            self._call(s, "DropTable", pb.DropTableRequest(name=name))

    def describe_table(self, name: str) -> dict:
        info = self._call(0, "DescribeTable", pb.DescribeTableRequest(name=name))
        sp = info.spec
        return {
            "name": sp.name,
            "dim": sp.dim,
            "init": sp.init,
            "rule": sp.rule,
            "seed": sp.seed,
            "lifecycle": sp.lifecycle,
        }

    def set_lifecycle(self, name: str, lifecycle: str) -> None:
        """Replaces the table's lifecycle policies on every shard ("none" removes them)."""
        for s in range(len(self.shards)):
            self._call(
                s, "SetLifecycle", pb.SetLifecycleRequest(table=name, lifecycle=lifecycle)
            )

    def list_tables(self) -> list:
        r = self._call(0, "ListTables", pb.ListTablesRequest())
        return [t.spec.name for t in r.tables]

    # -- rows ---------------------------------------------------------------------------------

    def pull(self, table: str, keys) -> np.ndarray:
        """The rows of `keys` as a float32 array of shape (len(keys), dim). Keys never pushed
        read as the table's initial value."""
        keys = self._keys(keys)
        out = None
        for s, pos in self._each_shard(keys):
            r = self._call(s, "Pull", pb.PullRequest(table=table, keys=keys[pos].tolist()))
            vals = np.frombuffer(r.values, dtype="<f4").reshape(len(pos), r.dim)
            if out is None:
                out = np.empty((len(keys), r.dim), dtype=np.float32)
            out[pos] = vals
        if out is None:
            dim = self.describe_table(table)["dim"]
            out = np.empty((0, dim), dtype=np.float32)
        return out

    def push(self, table: str, keys, values, seq: Optional[int] = None) -> dict:
        """Applies `values` (len(keys) × dim) to `keys` under the table's update rule. Every
        shard's part carries the same sequence number, and a retry reuses it, so the push is
        applied exactly once. Returns {"seq": …, "duplicate": True if every shard had already
        applied it}.

        The same rule as the Rust client's, checked before any shard is sent its part (so a
        refused push is not half applied): a key given twice is refused (sum duplicates
        first), and so are NaN and infinities, with INVALID_ARGUMENT."""
        keys = self._keys(keys)
        values = np.asarray(values, dtype=np.float32)
        if keys.size == 0:
            raise ParamdbError("no keys to push", grpc.StatusCode.INVALID_ARGUMENT)
        if values.size % keys.size != 0:
            raise ParamdbError(
                f"{values.size} values for {keys.size} keys", grpc.StatusCode.INVALID_ARGUMENT
            )
        values = values.reshape(keys.size, -1)
        uniq, counts = np.unique(keys, return_counts=True)
        if uniq.size < keys.size:
            key = int(uniq[np.argmax(counts > 1)])
            raise ParamdbError(
                f"key {key} appears more than once in one push to table {_quote(table)} "
                "(duplicate keys are refused: sum them first)",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ParamdbError(
                f"value {col} of key {int(keys[row])} in a push to table {_quote(table)} is "
                f"{values[row, col]} (NaN and infinities are refused)",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        seq = self.next_seq() if seq is None else seq
        dup = True
        # Every part says how many shards the push went to: a cluster backup's cut keeps a
        # push whole by it.
        parts = list(self._each_shard(keys))
        for s, pos in parts:
            r = self._call(
                s,
                "Push",
                pb.PushRequest(
                    table=table,
                    client_id=self.client_id,
                    seq=seq,
                    keys=keys[pos].tolist(),
                    values=np.ascontiguousarray(values[pos], dtype="<f4").tobytes(),
                    parts=len(parts),
                ),
            )
            dup = dup and r.duplicate
        return {"seq": seq, "duplicate": dup}

    def delete(self, table: str, keys, seq: Optional[int] = None) -> dict:
        """Deletes the rows of `keys`: each then pulls the table's initial value again, and a
        push starts it from there. Logged and applied exactly once like a push (every shard's
        part carries the same sequence number, and a retry reuses it). Repeated keys are
        harmless. Returns {"seq": …, "duplicate": …} as `push` does."""
        keys = self._keys(keys)
        if keys.size == 0:
            raise ParamdbError("no keys to delete", grpc.StatusCode.INVALID_ARGUMENT)
        seq = self.next_seq() if seq is None else seq
        dup = True
        parts = list(self._each_shard(keys))
        for s, pos in parts:
            r = self._call(
                s,
                "DeleteRows",
                pb.DeleteRowsRequest(
                    table=table,
                    client_id=self.client_id,
                    seq=seq,
                    keys=keys[pos].tolist(),
                    parts=len(parts),
                ),
            )
            dup = dup and r.duplicate
        return {"seq": seq, "duplicate": dup}

    def delete_range(self, table: str, start: int, end: int, seq: Optional[int] = None) -> dict:
        """Deletes every row with a key in [start, end), stored or not; each shard deletes
        its part, all under one sequence number."""
        if not 0 <= start < end <= KEY_MAX:
            raise ParamdbError(
                f"empty or invalid key range [{start}, {end}): nothing to delete",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        seq = self.next_seq() if seq is None else seq
        dup = True
        spans = [
            (s, max(start, shard.start), min(end, shard.end)) for s, shard in enumerate(self.shards)
        ]
        spans = [(s, lo, hi) for s, lo, hi in spans if lo < hi]
        for s, lo, hi in spans:
            r = self._call(
                s,
                "DeleteRange",
                pb.DeleteRangeRequest(
                    table=table,
                    client_id=self.client_id,
                    seq=seq,
                    start=lo,
                    end=hi,
                    parts=len(spans),
                ),
            )
            dup = dup and r.duplicate
        return {"seq": seq, "duplicate": dup}

    def iter_range(
        self, table: str, start: int = 0, end: int = KEY_MAX, block_rows: int = 0
    ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Streams the stored rows (pushed at least once) with keys in [start, end), in key
        order, as (keys uint64, values float32 (n, dim)) blocks. A stream broken by a retryable
        failure resumes after the last key it delivered."""
        for s, shard in enumerate(self.shards):
            lo, hi = max(start, shard.start), min(end, shard.end)
            delay, cap = self.backoff
            attempt = 0
            while lo < hi:
                attempt += 1
                req = pb.PullRangeRequest(table=table, start=lo, end=hi, block_rows=block_rows)
                try:
                    # No deadline: a range can be long; each block arrives as it is read.
                    for block in self._stubs[s].PullRange(req, metadata=self._metadata):
                        keys = np.array(block.keys, dtype=np.uint64)
                        vals = np.frombuffer(block.values, dtype="<f4").reshape(len(keys), -1)
                        if len(keys):
                            lo = int(keys[-1]) + 1
                            yield keys, vals
                    break
                except grpc.RpcError as e:
                    code = e.code()
                    if code not in RETRYABLE or attempt > self.max_retries:
                        raise ParamdbError(
                            f"shard {s} ({shard.address}): {code.name}: {e.details()}", code
                        ) from None
                    self.retries += 1
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, cap)

    def pull_range(
        self, table: str, start: int = 0, end: int = KEY_MAX
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Every stored row with a key in [start, end): (keys, values) in key order."""
        blocks = list(self.iter_range(table, start, end))
        if not blocks:
            dim = self.describe_table(table)["dim"]
            return np.empty(0, dtype=np.uint64), np.empty((0, dim), dtype=np.float32)
        return (np.concatenate([k for k, _ in blocks]), np.concatenate([v for _, v in blocks]))

    def checkpoint(self) -> None:
        for s in range(len(self.shards)):
            self._call(s, "Checkpoint", pb.CheckpointRequest())
