#!/bin/bash
# Runs INSIDE `unshare -n -u` (private network namespace: only lo exists, nothing
# can leave the box). Adapted from shared/harness/sendmail-test.sh.
#
# usage: SMDIR=... SMCF=... SINKDIR=... OUTDIR=... unshare -n -u sendmail-ns.sh SENDS_FILE
#
# Starts smtp-sink on 127.0.0.1:2526 (dumping every message to $SINKDIR) and
# `sendmail -bD` on 127.0.0.1:2527, then runs the sends listed in SENDS_FILE:
# one per line, `TOKEN<TAB>ACTIONS<TAB>TO`, ACTIONS ';'-separated X-Test-Action
# values (may be empty), TO a comma-separated recipient list (may be empty:
# b@example.com). Each swaks transcript goes to $OUTDIR/TOKEN.txt. Milters are
# reached over unix sockets (the filesystem is shared with the host namespace).
set -u
: "${SMDIR:?}" "${SMCF:?}" "${SINKDIR:?}" "${OUTDIR:?}"
SENDS=${1:?usage: $0 SENDS_FILE}
ip link set lo up
hostname smharness.localdomain   # Sendmail needs an FQDN (private UTS namespace)
rm -f "$SMDIR"/queue/*
mkdir -p "$SINKDIR" "$OUTDIR" && chown postfix "$SINKDIR"
smtp-sink -u postfix -d "$SINKDIR/%H%M%S." -h sink.test 127.0.0.1:2526 100 & SINK=$!
"$SMDIR/root/usr/libexec/sendmail/sendmail" -C "$SMCF" -bD -q30m & SM=$!
# Wait (bounded) for Sendmail to listen.
for _ in $(seq 1 50); do ss -Hltn 'sport = :2527' | grep -q . && break; sleep 0.2; done
while IFS=$'\t' read -r tok actions to; do
  [ -n "$tok" ] || continue
  args=()
  IFS=';' read -r -a acts <<<"$actions"
  for a in "${acts[@]}"; do [ -n "$a" ] && args+=(--add-header "X-Test-Action: $a"); done
  timeout 60 swaks --server 127.0.0.1 --port 2527 --from a@example.org --to "${to:-b@example.com}" \
    --helo client.test --timeout 30 --add-header "X-Interop-Token: $tok" \
    --add-header "X-Remove: please" --body "original body $tok" "${args[@]}" \
    >"$OUTDIR/$tok.txt" 2>&1
done <"$SENDS"
# Let background delivery reach the sink (bounded), then stop both.
for _ in $(seq 1 50); do
  [ -z "$(ls -A "$SMDIR/queue" 2>/dev/null | grep -v '^xf')" ] && break; sleep 0.2
done
sleep 1
kill "$SM" "$SINK" 2>/dev/null
wait
