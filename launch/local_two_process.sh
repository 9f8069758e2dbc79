#!/usr/bin/env bash
# Two CPU processes on this machine, joined by jax.distributed with gloo collectives.
#
#   launch/local_two_process.sh --config=configs/quickstart.py:smoke --workdir=/tmp/two_process
#
# Every argument goes to `python -m diffseg_jax.main` in both processes (the global batch is split
# between them). Environment:
#   NUM_PROCESSES  processes to start (default 2)
#   PORT           coordinator port on 127.0.0.1 (default: a free one)
#   PYTHON         interpreter (default: python)
#   LOG_DIR        where process_<i>.log go (default: a new temporary folder; printed)
# Exits with the first non-zero status of the processes; the others are then stopped.
set -euo pipefail

NUM_PROCESSES="${NUM_PROCESSES:-2}"
PYTHON="${PYTHON:-python}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t diffseg_local.XXXXXX)}"
mkdir -p "${LOG_DIR}"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap stop_all INT TERM

echo "Starting ${NUM_PROCESSES} processes (coordinator 127.0.0.1:${PORT}); logs in ${LOG_DIR}" >&2
for ((i = 0; i < NUM_PROCESSES; i++)); do
  (cd "${REPO}" && JAX_PLATFORMS=cpu exec "${PYTHON}" -m diffseg_jax.main \
      --coordinator_address="127.0.0.1:${PORT}" --num_processes="${NUM_PROCESSES}" \
      --process_id="${i}" --cpu_collectives=gloo "$@") >"${LOG_DIR}/process_${i}.log" 2>&1 &
  pids+=("$!")
done

# Process 0's output on the console while the run lasts.
tail -n +1 -f "${LOG_DIR}/process_0.log" &
tail_pid=$!

status=0
remaining=("${pids[@]}")
while ((${#remaining[@]} > 0)); do
  sleep 1
  running=()
  for pid in "${remaining[@]}"; do
    if kill -0 "${pid}" 2>/dev/null; then
      running+=("${pid}")
      continue
    fi
    # The shell keeps a finished child's status until it is waited for.
    code=0
    wait "${pid}" || code=$?
    if ((code != 0 && status == 0)); then
      status=${code}
      echo "A process exited with status ${code}; stopping the others." >&2
      stop_all
    fi
  done
  remaining=("${running[@]+"${running[@]}"}")
done
kill "${tail_pid}" 2>/dev/null || true
if ((status != 0)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    echo "--- ${LOG_DIR}/process_${i}.log (last lines) ---" >&2
    tail -n 20 "${LOG_DIR}/process_${i}.log" >&2
  done
fi
exit "${status}"
