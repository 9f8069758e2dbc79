#!/usr/bin/env bash
# GPU/TPU check of the default U-Net: train step (128x128; batch 8, 64, 256; fp32 and bf16) against
# the device's measured bf16 matmul peak, and the 10-step DDPM sampler. Needs JAX for the
# accelerator and this repository (installed or not); no network. Finishes in under 8 minutes:
# the Python part stops starting measurements after --budget_s (default 400 s) and a hard
# timeout (ACCEL_CHECK_TIMEOUT_S, default 460 s) bounds the rest. The table is printed last;
# JSON goes to $OUT/accelerator_check.json when OUT is set (else benchmarks/results/).
#
#   benchmarks/accelerator_check.sh                 # on the accelerator machine
#   OUT=/tmp/out benchmarks/accelerator_check.sh
#   benchmarks/accelerator_check.sh --dry           # tiny sizes: checks the script on a CPU
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
ARGS=()
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  ARGS+=("--out=$OUT/accelerator_check.json")
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
cd "$REPO"
timeout --kill-after=10 "${ACCEL_CHECK_TIMEOUT_S:-460}" python "$HERE/accelerator_check.py" "${ARGS[@]}" "$@"
rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "accelerator_check: hit the ${ACCEL_CHECK_TIMEOUT_S:-460} s limit; partial results are in the JSON." >&2
fi
exit $rc
