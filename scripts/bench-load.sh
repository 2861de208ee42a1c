#!/usr/bin/env bash
# Load benchmark: our milter servers against the null server (nullmilter.c)
# and C libmilter (cmilter.c), same load, same run, reported as ratios.
#
#   scripts/bench-load.sh [--quick] [--no-install] [--no-greylist] [-- extra options for the load binary]
#
# Installs what it needs (gcc, libmilter-dev, perf), builds the release
# binaries, raises the open-files limit for the 10,000 idle connections,
# runs the default matrix and prints the tables (also saved under
# target/load-bench/). greylist-filter runs next to the others on its store
# pass path: the generator's tuple (192.0.2.1, a@example.org,
# r0@example.com) is greylisted once and retried after a 1 s delay with
# milter-run before the run, so every message of the run is an
# auto-whitelisted tuple found in a fresh redb store (--no-greylist skips
# it). Bounded: the default matrix takes about 10-15 minutes on 2 cores,
# --quick about 3; every run has its own time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
greylist=1
quick=()
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=(--quick); shift ;;
    --no-install) install=0; shift ;;
    --no-greylist) greylist=0; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
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
cargo build --release -q -p greylist-filter -p milter-client --bin greylist-filter --bin milter-run

out=target/load-bench
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)

extra=()
if [ "$greylist" = 1 ]; then
    gl=$PWD/$out/greylist
    rm -rf "$gl"
    mkdir -p "$gl"
    target/release/greylist-filter --store "$gl/store.redb" --delay 1s \
        --listen "unix:$gl/prewarm.sock" >"$gl/prewarm.log" 2>&1 &
    glpid=$!
    for _ in $(seq 1 100); do [ -S "$gl/prewarm.sock" ] && break; sleep 0.1; done
    printf 'From: a@example.org\nTo: r0@example.com\nSubject: prewarm\n\nprewarm\n' >"$gl/m.eml"
    run_once() {
        target/release/milter-run -s "unix:$gl/prewarm.sock" -f a@example.org -r r0@example.com \
            --client-ip 192.0.2.1 --client-name client.example.org "$gl/m.eml" >>"$gl/prewarm.log" 2>&1
    }
    run_once || true          # first attempt: 451, the tuple is stored
    sleep 1.5
    if ! run_once; then       # after the delay: passes and is auto-whitelisted
        kill "$glpid" 2>/dev/null; cat "$gl/prewarm.log" >&2
        echo "bench-load: greylist-filter did not pass the retried tuple" >&2
        exit 1
    fi
    kill -TERM "$glpid"; wait "$glpid" 2>/dev/null || true
    extra=(--extra "greylist=$PWD/target/release/greylist-filter --store $gl/store.redb --delay 1s --listen {spec}")
fi

timeout 1800 target/release/load "${quick[@]}" "${extra[@]}" --csv "$out/load-$stamp.csv" "$@" \
    | tee "$out/load-$stamp.md"
echo "saved: $out/load-$stamp.md and .csv" >&2
