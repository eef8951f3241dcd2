#!/bin/sh
# Runs enclave N (CID 16+N) from $EIF with $CPUS vCPUs and $MEMORY_MIB (from /etc/confidant/enclave.env),
# then waits while it runs: the unit is restarted when the enclave stops. `enclave-run.sh N stop`
# terminates it. Production enclaves run without --debug-mode: no console, so boot failures reach the
# relay's --boot-reports (journalctl -u confidant-relay, metric confidant_relay_enclave_boot_failures_total).
set -eu
N=$1
NAME=confidant-$N
CID=$((16 + N))
running() { nitro-cli describe-enclaves | grep -q "\"EnclaveName\": \"$NAME\""; }
if [ "${2:-}" = stop ]; then
  nitro-cli terminate-enclave --enclave-name "$NAME" >/dev/null 2>&1 || true
  exit 0
fi
# A leftover from before a crash of this unit.
running && nitro-cli terminate-enclave --enclave-name "$NAME" >/dev/null
nitro-cli run-enclave --enclave-name "$NAME" --eif-path "${EIF:?}" --cpu-count "${CPUS:-2}" \
  --memory "${MEMORY_MIB:-6144}" --enclave-cid "$CID"
while running; do sleep 10; done
echo "enclave $NAME stopped" >&2
exit 1
