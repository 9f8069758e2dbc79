"""TFDS builders for LIDC-IDRI benchmarks and a synthetic ambiguous set (no TensorFlow needed)."""
