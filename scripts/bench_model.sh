#!/usr/bin/env bash
# The engine benchmark, side by side in one run: the same random-weight bloom-560m-shaped checkpoint
# through llama.cpp (GGUF f32/f16/q8_0, its own llama-bench, llama-batched-bench and
# llama-perplexity), Hugging Face transformers (f32), and Confidant in f32, bf16 and int8 — the
# engine alone, and the real server (enclave + relay + QUIC clients) — with THREADS threads, the
# programs alternating for ROUNDS rounds. Prints each run's JSON to $OUT/, then one Markdown table
# of figures and ratios (also in $OUT/table.md).
#
#   MODEL      checkpoint dir (default target/bench-bloom-560m; made here when missing)
#   LLAMA      llama.cpp work dir (default target/llamacpp; built here with the shared setup.sh)
#   LLAMA_KIT  the shared llama.cpp kit (default ../shared/bench/llamacpp)
#   ROUNDS (2), THREADS (2), OUT (target/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-target/bench-bloom-560m}
LLAMA=${LLAMA:-target/llamacpp}
LLAMA_KIT=${LLAMA_KIT:-../shared/bench/llamacpp}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
OUT=${OUT:-target/bench-model}
BIN=target/release
TOOL=$BIN/confidant-model
PY=${PYTHON:-python3}
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl

[ -f "$MODEL/model.safetensors" ] || "$PY" scripts/hf_bloom.py make-model "$MODEL"
if [ ! -f "$LLAMA/gguf/bloom-q8_0.gguf" ]; then
  PYTHON=$PY "$LLAMA_KIT/setup.sh" "$LLAMA" "$MODEL"
fi
[ -x "$LLAMA/build/bin/llama-perplexity" ] ||
  "$LLAMA/venv/bin/cmake" --build "$LLAMA/build" -j"$(nproc)" --target llama-perplexity >/dev/null
# The engine and the server need a tokenizer: the synthetic one the kit made (BLOOM's vocabulary size).
[ -f "$MODEL/tokenizer.json" ] || cp "$LLAMA/hf/tokenizer.json" "$MODEL/"

log() { echo "== $*" >&2; }
for r in $(seq "$ROUNDS"); do
  log "round $r: llama.cpp"
  "$LLAMA_KIT/bench.sh" "$LLAMA" "$THREADS" 32 64 | tee -a "$OUT/llama.jsonl"
  for t in f32 f16 q8_0; do
    "$LLAMA/build/bin/llama-bench" -m "$LLAMA/gguf/bloom-$t.gguf" -t "$THREADS" -p 512 -n 0 -r 3 -fa on \
      -o jsonl 2>/dev/null | "$PY" -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print(json.dumps({'engine': 'llama.cpp', 'type': '$t', 'test': 'pp512', 'tokens_per_s': round(d['avg_ts'], 2)}))" |
      tee -a "$OUT/llama.jsonl"
  done
  log "round $r: confidant"
  for d in f32 bf16 int8; do
    "$TOOL" bench --model "$MODEL" --dtype "$d" --threads "$THREADS" --prompt-len 32,512 --new 64 \
      --batch 8,16 --repeat 3 | tee -a "$OUT/confidant.jsonl"
  done
  log "round $r: transformers"
  "$PY" scripts/hf_bloom.py bench "$MODEL" --prompt-len 32 --new 64 --threads "$THREADS" | tee -a "$OUT/hf.jsonl"
done

log "engine: time to first token"
for d in int8 bf16; do
  for b in 2048 820; do
    "$TOOL" bench-engine --model "$MODEL" --dtype "$d" --threads "$THREADS" --system-bytes "$b" |
      tee -a "$OUT/engine.jsonl"
  done
done

log "server: 8 and 16 concurrent clients through the relay"
D=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$BIN/confidant-ops" dev-ca --out "$D/ca" 2>/dev/null
PINS=$("$BIN/confidant-enclave" measure --model "$MODEL" | sed 's/^/--pcr /' | tr '\n' ' ')
for d in int8 bf16; do
  rm -f "$D/e.sock"
  "$BIN/confidant-enclave" serve --listen "unix:$D/e.sock" --model "$MODEL" --dtype "$d" --threads "$THREADS" \
    --nsm emulated --dev-ca "$D/ca" --queue 64 --max-batch 16 > "$D/e.out" 2> "$D/e.log" &
  EPID=$!; pids+=("$EPID")
  "$BIN/confidant-relay" --listen 127.0.0.1:0 --upstream "unix:$D/e.sock" --self-signed "$D/tls" \
    > "$D/r.out" 2> "$D/r.log" &
  RPID=$!; pids+=("$RPID")
  for _ in $(seq 600); do grep -q listening "$D/e.out" 2>/dev/null && grep -q listening "$D/r.out" 2>/dev/null && break; sleep 0.2; done
  RELAY=$(awk '{print $2}' "$D/r.out" | sed 's/^udp://')
  for c in 8 16; do
    # shellcheck disable=SC2086
    "$BIN/confidant-load" --relay "$RELAY" --relay-ca "$D/tls/cert.pem" --root "$D/ca/root.pem" $PINS \
      --clients "$c" --questions 1 --max-tokens 64 --enclave-pid "$EPID" |
      "$PY" -c "import json,sys; d=json.load(sys.stdin); d['dtype']='$d'; print(json.dumps(d))" |
      tee -a "$OUT/server.jsonl" || true
  done
  kill "$EPID" "$RPID" 2>/dev/null || true
  wait "$EPID" "$RPID" 2>/dev/null || true
done

log "quality against f32: Confidant (check) and llama.cpp (perplexity --kl-divergence)"
cat docs/*.md README.md > "$D/corpus.txt"
"$TOOL" check --model "$MODEL" --text "$D/corpus.txt" --tokenizer "$MODEL/tokenizer.json" --chunk 128 \
  --chunks 8 | tee "$OUT/quality.json"
P="$LLAMA/build/bin/llama-perplexity"
"$P" -m "$LLAMA/gguf/bloom-f32.gguf" -f "$D/corpus.txt" --kl-divergence-base "$D/base.kld" -c 128 --chunks 8 \
  -t "$THREADS" >/dev/null 2>&1
for t in f16 q8_0; do
  "$P" -m "$LLAMA/gguf/bloom-$t.gguf" --kl-divergence-base "$D/base.kld" --kl-divergence -t "$THREADS" 2>&1 |
    "$PY" -c "
import json, re, sys
text = sys.stdin.read()
kld = re.search(r'Mean\s+KLD:\s+([0-9.eE+-]+)', text)
top = re.search(r'Same top p:\s+([0-9.]+)', text)
print(json.dumps({'type': '$t', 'mean_kld': float(kld.group(1)) if kld else None,
                  'top1_agreement': float(top.group(1)) / 100 if top else None}))" | tee -a "$OUT/llama-quality.jsonl"
done

"$PY" scripts/bench_table.py "$OUT" | tee "$OUT/table.md"
