#!/usr/bin/env bash
# interop.sh — interoperability matrix against real MTAs and real milters.
#
#   sudo scripts/interop.sh            (root; Debian 12; ~5-10 minutes)
#   INTEROP_ONLY="postfix sendmail" scripts/interop.sh     run some sections
#   INTEROP_UPDATE_CAPTURES=1 scripts/interop.sh           also copy fresh MTA
#       captures into milter-proto/tests/data and fuzz/corpus (then commit them)
#
# Sections (all loopback or a private network namespace; nothing leaves the box):
#   postfix     installed Postfix (3.7 on Debian 12), milter_protocol 6 and 2, unix
#               socket and TCP: accept-all, add-header, rewrite (every modification
#               and reply, checked in the mail a loopback smtp-sink received, in the
#               hold queue, or in the SMTP replies), inspect (macros), greylist-filter
#   sendmail    Sendmail 8.17 from unpacked .debs in `unshare -n -u`, unix sockets:
#               accept-all, add-header, rewrite
#   miltertest  Debian's Lua miltertest and PyPI miltertest driving our add-header
#   cmilters    milter-run (our client) against the C libmilter cmilter in every
#               mode and against opendkim (DKIM-Signature comes back)
#   differential  cargo test --test differential (cmilter vs our examples)
#   captures    MTA->filter byte streams recorded through scripts/interop/record.py,
#               replayed by cargo test --test captures
#
# Prints PASS/FAIL/SKIP per check and a compatibility table, also written to
# scripts/interop/COMPATIBILITY.md. Exits non-zero if any check failed.
# Stops everything it started on exit. Env: INTEROP_WORK (default
# /tmp/milter-interop), INTEROP_PF_PORT (2625; the sink uses +1), SHARED.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || true)}
HARNESS=$SHARED/harness
HERE=$ROOT/scripts/interop
WORK=${INTEROP_WORK:-/tmp/milter-interop}
PF_PORT=${INTEROP_PF_PORT:-2625}
SINK_PORT=$((PF_PORT + 1))
TCP_PORT=$((PF_PORT + 10))         # milters over TCP listen here
ONLY=${INTEROP_ONLY:-postfix sendmail miltertest cmilters differential captures}
BIN=$ROOT/target/release
T0=$(date +%s)

die() { echo "interop: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (Postfix, Sendmail, unshare)"
[ -d "$HARNESS" ] || die "shared harness not found at $HARNESS (set SHARED=)"
want() { [[ " $ONLY " == *" $1 "* ]]; }

mkdir -p "$WORK"
chmod 755 "$WORK"
rm -rf "$WORK"/{log,sock,sink,swaks,capture,results.tsv,table.tsv}
mkdir -p "$WORK"/{log,sock,sink,swaks,capture}
RESULTS=$WORK/results.tsv
TABLE=$WORK/table.tsv
: >"$RESULTS"
: >"$TABLE"

# ---------------------------------------------------------------- reporting
# A row of the compatibility table groups checks: row_begin ... row_end.
ROW_FAILS=0 ROW_PASSES=0 ROW_SKIPS=0 ROW=""
row_begin() { ROW="$1|$2|$3|$4|$5"; ROW_FAILS=0 ROW_PASSES=0 ROW_SKIPS=0; echo "== $1 $2 v$3 $4: $5"; }
row_end() {
  local st=PASS
  if [ "$ROW_FAILS" -gt 0 ]; then st=FAIL; elif [ "$ROW_PASSES" -eq 0 ]; then st=SKIP; fi
  echo "$ROW|$st" >>"$TABLE"
}
pass() { ROW_PASSES=$((ROW_PASSES + 1)); printf 'PASS  %s\n' "$1"; printf 'PASS\t%s\t%s\n' "$1" "" >>"$RESULTS"; }
fail() { ROW_FAILS=$((ROW_FAILS + 1)); printf 'FAIL  %s: %s\n' "$1" "$2"; printf 'FAIL\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
skip() { ROW_SKIPS=$((ROW_SKIPS + 1)); printf 'SKIP  %s: %s\n' "$1" "$2"; printf 'SKIP\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
# check NAME DETAIL-ON-FAILURE COMMAND...: PASS if the command succeeds.
check() { local name=$1 why=$2; shift 2; if "$@"; then pass "$name"; else fail "$name" "$why"; fi; }

# ---------------------------------------------------------------- processes
PIDS=()
PF_STARTED=0
start_bg() { # start_bg LOGNAME CMD...: sets LAST_PID
  local name=$1; shift
  "$@" >"$WORK/log/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
# stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL; returns the exit status.
stop_pid() {
  local pid=$1 rc=0
  kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && stop_pid "$pid"; done
  if [ "$PF_STARTED" = 1 ]; then PF_BASE=$WORK/postfix bash "$HARNESS/postfix-stop.sh" >/dev/null 2>&1; fi
  rm -f "$WORK"/sock/*.sock
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_socket SPEC: waits (5 s at most) until a milter listens there.
wait_socket() {
  local spec=$1
  for _ in $(seq 1 50); do
    case "$spec" in
      unix:*) [ -S "${spec#unix:}" ] && return 0 ;;
      inet:*@*) local p=${spec#inet:}; ss -Hltn "sport = :${p%@*}" | grep -q . && return 0 ;;
    esac
    sleep 0.1
  done
  return 1
}
# start_milter NAME SPEC CMD...: runs CMD (which listens on SPEC); sets MILTER_PID.
start_milter() {
  local name=$1 spec=$2; shift 2
  case "$spec" in unix:*) rm -f "${spec#unix:}" ;; esac
  start_bg "$name" env NO_COLOR=1 RUST_LOG=info "$@"
  MILTER_PID=$LAST_PID
  wait_socket "$spec" || { echo "interop: $name did not listen on $spec; log:"; tail -5 "$WORK/log/$name.log"; return 1; }
}
# Strips ANSI colour codes (in case a logger ignores NO_COLOR).
plain() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }

# ---------------------------------------------------------------- install + build
install_packages() {
  local need=()
  command -v postfix >/dev/null || need+=(postfix)
  command -v swaks >/dev/null || need+=(swaks)
  [ -f /usr/include/libmilter/mfapi.h ] || need+=(libmilter-dev)
  command -v miltertest >/dev/null || need+=(miltertest)
  /usr/bin/python3 -c 'import Milter' 2>/dev/null || need+=(python3-milter)
  command -v opendkim >/dev/null || need+=(opendkim)
  command -v opendkim-genkey >/dev/null || need+=(opendkim-tools)
  command -v gcc >/dev/null || need+=(build-essential)
  command -v m4 >/dev/null || need+=(m4)
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
  dpkg -s liblockfile1 >/dev/null 2>&1 || need+=(liblockfile1)
  dpkg -s libwrap0 >/dev/null 2>&1 || need+=(libwrap0)
  if [ ${#need[@]} -gt 0 ]; then
    echo "interop: installing ${need[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >"$WORK/log/apt.log" 2>&1 || { tail -20 "$WORK/log/apt.log"; die "apt-get install failed"; }
  fi
}

GREYLIST=""
GREYLIST_WHY=""
build() {
  echo "interop: building release binaries"
  (cd "$ROOT" && cargo build --release -q -p milter-examples -p milter-client) || die "cargo build failed"
  if [ -f "$ROOT/greylist-filter/src/main.rs" ]; then
    if (cd "$ROOT" && cargo build --release -q -p greylist-filter) >"$WORK/log/greylist-build.log" 2>&1 \
        && [ -x "$BIN/greylist-filter" ]; then
      GREYLIST=$BIN/greylist-filter
    else
      GREYLIST_WHY="greylist-filter does not build yet (see $WORK/log/greylist-build.log)"
    fi
  else
    GREYLIST_WHY="greylist-filter has no binary yet (greylist-filter/src/main.rs missing)"
  fi
  gcc -O2 -Wall -o "$WORK/cmilter" "$HARNESS/cmilter.c" -lmilter -lpthread || die "cmilter build failed"
}

# ================================================================ Postfix
PF_BASE=$WORK/postfix
pf() { script -qec "$*" /dev/null; }
# milter_default_action = reject: a broken milter answers "550 5.5.0 Service
# unavailable", which no check expects (the milter's own tempfail is 451 4.7.1).
pf_start() { # pf_start SPEC PROTOCOL   (env PF_EXTRA_MAIN passes through)
  PF_STARTED=1
  PF_BASE=$PF_BASE PF_PORT=$PF_PORT PF_SINK_PORT=$SINK_PORT PF_MILTER_PROTOCOL=$2 \
    PF_DEFAULT_ACTION=reject bash "$HARNESS/postfix-start.sh" "$1" >>"$WORK/log/postfix-start.log" 2>&1
}
PF_LOG() { echo "$PF_BASE/log/postfix.log"; }

# send_pf TOKEN TO ACTIONS...: one message via swaks; transcript in swaks/TOKEN.txt.
send_pf() {
  local tok=$1 to=$2; shift 2
  local args=()
  for a in "$@"; do args+=(--add-header "X-Test-Action: $a"); done
  # XCLIENT_ADDR: pretend (via Postfix XCLIENT) to be this client instead of 127.0.0.1.
  if [ -n "${XCLIENT_ADDR:-}" ]; then args+=(--xclient-addr "$XCLIENT_ADDR"); fi
  timeout 60 swaks --server 127.0.0.1 --port "$PF_PORT" --helo client.test --timeout 30 \
    --from a@example.org --to "$to" --add-header "X-Interop-Token: $tok" \
    --add-header "X-Remove: please" --body "original body $tok" "${args[@]}" \
    >"$WORK/swaks/$tok.txt" 2>&1 || true
}
# sink_file DIR TOKEN: the sink's dump of the message carrying TOKEN (waits up to 15 s).
sink_file() {
  local f
  for _ in $(seq 1 150); do
    f=$(grep -l -- "^X-Interop-Token: $2\$" "$1"/* 2>/dev/null | head -1 || true)
    if [ -n "$f" ]; then echo "$f"; return 0; fi
    sleep 0.1
  done
  return 1
}
smtp_reply() { grep -E "^<\*\* " "$WORK/swaks/$1.txt" | sed 's/^<\*\* //' | tr -d '\r'; }
queued_as() { sed -n 's/.*queued as \([0-9A-Za-z]*\).*/\1/p' "$WORK/swaks/$1.txt" | tail -1; }
accepted() { grep -Eq '^<-  250 .*(queued as|Message accepted for delivery)' "$WORK/swaks/$1.txt"; }

# The rewrite cases: TOKEN-SUFFIX | TO | ACTIONS (';'-separated). Checked by check_case.
REWRITE_CASES=(
  "addhdr|b@example.com|add-header"
  "inshdr|b@example.com|insert-header"
  "chghdr|b@example.com|change-header Subject"
  "delhdr|b@example.com|delete-header X-Remove"
  "body|b@example.com|replace-body"
  "addrcpt|b@example.com|add-rcpt <added@example.net>"
  "addrcptpar|b@example.com|add-rcpt-par <par@example.net> NOTIFY=NEVER"
  "delrcpt|b@example.com,c@example.com|delete-rcpt <b@example.com>"
  "chgfrom|b@example.com|change-from <changed@example.org>"
  "quarantine|b@example.com|quarantine interop hold"
  "discard|b@example.com|discard"
  "reject|b@example.com|reject"
  "tempfail|b@example.com|tempfail"
  "reply5|b@example.com|reply 550 5.7.1 interop says no"
  "reply4|b@example.com|reply 451 4.7.1 interop says later"
  "mlreply|b@example.com|multiline-reply"
)
# send_cases PREFIX SENDER-FUNCTION: sends every case (or writes the sends file).
# check_case MTA PREFIX SUFFIX SINKDIR: verifies one case; echoes a failure reason.
check_case() {
  local mta=$1 tok=$2-$3 dir=$4 f reply
  case "$3" in
    quarantine|discard|reject|tempfail|reply5|reply4|mlreply) f="" ;;
    *) accepted "$tok" || { echo "not accepted: $(smtp_reply "$tok" | head -1)"; return 1; }
       f=$(sink_file "$dir" "$tok") || { echo "no mail at the sink"; return 1; } ;;
  esac
  reply=$(smtp_reply "$tok" || true)
  case "$3" in
    addhdr) grep -q '^X-Rewrite-Added: yes' "$f" || { echo "X-Rewrite-Added missing"; return 1; } ;;
    inshdr)
      local ins tokline
      ins=$(grep -n '^X-Rewrite-Inserted: top' "$f" | cut -d: -f1 | head -1)
      tokline=$(grep -n '^X-Interop-Token:' "$f" | cut -d: -f1 | head -1)
      [ -n "$ins" ] || { echo "X-Rewrite-Inserted missing"; return 1; }
      [ "$ins" -lt "$tokline" ] || { echo "X-Rewrite-Inserted not above the message headers"; return 1; } ;;
    chghdr) grep -q '^Subject: rewritten$' "$f" || { echo "Subject not rewritten: $(grep '^Subject:' "$f")"; return 1; } ;;
    delhdr) ! grep -q '^X-Remove:' "$f" || { echo "X-Remove still present"; return 1; } ;;
    body) grep -q '^Body replaced by rewrite\.' "$f" && ! grep -q 'original body' "$f" \
            || { echo "body not replaced"; return 1; } ;;
    addrcpt) grep -q '^X-Rcpt-Args: <added@example.net>' "$f" || { echo "recipient not added"; return 1; } ;;
    addrcptpar) grep -q '^X-Rcpt-Args: <par@example.net>.*NOTIFY=NEVER' "$f" \
            || { echo "recipient with NOTIFY=NEVER not added: $(grep '^X-Rcpt-Args' "$f" | tr '\n' ' ')"; return 1; } ;;
    delrcpt) grep -q '^X-Rcpt-Args: <c@example.com>' "$f" && ! grep -q '^X-Rcpt-Args: <b@example.com>' "$f" \
            || { echo "recipients: $(grep '^X-Rcpt-Args' "$f" | tr '\n' ' ')"; return 1; } ;;
    chgfrom) grep -q '^X-Mail-Args: <changed@example.org>' "$f" || { echo "sender: $(grep '^X-Mail-Args' "$f")"; return 1; } ;;
    quarantine)
      accepted "$tok" || { echo "not accepted: $reply"; return 1; }
      local q; q=$(queued_as "$tok")
      pf "postqueue -c $PF_BASE/etc -p" | tr -d '\r' | grep -q "^$q!" \
        || { echo "queue id $q not in the hold queue"; return 1; } ;;
    discard)
      accepted "$tok" || { echo "not accepted: $reply"; return 1; }
      local q; q=$(queued_as "$tok")
      for _ in $(seq 1 50); do grep -q "$q: milter-discard" "$(PF_LOG)" && break; sleep 0.1; done
      grep -q "$q: milter-discard" "$(PF_LOG)" || { echo "no milter-discard for $q in the log"; return 1; } ;;
    # The MTA's own default replies for a plain reject/tempfail at end of message.
    reject) local want="550 5.7.1 Command rejected"
            [ "$mta" = sendmail ] && want="554 5.7.1 Command rejected"
            [ "$reply" = "$want" ] || { echo "reply: $reply (expected $want)"; return 1; } ;;
    tempfail) local want="451 4.7.1 Service unavailable - try again later"
            [ "$mta" = sendmail ] && want="451 4.3.2 Please try again later"
            [ "$reply" = "$want" ] || { echo "reply: $reply (expected $want)"; return 1; } ;;
    reply5) [ "$reply" = "550 5.7.1 interop says no" ] || { echo "reply: $reply"; return 1; } ;;
    reply4) [ "$reply" = "451 4.7.1 interop says later" ] || { echo "reply: $reply"; return 1; } ;;
    mlreply) [ "$reply" = $'550-5.7.1 rewrite line one\n550-5.7.1 rewrite line two\n550 5.7.1 rewrite line three' ] \
            || { echo "reply: $(echo "$reply" | tr '\n' '|')"; return 1; } ;;
  esac
}

pf_warnings_since() { # lines of the Postfix log after line $1 that warn about milters
  tail -n +"$(($1 + 1))" "$(PF_LOG)" | grep -Ei 'warning:.*milter|milter.*(error|fail)' || true
}
pf_loglines() { wc -l <"$(PF_LOG)" 2>/dev/null || echo 0; }

postfix_section() {
  local ver
  mkdir -p "$WORK/sink/pf" && chown postfix "$WORK/sink/pf"
  start_bg smtp-sink-pf smtp-sink -u postfix -d "$WORK/sink/pf/%H%M%S." -h sink.test "127.0.0.1:$SINK_PORT" 100
  pf_start none 6 || { fail "postfix start" "see $WORK/log/postfix-start.log"; return; }
  ver=$(pf "postconf -c $PF_BASE/etc -h mail_version" | tr -d '\r')
  PF_VERSION=$ver
  echo "interop: Postfix $ver"
  local proto sock spec sockname n0 w
  for proto in 6 2; do
    for sock in unix tcp; do
      # ---- accept-all (recorded on unix sockets)
      n0=$(pf_loglines)
      if [ "$sock" = unix ]; then spec=unix:$WORK/sock/accept-all.sock; else spec=inet:$TCP_PORT@127.0.0.1; fi
      row_begin Postfix "$ver" "$proto" "$sock" "accept-all: mail delivered unchanged; 3 messages on one SMTP session"
      if start_milter "pf-accept-all-v$proto-$sock" "$spec" "$BIN/accept-all" --listen "$spec" --socket-mode 666; then
        local mspec=$spec rec=""
        if [ "$sock" = unix ]; then
          start_bg "record-pf-v$proto-accept" /usr/bin/python3 "$HERE/record.py" "$WORK/sock/rec.sock" \
            "${spec#unix:}" "$WORK/capture/postfix-$ver-v$proto-accept"
          rec=$LAST_PID; wait_socket "unix:$WORK/sock/rec.sock"; mspec=unix:$WORK/sock/rec.sock
        fi
        pf_start "$mspec" "$proto"
        send_pf "pf$proto$sock-accept" b@example.com
        if f=$(accepted "pf$proto$sock-accept" && sink_file "$WORK/sink/pf" "pf$proto$sock-accept"); then
          check "postfix v$proto $sock accept-all: delivered, no header added" "unexpected X-Rewrite/X-Interop header" \
            bash -c "! grep -Eq '^X-(Rewrite|Interop-Added)' '$f'"
        else fail "postfix v$proto $sock accept-all: delivered" "$(smtp_reply "pf$proto$sock-accept" | head -1)"; fi
        timeout 60 smtp-source -d -m 3 -s 1 -f a@example.org -t b@example.com -M client.test \
          "127.0.0.1:$PF_PORT" >"$WORK/log/smtp-source-v$proto-$sock.log" 2>&1 \
          && pass "postfix v$proto $sock accept-all: smtp-source 3 messages on one session" \
          || fail "postfix v$proto $sock accept-all: smtp-source 3 messages" "$(tail -2 "$WORK/log/smtp-source-v$proto-$sock.log")"
        [ -n "$rec" ] && { sleep 0.5; stop_pid "$rec" || true; }
        stop_pid "$MILTER_PID" || true
      else fail "postfix v$proto $sock accept-all: start" "milter did not listen"; fi
      w=$(pf_warnings_since "$n0"); [ -z "$w" ] || fail "postfix v$proto $sock accept-all: no milter warnings" "$(echo "$w" | head -2)"
      row_end

      # ---- add-header
      n0=$(pf_loglines)
      if [ "$sock" = unix ]; then spec=unix:$WORK/sock/add-header.sock; else spec=inet:$((TCP_PORT + 1))@127.0.0.1; fi
      row_begin Postfix "$ver" "$proto" "$sock" "add-header: header present in delivered mail"
      if start_milter "pf-add-header-v$proto-$sock" "$spec" "$BIN/add-header" --listen "$spec" --socket-mode 666 \
          --name X-Interop-Added --value "postfix-v$proto-$sock"; then
        pf_start "$spec" "$proto"
        send_pf "pf$proto$sock-addheader" b@example.com
        if f=$(sink_file "$WORK/sink/pf" "pf$proto$sock-addheader"); then
          check "postfix v$proto $sock add-header: X-Interop-Added in delivered mail" "header missing" \
            grep -q "^X-Interop-Added: postfix-v$proto-$sock\$" "$f"
        else fail "postfix v$proto $sock add-header: delivered" "$(smtp_reply "pf$proto$sock-addheader" | head -1)"; fi
        stop_pid "$MILTER_PID" || true
      else fail "postfix v$proto $sock add-header: start" "milter did not listen"; fi
      w=$(pf_warnings_since "$n0"); [ -z "$w" ] || fail "postfix v$proto $sock add-header: no milter warnings" "$(echo "$w" | head -2)"
      row_end

      # ---- rewrite: every modification and reply
      n0=$(pf_loglines)
      if [ "$sock" = unix ]; then spec=unix:$WORK/sock/rewrite.sock; else spec=inet:$((TCP_PORT + 2))@127.0.0.1; fi
      row_begin Postfix "$ver" "$proto" "$sock" "rewrite: add/insert/change/delete header, replace body, add rcpt (+NOTIFY), delete rcpt, change sender, quarantine (hold queue), discard, reject, tempfail, custom 5xx/4xx reply, 3-line reply"
      if start_milter "pf-rewrite-v$proto-$sock" "$spec" "$BIN/rewrite" --listen "$spec" --socket-mode 666; then
        local mspec=$spec rec=""
        if [ "$sock" = unix ]; then
          start_bg "record-pf-v$proto-rewrite" /usr/bin/python3 "$HERE/record.py" "$WORK/sock/rec.sock" \
            "${spec#unix:}" "$WORK/capture/postfix-$ver-v$proto-rewrite"
          rec=$LAST_PID; wait_socket "unix:$WORK/sock/rec.sock"; mspec=unix:$WORK/sock/rec.sock
        fi
        pf_start "$mspec" "$proto"
        local c suffix to actions why
        for c in "${REWRITE_CASES[@]}"; do
          IFS='|' read -r suffix to actions <<<"$c"
          send_pf "pf$proto$sock-$suffix" "$to" "$actions"
        done
        for c in "${REWRITE_CASES[@]}"; do
          IFS='|' read -r suffix to actions <<<"$c"
          if why=$(check_case postfix "pf$proto$sock" "$suffix" "$WORK/sink/pf"); then
            pass "postfix v$proto $sock rewrite $actions"
          else fail "postfix v$proto $sock rewrite $actions" "$why"; fi
        done
        pf "postsuper -c $PF_BASE/etc -d ALL hold" >/dev/null 2>&1 || true
        [ -n "$rec" ] && { sleep 0.5; stop_pid "$rec" || true; }
        if stop_pid "$MILTER_PID"; then pass "postfix v$proto $sock rewrite: SIGTERM exits 0"
        else fail "postfix v$proto $sock rewrite: SIGTERM exits 0" "exit status $?"; fi
        if [ "$sock" = unix ]; then
          check "postfix v$proto $sock rewrite: socket removed on exit" "socket still there" test ! -e "${spec#unix:}"
        fi
      else fail "postfix v$proto $sock rewrite: start" "milter did not listen"; fi
      w=$(pf_warnings_since "$n0"); [ -z "$w" ] || fail "postfix v$proto $sock rewrite: no milter warnings" "$(echo "$w" | head -2)"
      row_end

      # ---- inspect: the macros Postfix sent
      if [ "$sock" = unix ]; then spec=unix:$WORK/sock/inspect.sock; else spec=inet:$((TCP_PORT + 3))@127.0.0.1; fi
      row_begin Postfix "$ver" "$proto" "$sock" "inspect: macros at connect/helo/mail/rcpt/eom in its log"
      if start_milter "pf-inspect-v$proto-$sock" "$spec" "$BIN/inspect" --listen "$spec" --socket-mode 666; then
        pf_start "$spec" "$proto"
        send_pf "pf$proto$sock-inspect" b@example.com
        accepted "pf$proto$sock-inspect" || fail "postfix v$proto $sock inspect: accepted" "$(smtp_reply "pf$proto$sock-inspect" | head -1)"
        sleep 0.3
        local ilog=$WORK/log/inspect-v$proto-$sock.txt
        plain "$WORK/log/pf-inspect-v$proto-$sock.log" >"$ilog"
        check "postfix v$proto $sock inspect: connect macros (j, {daemon_name}, {client_addr})" "see $ilog" \
          grep -Eq 'connect.*j=harness\.localdomain.*|connect.*\{daemon_name\}=' "$ilog"
        check "postfix v$proto $sock inspect: mail macros ({mail_addr})" "see $ilog" \
          grep -Eq 'from=<a@example.org>.*\{mail_addr\}=a@example.org' "$ilog"
        check "postfix v$proto $sock inspect: rcpt macros ({rcpt_addr})" "see $ilog" \
          grep -Eq 'rcpt=<b@example.com>.*\{rcpt_addr\}=b@example.com' "$ilog"
        check "postfix v$proto $sock inspect: queue id {i} at end of message" "see $ilog" \
          grep -Eq "end of message.*queue_id=\"?$(queued_as "pf$proto$sock-inspect")" "$ilog"
        stop_pid "$MILTER_PID" || true
      else fail "postfix v$proto $sock inspect: start" "milter did not listen"; fi
      row_end
    done
  done

  # ---- greylist-filter (v6, unix)
  row_begin Postfix "$ver" 6 unix "greylist-filter: first attempt 451 4.7.1, retry after 2 s accepted with X-Greylist"
  if [ -z "$GREYLIST" ]; then
    skip "postfix greylist-filter" "$GREYLIST_WHY"
  elif ! "$GREYLIST" --help 2>/dev/null | grep -q -- '--delay'; then
    skip "postfix greylist-filter" "greylist-filter has no --delay flag yet"
  else
    spec=unix:$WORK/sock/greylist.sock
    rm -f "$WORK/greylist.redb"
    if start_milter pf-greylist "$spec" "$GREYLIST" --listen "$spec" --socket-mode 666 \
        --store "$WORK/greylist.redb" --delay 2s; then
      # The filter always lets loopback clients through: the SMTP client
      # announces a documentation address with XCLIENT instead.
      PF_EXTRA_MAIN="smtpd_authorized_xclient_hosts = 127.0.0.0/8;mynetworks = 127.0.0.0/8 192.0.2.0/24" pf_start "$spec" 6
      XCLIENT_ADDR=192.0.2.10 send_pf pf-grey-1 b@example.com
      local r1; r1=$(smtp_reply pf-grey-1 | head -1 || true)
      if [[ "$r1" == "451 4.7.1"* ]]; then pass "postfix greylist-filter: first attempt $r1"
      else fail "postfix greylist-filter: first attempt 451 4.7.1" "got: ${r1:-250 (accepted)}"; fi
      sleep 3
      XCLIENT_ADDR=192.0.2.10 send_pf pf-grey-2 b@example.com
      if accepted pf-grey-2 && f=$(sink_file "$WORK/sink/pf" pf-grey-2); then
        check "postfix greylist-filter: retry accepted with X-Greylist" "no X-Greylist header" grep -q '^X-Greylist' "$f"
      else fail "postfix greylist-filter: retry accepted" "$(smtp_reply pf-grey-2 | head -1)"; fi
      stop_pid "$MILTER_PID" || true
    else
      skip "postfix greylist-filter" "did not start with --listen/--socket-mode/--store/--delay: $(tail -1 "$WORK/log/pf-greylist.log")"
    fi
  fi
  row_end
  PF_BASE=$PF_BASE bash "$HARNESS/postfix-stop.sh" >/dev/null 2>&1 || true
  PF_STARTED=0
}

# ================================================================ Sendmail
SM=$WORK/sm
sendmail_install() {
  if [ ! -x "$SM/root/usr/libexec/sendmail/sendmail" ]; then
    rm -rf "$SM/debs" && mkdir -p "$SM/debs" "$SM/root"
    (cd "$SM/debs" && apt-get download sendmail-bin sendmail-base sendmail-cf) >"$WORK/log/sm-download.log" 2>&1 \
      || { apt-get update -qq && (cd "$SM/debs" && apt-get download sendmail-bin sendmail-base sendmail-cf) >"$WORK/log/sm-download.log" 2>&1; } \
      || return 1
    for d in "$SM"/debs/*.deb; do dpkg-deb -x "$d" "$SM/root"; done
  fi
  mkdir -p "$SM/queue" && chmod 700 "$SM/queue"
  touch "$SM/aliases" "$SM/statistics"
  printf 'hosts files\naliases files\n' >"$SM/service.switch"
}
# sendmail_run NAME SOCKET-SPEC SENDS-FILE: one Sendmail run against one milter.
sendmail_run() {
  local name=$1 spec=$2 sends=$3
  sed "s|/tmp/harness/sm|$SM|g" "$HARNESS/sendmail-harness.mc" >"$SM/$name.mc"
  m4 -DMILTER_SOCKET="$spec" -D_CF_DIR_="$SM/root/usr/share/sendmail/cf/" \
    "$SM/root/usr/share/sendmail/cf/m4/cf.m4" "$SM/$name.mc" >"$SM/$name.cf" 2>>"$WORK/log/m4.log"
  rm -rf "$WORK/sink/sm-$name"
  SMDIR=$SM SMCF=$SM/$name.cf SINKDIR=$WORK/sink/sm-$name OUTDIR=$WORK/swaks \
    timeout 300 unshare -n -u bash "$HERE/sendmail-ns.sh" "$sends" >"$WORK/log/sendmail-$name.log" 2>&1 || true
}

sendmail_section() {
  local ver
  if ! sendmail_install; then
    row_begin Sendmail "?" 6 unix "Sendmail from .debs"; fail "sendmail install" "apt-get download failed"; row_end; return
  fi
  ver=$({ "$SM/root/usr/libexec/sendmail/sendmail" -d0.1 -bt </dev/null 2>/dev/null || true; } | sed -n 's/^Version //p' | head -1)
  SM_VERSION=$ver
  echo "interop: Sendmail $ver"
  local spec f

  # accept-all (recorded)
  row_begin Sendmail "$ver" 6 unix "accept-all: mail delivered unchanged"
  spec=unix:$WORK/sock/sm-accept.sock
  if start_milter sm-accept-all "$spec" "$BIN/accept-all" --listen "$spec" --socket-mode 666; then
    start_bg record-sm-accept /usr/bin/python3 "$HERE/record.py" "$WORK/sock/rec.sock" "${spec#unix:}" \
      "$WORK/capture/sendmail-$ver-v6-accept"
    local rec=$LAST_PID; wait_socket "unix:$WORK/sock/rec.sock"
    printf 'sm-accept\t\t\n' >"$SM/sends-accept"
    sendmail_run accept "unix:$WORK/sock/rec.sock" "$SM/sends-accept"
    if accepted sm-accept && f=$(sink_file "$WORK/sink/sm-accept" sm-accept); then
      check "sendmail accept-all: delivered unchanged" "unexpected header" bash -c "! grep -q '^X-Rewrite' '$f'"
    else fail "sendmail accept-all: delivered" "$(smtp_reply sm-accept | head -1) (see $WORK/log/sendmail-accept.log)"; fi
    stop_pid "$rec" || true; stop_pid "$MILTER_PID" || true
  else fail "sendmail accept-all: start" "milter did not listen"; fi
  row_end

  # add-header
  row_begin Sendmail "$ver" 6 unix "add-header: header present in delivered mail"
  spec=unix:$WORK/sock/sm-add-header.sock
  if start_milter sm-add-header "$spec" "$BIN/add-header" --listen "$spec" --socket-mode 666 \
      --name X-Interop-Added --value sendmail; then
    printf 'sm-addheader\t\t\n' >"$SM/sends-addheader"
    sendmail_run addheader "$spec" "$SM/sends-addheader"
    if f=$(sink_file "$WORK/sink/sm-addheader" sm-addheader); then
      check "sendmail add-header: X-Interop-Added in delivered mail" "header missing" grep -q '^X-Interop-Added: sendmail$' "$f"
    else fail "sendmail add-header: delivered" "$(smtp_reply sm-addheader | head -1)"; fi
    stop_pid "$MILTER_PID" || true
  else fail "sendmail add-header: start" "milter did not listen"; fi
  row_end

  # rewrite (recorded)
  row_begin Sendmail "$ver" 6 unix "rewrite: add/insert/change/delete header, replace body, add rcpt (+NOTIFY), delete rcpt, change sender, reject, tempfail, custom 5xx/4xx reply, 3-line reply"
  spec=unix:$WORK/sock/sm-rewrite.sock
  if start_milter sm-rewrite "$spec" "$BIN/rewrite" --listen "$spec" --socket-mode 666; then
    start_bg record-sm-rewrite /usr/bin/python3 "$HERE/record.py" "$WORK/sock/rec.sock" "${spec#unix:}" \
      "$WORK/capture/sendmail-$ver-v6-rewrite"
    local rec=$LAST_PID; wait_socket "unix:$WORK/sock/rec.sock"
    local c suffix to actions why
    : >"$SM/sends-rewrite"
    for c in "${REWRITE_CASES[@]}"; do
      IFS='|' read -r suffix to actions <<<"$c"
      case "$suffix" in quarantine|discard) continue ;; esac   # Postfix-specific checks
      printf 'sm-%s\t%s\t%s\n' "$suffix" "$actions" "$to" >>"$SM/sends-rewrite"
    done
    sendmail_run rewrite "unix:$WORK/sock/rec.sock" "$SM/sends-rewrite"
    while IFS=$'\t' read -r tok actions to; do
      if why=$(check_case sendmail sm "${tok#sm-}" "$WORK/sink/sm-rewrite"); then pass "sendmail rewrite $actions"
      else fail "sendmail rewrite $actions" "$why"; fi
    done <"$SM/sends-rewrite"
    stop_pid "$rec" || true
    if stop_pid "$MILTER_PID"; then pass "sendmail rewrite: SIGTERM exits 0"; else fail "sendmail rewrite: SIGTERM exits 0" "exit $?"; fi
  else fail "sendmail rewrite: start" "milter did not listen"; fi
  row_end
}

# ================================================================ miltertest
miltertest_section() {
  local spec=unix:$WORK/sock/mt-add-header.sock
  row_begin "miltertest (Lua, Debian)" "$(dpkg-query -W -f='${Version}' miltertest 2>/dev/null)" 6 unix \
    "add-header: header returned (addheader.lua); 200 sessions (loop.lua)"
  if start_milter mt-add-header "$spec" "$BIN/add-header" --listen "$spec" --socket-mode 666 \
      --name X-Interop-Added --value miltertest; then
    MILTER=$spec HNAME=X-Interop-Added HVALUE=miltertest timeout 60 miltertest -s "$HERE/addheader.lua" \
      >"$WORK/log/miltertest-lua.log" 2>&1 \
      && pass "miltertest (Lua) add-header" || fail "miltertest (Lua) add-header" "$(tail -2 "$WORK/log/miltertest-lua.log")"
    MILTER=$spec N=200 timeout 120 miltertest -s "$HARNESS/loop.lua" >"$WORK/log/miltertest-loop.log" 2>&1 \
      && pass "miltertest (Lua) loop.lua 200 sessions" || fail "miltertest (Lua) loop.lua" "$(tail -2 "$WORK/log/miltertest-loop.log")"
    row_end
    row_begin "miltertest (PyPI)" "" 6 unix "add-header: header returned, 2 messages on one connection"
    local venv=$WORK/venv
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import miltertest' 2>/dev/null; then
      rm -rf "$venv"
      /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q miltertest >"$WORK/log/pip.log" 2>&1 || true
    fi
    if "$venv/bin/python" -c 'import miltertest' 2>/dev/null; then
      ROW="miltertest (PyPI)|$("$venv/bin/pip" show miltertest 2>/dev/null | sed -n 's/^Version: //p')|6|unix|add-header: header returned, 2 messages on one connection"
      timeout 60 "$venv/bin/python" "$HERE/pymt.py" "${spec#unix:}" X-Interop-Added miltertest >"$WORK/log/pymt.log" 2>&1 \
        && pass "miltertest (PyPI) add-header" || fail "miltertest (PyPI) add-header" "$(tail -2 "$WORK/log/pymt.log")"
    else fail "miltertest (PyPI) install" "pip install miltertest failed (see $WORK/log/pip.log)"; fi
    stop_pid "$MILTER_PID" || true
  else fail "miltertest: start add-header" "milter did not listen"; fi
  row_end
}

# ================================================================ C milters via milter-run
cmilters_section() {
  local eml=$WORK/msg.eml mode proto spec out
  printf 'From: a@example.org\nTo: b@example.com\nSubject: interop\nMessage-ID: <interop@example.org>\nDate: Sun, 29 Nov 2026 00:00:00 +0000\n\nhello from milter-run\n' >"$eml"
  for proto in 6 2; do
    row_begin "milter-run -> cmilter (libmilter)" "$(dpkg-query -W -f='${Version}' libmilter1.0.1 2>/dev/null)" "$proto" unix \
      "accept (accepted), addheader (X-CMilter: seen), tempfail (451 4.7.1 at RCPT), connaccept (accepted at CONNECT)"
    for mode in accept addheader tempfail connaccept; do
      spec=unix:$WORK/sock/cm-$mode.sock
      if ! start_milter "cmilter-$mode-v$proto" "$spec" "$WORK/cmilter" -p "$spec" -m "$mode"; then
        fail "milter-run v$proto cmilter $mode" "cmilter did not listen"; continue
      fi
      out=$WORK/log/milter-run-cm-$mode-v$proto.txt
      local rc=0
      timeout 60 "$BIN/milter-run" --socket "$spec" --protocol-version "$proto" --from a@example.org \
        --rcpt b@example.com "$eml" >"$out" 2>&1 || rc=$?
      case "$mode" in
        accept) check "milter-run v$proto cmilter accept" "rc=$rc, see $out" grep -q '^result: accepted at EOM' "$out" ;;
        addheader) check "milter-run v$proto cmilter addheader: X-CMilter: seen" "rc=$rc, see $out" \
                     bash -c "[ $rc = 0 ] && grep -q 'X-CMilter' '$out' && grep -q '^result: accepted' '$out'" ;;
        tempfail) check "milter-run v$proto cmilter tempfail: 451 4.7.1 at RCPT" "rc=$rc, see $out" \
                    bash -c "[ $rc = 1 ] && grep -q '^result: tempfailed at RCPT: 451 4.7.1 cmilter: greylisted' '$out'" ;;
        connaccept) check "milter-run v$proto cmilter connaccept: accepted at CONNECT" "rc=$rc, see $out" \
                      bash -c "[ $rc = 0 ] && grep -q '^result: accepted at CONNECT' '$out'" ;;
      esac
      stop_pid "$MILTER_PID" || true
    done
    row_end
  done

  # opendkim: signs for example.org with a key made here.
  row_begin "milter-run -> opendkim" "$(opendkim -V 2>/dev/null | sed -n 's/.*OpenDKIM Filter v\([0-9.]*\).*/\1/p' | head -1)" 6 "unix, tcp" \
    "DKIM-Signature header added (d=example.org, s=interop)"
  # opendkim refuses configuration and keys below a world-writable directory (/tmp).
  local dk=${INTEROP_DKIM_DIR:-/run/milter-interop-dkim}
  rm -rf "$dk" && mkdir -p "$dk"
  if opendkim-genkey -D "$dk" -d example.org -s interop >"$WORK/log/opendkim-genkey.log" 2>&1; then
    chmod 600 "$dk/interop.private"
    for sock in unix tcp; do
      if [ "$sock" = unix ]; then spec=unix:$WORK/sock/opendkim.sock; else spec=inet:$((TCP_PORT + 5))@127.0.0.1; fi
      cat >"$dk/opendkim-$sock.conf" <<EOF
Domain example.org
Selector interop
KeyFile $dk/interop.private
Socket ${spec/unix:/local:}
Mode s
Canonicalization relaxed/simple
Syslog no
UMask 000
PidFile $dk/opendkim-$sock.pid
InternalHosts 127.0.0.1
EOF
      if start_milter "opendkim-$sock" "$spec" opendkim -f -x "$dk/opendkim-$sock.conf"; then
        out=$WORK/log/milter-run-opendkim-$sock.txt
        local rc=0
        timeout 60 "$BIN/milter-run" --socket "$spec" --from a@example.org --rcpt b@example.com \
          --client-ip 127.0.0.1 "$eml" >"$out" 2>&1 || rc=$?
        check "milter-run opendkim ($sock): DKIM-Signature added" "rc=$rc, see $out" \
          bash -c "grep -q 'DKIM-Signature' '$out' && grep -q 'd=example.org' '$out' && grep -q 's=interop' '$out'"
        stop_pid "$MILTER_PID" || true
      else fail "opendkim ($sock): start" "$(tail -2 "$WORK/log/opendkim-$sock.log")"; fi
    done
  else fail "opendkim-genkey" "$(tail -2 "$WORK/log/opendkim-genkey.log")"; fi
  row_end
}

# ================================================================ cargo tests
differential_section() {
  row_begin "differential: cmilter vs accept-all/add-header" "libmilter $(dpkg-query -W -f='${Version}' libmilter1.0.1 2>/dev/null)" "6, 2" unix \
    "identical per-stage replies and modifications; several messages per connection; abort mid-message"
  (cd "$ROOT" && CMILTER=$WORK/cmilter timeout 900 cargo test --release -q -p milter-examples --test differential -- --nocapture) \
    >"$WORK/log/differential.log" 2>&1 \
    && pass "differential test (cargo test -p milter-examples --test differential)" \
    || fail "differential test" "$(grep -E 'panicked|assert|error' "$WORK/log/differential.log" | head -3) (see $WORK/log/differential.log)"
  row_end
}

captures_section() {
  row_begin "captures: recorded MTA streams" "${PF_VERSION:-} ${SM_VERSION:-}" "6, 2" unix \
    "every frame decodes and passes milter_proto::Session"
  local fresh=$WORK/captures
  rm -rf "$fresh" && mkdir -p "$fresh"
  # Pick one connection per scenario from the raw recordings (one file per
  # milter connection): the first accept-all session (one message), the
  # smtp-source one (3 messages), and the rewrite add-header and reject ones.
  local f base
  for f in "$WORK"/capture/*-accept-1.bin; do
    [ -f "$f" ] && cp "$f" "$fresh/$(basename "${f%-1.bin}").bin"
  done
  for f in "$WORK"/capture/postfix-*-accept-*.bin; do
    # The smtp-source session carries three messages from <a@example.org>.
    [ -f "$f" ] && [ "$(grep -a -o '<a@example.org>' "$f" | wc -l)" -ge 3 ] || continue
    base=$(basename "$f"); cp "$f" "$fresh/${base%-accept-*}-accept-3msgs.bin"
  done
  for tag in addhdr reject mlreply; do
    for f in "$WORK"/capture/*-rewrite-*.bin; do
      [ -f "$f" ] || continue
      if grep -q -a -- "-$tag" "$f"; then
        base=$(basename "$f"); cp "$f" "$fresh/${base%-rewrite-*}-rewrite-$tag.bin"
      fi
    done
  done
  ls "$fresh" | sed 's/^/  capture: /'
  if [ -z "$(ls -A "$fresh")" ] && [ -z "$(ls "$ROOT"/milter-proto/tests/data/*.bin 2>/dev/null)" ]; then
    skip "captures" "nothing recorded (run the postfix and sendmail sections)"
  else
    if [ "${INTEROP_UPDATE_CAPTURES:-0}" = 1 ]; then
      mkdir -p "$ROOT/milter-proto/tests/data"
      cp "$fresh"/*.bin "$ROOT/milter-proto/tests/data/"
      (cd "$ROOT" && MILTER_WRITE_CAPTURE_SEEDS=1 timeout 600 cargo test --release -q -p milter-proto --test captures) \
        >"$WORK/log/captures-update.log" 2>&1 || true
      echo "interop: captures copied to milter-proto/tests/data and fuzz/corpus/{frame,session} (commit them)"
    fi
    (cd "$ROOT" && MILTER_CAPTURE_DIR=$fresh timeout 600 cargo test --release -q -p milter-proto --test captures -- --nocapture) \
      >"$WORK/log/captures.log" 2>&1 \
      && pass "captures replay: $(ls "$fresh" | wc -l) fresh recordings and the committed ones" \
      || fail "captures replay" "$(grep -E 'panicked|stale|fail' "$WORK/log/captures.log" | head -3) (see $WORK/log/captures.log)"
  fi
  row_end
}

# ================================================================ main
install_packages
build
PF_VERSION="" SM_VERSION=""
want postfix && postfix_section
want sendmail && sendmail_section
want miltertest && miltertest_section
want cmilters && cmilters_section
want differential && differential_section
want captures && captures_section

# ---------------------------------------------------------------- report
T1=$(date +%s)
NPASS=$(grep -c '^PASS' "$RESULTS" || true)
NFAIL=$(grep -c '^FAIL' "$RESULTS" || true)
NSKIP=$(grep -c '^SKIP' "$RESULTS" || true)
{
  echo "| MTA / peer | version | protocol | socket | verified | result |"
  echo "|---|---|---|---|---|---|"
  while IFS='|' read -r mta ver proto sock what st; do
    echo "| $mta | $ver | $proto | $sock | $what | $st |"
  done <"$TABLE"
} >"$WORK/COMPATIBILITY.md"
{
  echo "# Interoperability"
  echo
  echo "Generated by \`scripts/interop.sh\` on $(date -u +%Y-%m-%d) (Debian $(cat /etc/debian_version 2>/dev/null)):"
  echo "$NPASS checks passed, $NFAIL failed, $NSKIP skipped in $((T1 - T0)) s."
  echo
  cat "$WORK/COMPATIBILITY.md"
} >"$HERE/COMPATIBILITY.md.new"
mv "$HERE/COMPATIBILITY.md.new" "$HERE/COMPATIBILITY.md"
echo
echo "================ compatibility"
cat "$WORK/COMPATIBILITY.md"
echo
if [ "$NFAIL" -gt 0 ]; then
  echo "================ failures"
  grep '^FAIL' "$RESULTS" | cut -f2- | sed 's/\t/: /'
fi
echo "interop: $NPASS passed, $NFAIL failed, $NSKIP skipped in $((T1 - T0)) s (logs in $WORK/log)"
[ "$NFAIL" -eq 0 ]
