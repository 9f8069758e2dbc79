"""diffseg_jax: diffusion-based ambiguous image segmentation in JAX/Flax."""

__version__ = "0.1.0"
