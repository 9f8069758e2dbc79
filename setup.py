"""diffseg_jax: diffusion-based ambiguous medical image segmentation in JAX/Flax."""
import setuptools

setuptools.setup(
    name="diffseg_jax",
    version="0.1.0",
    description="Diffusion models for the distribution of expert segmentations (JAX/Flax NNX).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["diffseg_jax", "diffseg_jax.*", "tfds_lidc", "tfds_lidc.*", "configs"]),
    install_requires=[
        "absl-py>=2.1",
        "array_record>=0.5",
        "clu>=0.0.12",
        "flax>=0.10.4",
        "grain>=0.2.18",
        "importlib_resources>=6.0",
        "jax>=0.5.0",
        "ml_collections>=0.1.1",
        "numpy>=1.26",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "pillow>=10.0",
        "pydicom>=2.4",
        "scipy>=1.11",
        "tensorboardX>=2.6",
        "tensorflow-datasets>=4.9.7",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "chex>=0.1.88"],
        "torch": ["torch>=2.0"],
        "bench": ["torch>=2.0"],  # The PyTorch yardstick of benchmarks/.
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
