#!/usr/bin/env bash
# greylist-postfix.sh — greylist-filter behind a real Postfix (loopback only;
# nothing leaves the box).
#
#   sudo scripts/greylist-postfix.sh          (root; Debian 12; well under 3 minutes
#                                              once the binary is built)
#
# 1. greylist-filter runs on a unix socket owned by user postfix (mode 660),
#    drops privileges to nobody, with --delay 2s.
# 2. Postfix (../shared/harness/postfix-start.sh, its own instance on port 2545,
#    milter_default_action = accept) relays example.net to a loopback smtp-sink
#    on 2546. The SMTP client is made to look remote with XCLIENT
#    (192.0.2.10): loopback clients are never greylisted.
# 3. swaks sends one message: the reply to RCPT TO must be
#    "451 4.7.1 Greylisted, ...". It retries every second (bounded) until the
#    delay is over: the message must be queued (250) and reach smtp-sink with an
#    X-Greylist header.
# 4. Two [[acl]] rules of the filter's configuration, which need what Postfix
#    sends only on request: a HELO name (the HELO stage) and {mail_addr} at RCPT
#    (the filter asks for {auth_authen} alone at MAIL). A message with HELO
#    bad-helo.example and one from mallory@example.org must each get the rule's
#    550 at RCPT.
# Stops everything it started. Prints PASS/FAIL per check and, on failure, the
# SMTP transcripts and logs; exits non-zero if any check failed.
# Env: SHARED (the shared directory, default ../shared from the repository),
#      GREYLIST_PF_PORT (2545; the sink uses the next port), GREYLIST_BIN (a built
#      binary; default: cargo build -p greylist-filter, target/debug), KEEP=1 keeps
#      the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || true)}
HARNESS=$SHARED/harness
export PF_BASE=/tmp/harness/postfix-greylist
export PF_PORT=${GREYLIST_PF_PORT:-2545}
SINK_PORT=$((PF_PORT + 1))
export PF_SINK_PORT=$SINK_PORT
export PF_DEFAULT_ACTION=accept
export PF_EXTRA_MAIN="relay_domains = example.net;smtpd_authorized_xclient_hosts = 127.0.0.0/8"
DELAY=2s

die() { echo "greylist-postfix: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (Postfix needs it)"
[ -x "$HARNESS/postfix-start.sh" ] || die "harness not found at $HARNESS (set SHARED=)"
for pkg in swaks postfix; do  # postfix: its user owns the socket before the harness starts it
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  fi
done

WORK=$(mktemp -d /tmp/greylist-postfix.XXXXXX)
chmod 755 "$WORK"                 # user postfix must reach the socket
SOCKET=$WORK/milter.sock
SINKDIR=$WORK/sink
mkdir -p "$SINKDIR" && chown postfix "$SINKDIR"

FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }

# ---------------------------------------------------------------- cleanup
GL_PID="" SINK_PID=""
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
report() {
  echo "---- greylist-filter log (last 40 lines)"; tail -n 40 "$WORK/greylist.log" 2>/dev/null || true
  echo "---- postfix log (last 30 lines)"; tail -n 30 "$PF_BASE/log/postfix.log" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_pid "$GL_PID"
  stop_pid "$SINK_PID"
  "$HARNESS/postfix-stop.sh" >/dev/null 2>&1 || true
  if [ "$FAILS" -gt 0 ] || [ "$rc" -ne 0 ]; then report; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- setup
if [ -n "${GREYLIST_BIN:-}" ]; then
  BIN=$GREYLIST_BIN
else
  echo "== building greylist-filter"
  (cd "$ROOT" && cargo build -q -p greylist-filter)
  BIN=$ROOT/target/debug/greylist-filter
fi
[ -x "$BIN" ] || die "no binary at $BIN"

cat >"$WORK/greylist.toml" <<'TOML'
[[acl]]
name = "bad-helo"
action = "blacklist"
helo = ["/^bad-helo\\./"]
msg = "Bad HELO"

[[acl]]
name = "mallory"
action = "blacklist"
macro = [{ name = "{mail_addr}", value = "/^mallory@/" }]
code = 554
ecode = "5.7.0"
msg = "Not from Mallory"
TOML
echo "== starting greylist-filter on unix:$SOCKET (delay $DELAY)"
"$BIN" --listen "unix:$SOCKET" --socket-owner postfix:postfix --socket-mode 660 \
  --user nobody --delay "$DELAY" --store "$WORK/greylist.redb" --config "$WORK/greylist.toml" \
  >"$WORK/greylist.log" 2>&1 &
GL_PID=$!
for _ in $(seq 1 300); do
  grep -q "greylist-filter ready" "$WORK/greylist.log" && break
  kill -0 "$GL_PID" 2>/dev/null || break
  sleep 0.1
done
grep -q "greylist-filter ready" "$WORK/greylist.log" || { fail "greylist-filter did not start"; exit 1; }
owner=$(stat -c '%U %a' "$SOCKET")
if [ "$owner" = "postfix 660" ]; then pass "socket owned by postfix, mode 660"; else fail "socket is '$owner'"; fi
if grep -q "privileges dropped" "$WORK/greylist.log"; then pass "privileges dropped to nobody"; else fail "no privilege drop"; fi

echo "== starting smtp-sink on 127.0.0.1:$SINK_PORT"
smtp-sink -u postfix -d "$SINKDIR/%H%M%S." "127.0.0.1:$SINK_PORT" 16 &
SINK_PID=$!

echo "== starting Postfix on 127.0.0.1:$PF_PORT"
"$HARNESS/postfix-start.sh" "unix:$SOCKET"

send() {  # send OUTFILE [HELO [FROM]]: one message from 192.0.2.10 (via XCLIENT)
  swaks --server "127.0.0.1:$PF_PORT" --timeout 30 \
    --xclient-addr 192.0.2.10 --xclient-name mail.example.org \
    --helo "${2:-mail.example.org}" --from "${3:-alice@example.org}" --to bob@example.net \
    --header "Subject: greylist interop" --body "Hello from the greylist test." \
    >"$1" 2>&1 || true
}

# ---------------------------------------------------------------- 1: greylisted
echo "== first attempt"
send "$WORK/swaks.1"
rcpt_reply=$(grep -A1 -E '^ *[~-]> RCPT TO:<bob@example.net>' "$WORK/swaks.1" | tail -n 1 || true)
if [[ "$rcpt_reply" =~ ^\ *\<\*\*\ +451\ 4\.7\.1\ Greylisted ]]; then
  pass "first attempt: RCPT answered '${rcpt_reply#*<\*\* }'"
else
  fail "first attempt: expected 451 4.7.1 Greylisted at RCPT, got '${rcpt_reply}'"
  echo "---- swaks transcript"; cat "$WORK/swaks.1"
fi
if grep -q 'client=192.0.2.10' "$WORK/greylist.log"; then
  pass "the milter saw the XCLIENT address 192.0.2.10"
else
  fail "the milter did not see client 192.0.2.10"
fi

# ---------------------------------------------------------------- 2: passes after the delay
echo "== retrying until the delay ($DELAY) is over"
start=$(date +%s)
accepted=0
for i in $(seq 1 30); do
  sleep 1
  send "$WORK/swaks.retry"
  if grep -qE '^ *<[~-] +250 .*queued' "$WORK/swaks.retry"; then accepted=1; break; fi
done
if [ "$accepted" = 1 ]; then
  pass "retry $i accepted after $(( $(date +%s) - start )) s: $(grep -E '^ *<[~-] +250 .*queued' "$WORK/swaks.retry" | sed 's/^ *<[~-] *//')"
else
  fail "not accepted within 30 retries"
  echo "---- last swaks transcript"; cat "$WORK/swaks.retry"
fi

# ---------------------------------------------------------------- 3: delivered with X-Greylist
if [ "$accepted" = 1 ]; then
  found=""
  for _ in $(seq 1 300); do
    found=$(grep -l '^X-Greylist: ' "$SINKDIR"/* 2>/dev/null | head -n 1 || true)
    [ -n "$found" ] && break
    sleep 0.1
  done
  if [ -n "$found" ]; then
    pass "smtp-sink received it with '$(grep -m1 '^X-Greylist: ' "$found")'"
  else
    fail "no message with X-Greylist reached smtp-sink within 30 s"
    ls -l "$SINKDIR"
  fi
fi

# ---------------------------------------------------------------- 4: [[acl]] rules
expect_rcpt() {  # expect_rcpt FILE REPLY LABEL: the RCPT reply in a swaks transcript starts with REPLY
  local got
  got=$(grep -A1 -E '^ *[~-]> RCPT TO:<bob@example.net>' "$1" | tail -n 1 | sed 's/^ *<\*\* *//' || true)
  if [[ "$got" == "$2"* ]]; then
    pass "$3: RCPT answered '$got'"
  else
    fail "$3: expected $2 at RCPT, got '$got'"
    echo "---- swaks transcript"; cat "$1"
  fi
}
echo "== [[acl]] rules"
send "$WORK/swaks.helo" bad-helo.example
expect_rcpt "$WORK/swaks.helo" "550 5.7.1 Bad HELO" "HELO rule"
send "$WORK/swaks.macro" mail.example.org mallory@example.org
expect_rcpt "$WORK/swaks.macro" "554 5.7.0 Not from Mallory" "macro rule ({mail_addr} requested at RCPT)"
if grep -q 'acl="mallory"' "$WORK/greylist.log"; then
  pass "the decision line names the rule"
else
  fail "no decision line with acl=\"mallory\""
fi

echo
if [ "$FAILS" -gt 0 ]; then echo "greylist-postfix: $FAILS check(s) FAILED"; exit 1; fi
echo "greylist-postfix: all checks passed"
