#!/usr/bin/env bash
# Rows stored and RSS over a long word2vec run with a TTL or a size cap, against none (issue #19).
# Skip-gram on IMDb's train.txt, --min-count 1, 5 epochs, one embedded shard; one run per policy,
# one after another. Every 10 s: the trainer's RSS (VmRSS) and the exact row counts of m.in and
# m.out (`paramdb inspect --exact --json` on the live directory, read-only). Prints Markdown.
#
#   cargo build --release --workspace --bins
#   BENCH_DIR=/var/tmp/lc tests/benches/lifecycle_long.sh [none ttl=30s max_rows=40000 ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${PARAMDB:-$PWD/${CARGO_TARGET_DIR:-target}/release/paramdb}
DATA=${DATA:-$PWD/../shared/data}
DIR=${BENCH_DIR:-/var/tmp/paramdb-lifecycle-long}
EPOCHS=${EPOCHS:-5}
EVERY=${EVERY:-10}
[ $# -gt 0 ] || set -- none ttl=30s max_rows=40000
mkdir -p "$DIR"

rows() { # rows of m.in and m.out, exact
    "$BIN" inspect --data-dir "$1" --exact --json 2>/dev/null | python3 -c '
import json, sys
t = {x["name"]: x["rows"] for s in json.load(sys.stdin)["shards"] for x in s["tables"]}
print(t.get("m.in", 0), t.get("m.out", 0))' 2>/dev/null || echo "- -"
}

for cfg in "$@"; do
    d="$DIR/$cfg"
    rm -rf "$d"
    life=()
    [ "$cfg" = none ] || life=(--lifecycle "$cfg")
    start=$(date +%s.%N)
    "$BIN" train word2vec --corpus "$DATA/train.txt" --data-dir "$d" --model m \
        --min-count 1 --epochs "$EPOCHS" -q "${life[@]}" >"$DIR/$cfg.log" 2>&1 &
    pid=$!
    echo
    echo "### $cfg"
    echo
    echo "| s | RSS MiB | rows m.in | rows m.out |"
    echo "|---|---|---|---|"
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep "$EVERY"
        rss=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$pid/status 2>/dev/null || echo 0)
        [ -n "$rss" ] || rss=0
        [ "$rss" -gt "$peak" ] && peak=$rss
        kill -0 "$pid" 2>/dev/null || break
        read -r rin rout < <(rows "$d")
        printf '| %.0f | %s | %s | %s |\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$rss" "$rin" "$rout"
    done
    wait "$pid"
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    read -r rin rout < <(rows "$d")
    an=$("$BIN" eval analogy --data-dir "$d" --model m --questions "$DATA/questions-words.txt" 2>&1 | grep '^analogy accuracy' | grep -oE '[0-9.]+%' | head -1)
    sl=$("$BIN" eval similarity --data-dir "$d" --model m --pairs "$DATA/simlex999.txt" 2>&1 | grep -oiE 'spearman[^0-9-]*-?[0-9.]+' | grep -oE -- '-?[0-9.]+$' | head -1)
    printf '| end (%.0f s) | peak sampled %s | %s | %s |\n' "$wall" "$peak" "$rin" "$rout"
    echo
    echo "analogy $an, SimLex-999 $sl"
done
