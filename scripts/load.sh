#!/usr/bin/env bash
# The load generator against a local stack (release binaries, demo model): N concurrent clients
# (CLIENTS, default 200) each asking QUESTIONS one-shot questions through the relay, every answer
# checked against the model's greedy output computed in process. Prints the generator's JSON report.
# `make load` runs it; `make test` runs a 20-client version (tests/tests/e2e.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
CLIENTS=${CLIENTS:-200}
QUESTIONS=${QUESTIONS:-2}
TOKENS=${TOKENS:-16}
# UNSHAPED=1 asks with "shape": false (no cadence, no padding).
SHAPE=()
[ "${UNSHAPED:-0}" = 1 ] && SHAPE=(--unshaped)
D=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$BIN/confidant-model" demo-model --random --out "$D/model" 2>/dev/null
"$BIN/confidant-ops" dev-ca --out "$D/ca" 2>/dev/null
"$BIN/confidant-enclave" serve --listen "unix:$D/e.sock" --model "$D/model" --nsm emulated --dev-ca "$D/ca" \
  --queue 256 > "$D/e.out" 2> "$D/e.log" &
pids+=($!); EPID=$!
"$BIN/confidant-relay" --listen 127.0.0.1:0 --upstream "unix:$D/e.sock" --self-signed "$D/tls" \
  --max-connections-per-source 512 --max-streams-per-source 2048 > "$D/r.out" 2> "$D/r.log" &
pids+=($!); RPID=$!
for _ in $(seq 300); do grep -q listening "$D/e.out" 2>/dev/null && grep -q listening "$D/r.out" 2>/dev/null && break; sleep 0.1; done
RELAY=$(awk '{print $2}' "$D/r.out" | sed 's/^udp://')
PINS=$("$BIN/confidant-enclave" measure --model "$D/model" | sed 's/^/--pcr /' | tr '\n' ' ')
"$BIN/confidant-model" answer --model "$D/model" --max-tokens "$TOKENS" \
  "What is a copay?" "What is a deductible?" "Who sees my records?" "What is an HSA?" \
  "When can I retire?" "Is a hearing aid covered?" > "$D/expect.json"
# shellcheck disable=SC2086
"$BIN/confidant-load" --relay "$RELAY" --relay-ca "$D/tls/cert.pem" --root "$D/ca/root.pem" $PINS \
  --clients "$CLIENTS" --questions "$QUESTIONS" --max-tokens "$TOKENS" --expect "$D/expect.json" \
  --relay-pid "$RPID" --enclave-pid "$EPID" "${SHAPE[@]}"
