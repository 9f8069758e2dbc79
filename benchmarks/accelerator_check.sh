#!/usr/bin/env bash
# GPU/TPU check of the default U-Net: train step (128x128; batch 8, 64, 256; fp32 and bf16) against
# the device's measured bf16 matmul peak, and the 10-step DDPM sampler (16 masks x 64 images), each
# beside the PyTorch reference (benchmarks/torch_reference.py, fp16 autocast) in the same run.
# Needs JAX for the accelerator, flax, optax, orbax-checkpoint and PyTorch; no network. The other
# pure-Python dependencies (ml_collections, clu, ...) come from .whl/ at the repository root when
# it exists (benchmarks/fetch_wheels.sh fills it beforehand): the wheels of distributions this
# Python lacks are installed into /tmp/site, which goes on PYTHONPATH. Finishes in under 8 minutes:
# the Python part stops starting measurements after --budget_s (default 400 s) and a hard
# timeout (ACCEL_CHECK_TIMEOUT_S, default 460 s) bounds the rest. The table is printed last;
# JSON goes to $OUT/accelerator_check.json when OUT is set (else benchmarks/results/).
#
#   benchmarks/accelerator_check.sh                 # on the accelerator machine
#   OUT=/tmp/out benchmarks/accelerator_check.sh
#   benchmarks/accelerator_check.sh --dry           # tiny sizes: checks the script on a CPU
#   benchmarks/fetch_wheels.sh                      # beforehand, where there is network
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
if [[ -d "$REPO/.whl" ]]; then
  # Only the distributions this Python does not have: never shadow what the image ships.
  mapfile -t WHEELS < <("$PYTHON" - "$REPO/.whl" <<'PY'
import importlib.metadata as md, os, re, sys
for name in sorted(os.listdir(sys.argv[1])):
  if not name.endswith(".whl"):
    continue
  dist = name.split("-")[0]
  try:
    md.version(dist)
  except md.PackageNotFoundError:
    try:
      md.version(re.sub(r"[-_.]+", "-", dist))
    except md.PackageNotFoundError:
      print(os.path.join(sys.argv[1], name))
PY
  )
  if (( ${#WHEELS[@]} )); then
    echo "installing ${#WHEELS[@]} wheels from .whl/ into /tmp/site: ${WHEELS[*]##*/}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${WHEELS[@]}" || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
# JAX and PyTorch share the GPU: no up-front grab of 75% of its memory by XLA.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
ARGS=()
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  ARGS+=("--out=$OUT/accelerator_check.json")
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
cd "$REPO"
timeout --kill-after=10 "${ACCEL_CHECK_TIMEOUT_S:-460}" "$PYTHON" "$HERE/accelerator_check.py" "${ARGS[@]}" "$@"
rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "accelerator_check: hit the ${ACCEL_CHECK_TIMEOUT_S:-460} s limit; partial results are in the JSON." >&2
fi
exit $rc
