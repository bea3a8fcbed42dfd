"""Build the optional C kernels (mergestore/csrc/); everything else is in pyproject.toml.

The extension is optional: without a compiler the install still succeeds and mergestore runs
its pure torch/numpy twins of the same kernels (mergestore/native.py), bit for bit the same.
One extension, one source file per kernel family (mergestore/csrc/native.h lists them).
"""

from glob import glob

from setuptools import Extension, setup

SOURCES = sorted(glob("mergestore/csrc/*.c"))
# Exact IEEE arithmetic: no FMA contraction, no fast-math reordering. (tests/test_native_clones.py
# builds the kernels with these flags too, once per target.)
COMPILE_ARGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-trapping-math"]

setup(
    ext_modules=[
        Extension(
            "mergestore._native",
            SOURCES,
            depends=sorted(glob("mergestore/csrc/*.h")),
            include_dirs=["mergestore/csrc"],
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        )
    ]
)
