#!/usr/bin/env bash
# Every GPU step of issue 4, unattended, on the lent GPU machine (or any CUDA machine):
#   1. the full `llmsim profile` of cuda:0 -> hardware_profiles/data/<name>.yaml
#      (<name> = h100-pcie5 on an H100, else a slug of the GPU's name; override: PROFILE_NAME=...)
#   2. the 5% checks: the profile's pinned 1 GiB H2D and 8192^3 fp16 GEMM figures against
#      independent torch measurements taken now (benchmarks/bench_profile_check.py --check)
#   3. the GPU-marked tests (tests/test_profilers_gpu.py: the same checks as tests, then a
#      --quick GPU profile that must finish in under 60 s and that the planner accepts)
#   4. the planner reads the new profile (load_profile + one estimate)
# Outputs (at most 8 files, as the device tool returns them) go to the folder given as $1,
# else $OUT, else ./gpu-profile-out: env.txt, <name>.yaml (the profile with its raw
# measurements), profile-summary.json, profile.log, check.json, check.txt, pytest-gpu.log.
# Copy <name>.yaml into hardware_profiles/data/ of the repository and commit it.
#
# Usage: scripts/gpu_profile.sh [OUTDIR]      (PYTHON=python3 DISK_DIR=<repo root> by default)
# On the device tool: run(command="bash scripts/gpu_profile.sh", timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUTDIR="${1:-${OUT:-$ROOT/gpu-profile-out}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
DISK_DIR="${DISK_DIR:-$ROOT}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
status=()

step() {  # step NAME COMMAND...: run, record the exit status, keep going
  local name="$1"; shift
  echo "== $name: $*" >&2
  local t0=$SECONDS
  "$@"
  local rc=$?
  status+=("$name: exit $rc, $((SECONDS - t0)) s")
  return $rc
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
  nproc; free -g; df -h "$DISK_DIR"; uptime
} > "$OUTDIR/env.txt" 2>&1

GPU_NAME="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null)"
if [ -z "$GPU_NAME" ]; then
  echo "no CUDA device visible to $PY; see $OUTDIR/env.txt" >&2
  exit 1
fi
if [ -z "${PROFILE_NAME:-}" ]; then
  case "$GPU_NAME" in
    *H100*) PROFILE_NAME=h100-pcie5 ;;
    *) PROFILE_NAME="$(echo "$GPU_NAME" | tr 'A-Z' 'a-z' | sed -e 's/nvidia//' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')" ;;
  esac
fi
PROFILE="hardware_profiles/data/$PROFILE_NAME.yaml"
echo "GPU: $GPU_NAME -> $PROFILE" >&2

step profile "$PY" -m llmsim.profile_command --out "$PROFILE" --force --device cuda:0 --disk-dir "$DISK_DIR" \
  --json > "$OUTDIR/profile-summary.json" 2> "$OUTDIR/profile.log"
cp "$PROFILE" "$OUTDIR/" 2>/dev/null

step check "$PY" benchmarks/bench_profile_check.py --profile "$PROFILE" --device cuda:0 --check > "$OUTDIR/check.txt" 2>&1
"$PY" benchmarks/bench_profile_check.py --profile "$PROFILE" --device cuda:0 --json > "$OUTDIR/check.json" 2>>"$OUTDIR/check.txt"

step pytest-gpu "$PY" -m pytest -p no:cacheprovider -q -rA -m gpu tests/test_profilers_gpu.py \
  > "$OUTDIR/pytest-gpu.log" 2>&1

step planner "$PY" - "$PROFILE" <<'PYEOF' >> "$OUTDIR/check.txt" 2>&1
import sys
from simulator.cost import estimate
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
hw = load_profile(sys.argv[1])
print("loaded", hw.name, hw.summary())
est = estimate(get_model("opt-6.7b"), hw, Workload(512, 32),
               Policy(gpu_batch_size=32, num_gpu_batches=4, weights=Placement(0, 1, 0), cpu_attention=False))
print("opt-6.7b, weights on CPU, 128 sequences:", "feasible" if est.feasible else est.reason,
      f"decode {est.decode_throughput_tok_s:.1f} tok/s")
PYEOF

echo
echo "==== summary ($GPU_NAME, profile $PROFILE, outputs in $OUTDIR)"
printf '%s\n' "${status[@]}"
echo "---- profile summary"; cat "$OUTDIR/profile-summary.json" 2>/dev/null | head -60
echo "---- profile log (tail)"; tr '\r' '\n' < "$OUTDIR/profile.log" | tail -5
echo "---- 5% checks"; cat "$OUTDIR/check.txt"
echo "---- GPU tests (tail)"; tail -15 "$OUTDIR/pytest-gpu.log"
for s in "${status[@]}"; do case "$s" in *"exit 0,"*) ;; *) exit 1 ;; esac; done
