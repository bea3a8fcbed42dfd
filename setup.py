"""Build the optional C kernels (mergestore/_native.c); everything else is in pyproject.toml.

The extension is optional: without a compiler the install still succeeds and mergestore runs
its pure torch/numpy twins of the same kernels (mergestore/native.py), bit for bit the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mergestore._native",
            ["mergestore/_native.c"],
            depends=["mergestore/_native_gta16.h"],
            # Exact IEEE arithmetic: no FMA contraction, no fast-math reordering.
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-fno-trapping-math"],
            optional=True,
        )
    ]
)
