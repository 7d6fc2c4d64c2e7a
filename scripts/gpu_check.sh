#!/usr/bin/env bash
# Every GPU check in one call of at most 8 minutes (issue 9): the focused profile of this
# GPU for the models it validates (-> <name>.yaml: h200 on an H200, else a slug of the GPU's
# name), the two independent 5% checks (pinned 1 GiB H2D, 8192^3 fp16 GEMM), the 10
# validation cases of validate/gpu_suite.py (one record each), the executor-speed benchmark
# against the PCIe and HBM bounds, and one tar of the records. Each step has its own time
# budget and is stopped, not the whole run, when it overruns; the budget table is in
# llmsim/gpu_check.py, the driver this script calls.
#
# Outputs (at most 8 files) go to $OUT, else ./gpu-check-out: env.txt, <name>.yaml,
# check.json, bench.json, records.tar, summary.json, run.log. Afterwards, in the repository:
#   cp <name>.yaml hardware_profiles/data/ && tar -xf records.tar -C validate/records/
#
# Usage:
#   bash scripts/gpu_check.sh                 # on the GPU machine (python3 with torch + CUDA)
#   bash scripts/gpu_check.sh --dry-run       # anywhere: CPU, torch.cuda stand-in, tiny models
#   bash scripts/gpu_check.sh --budget cases=150 [--profile-name NAME] [--out DIR]
# On the device tool: run(command="bash scripts/gpu_check.sh", timeout_s=600)
# PYTHON selects the interpreter (default python3); the package need not be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m llmsim.gpu_check "$@"
