"""Builds the C++ hot paths in csrc/ as an optional extension.

Metadata lives in pyproject.toml. If the compiler is missing or the build fails, the install still
succeeds and parallel/ falls back to the pure-Python twins with a warning.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure falls back to Python
            print(f"warning: C++ extension not built ({exc}); using the Python twins")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: {ext.name} not built ({exc}); using the Python twin")


def native_extensions():
    sources = sorted(str(p) for p in Path("csrc").glob("*.cpp"))
    if not sources:
        return []
    from pybind11.setup_helpers import Pybind11Extension

    return [Pybind11Extension("parallel._native", sources, cxx_std=17, extra_compile_args=["-O3"])]


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
