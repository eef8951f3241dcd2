#!/bin/sh
# Enclave boot. With sealed settings in the image (deploy/settings.sealed and deploy/region), the
# enclave first unseals them through KMS — TLS to KMS runs here, carried by the parent's vsock-proxy
# on port 8000; AWS credentials come from the parent on port 8002 (parent-credentials.sh) — and
# refuses to serve if that fails.
set -eu
D=/opt/confidant/deploy
set -- serve --listen vsock:5005 --nsm device --model /opt/confidant/model --dtype bf16
if [ -f "$D/settings.sealed" ]; then
  set -- "$@" --sealed-settings "$D/settings.sealed" --region "$(cat "$D/region")" \
    --kms-proxy vsock:3:8000 --kms-credentials vsock:3:8002
fi
exec /opt/confidant/bin/confidant-enclave "$@"
