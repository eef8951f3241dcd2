#!/usr/bin/env python3
"""The measurements of an enclave image, from `nitro-cli build-enclave`'s JSON (a file or stdin):
printed as the client's `--pcr` arguments and as `confidant-ops kms-policy` arguments.

    nitro-cli build-enclave --docker-uri confidant-enclave:latest --output-file confidant.eif > eif.json
    scripts/pcrs.py eif.json
"""
import json
import re
import sys


def main() -> int:
    src = open(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-" else sys.stdin
    try:
        doc = json.load(src)
        m = doc["Measurements"]
    except (ValueError, KeyError, TypeError) as e:
        print(f"error: not nitro-cli build-enclave output: {e}", file=sys.stderr)
        return 1
    if m.get("HashAlgorithm", "").split()[0] != "Sha384":
        print(f"error: unexpected hash algorithm {m.get('HashAlgorithm')!r}", file=sys.stderr)
        return 1
    pcrs = []
    for i in (0, 1, 2, 8):
        v = m.get(f"PCR{i}")
        if v is None:
            continue  # PCR8 only for a signed image
        if not re.fullmatch(r"[0-9a-f]{96}", v):
            print(f"error: PCR{i} is not 48 bytes of hex", file=sys.stderr)
            return 1
        pcrs.append((i, v))
    if [i for i, _ in pcrs][:3] != [0, 1, 2]:
        print("error: PCR0, PCR1 and PCR2 are required", file=sys.stderr)
        return 1
    for i, v in pcrs:
        print(f"PCR{i} {v}")
    print("client:     " + " ".join(f"--pcr {i}={v}" for i, v in pcrs))
    print("kms-policy: " + " ".join(f"--pcr {i}={v}" for i, v in pcrs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
