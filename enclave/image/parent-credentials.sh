#!/bin/sh
# Parent side: serve this instance role's AWS credentials to the enclave on vsock port 8002, in the
# JSON IMDS returns (the enclave has no IMDS of its own). The credentials let the enclave *ask* KMS;
# the key policy decides on the attestation document, which the parent cannot forge.
# Needs socat >= 1.7.4 (vsock support) and curl.
set -eu
# shellcheck disable=SC2016 # the script runs in socat's shell, per connection
exec socat VSOCK-LISTEN:8002,fork,reuseaddr SYSTEM:'
  IMDS=http://169.254.169.254/latest
  T=$(curl -sf -X PUT "$IMDS/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
  ROLE=$(curl -sf -H "X-aws-ec2-metadata-token: $T" "$IMDS/meta-data/iam/security-credentials/")
  curl -sf -H "X-aws-ec2-metadata-token: $T" "$IMDS/meta-data/iam/security-credentials/$ROLE"'
