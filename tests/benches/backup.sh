#!/usr/bin/env bash
# Backup of a ~10 GB shard: a first backup by hard links, a first backup by copying, and an
# incremental copying backup after 1% of the rows changed (re-imported). Prints seconds and
# bytes. Needs the `paramdb` binary (cargo build --release --workspace --bins), the venv's
# numpy (make pydeps), and about 45 GB of free disk under $BENCH_DIR.
# Usage: tests/benches/backup.sh [ROWS] (default 23,000,000 rows of dim 100, ~10 GB stored)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
P="${CARGO_TARGET_DIR:-$ROOT/target}/release/paramdb"
PY="$ROOT/.venv/bin/python"
ROWS="${1:-23000000}"
DIR="${BENCH_DIR:-/tmp/paramdb-backup-bench}"
mkdir -p "$DIR" && cd "$DIR"
rm -rf data linked copied restored cp-peer
# The generated files are kept for the next run with the same ROWS.
[ -f "all.npy" ] && [ "$(cat rows 2>/dev/null)" = "$ROWS" ] || "$PY" - "$ROWS" <<'PY'
import sys, numpy as np
rows, dim, chunk = int(sys.argv[1]), 100, 1_000_000
rng = np.random.default_rng(1)
keys = np.arange(rows, dtype=np.uint64)
np.save("all.keys.npy", keys)
m = np.lib.format.open_memmap("all.npy", mode="w+", dtype="<f4", shape=(rows, dim))
for s in range(0, rows, chunk):
    m[s:s + chunk] = rng.standard_normal((min(chunk, rows - s), dim), dtype=np.float32)
m.flush()
pick = np.sort(rng.choice(rows, rows // 100, replace=False)).astype(np.uint64)
np.save("change.keys.npy", pick)
np.save("change.npy", rng.standard_normal((len(pick), dim), dtype=np.float32))
open("rows", "w").write(str(rows))
PY

t() { local s; s=$(date +%s.%N); "$@"; echo "  $(echo "$(date +%s.%N) - $s" | bc) s"; }
echo "== import $ROWS rows"
t "$P" import big --format npy --in all.npy --data-dir data
du -sb data/shard-0/rocksdb | awk '{printf "  shard rocksdb: %.2f GB\n", $1/1e9}'
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== backup by hard links"
t "$P" backup --data-dir data --to linked
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== backup by copying (first in its target)"
t "$P" backup --data-dir data --to copied --copy
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== peer: cp -r of the shard's rocksdb directory, then sync"
t sh -c 'cp -r data/shard-0/rocksdb cp-peer && sync'
rm -rf cp-peer
echo "== 1% of the rows changed (re-imported)"
t "$P" import big --format npy --in change.npy --data-dir data
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== incremental backup by copying"
t "$P" backup --data-dir data --to copied --copy
echo "== restore of the incremental set"
t "$P" restore --from copied --to restored
du -sb copied/backup-000002 | awk '{printf "  second set: %.2f GB (its files, links included)\n", $1/1e9}'
