#!/usr/bin/env bash
# Downloads, into .whl/ at the repository root, the wheels of the Python packages this project
# imports that a GPU image with JAX (CUDA), flax, optax, orbax-checkpoint and PyTorch usually
# lacks, for CPython 3.12 on x86-64 Linux. Run it on a machine with network access; the folder
# then travels with the checkout and benchmarks/accelerator_check.sh installs from it (offline,
# only the distributions the target Python does not already have). Never downloads jax, jaxlib,
# torch, numpy or scipy (the GPU image has those). About 15 MiB.
#
#   benchmarks/fetch_wheels.sh            # -> .whl/*.whl
#   PYVER=3.11 benchmarks/fetch_wheels.sh # another CPython
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.whl"
PYVER="${PYVER:-3.12}"
# Versions this project's tests ran with (pip show on the CI/dev machine).
PACKAGES=(
  ml_collections==1.1.0 PyYAML==6.0.3 absl-py==2.5.1   # configs/
  clu==0.0.12 wrapt==2.1.2 etils==1.15.0 typing_extensions==4.15.0 packaging==26.2  # metric writers
  tensorboardX==2.6.5 protobuf==7.36.2                  # TensorBoard events
  pillow==13.0.0                                        # visualize.py, tfds_lidc
  pydicom==3.0.2                                        # raw TCIA LIDC
  grain==0.2.18 cloudpickle==3.1.3 portpicker==1.6.0     # training input pipeline
  tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring_parser==0.18.0 tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 tqdm==4.70.1 psutil==7.2.2
  attrs==26.1.0 requests==2.34.2 urllib3==2.7.0 idna==3.13 charset-normalizer==3.4.7
  certifi==2026.5.20 humanize==4.17.0
)
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${PACKAGES[@]}"
du -sh "$DEST"
