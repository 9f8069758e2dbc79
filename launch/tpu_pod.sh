#!/usr/bin/env bash
# Train (or evaluate) on a Cloud TPU VM pod slice: copy this checkout to every worker, install it,
# and run the same `python -m diffseg_jax.main` on all workers at once.
#
#   TPU_NAME=diffseg ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 CREATE=1 \
#     launch/tpu_pod.sh --config=configs/x_pred.py --workdir=/mnt/shared/runs/x_pred
#   TPU_NAME=diffseg ZONE=us-central2-b SKIP_COPY=1 launch/tpu_pod.sh --config=... --mode=evaluate
#   TPU_NAME=diffseg ZONE=us-central2-b SKIP_COPY=1 MODULE=tfds_lidc.build WORKERS=0 \
#     launch/tpu_pod.sh --dataset=lidc/knegt_pickle --data_dir=/mnt/shared/tfds --manual_dir=...
#
# Arguments go to `python3 -m $MODULE` on every worker. Each worker runs with DIFFSEG_DISTRIBUTED=auto,
# so diffseg_jax.runtime calls jax.distributed.initialize() and JAX finds the pod's coordinator and
# process ids itself; the global batch is split over all TPU chips of all workers.
# --workdir and the data set's data_dir must be paths every worker sees (a Filestore/NFS share or a
# gcsfuse mount at the same path; SETUP can mount it): Orbax writes one checkpoint from all workers.
#
# Environment:
#   TPU_NAME          TPU VM name (required)
#   ZONE              its zone (required)
#   PROJECT           GCP project (default: gcloud's configured one)
#   CREATE=1          create the TPU VM first; then also:
#     ACCELERATOR_TYPE  e.g. v4-32, v5litepod-16 (required with CREATE=1)
#     RUNTIME_VERSION   TPU software version (default tpu-ubuntu2204-base)
#     SPOT=1            a Spot (preemptible) TPU
#   SKIP_COPY=1       do not copy and install the checkout (it is already on the workers)
#   REMOTE_DIR        checkout folder on the workers, relative to the home folder (default diffseg_jax)
#   SETUP             shell commands run on every worker before the install and the run
#   MODULE            Python module to run (default diffseg_jax.main)
#   WORKERS           workers that run it (default all; e.g. 0 to build a data set once into a share)
# A preempted Spot TPU sends SIGTERM: the run saves a checkpoint and exits; running the same command
# again (after recreating the TPU) resumes from it.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REMOTE_DIR="${REMOTE_DIR:-diffseg_jax}"
SETUP="${SETUP:-true}"
MODULE="${MODULE:-diffseg_jax.main}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project="${PROJECT}")
fi

on_workers() {
  "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker="$2" --command="$1"
}

if [[ "${CREATE:-0}" == 1 ]]; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE (e.g. v4-32) to create the TPU VM}"
  create=("${gcloud_tpu[@]}" create "${TPU_NAME}" "${where[@]}"
          --accelerator-type="${ACCELERATOR_TYPE}"
          --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}")
  if [[ "${SPOT:-0}" == 1 ]]; then
    create+=(--spot)
  fi
  "${create[@]}"
fi

if [[ "${SKIP_COPY:-0}" != 1 ]]; then
  # The tracked and the untracked-but-not-ignored files: what `git status` would commit.
  archive_dir="$(mktemp -d -t diffseg_src.XXXXXX)"
  trap 'rm -rf "${archive_dir}"' EXIT
  archive="${archive_dir}/diffseg_src.tar.gz"
  (cd "${REPO}" && git ls-files -z --cached --others --exclude-standard \
      | tar czf "${archive}" --null -T -)
  "${gcloud_tpu[@]}" scp "${archive}" "${TPU_NAME}:diffseg_src.tar.gz" "${where[@]}" --worker=all
  on_workers "set -e; ${SETUP}; mkdir -p ${REMOTE_DIR} && tar xzf diffseg_src.tar.gz -C ${REMOTE_DIR} \
      && rm diffseg_src.tar.gz && cd ${REMOTE_DIR} && python3 -m pip install -q -e '.[tpu]'" all
fi

# The arguments, quoted for the workers' shell.
args=""
if (($# > 0)); then
  printf -v args ' %q' "$@"
fi
on_workers "set -e; ${SETUP}; cd ${REMOTE_DIR} && \
    DIFFSEG_DISTRIBUTED=auto exec python3 -m ${MODULE}${args}" "${WORKERS:-all}"
