"""Packaging for keras_rmac."""

import pathlib
import re

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (HERE / "keras_rmac" / "version.py").read_text(),
).group(1)

setup(
    name="keras-rmac",
    version=VERSION,
    description=(
        "End-to-end R-MAC image retrieval (Gordo et al., IJCV 2017) "
        "for Keras 3 / TensorFlow."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["keras_rmac", "keras_rmac.*"]),
    package_data={"keras_rmac.serve": ["page.html"]},
    install_requires=[
        # scann 1.4.2's TF ops are built against TF 2.20: 2.21 fails to
        # import scann with an undefined symbol.
        "tensorflow~=2.20.0",
        "keras>=3.10",
        "scann==1.4.2",
        "numpy",
        "Pillow",
        "absl-py",
    ],
    extras_require={
        # httpx2: Starlette's test client and the load test; selenium: the
        # browser test of `keras-rmac serve` (with Debian's chromium and
        # chromium-driver).
        "dev": ["pytest", "ruff", "httpx2", "selenium>=4.11"],
        # Local features + RANSAC for `keras-rmac clean`.
        "clean": ["opencv-python-headless>=4.8,<6"],
        # `keras-rmac serve`: the HTTP search service and its page.
        "serve": ["starlette>=0.40", "uvicorn>=0.30", "python-multipart"],
        # `keras-rmac index --runner` and keras_rmac.beam: extraction and
        # index building on Apache Beam (moves protobuf to 6.x and Pillow
        # to 12.x beside TF 2.20; the whole suite runs on those).
        "beam": ["apache-beam>=2.77,<3"],
    },
    entry_points={
        "console_scripts": ["keras-rmac=keras_rmac.cli.main:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
