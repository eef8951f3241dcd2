#!/usr/bin/env bash
# The traffic shape's cost: N questions asked shaped (the default) and N unshaped (--unshaped),
# alternating, through one local stack; for each, the bytes the relay carried per question (both
# directions, as its test-only capture records them; attestation excluded: it is cached) and the medians of time to the
# first text and to the end. One JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
N=${N:-10}
TOKENS=${TOKENS:-48}
D=$(mktemp -d)
"$BIN/confidant-model" demo-model --random --out "$D/model" 2>/dev/null
"$BIN/confidant-ops" dev-ca --out "$D/ca" 2>/dev/null
"$BIN/confidant-enclave" serve --listen "unix:$D/e.sock" --model "$D/model" --nsm emulated --dev-ca "$D/ca" --threads 1 > "$D/e.out" 2>/dev/null &
E=$!
"$BIN/confidant-relay" --listen 127.0.0.1:0 --upstream "unix:$D/e.sock" --self-signed "$D/tls" --metrics 127.0.0.1:0 --capture-test-only "$D/capture.bin" > "$D/r.out" 2>/dev/null &
R=$!
trap 'kill $E $R 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 200); do grep -q listening "$D/e.out" 2>/dev/null && grep -q listening "$D/r.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(awk '{print $2}' "$D/r.out" | sed 's/udp://')
METRICS=$(sed -n 's/.* metrics tcp:\([^ ]*\).*/\1/p' "$D/r.out")
PINS=$("$BIN/confidant-enclave" measure --model "$D/model" | sed 's/^/--pcr /' | tr '\n' ' ')
export CONFIDANT_CACHE_DIR="$D/cache"
# Ready when the relay's health check sees the enclave up.
for _ in $(seq 100); do
  python3 -c "import urllib.request, sys; urllib.request.urlopen('http://$METRICS/health')" 2>/dev/null && break
  sleep 0.1
done
# Every byte the relay carries, both directions, is appended to the capture file as it passes.
bytes() { stat -c %s "$D/capture.bin" 2>/dev/null || echo 0; }
ask() {
  # shellcheck disable=SC2086
  "$BIN/confidant" ask --json --max-tokens "$TOKENS" --relay "$ADDR" --relay-ca "$D/tls/cert.pem" --root "$D/ca/root.pem" $PINS "$@"
}
ask "warm up: attest and cache" > /dev/null
Q="What is a deductible, and how does it work with coinsurance?"
for i in $(seq "$N"); do
  for mode in shaped unshaped; do
    flag=""; [ "$mode" = unshaped ] && flag="--unshaped"
    before=$(bytes)
    # shellcheck disable=SC2086
    line=$(ask $flag "$Q (variant $i)")
    sleep 0.2  # the last bytes reach the capture file just after the client has them
    after=$(bytes)
    echo "{\"mode\": \"$mode\", \"bytes\": $((after - before)), \"run\": $line}"
  done
done > "$D/runs.jsonl"
python3 - "$D/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def summary(mode):
    rs = [r for r in runs if r["mode"] == mode]
    return {
        "questions": len(rs),
        "generated_tokens": statistics.median(r["run"]["generated_tokens"] for r in rs),
        "wire_bytes_per_question": statistics.median(r["bytes"] for r in rs),
        "first_text_ms_p50": statistics.median(r["run"]["first_chunk_ms"] for r in rs),
        "total_ms_p50": statistics.median(r["run"]["total_ms"] for r in rs),
    }
s, u = summary("shaped"), summary("unshaped")
print(json.dumps({
    "shaped": s, "unshaped": u,
    "bytes_ratio": s["wire_bytes_per_question"] / u["wire_bytes_per_question"],
    "added_first_text_ms": s["first_text_ms_p50"] - u["first_text_ms_p50"],
    "added_total_ms": s["total_ms_p50"] - u["total_ms_p50"],
}))
PY
