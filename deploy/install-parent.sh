#!/bin/sh
# Installs the parent side on an enclave-enabled instance, from the unpacked confidant-parent.tar.gz
# (scripts/package_parent.sh): the relay, the systemd units and their scripts, for N enclaves (CIDs 16…).
#   install-parent.sh N
set -eu
N=${1:?number of enclaves (1-4)}
case "$N" in 1|2|3|4) ;; *) echo "N is 1 to 4, not $N" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")/.." && pwd)
id confidant >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin confidant
# nitro-cli needs the ne group; the relay user does not run it.
install -m 0755 "$HERE/bin/confidant-relay" /usr/local/bin/confidant-relay
install -d -m 0755 /usr/local/libexec/confidant /etc/confidant
install -m 0755 "$HERE/deploy/systemd/enclave-run.sh" "$HERE/enclave/image/parent-credentials.sh" \
  /usr/local/libexec/confidant/
install -m 0644 "$HERE/deploy/systemd/confidant-relay.service" "$HERE/deploy/systemd/confidant-credentials.service" \
  "$HERE/deploy/systemd/confidant-enclave@.service" /etc/systemd/system/
[ -f /etc/confidant/enclave.env ] || install -m 0644 "$HERE/deploy/systemd/enclave.env" /etc/confidant/enclave.env
UPSTREAMS=""
i=0
while [ "$i" -lt "$N" ]; do UPSTREAMS="$UPSTREAMS --upstream vsock:$((16 + i)):5005"; i=$((i + 1)); done
printf 'UPSTREAMS=%s\n' "${UPSTREAMS# }" > /etc/confidant/relay.env
systemctl daemon-reload
echo "installed for $N enclave(s): $UPSTREAMS"
