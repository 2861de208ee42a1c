#!/usr/bin/env bash
# examples-postfix.sh — regex-milter and sender-check-milter behind a real
# Postfix (loopback only; nothing leaves the box).
#
#   sudo scripts/examples-postfix.sh          (root; Debian 12; about 1 minute)
#
# 1. regex-milter with the ZIP sample rules: a message with a zip attachment
#    is refused at the end of DATA with
#    "554 5.7.1 Sorry, we do not accept ZIP archives anymore"; a clean
#    message is queued.
# 2. sender-check-milter with --callout-host pointing at a Postfix smtp-sink:
#    a sink answering 250 to RCPT makes the sender valid (message queued);
#    a sink answering 5xx to RCPT (smtp-sink -f RCPT) makes it invalid
#    ("550 5.1.7 Sender address rejected: ..."). The SMTP client is made to
#    look remote with XCLIENT; a plain loopback client is local and passes
#    unchecked.
#
# Uses ../shared/harness/postfix-start.sh with its own instance
# (PF_BASE=/tmp/harness/postfix-examples, port 2535; sinks on 2536 and 2537)
# so it can run next to other harness users. Stops everything it started.
# Prints PASS/FAIL per check; exits non-zero if any failed.
# Env: SHARED (the shared directory), EXAMPLES_PF_PORT (2535),
#      EXAMPLES_WORK (/tmp/milter-examples-postfix).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || true)}
HARNESS=$SHARED/harness
WORK=${EXAMPLES_WORK:-/tmp/milter-examples-postfix}
export PF_BASE=/tmp/harness/postfix-examples
export PF_PORT=${EXAMPLES_PF_PORT:-2535}
SINK_OK=$((PF_PORT + 1))     # answers 250 to everything; also receives accepted mail
SINK_BAD=$((PF_PORT + 2))    # answers 5xx to RCPT
SOCKET=$WORK/milter.sock
DATA=$ROOT/examples/tests/data
BIN=$ROOT/target/debug

die() { echo "examples-postfix: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (Postfix needs it)"
[ -x "$HARNESS/postfix-start.sh" ] || die "harness not found at $HARNESS (set SHARED=)"
if ! command -v swaks >/dev/null; then
  apt-cache policy swaks 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swaks >/dev/null
fi

FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }

# ---------------------------------------------------------------- cleanup
MILTER_PID="" SINK_PIDS=()
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
  for pid in "${SINK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SINK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$HARNESS/postfix-stop.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- setup
echo "== building the examples"
(cd "$ROOT" && timeout 240 cargo build -q -p milter-examples --bin regex-milter --bin sender-check-milter)

rm -rf "$WORK"
mkdir -p "$WORK/log"
chmod 755 "$WORK"          # Postfix (user postfix) must reach the socket

# Starts a milter in the background on $SOCKET (mode 666: Postfix connects
# as user postfix) and waits until the socket exists.
start_milter() {
  local log=$1; shift
  "$@" --listen "unix:$SOCKET" --socket-mode 666 >"$log" 2>&1 &
  MILTER_PID=$!
  for _ in $(seq 1 100); do [ -S "$SOCKET" ] && return 0; sleep 0.1; done
  cat "$log" >&2
  die "milter did not start: $*"
}

# XCLIENT lets swaks present a remote client address (192.0.2.10) to Postfix
# and so to the milters; mail to example.net is accepted from anyone.
echo "== starting Postfix on 127.0.0.1:$PF_PORT"
if ! PF_SINK_PORT=$SINK_OK \
  PF_EXTRA_MAIN="smtpd_authorized_xclient_hosts = 127.0.0.0/8;relay_domains = example.net" \
  timeout 120 "$HARNESS/postfix-start.sh" "unix:$SOCKET" >"$WORK/log/postfix-start.log" 2>&1; then
  cat "$WORK/log/postfix-start.log" >&2
  die "Postfix did not start"
fi

# Two smtp-sinks (installed with Postfix): one accepting everything (also
# the relay target for mail Postfix accepts), one refusing RCPT with a 5xx.
smtp-sink -u postfix 127.0.0.1:$SINK_OK 20 &
SINK_PIDS+=($!)
smtp-sink -u postfix -f RCPT 127.0.0.1:$SINK_BAD 20 &
SINK_PIDS+=($!)
for port in $SINK_OK $SINK_BAD; do
  for _ in $(seq 1 50); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
  ss -Hltn "sport = :$port" | grep -q . || die "smtp-sink on $port did not start"
done

# swaks NAME [args...]: one SMTP transaction; the transcript goes to
# $WORK/log/NAME.swaks (swaks exits non-zero when the server refuses).
swaks_run() {
  local name=$1; shift
  timeout 60 swaks --server 127.0.0.1 --port "$PF_PORT" --timeout 30 \
    --helo client.example.net --to bob@example.net "$@" \
    >"$WORK/log/$name.swaks" 2>&1 || true
}
expect() {   # expect NAME PATTERN DESCRIPTION
  if grep -qF -- "$2" "$WORK/log/$1.swaks"; then
    pass "$3"
  else
    fail "$3 (expected '$2'; transcript $WORK/log/$1.swaks)"
    grep -E '^ *(<\*\*|<-) ' "$WORK/log/$1.swaks" | tail -4 | sed 's/^/     /'
  fi
}
QUEUED="<-  250 2.0.0 Ok: queued as"

# ---------------------------------------------------------------- 1. regex-milter
echo "== regex-milter with the ZIP sample"
start_milter "$WORK/log/regex-milter.log" "$BIN/regex-milter" --rules "$DATA/zip.rules"

swaks_run zip --from alice@example.org --data "@$DATA/zip-attachment.eml"
expect zip "<** 554 5.7.1 Sorry, we do not accept ZIP archives anymore" \
  "regex-milter: zip attachment refused at end of DATA with the rule's text"
swaks_run clean --from alice@example.org --data "@$DATA/clean.eml"
expect clean "$QUEUED" "regex-milter: clean message queued"
stop_milter

# ---------------------------------------------------------------- 2. sender-check-milter
echo "== sender-check-milter, callouts to smtp-sink (250)"
start_milter "$WORK/log/sender-ok.log" "$BIN/sender-check-milter" \
  --callout-host "127.0.0.1:$SINK_OK" --helo-name harness.localdomain --timeout 8
swaks_run valid --xclient-addr 192.0.2.10 --xclient-name client.example.net \
  --from alice@example.org --body "valid sender"
expect valid "$QUEUED" "sender-check-milter: sender valid at the callout target (250): queued"
stop_milter
if grep -q "sender verified" "$WORK/log/sender-ok.log"; then
  pass "sender-check-milter: the valid sender was really verified (callout made)"
else
  fail "sender-check-milter: no verification logged in $WORK/log/sender-ok.log"
fi

echo "== sender-check-milter, callouts to smtp-sink -f RCPT (5xx)"
start_milter "$WORK/log/sender-bad.log" "$BIN/sender-check-milter" \
  --callout-host "127.0.0.1:$SINK_BAD" --helo-name harness.localdomain --timeout 8
swaks_run invalid --xclient-addr 192.0.2.10 --xclient-name client.example.net \
  --from nobody@example.org --body "invalid sender"
expect invalid "<** 550 5.1.7 Sender address rejected: 5" \
  "sender-check-milter: sender refused by the callout target: 550 5.1.7 at MAIL FROM"
swaks_run local --from nobody@example.org --body "local client"
expect local "$QUEUED" "sender-check-milter: loopback client not checked: queued"
stop_milter

echo
if [ "$FAILS" -eq 0 ]; then
  echo "examples-postfix: all checks passed"
else
  echo "examples-postfix: $FAILS check(s) failed; logs in $WORK/log and $PF_BASE/log/postfix.log"
  exit 1
fi
