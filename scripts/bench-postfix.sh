#!/usr/bin/env bash
# bench-postfix.sh — SMTP acceptance rate through a real Postfix with
# each milter, side by side in one run, as ratios to Postfix without one.
#
#   sudo scripts/bench-postfix.sh [--quick]
#
# For every round (ROUNDS, default 2) and every configuration, in turn:
#   none        Postfix without a milter (the ceiling)
#   null        ../shared/harness/nullmilter.c (the cheapest possible milter:
#               what any milter costs Postfix on this machine)
#   libmilter   ../shared/harness/cmilter.c -m accept (C libmilter)
#   accept-all  examples/ accept-all (milter-server)
#   greylist    greylist-filter on its default store. smtp-source connects
#               from 127.0.0.1, which greylist-filter never greylists, so
#               this is its bypass pass path (negotiation, macros, policy,
#               decision log), not the store lookup; the store pass path is
#               measured by the load generator (benches/load.md).
# ../shared/harness/bench-postfix.sh restarts Postfix on the milter's unix
# socket and runs smtp-source (S=20 sessions, M=2000 messages) RUNS+1
# times; the first run after each restart warms Postfix up (process
# spawning, see the harness README) and is left out of the table.
# Prints every run, then a table per configuration: median and mean msg/s
# of the measured runs, the ratio of the medians to "none", and the
# milter process's CPU (user + system, all threads) per 1,000 messages
# over all its runs, warm-up included: through Postfix the milter's CPU
# comes straight off Postfix's rate on a 2-core machine, and it is far
# less noisy than the rate.
# Env: SHARED, ROUNDS (2), S, M, RUNS (3); BENCH_PF_PORT (2545).
# Loopback only; Postfix discards what it accepts. About 7 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || true)}
HARNESS=$SHARED/harness
WORK=${BENCH_PF_WORK:-/tmp/milter-bench-postfix}
export PF_BASE=/tmp/harness/postfix-bench
export PF_PORT=${BENCH_PF_PORT:-2545}
ROUNDS=${ROUNDS:-2}
if [ "${1:-}" = --quick ]; then
  ROUNDS=1; RUNS=${RUNS:-2}; M=${M:-1000}
fi
RUNS=${RUNS:-3}
export M=${M:-2000}
TICK=$(getconf CLK_TCK)

die() { echo "bench-postfix: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (Postfix needs it)"
[ -x "$HARNESS/bench-postfix.sh" ] || die "harness not found at $HARNESS (set SHARED=)"

need=()
command -v gcc >/dev/null || need+=(build-essential)
[ -f /usr/include/libmilter/mfapi.h ] || need+=(libmilter-dev)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

(cd "$ROOT" && cargo build --release -q -p milter-examples --bin accept-all && cargo build --release -q -p greylist-filter)
rm -rf "$WORK"
mkdir -p "$WORK/log"
chmod 755 "$WORK"          # Postfix (user postfix) must reach the sockets
gcc -O2 -Wall -o "$WORK/cmilter" "$HARNESS/cmilter.c" -lmilter -lpthread
gcc -O2 -Wall -o "$WORK/nullmilter" "$HARNESS/nullmilter.c"

MILTER_PID=""
stop_milter() {
  if [ -n "$MILTER_PID" ] && kill -0 "$MILTER_PID" 2>/dev/null; then
    kill -TERM "$MILTER_PID"
    for _ in $(seq 1 100); do kill -0 "$MILTER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MILTER_PID" 2>/dev/null || true
    wait "$MILTER_PID" 2>/dev/null || true
  fi
  MILTER_PID=""
}
cleanup() {
  stop_milter
  "$HARNESS/postfix-stop.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start_milter NAME SOCKET CMD...: runs CMD in the background, waits for the
# socket and opens it to Postfix.
start_milter() {
  local name=$1 socket=$2; shift 2
  rm -f "$socket"
  "$@" >"$WORK/log/$name.log" 2>&1 &
  MILTER_PID=$!
  for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
  [ -S "$socket" ] || { cat "$WORK/log/$name.log" >&2; die "$name did not start"; }
  chmod 666 "$socket"
}

# cpu_ticks PID: user + system time of the process, all its threads.
cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

results=$WORK/runs.txt
cpu=$WORK/cpu.txt
: >"$results"
: >"$cpu"
for round in $(seq 1 "$ROUNDS"); do
  for cfg in none null libmilter accept-all greylist; do
    sock=$WORK/$cfg.sock
    case $cfg in
    none) spec=none ;;
    null) start_milter "$cfg" "$sock" "$WORK/nullmilter" -p "unix:$sock" -m accept -q; spec=unix:$sock ;;
    libmilter) start_milter "$cfg" "$sock" "$WORK/cmilter" -p "unix:$sock" -m accept; spec=unix:$sock ;;
    accept-all) start_milter "$cfg" "$sock" "$ROOT/target/release/accept-all" --listen "unix:$sock"; spec=unix:$sock ;;
    greylist)
      start_milter "$cfg" "$sock" "$ROOT/target/release/greylist-filter" --listen "unix:$sock" \
        --store "$WORK/greylist.redb"
      spec=unix:$sock ;;
    esac
    echo "== round $round: $cfg" >&2
    # Its exit status is that of its last test, not of the runs: failed
    # runs are marked FAILED in its output.
    t0=0; [ -n "$MILTER_PID" ] && t0=$(cpu_ticks "$MILTER_PID")
    RUNS=$((RUNS + 1)) timeout 900 "$HARNESS/bench-postfix.sh" "$cfg" "$spec" \
      | awk '/ run1 / { sub(/ run1 /, " run1 (warm-up, not counted) "); sub(/rate=/, "warmup=") } { print; fflush() }' \
      | tee -a "$results" || true
    if [ -n "$MILTER_PID" ]; then
      echo "$cfg $(( $(cpu_ticks "$MILTER_PID") - t0 )) $(( (RUNS + 1) * M ))" >>"$cpu"
    fi
    stop_milter
  done
done

echo
echo "Postfix $(postconf -d -h mail_version 2>/dev/null || echo '?'), smtp-source -s ${S:-20} -m $M, $RUNS runs (after a warm-up run) x $ROUNDS rounds, $(nproc) cores"
echo
echo "| milter | msg/s (median) | msg/s (mean) | runs | x no milter (medians) | milter CPU ms / 1k msgs |"
echo "|---|---:|---:|---:|---:|---:|"
awk -v tick="$TICK" '
  FILENAME == ARGV[1] {
    ticks[$1] += $2; msgs[$1] += $3; next
  }
  /rate=/ {
    label = $1; if ($2 == "FAILED") { failed[label]++; next }
    for (i = 1; i <= NF; i++) if ($i ~ /^rate=/) { r = substr($i, 6); if (r == "") r = $(i + 1) }
    sum[label] += r; n[label]++; v[label, n[label]] = r
    if (!(label in seen)) { seen[label] = 1; order[++k] = label }
  }
  function median(l,   i, j, t, a, c) {
    c = n[l]; for (i = 1; i <= c; i++) a[i] = v[l, i] + 0
    for (i = 2; i <= c; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
  }
  END {
    base = n["none"] ? median("none") : 0
    for (j = 1; j <= k; j++) {
      l = order[j]; md = median(l)
      c = (l in msgs) && msgs[l] ? sprintf("%.1f", ticks[l] * 1000 / tick / msgs[l] * 1000) : "-"
      printf "| %s | %.0f | %.0f | %d%s | %s | %s |\n", l, md, sum[l] / n[l], n[l], failed[l] ? " (" failed[l] " failed)" : "", base ? sprintf("%.2f", md / base) : "-", c
    }
  }' "$cpu" "$results"
