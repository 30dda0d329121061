"""Installs sgmoe: `pip install -e .[test]` (add `jax` for the JAX backend)."""

import re

import setuptools

with open("sgmoe/__init__.py", encoding="utf-8") as init_file:
    VERSION = re.search(r'__version__ = "([^"]+)"', init_file.read()).group(1)

with open("README.md", encoding="utf-8") as readme:
    LONG_DESCRIPTION = readme.read()

setuptools.setup(
    name="sgmoe",
    version=VERSION,
    description="Sparsely-gated Mixture-of-Experts layers and models for Keras 3",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["sgmoe", "sgmoe.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "tensorflow-text==2.21.1",
        # TensorFlow 2.21 no longer pulls TensorBoard in.
        "tensorboard==2.21.0",
        "absl-py>=2.1",
        # Learns the shared subword vocabulary of translation data.
        "sentencepiece==0.2.3",
        # BLEU of translations, computed the way WMT results are reported.
        "sacrebleu==2.6.0",
        "numpy>=1.26",
    ],
    extras_require={
        "jax": ["jax==0.10.2", "jaxlib==0.10.2"],
        # The tests run the benchmarks' --quick modes, which plot.
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "matplotlib==3.11.2"],
    },
    license="Apache-2.0",
)
