"""`--mode=predict`: segmentation samples, their mean and uncertainty for new images.

Inputs: a PNG (grey, 0..255 -> [0, 1]), an NPY ([H, W] or [H, W, 1] float in [0, 1]) or a DICOM file
(resampled to 0.5 mm in-plane and windowed like the LIDC TCIA builder), or a folder of them. Per input
`<name>` the output folder gets `<name>_samples.npy` (bool [N, H, W]), `<name>_mean.{npy,png}`,
`<name>_variance.{npy,png}`, `<name>_entropy.{npy,png}` and `<name>_grid.png`.
"""

import os

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import metrics
from diffseg_jax import parallel
from diffseg_jax import sampling
from diffseg_jax import settings as settings_lib
from diffseg_jax import visualize

SUFFIXES = (".png", ".npy", ".dcm")


def list_inputs(path: str) -> list[str]:
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(SUFFIXES))
    if not files:
      raise FileNotFoundError(f"--input folder {path} holds no {', '.join(SUFFIXES)} files.")
    return files
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input {path} does not exist.")
  if not path.lower().endswith(SUFFIXES):
    raise errors.DataError(f"--input {path}: expected a {', '.join(SUFFIXES)} file or a folder of them.")
  return [path]


def read_image(path: str) -> np.ndarray:
  """Reads one input as float32 [H, W] in [0, 1] with the training data's preprocessing."""
  lower = path.lower()
  try:
    if lower.endswith(".png"):
      with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.float32) / 255.0
    if lower.endswith(".npy"):
      x = np.load(path).astype(np.float32)
      x = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
      if x.ndim != 2:
        raise errors.DataError(f"{path}: expected an [H, W] array, got shape {x.shape}.")
      if x.min() < 0.0 or x.max() > 1.0:
        raise errors.DataError(f"{path}: values must lie in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                         "save the preprocessed image, or pass the DICOM file itself.")
      return x
    from tfds_lidc import preprocessing  # pylint: disable=g-import-not-at-top

    return np.asarray(preprocessing.read_dicom_unit(path), np.float32)
  except (OSError, SyntaxError) as e:
    raise errors.DataError(f"Cannot read {path}: {e}") from e


def _pad_to_multiple(x: np.ndarray, multiple: int):
  h, w = x.shape
  ph, pw = -h % multiple, -w % multiple
  return np.pad(x, ((0, ph), (0, pw)), mode="edge"), (h, w)


def predict(config: ml_collections.ConfigDict, workdir: str, input_path: str, *,
            output_dir: str | None = None) -> list[str]:
  """Writes samples, mean and uncertainty maps for every input; returns the output stems."""
  files = list_inputs(input_path)
  settings = settings_lib.resolve(config)
  mesh = parallel.make_mesh(config.mesh.data)
  graphdef, params, step = checkpoint.load_params(workdir, settings.unet, mesh,
                                                  use_ema=config.eval.use_ema)
  sampler = sampling.Sampler(graphdef, mesh, **settings.sampler_kwargs())
  output_dir = os.path.expanduser(output_dir or os.path.join(workdir, "predict"))
  multiple = 2 ** (len(config.model.channel_mult) - 1)
  rng = jax.random.PRNGKey(config.seed)
  stems = []
  for i, path in enumerate(files):
    image, (h, w) = _pad_to_multiple(read_image(path), multiple)
    samples = sampler(params, image[None, :, :, None], jax.random.fold_in(rng, i),
                      config.predict.num_samples)[0, :, :h, :w]
    maps = {k: np.asarray(v) for k, v in metrics.uncertainty_map(samples).items()}
    mean = samples.mean(0)
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    if jax.process_index() == 0:
      os.makedirs(output_dir, exist_ok=True)
      np.save(stem + "_samples.npy", samples)
      np.save(stem + "_mean.npy", mean.astype(np.float32))
      visualize.save_map(stem + "_mean.png", mean)
      for name, value in maps.items():
        np.save(f"{stem}_{name}.npy", value.astype(np.float32))
        visualize.save_map(f"{stem}_{name}.png", value / (0.25 if name == "variance" else 1.0), heat=True)
      visualize.save_grid(stem + "_grid.png", image=image[None, :h, :w], annotations=np.zeros((1, 0, h, w), bool),
                          samples=samples[None])
    stems.append(stem)
    logging.info("Predicted %d samples for %s (checkpoint step %d) -> %s_*", samples.shape[0], path, step, stem)
  return stems
