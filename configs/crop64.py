r"""The paper's harder benchmark: random 64x64 windows of LIDCv1 (SPEC §4, "crop64"), x-prediction.

Train draws a fresh window every step (on device); validation/test use the windows stored by the builder.

  python -m tfds_lidc.build --dataset=lidc/knegt_pickle_crop64 --manual_dir=~/lidc_v1 --data_dir=~/tensorflow_datasets
  python -m diffseg_jax.main --config=configs/crop64.py --workdir=~/runs/crop64
  python -m diffseg_jax.main --config=configs/crop64.py --workdir=~/runs/crop64 --mode=evaluate
"""

from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.dataset.name = "lidc/knegt_pickle_crop64"
  config.augment.crop_size = 64
  return config
