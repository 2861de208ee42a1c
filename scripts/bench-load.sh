#!/usr/bin/env bash
# Load benchmark: our milter servers against the null server (nullmilter.c)
# and C libmilter (cmilter.c), same load, same run, reported as ratios.
#
#   scripts/bench-load.sh [--quick] [--no-install] [-- extra options for the load binary]
#
# Installs what it needs (gcc, libmilter-dev, perf), builds the release
# binaries, raises the open-files limit for the 10,000 idle connections,
# runs the default matrix and prints the tables (also saved under
# target/load-bench/). Bounded: the default matrix takes about 10-15
# minutes on 2 cores, --quick about 3; every run has its own time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
quick=()
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=(--quick); shift ;;
    --no-install) install=0; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) break ;;
    esac
done

if [ "$install" = 1 ]; then
    need=()
    command -v gcc >/dev/null || need+=(build-essential)
    [ -f /usr/include/libmilter/mfapi.h ] || need+=(libmilter-dev)
    command -v perf >/dev/null || need+=(linux-perf)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing: ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
fi

# 10,000 idle connections need that many descriptors in the generator and
# in each server (they inherit the limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n)" >&2

cargo build --release -q -p milter-examples --bin accept-all --bin add-header
cargo build --release -q -p milter-benches --bin load --bin add-header-full

out=target/load-bench
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
timeout 1800 target/release/load "${quick[@]}" --csv "$out/load-$stamp.csv" "$@" \
    | tee "$out/load-$stamp.md"
echo "saved: $out/load-$stamp.md and .csv" >&2
