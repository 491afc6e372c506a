#!/bin/sh
# OCSF 1.5.0 Detection Findings of the open assessments, one JSON object per line, read from the
# store beside a running Cortex (read-only). The file is written 0600 and never over another.
set -eu
CONFIG=${CONFIG:-/etc/qsc/cortex.toml}
OUT=${OUT:-open-findings.jsonl}
qsc-cortex assessments export --config "$CONFIG" --format ocsf --filter 'state = OPEN' --out "$OUT"
