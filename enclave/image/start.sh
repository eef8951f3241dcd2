#!/bin/sh
# Enclave boot. With sealed settings in the image (deploy/sealed/settings.sealed and deploy/sealed/region in the repository), the
# enclave first unseals them through KMS — TLS to KMS runs here, carried by the parent's vsock-proxy
# on port 8000; AWS credentials come from the parent on port 8002 (parent-credentials.sh) — and
# refuses to serve if that fails.
set -eu
D=/opt/confidant/deploy
# A failed boot (e.g. [kms_refused]) is reported to the parent relay's --boot-reports vsock:5006.
set -- serve --listen vsock:5005 --report-boot vsock:3:5006 --nsm device --model /opt/confidant/model --dtype bf16
if [ -f "$D/settings.sealed" ]; then
  set -- "$@" --sealed-settings "$D/settings.sealed" --region "$(cat "$D/region")" \
    --kms-proxy vsock:3:8000 --kms-credentials vsock:3:8002
fi
exec /opt/confidant/bin/confidant-enclave "$@"
