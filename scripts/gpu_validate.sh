#!/usr/bin/env bash
# Every GPU step of issue 5, unattended, after scripts/gpu_profile.sh has written the
# machine's profile: the 22-case GPU validation suite (validate/gpu_suite.py) in parts that
# each fit the device tool's 10-minute command limit, then the executor-speed benchmark.
#
# Usage (on the device tool, one call per part, profile committed or carried first):
#   run(command="bash scripts/gpu_validate.sh 1/3", timeout_s=600)
#   run(command="bash scripts/gpu_validate.sh 2/3", timeout_s=600)
#   run(command="bash scripts/gpu_validate.sh 3/3 bench", timeout_s=600)
# Outputs go to $OUT (or ./gpu-validate-out): records.tar (records + the profile copy),
# summary-K.json, suite-K.log and, with "bench", bench.json / bench.log. Unpack records.tar
# into validate/records/ and commit it with the profile (hardware_profiles/data/).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PART="${1:-1/1}"
OUTDIR="${OUT:-$ROOT/gpu-validate-out}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
PROFILE="${PROFILE:-h100-pcie5}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
K="${PART%%/*}"
"$PY" -m validate.gpu_suite --profile "$PROFILE" --out "$OUTDIR" --part "$PART" --offload-dir "$ROOT" \
  2>&1 | tee "$OUTDIR/suite-$K.log"
tar -cf "$OUTDIR/records.tar" -C "$OUTDIR" records
if [ "${2:-}" = "bench" ]; then
  "$PY" benchmarks/bench_executor.py --profile "$PROFILE" --json > "$OUTDIR/bench.json" 2> "$OUTDIR/bench.log"
  cat "$OUTDIR/bench.json"
fi
