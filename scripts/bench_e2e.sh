#!/usr/bin/env bash
# Privacy overhead: time to the first chunk and to the whole 32-token answer through client -> relay ->
# enclave, against the same model called in process with the same prompt (medians of N runs). The
# attestation is cached after the first run, as for a user asking again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
N=${N:-20}
D=$(mktemp -d)
"$BIN/confidant-model" demo-model --random --out "$D/model" 2>/dev/null
"$BIN/confidant-ops" dev-ca --out "$D/ca" 2>/dev/null
"$BIN/confidant-enclave" serve --listen "unix:$D/e.sock" --model "$D/model" --nsm emulated --dev-ca "$D/ca" --threads 1 > "$D/e.out" 2>/dev/null &
E=$!
"$BIN/confidant-relay" --listen 127.0.0.1:0 --upstream "unix:$D/e.sock" --self-signed "$D/tls" > "$D/r.out" 2>/dev/null &
R=$!
trap 'kill $E $R 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 200); do grep -q listening "$D/e.out" 2>/dev/null && grep -q listening "$D/r.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(awk '{print $2}' "$D/r.out" | sed 's/udp://')
PINS=$("$BIN/confidant-enclave" measure --model "$D/model" | sed 's/^/--pcr /' | tr '\n' ' ')
Q="What is a deductible, and how does it work with coinsurance?"
export CONFIDANT_CACHE_DIR="$D/cache"
for i in $(seq "$N"); do
  # shellcheck disable=SC2086
  "$BIN/confidant" ask --json --max-tokens 32 --relay "$ADDR" --relay-ca "$D/tls/cert.pem" --root "$D/ca/root.pem" $PINS "$Q"
done > "$D/e2e.jsonl"
"$BIN/confidant-model" bench-generate --model "$D/model" --prompt "$Q" --new 32 --repeat "$N" --threads 1 > "$D/inproc.json"
python3 - "$D" <<'PY'
import json, statistics, sys, pathlib
d = pathlib.Path(sys.argv[1])
runs = [json.loads(l) for l in (d / "e2e.jsonl").read_text().splitlines()][1:]  # first run attests
base = json.loads((d / "inproc.json").read_text())
first = statistics.median(r["first_chunk_ms"] for r in runs)
total = statistics.median(r["total_ms"] for r in runs)
print(json.dumps({"runs": len(runs), "tokens": runs[0]["generated_tokens"],
  "e2e_first_chunk_ms": first, "inproc_first_chunk_ms": base["first_chunk_ms"],
  "e2e_total_ms": total, "inproc_total_ms": base["total_ms"],
  "overhead_first_chunk_ms": first - base["first_chunk_ms"], "overhead_total_ms": total - base["total_ms"]}))
PY
